"""Bad input gets a named mace_ase error, raised before any JAX work (compile_count stays 0)."""

from __future__ import annotations

import ase
import numpy as np
import pytest
from ase.build import molecule

from mace_ase.calculator import MaceCalculator
from mace_ase.errors import InvalidStructureError, MaceAseError, UnknownElementError


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
    for pbc in [False, (True, True, False)]:
        atoms = molecule("H2O", vacuum=3.0)
        atoms.pbc = pbc
        raises_before_jax(calc, atoms, InvalidStructureError, "stress needs a fully periodic cell",
                          properties=("stress",))
        atoms.calc = calc
        with pytest.raises(InvalidStructureError):
            atoms.get_stress()


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
    atoms = molecule("H2O")  # cell all zeros, pbc False: fine
    atoms.calc = calc
    assert np.isfinite(atoms.get_potential_energy())


def test_batch_refuses_bad_members_by_index(calc):
    good, bad = molecule("H2O"), molecule("H2O")
    bad.positions[0] = np.nan
    with pytest.raises(InvalidStructureError, match="structure 1: non-finite"):
        calc.calculate_batch([good, bad])
    with pytest.raises(InvalidStructureError, match="structure 0"):
        calc.calculate_batch([good], properties=["energy", "stress"])
    assert calc.compile_count == 0


def test_bad_options():
    from conftest import small_model

    with pytest.raises(ValueError, match="dtype"):
        MaceCalculator(small_model(), dtype="float16")
    with pytest.raises(ValueError, match="skin"):
        MaceCalculator(small_model(), skin=-1.0)
