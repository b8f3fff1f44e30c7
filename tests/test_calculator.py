"""MaceCalculator: exactness (finite differences, an independent neighbour list), caching,
fixed shapes, batch, Hessian, descriptors, and the ASE plugin."""

from __future__ import annotations

import os
import subprocess
import sys

import ase
import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from conftest import REPO, molecules_in_cell, small_model

from mace_ase.calculator import MaceCalculator
from mace_ase.model import energy_forces_stress, single_graph
from mace_ase.neighbours import species_indices


@pytest.fixture(scope="module")
def smooth_model():
    # scaling_std=5 gives forces of ~0.1-1 eV/Å: large enough that errors show.
    return small_model(scaling_std=5.0, seed=1)


def water_methane_box(a=6.0, seed=0):
    """Two waters and a methane in a small periodic cell (a < 2 x cutoff: several images)."""
    placed = [("H2O", (1.0, 1.0, 1.0)), ("H2O", (4.0, 3.5, 2.0)), ("CH4", (2.0, 4.0, 4.5))]
    return molecules_in_cell(placed, np.diag([a, a * 1.05, a * 0.95]) + 0.3 * np.triu(np.ones((3, 3)), 1), seed)


def reference_energy_forces(model, atoms):
    """Energy and forces through ASE's own (primitive) neighbour list: an independent graph builder."""
    import jax
    from ase.neighborlist import primitive_neighbor_list

    i, j, S = primitive_neighbor_list("ijS", atoms.pbc, atoms.cell.array, atoms.positions, model.cutoff,
                                      self_interaction=False)
    graph = single_graph(atoms.positions, species_indices(atoms.numbers, model.atomic_numbers), i, j, S,
                         atoms.cell.array)
    evaluate = jax.jit(energy_forces_stress, static_argnums=(1, 3))
    out = evaluate(model.params, model.config, graph, False)
    return float(out["energy"][0]), np.asarray(out["forces"])


# ------------------------------------------------------------------ exactness


def test_forces_match_finite_differences_molecule(smooth_model):
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=1)
    atoms.calc = MaceCalculator(smooth_model, dtype="float64")
    forces = atoms.get_forces()
    numerical = calculate_numerical_forces(atoms, eps=1e-4)
    assert np.abs(forces).max() > 0.05  # not a flat, trivially matching surface
    np.testing.assert_allclose(forces, numerical, atol=1e-7)


def test_forces_and_stress_match_finite_differences_small_periodic_cell(smooth_model):
    atoms = water_methane_box()
    atoms.calc = MaceCalculator(smooth_model, dtype="float64")
    forces, stress = atoms.get_forces(), atoms.get_stress()
    np.testing.assert_allclose(forces, calculate_numerical_forces(atoms, eps=1e-4), atol=1e-7)
    numerical_stress = calculate_numerical_stress(atoms, eps=1e-5)
    assert np.abs(stress).max() > 1e-4  # eV/Å^3
    np.testing.assert_allclose(stress, numerical_stress, atol=1e-8)


@pytest.mark.x64  # the reference evaluates the model function itself, in float64
def test_energy_and_forces_match_an_independent_neighbour_list(smooth_model):
    """Periodic, mixed and no pbc in a cell smaller than 2 x cutoff (several images of an atom)."""
    calc = MaceCalculator(smooth_model, dtype="float64")
    for pbc in [(True, True, True), (True, False, True), (False, False, False)]:
        atoms = water_methane_box(a=5.5, seed=2)
        atoms.pbc = pbc
        atoms.calc = calc
        energy, forces = reference_energy_forces(smooth_model, atoms)
        assert atoms.get_potential_energy() == pytest.approx(energy, abs=1e-10)
        np.testing.assert_allclose(atoms.get_forces(), forces, atol=1e-10)


def test_verlet_skin_is_exact_and_reused(smooth_model):
    """With a skin, pairs listed beyond the cutoff are masked: results equal a fresh list's."""
    atoms = water_methane_box(seed=3)
    skinned = MaceCalculator(smooth_model, dtype="float64", skin=1.0)
    fresh = MaceCalculator(smooth_model, dtype="float64", skin=0.0)
    rng = np.random.default_rng(0)
    for step in range(6):
        atoms.positions += rng.normal(scale=0.04, size=atoms.positions.shape)  # < skin/2 overall
        skinned.calculate(atoms, ["energy", "forces", "stress"])
        fresh.calculate(atoms, ["energy", "forces", "stress"])
        for key in ("energy", "forces", "stress"):
            np.testing.assert_allclose(skinned.results[key], fresh.results[key], atol=1e-11)
    assert skinned.neighbour_builds < fresh.neighbour_builds == 6
    # An atom moved by a lattice vector (as atoms.wrap() does) is the same crystal: rebuilt, equal.
    builds = skinned.neighbour_builds
    energy = skinned.results["energy"]
    atoms.positions[0] += atoms.cell[1]
    skinned.calculate(atoms, ["energy", "forces"])
    assert skinned.neighbour_builds == builds + 1
    assert skinned.results["energy"] == pytest.approx(energy, abs=1e-11)
    assert skinned.compile_count == 1


def test_per_atom_energies_sum_to_total(smooth_model, aspirin):
    aspirin.calc = MaceCalculator(smooth_model, dtype="float64")
    energies = aspirin.get_potential_energies()
    assert energies.shape == (len(aspirin),)
    assert energies.sum() == pytest.approx(aspirin.get_potential_energy(), abs=1e-10)
    assert aspirin.get_potential_energy() == aspirin.calc.results["free_energy"]


def test_float32_close_to_float64(smooth_model, aspirin):
    atoms32 = aspirin.copy()
    aspirin.calc = MaceCalculator(smooth_model, dtype="float64")
    atoms32.calc = MaceCalculator(smooth_model, dtype="float32")
    assert atoms32.get_potential_energy() == pytest.approx(aspirin.get_potential_energy(), abs=2e-4)
    np.testing.assert_allclose(atoms32.get_forces(), aspirin.get_forces(), atol=2e-4)
    atoms32.translate((1e4, -2e4, 5e3))  # float32 spacing is ~1e-3 Å out there
    np.testing.assert_allclose(atoms32.get_forces(), aspirin.get_forces(), atol=2e-4)


def test_isolated_atom_is_its_reference_energy(smooth_model):
    calc = MaceCalculator(smooth_model, dtype="float64")
    for z, e0 in zip(smooth_model.atomic_numbers, smooth_model.config.atomic_energies):
        atoms = ase.Atoms(numbers=[z], positions=[[0.3, -1.0, 2.0]], calculator=calc)
        assert atoms.get_potential_energy() == pytest.approx(e0, abs=1e-12)
        np.testing.assert_array_equal(atoms.get_forces(), 0.0)


def test_rotation_and_translation_invariance(smooth_model, aspirin):
    calc = MaceCalculator(smooth_model, dtype="float64")
    aspirin.calc = calc
    energy, forces = aspirin.get_potential_energy(), aspirin.get_forces()
    moved = aspirin.copy()
    moved.rotate(73, (1, 2, -0.5), center="COP")
    moved.translate((3.0, -2.0, 7.0))
    moved.calc = calc
    assert moved.get_potential_energy() == pytest.approx(energy, abs=1e-10)
    rotation = np.linalg.lstsq(aspirin.positions - aspirin.positions.mean(0),
                               moved.positions - moved.positions.mean(0), rcond=None)[0]
    np.testing.assert_allclose(moved.get_forces(), forces @ rotation, atol=1e-9)


# --------------------------------------------------------- caching and shapes


def test_results_are_cached_per_check_state(model, aspirin):
    calc = MaceCalculator(model)
    aspirin.calc = calc
    aspirin.get_potential_energy()
    aspirin.get_forces()
    aspirin.get_potential_energies()
    assert calc.timings["calls"] == 1
    aspirin.positions[0, 0] += 0.01
    aspirin.get_forces()
    assert calc.timings["calls"] == 2
    assert set(calc.timings) == {"neighbours", "padding", "model", "calls"}
    assert all(calc.timings[k] > 0 for k in ("neighbours", "padding", "model"))


def test_capacities_grow_and_never_shrink(model):
    calc = MaceCalculator(model)
    sizes = [molecule("CH3CH2OH"), molecule("CH4"), molecule("C2H6"), molecule("CH3CH2OH")]
    for atoms in sizes:
        calc.get_potential_energy(atoms)
    assert calc.compile_count == 1  # ethanol's capacities hold every smaller molecule
    big = molecule("CH3CH2OH") + molecule("C6H6").copy()
    big.positions[9:] += (0.0, 0.0, 3.5)
    calc.get_potential_energy(big)
    assert calc.compile_count == 2
    calc.get_potential_energy(molecule("CH4"))
    assert calc.compile_count == 2


def test_compile_is_logged(model, caplog):
    calc = MaceCalculator(model)
    with caplog.at_level("INFO", logger="mace_ase.calculator"):
        calc.get_potential_energy(molecule("CH4"))
    assert any("compiling" in r.getMessage() for r in caplog.records)


def test_no_atoms_needed_at_construction(model):
    calc = MaceCalculator(model)
    assert calc.atoms is None and calc.compile_count == 0
    assert calc.get_potential_energy(molecule("H2O")) < 0


# ---------------------------------------------------------------- extras


def test_batch_equals_one_by_one(smooth_model, aspirin):
    structures = [aspirin, molecule("CH3CH2OH"), water_methane_box(), molecule("H2O")]
    structures[3].cell = [3.0, 3.0, 3.0]
    structures[3].pbc = True
    calc = MaceCalculator(smooth_model, dtype="float64")
    batch = calc.calculate_batch(structures)
    assert calc.compile_count == 1 and len(batch) == len(structures)
    single = MaceCalculator(smooth_model, dtype="float64")
    for atoms, result in zip(structures, batch):
        single.calculate(atoms.copy(), ["energy", "forces"])
        assert result["energy"] == pytest.approx(single.results["energy"], abs=1e-10)
        np.testing.assert_allclose(result["forces"], single.results["forces"], atol=1e-10)
        np.testing.assert_allclose(result["energies"], single.results["energies"], atol=1e-10)
    periodic = [water_methane_box(seed=s) for s in range(3)]
    with_stress = calc.calculate_batch(periodic, properties=["energy", "forces", "stress"])
    for atoms, result in zip(periodic, with_stress):
        single.calculate(atoms, ["energy", "forces", "stress"])
        np.testing.assert_allclose(result["stress"], single.results["stress"], atol=1e-12)
        np.testing.assert_allclose(result["forces"], single.results["forces"], atol=1e-10)


def test_hessian_is_symmetric_and_matches_ase_vibrations(smooth_model, tmp_path):
    from ase.vibrations import Vibrations

    atoms = molecule("CH3OH")
    atoms.rattle(0.05, seed=4)
    calc = MaceCalculator(smooth_model, dtype="float64")
    atoms.calc = calc
    hessian = calc.get_hessian(atoms)
    assert hessian.shape == (3 * len(atoms), 3 * len(atoms))
    np.testing.assert_allclose(hessian, hessian.T, atol=1e-10)
    vib = Vibrations(atoms, name=str(tmp_path / "vib"), delta=1e-3, nfree=4)
    vib.run()
    numerical = vib.get_vibrations().get_hessian_2d()
    assert np.abs(hessian).max() > 0.1
    np.testing.assert_allclose(hessian, numerical, atol=1e-6)


@pytest.mark.x64
def test_descriptors_are_invariant_per_layer_features(smooth_model, aspirin):
    from mace_ase.model import invariant_descriptors
    from mace_ase.neighbours import structure_from_atoms, pad_graph

    calc = MaceCalculator(smooth_model, dtype="float64")
    descriptors = calc.get_descriptors(aspirin)
    channels = smooth_model.config.num_channels
    assert descriptors.shape == (len(aspirin), smooth_model.config.num_layers * channels)
    structure = structure_from_atoms(aspirin, smooth_model.atomic_numbers, smooth_model.cutoff)
    graph = pad_graph([structure], structure.num_nodes, structure.num_edges, 1)  # unpadded
    np.testing.assert_allclose(descriptors, invariant_descriptors(smooth_model.params, smooth_model.config, graph),
                               atol=1e-12)
    np.testing.assert_allclose(calc.get_descriptors(aspirin, num_layers=1), descriptors[:, :channels])
    rotated = aspirin.copy()
    rotated.rotate(40, (0.3, 1, 0.2))
    np.testing.assert_allclose(calc.get_descriptors(rotated), descriptors, atol=1e-10)
    full = calc.get_descriptors(aspirin, invariants_only=False)
    assert full.shape[1] > descriptors.shape[1]


# ---------------------------------------------------------------- ASE plugin


def test_ase_plugin_lists_the_calculator():
    from ase._4.plugins import plugins

    implementations = {p.name: p.implementation for p in plugins.calculators}
    assert implementations.get("MaceCalculator") is MaceCalculator
    listing = subprocess.run([sys.executable, "-m", "ase", "info", "--plugins"], capture_output=True, text=True,
                             check=True).stdout
    assert "MaceCalculator" in listing and "mace_ase" in listing


def test_persistent_compilation_cache_option_writes_the_cache(tmp_path):
    """compilation_cache= hands the directory to JAX (run in a subprocess: JAX's cache is process-global)."""
    script = f"""
import sys; sys.path.insert(0, {str(REPO / "tests")!r})
from ase.build import molecule
from conftest import small_model
from mace_ase.calculator import MaceCalculator
calc = MaceCalculator(small_model(), compilation_cache={str(tmp_path)!r})
calc.get_potential_energy(molecule("CH4"))
print(calc.compile_count)
"""
    env = {**os.environ, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split()[-1] == "1"
    assert any("energy_forces" in p.name for p in tmp_path.iterdir())


def test_float32_and_float64_calculators_in_one_process_without_global_x64():
    """Each calculator enables x64 only around its own calls; both precisions coexist (subprocess:
    the test session itself runs with x64 on)."""
    script = f"""
import sys; sys.path.insert(0, {str(REPO / "tests")!r})
import jax
from conftest import small_model
jax.config.update("jax_enable_x64", False)
from ase.build import molecule
from mace_ase.calculator import MaceCalculator
model = small_model()
e64 = MaceCalculator(model, dtype="float64").get_potential_energy(molecule("CH3CH2OH"))
e32 = MaceCalculator(model, dtype="float32").get_potential_energy(molecule("CH3CH2OH"))
e64_again = MaceCalculator(model, dtype="float64").get_potential_energy(molecule("CH3CH2OH"))
print(e64, e32, e64_again)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    e64, e32, e64_again = map(float, out.stdout.split()[-3:])
    assert e64 == e64_again
    assert abs(e32 - e64) < 1e-4 * abs(e64)
