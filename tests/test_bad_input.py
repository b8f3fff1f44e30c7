"""Bad input gets a named mace_ase error, raised before any JAX work (compile_count stays 0)."""

from __future__ import annotations

import subprocess
import sys
import time

import ase
import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.calculator import PropertyNotImplementedError
from conftest import REPO

from mace_ase.calculator import MaceCalculator
from mace_ase.errors import (
    InvalidOptionError,
    InvalidStructureError,
    MaceAseError,
    StressNotAvailableError,
    StructureTooLargeError,
    UnknownElementError,
)


@pytest.fixture
def calc(model):
    return MaceCalculator(model, dtype="float64")


def raises_before_jax(calc, atoms, error, match, properties=("energy", "forces")):
    with pytest.raises(error, match=match) as info:
        calc.calculate(atoms, list(properties))
    assert isinstance(info.value, MaceAseError)
    assert calc.compile_count == 0
    return info.value


def test_unknown_element_is_named_with_the_model_elements(calc):
    atoms = molecule("CH3OH")
    atoms.numbers[1] = 26  # Fe
    error = raises_before_jax(calc, atoms, UnknownElementError, "Fe")
    assert "H C N O" in str(error)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_positions(calc, bad):
    atoms = molecule("H2O")
    atoms.positions[2, 1] = bad
    raises_before_jax(calc, atoms, InvalidStructureError, "non-finite .* atom\\(s\\) 2")


def test_two_atoms_at_the_same_position(calc):
    atoms = molecule("CH4")
    atoms.positions[3] = atoms.positions[1]
    raises_before_jax(calc, atoms, InvalidStructureError, "atoms [13] and [13] .* same position")


def test_an_atom_on_the_periodic_image_of_another(calc):
    atoms = ase.Atoms("H2", positions=[[0, 0, 0], [3.0, 0, 0]], cell=[3.0, 4.0, 4.0], pbc=True)
    raises_before_jax(calc, atoms, InvalidStructureError, "same position")  # atom 1 sits on atom 0's image


def test_empty_atoms(calc):
    raises_before_jax(calc, ase.Atoms(), InvalidStructureError, "empty")


def test_stress_on_a_non_periodic_system(calc):
    """A named error that is also ASE's PropertyNotImplementedError (what ASE tools catch)."""
    for pbc in [False, (True, True, False)]:
        atoms = molecule("H2O", vacuum=3.0)
        atoms.pbc = pbc
        raises_before_jax(calc, atoms, StressNotAvailableError, "stress needs a fully periodic cell",
                          properties=("stress",))
        atoms.calc = calc
        with pytest.raises(PropertyNotImplementedError):
            atoms.get_stress()
        assert issubclass(StressNotAvailableError, InvalidStructureError)


def test_periodic_cell_of_mostly_vacuum_is_refused_by_size(calc):
    atoms = molecule("H2O")
    atoms.cell, atoms.pbc = [5000.0, 5000.0, 5000.0], True
    start = time.perf_counter()
    error = raises_before_jax(calc, atoms, StructureTooLargeError, "vacuum")
    assert "3 atoms" in str(error) and "7.5e+08 cells" in str(error)  # (5000 / 5.5)^3: cutoff + skin
    assert time.perf_counter() - start < 1.0  # refused before matscipy allocates a grid of gigabytes


def test_fragments_far_apart_without_pbc_are_exact_and_cheap(calc):
    """Non-periodic: empty gaps are closed up for the neighbour search; the pairs are unchanged."""
    first, second = molecule("CH3CH2OH"), molecule("CH4")
    apart = first + second
    apart.positions[len(first):] += (3e4, -5e4, 8e4)
    calc.calculate(apart, ["energy", "forces"])
    assert calc.timings["neighbours"] < 1.0  # a grid over 1e5 Å would take seconds and gigabytes
    energy, forces = calc.results["energy"], calc.results["forces"]
    parts = []
    for atoms in (first, second):
        calc.calculate(atoms, ["energy", "forces"])
        parts.append(calc.results)
    assert energy == pytest.approx(parts[0]["energy"] + parts[1]["energy"], abs=1e-10)
    np.testing.assert_allclose(forces, np.concatenate([p["forces"] for p in parts]), atol=1e-10)


def test_out_of_memory_is_named_and_a_batch_is_split():
    """A subprocess with 60 MB more address space than it holds (a tiny model; works from ~45 to ~75 MB
    here): XLA's allocation failure becomes a named error (atoms, edges, XLA's estimate, what to
    do), and a batch that does not fit is split and retried. (Below that, LLVM itself runs out
    while compiling and aborts the process: no library can catch that.)"""
    script = f"""
import resource, sys, logging
sys.path.insert(0, {str(REPO / "tests")!r})
import numpy as np
from conftest import small_model, molecules_in_cell
from mace_ase.calculator import MaceCalculator
from mace_ase.errors import StructureTooLargeError

def box(n, seed=0):
    return molecules_in_cell([("H2O", 3.1 * (np.array(ijk) + 0.5)) for ijk in np.ndindex(n, n, n)], np.eye(3) * 3.1 * n, seed)

model = small_model(num_layers=1, num_channels=4, l_max=1, node_symmetry=1, readout_irreps=("4x0e", "0e"))
calc = MaceCalculator(model, compilation_cache=False, batch_atoms=100_000)
boxes = [box(6, seed) for seed in range(4)]
singles = [calc.calculate_batch([b])[0]["energy"] for b in boxes]
huge = box(10)
limit = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (limit + 60 * 2**20,) * 2)
logging.basicConfig(level=logging.INFO, format="%(message)s")
batch = calc.calculate_batch(boxes)
print("batch error", max(abs(r["energy"] - e) for r, e in zip(batch, singles)))
try:
    calc.get_potential_energy(huge)
except StructureTooLargeError as error:
    print("error", error)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "batch of 4 structures out of memory; split in two" in out.stderr
    assert "batch error 0.0" in out.stdout
    error = next(line for line in out.stdout.splitlines() if line.startswith("error"))
    assert "3000 atoms and 164552 edges" in error and "GB by XLA's estimate" in error and "smaller structure" in error


@pytest.mark.parametrize(
    "cell, pbc",
    [
        (np.zeros((3, 3)), True),  # no cell at all, yet periodic
        ([[4, 0, 0], [0, 4, 0], [4, 4, 0]], True),  # coplanar lattice vectors
        ([[4, 0, 0], [8, 0, 0], [0, 0, 0]], (True, True, False)),  # parallel periodic vectors
    ],
)
def test_degenerate_periodic_cell(calc, cell, pbc):
    atoms = molecule("H2O")
    atoms.cell, atoms.pbc = cell, pbc
    raises_before_jax(calc, atoms, InvalidStructureError, "degenerate")


def test_zero_cell_without_pbc_is_a_molecule(calc):
    """Cell all zeros, pbc False: fine, and the same as the molecule alone in a large periodic box."""
    atoms = molecule("H2O")
    atoms.calc = calc
    boxed = atoms.copy()
    boxed.cell, boxed.pbc = [30.0, 30.0, 30.0], True  # no image within the cutoff
    boxed.calc = calc
    assert atoms.get_potential_energy() == pytest.approx(boxed.get_potential_energy(), abs=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), boxed.get_forces(), atol=1e-10)


def test_batch_refuses_bad_members_by_index(calc):
    good, bad = molecule("H2O"), molecule("H2O")
    bad.positions[0] = np.nan
    with pytest.raises(InvalidStructureError, match="structure 1: non-finite"):
        calc.calculate_batch([good, bad])
    with pytest.raises(InvalidStructureError, match="structure 0"):
        calc.calculate_batch([good], properties=["energy", "stress"])
    assert calc.compile_count == 0


def test_bad_options(model):
    with pytest.raises(InvalidOptionError, match="dtype"):
        MaceCalculator(model, dtype="float16")
    with pytest.raises(ValueError, match="skin"):
        MaceCalculator(model, skin=-1.0)
    with pytest.raises(InvalidOptionError, match="result_cache must be an integer >= 0"):
        MaceCalculator(model, result_cache=-1)


def test_unknown_option_is_named_with_the_valid_ones(model):
    with pytest.raises(InvalidOptionError) as info:
        MaceCalculator(model, dytpe="float64")
    message = str(info.value)
    assert "'dytpe' (did you mean 'dtype'?)" in message
    assert all(name in message for name in ("dtype", "skin", "compilation_cache", "result_cache", "max_executables"))
    assert isinstance(info.value, TypeError)  # what Python raises for an unexpected keyword
