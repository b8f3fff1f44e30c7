"""MaceCalculator: exactness (finite differences, an independent neighbour list), float32 against
float64, size buckets and history independence, shared calculators (NEB, threads), warnings,
batch, Hessian, descriptors, the compilation cache and the ASE plugin."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import ase
import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from conftest import REPO, molecules_in_cell, small_model

from mace_ase.calculator import MaceCalculator
from mace_ase.model import energy_forces_stress, single_graph
from mace_ase.neighbours import size_bucket, species_indices


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


@pytest.mark.x64  # the reference evaluates the model function itself, in float64
def test_per_atom_energies_match_the_model_function_and_sum_to_total(smooth_model, aspirin):
    """Against node_energies on a graph from ASE's own neighbour list (E0 included there on the device)."""
    from ase.neighborlist import primitive_neighbor_list

    from mace_ase.model import node_energies

    aspirin.calc = MaceCalculator(smooth_model, dtype="float64")
    energies = aspirin.get_potential_energies()
    i, j = primitive_neighbor_list("ij", aspirin.pbc, aspirin.cell.array, aspirin.positions, smooth_model.cutoff)
    graph = single_graph(aspirin.positions, species_indices(aspirin.numbers, smooth_model.atomic_numbers), i, j)
    reference = np.asarray(node_energies(smooth_model.params, smooth_model.config, graph))
    assert np.ptp(reference) > 0.1  # atoms differ: a per-atom mix-up would show
    np.testing.assert_allclose(energies, reference, atol=1e-10)
    assert energies.sum() == pytest.approx(aspirin.get_potential_energy(), abs=1e-10)
    assert aspirin.get_potential_energy() == aspirin.calc.results["free_energy"]


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


# ------------------------------------------------- float32 (the default) against float64


@pytest.fixture(scope="module")
def bundled_model():
    from mace_ase.weights import load_model

    return load_model(None)


def water_box_27(seed=0):
    """27 waters at ~1 g/cm^3 in a periodic cube (81 atoms)."""
    spacing = 3.1
    placed = [("H2O", spacing * (np.array(ijk) + 0.5)) for ijk in np.ndindex(3, 3, 3)]
    return molecules_in_cell(placed, np.eye(3) * 3 * spacing, seed)


@pytest.mark.parametrize("system", ["aspirin", "water box"])
def test_float32_matches_float64_to_float32_precision(bundled_model, aspirin, system):
    """x64 off (the user's default) against float64, both in this process. Energy minus the
    per-element reference energies: within 1e-6 of the sum of the per-atom terms' sizes (what
    float32 rounding allows; the terms partly cancel); forces to 1e-4 eV/Å."""
    atoms = aspirin if system == "aspirin" else water_box_27()
    config = bundled_model.config
    reference = np.array(config.atomic_energies)[[config.atomic_numbers.index(z) for z in atoms.numbers]]
    reference = reference + config.scaling_mean
    results = {}
    for dtype in ("float32", "float64"):
        calc = MaceCalculator(bundled_model, dtype=dtype)
        calc.calculate(atoms, ["energy", "energies", "forces"])
        results[dtype] = calc.results["energies"] - reference, calc.results["forces"]
    (terms32, forces32), (terms64, forces64) = results["float32"], results["float64"]
    scale = np.abs(terms64).sum()
    assert abs(terms64.sum()) > 0.1 * scale and np.abs(forces64).max() > 0.5  # real sizes, not a flat surface
    print(f"\n{system}: E - E0 {terms64.sum():.6f} eV, float32 error {terms32.sum() - terms64.sum():.2e} eV "
          f"({(terms32.sum() - terms64.sum()) / scale:.1e} of sum |e_i - e0_i|), forces {np.abs(forces32 - forces64).max():.1e} eV/Å")
    assert abs(terms32.sum() - terms64.sum()) < 1e-6 * scale
    np.testing.assert_allclose(forces32, forces64, atol=1e-4)
    if system == "aspirin":  # far from the origin: float32 spacing is ~1e-3 Å there; centring keeps the precision
        atoms.translate((1e4, -2e4, 5e3))
        far = MaceCalculator(bundled_model)
        far.calculate(atoms, ["forces"])
        np.testing.assert_allclose(far.results["forces"], forces64, atol=1e-4)


# --------------------------------------------------------- size buckets and history


def water_box_125(seed=0):
    """125 waters in a periodic 15.5 Å cube (375 atoms)."""
    return molecules_in_cell([("H2O", 3.1 * (np.array(ijk) + 0.5)) for ijk in np.ndindex(5, 5, 5)], np.eye(3) * 15.5, seed)


def test_size_bucket_is_the_smallest_rung_of_a_fixed_ladder():
    rungs = sorted({8 * math.ceil(8 * 1.25**k / 8) for k in range(100)})  # the ladder, by hand
    for needed in [0, 1, 8, 9, 17, 288, 289, 368, 1000, 12_345, 99_999, 3_000_000]:
        assert size_bucket(needed) == min(r for r in rungs if r >= needed)
        assert size_bucket(needed) <= 1.25 * needed + 8


def test_small_molecule_after_a_large_box_gets_a_fresh_calculators_shape(model, aspirin):
    """The padded shape comes from the structure alone: a molecule after a 375-atom box runs in the
    molecule's own bucket (not the box's), with bit-identical results."""
    from ase.neighborlist import primitive_neighbor_list

    box = water_box_125()
    fresh = MaceCalculator(model)
    fresh.calculate(aspirin, ["energy", "forces"])
    shared = MaceCalculator(model)
    shared.calculate(box, ["energy", "forces"])
    shared.calculate(aspirin, ["energy", "forces"])
    kind, nodes, edges, graphs = shared.executables[-1]
    assert (kind, nodes, edges, graphs) == fresh.executables[-1]
    pairs = len(primitive_neighbor_list("i", aspirin.pbc, aspirin.cell.array, aspirin.positions, model.cutoff))
    assert len(aspirin) <= nodes <= 1.25 * len(aspirin) + 8 and pairs <= edges <= 1.25 * pairs + 8
    assert shared.results["energy"] == fresh.results["energy"]
    np.testing.assert_array_equal(shared.results["forces"], fresh.results["forces"])


def test_same_geometry_after_different_histories_is_bit_identical(model):
    """float32, a periodic box larger than 2 x (cutoff + skin): a fresh list, or a skin list built at
    another geometry and reused, give the model the same edges in the same order, hence the same bits."""
    atoms = water_box_125()
    fresh = MaceCalculator(model, skin=0.0)
    fresh.calculate(atoms, ["energy", "forces", "stress"])
    calc = MaceCalculator(model, result_cache=0, skin=1.0)
    calc.calculate(molecule("CH3CH2OH"), ["energy"])
    displaced = atoms.copy()
    displaced.positions += np.random.default_rng(0).uniform(-0.25, 0.25, size=atoms.positions.shape)
    calc.calculate(displaced, ["energy", "forces"])  # the skin list is built here ...
    builds = calc.neighbour_builds
    calc.calculate(atoms, ["energy", "forces", "stress"])  # ... and reused here
    assert calc.neighbour_builds == builds
    assert calc.results["energy"] == fresh.results["energy"]
    for key in ("forces", "stress"):
        np.testing.assert_array_equal(calc.results[key], fresh.results[key])


def test_compiled_programs_stay_bounded_under_random_sizes():
    """At most max_executables programs are held (least recently used dropped), and JAX holds no more."""
    import gc

    import jax
    from ase.neighborlist import primitive_neighbor_list

    model = small_model(num_layers=1, num_channels=4, l_max=1, node_symmetry=1, readout_irreps=("4x0e", "0e"))
    names = ["H2O", "CH4", "C2H6", "CH3CH2OH", "C6H6", "CH3COOH", "C2H6CHOH"]
    molecules = {name: molecule(name) for name in names}

    def bucket(atoms):  # by hand: the atoms and ASE's pair count, each rounded up the ladder
        pairs = len(primitive_neighbor_list("i", atoms.pbc, atoms.cell.array, atoms.positions, model.cutoff))
        return ("energy_forces", size_bucket(len(atoms)), size_bucket(pairs), 1)

    MaceCalculator(model).get_potential_energy(molecule("NH3"))  # JAX's caches of eager operations fill here
    calc = MaceCalculator(model, max_executables=3, result_cache=0)
    client = jax.devices()[0].client
    gc.collect()
    live_before = len(client.live_executables())
    held, misses = [], 0  # an LRU list simulated independently
    for name in np.random.default_rng(0).choice(names, size=14):
        calc.get_potential_energy(molecules[name].copy())
        key = bucket(molecules[name])
        if key in held:
            held.remove(key)
        else:
            misses += 1
        held = (held + [key])[-3:]
        assert calc.executables == held
    assert calc.compile_count == misses > 3
    gc.collect()
    assert len(client.live_executables()) - live_before <= 3


# ------------------------------------------------------------ shared calculators


def test_neb_with_a_shared_calculator_makes_one_model_call_per_image_per_step(model):
    """Ethane's methyl rotation, 5 images, one calculator; every step also reads all energies and
    forces again (as MLIPAudit's NEB engine does): only new geometries reach the model."""
    from ase.mep import NEB
    from ase.optimize import BFGS

    initial = molecule("C2H6")
    axis = initial.positions[1] - initial.positions[0]
    methyl = [k for k in range(2, 8) if np.linalg.norm(initial.positions[k] - initial.positions[0]) < 1.3]
    final = initial.copy()
    rotated = final[methyl]
    rotated.rotate(60, axis, center=initial.positions[0])
    final.positions[methyl] = rotated.positions

    def run(calc):
        images = [initial.copy()] + [initial.copy() for _ in range(3)] + [final.copy()]
        neb = NEB(images, k=0.5, allow_shared_calculator=True, method="improvedtangent")
        neb.interpolate()
        for image in images:
            image.calc = calc
        opt = BFGS(neb, logfile=None)
        opt.attach(lambda: ([image.get_potential_energy() for image in images], neb.get_forces()), interval=1)
        opt.run(fmax=0.0, steps=4)
        return opt.nsteps, neb.get_forces()

    calc = MaceCalculator(model)
    steps, forces = run(calc)
    assert steps == 4
    assert calc.timings["calls"] == 2 + 3 * (steps + 1)  # end points once; 3 moving images per evaluation
    uncached = MaceCalculator(model, result_cache=0)
    _, uncached_forces = run(uncached)
    assert uncached.timings["calls"] > 3 * calc.timings["calls"]
    np.testing.assert_array_equal(forces, uncached_forces)  # the same path, bit for bit


def test_threads_hammering_one_calculator_get_their_own_results(model):
    import threading

    structures = [molecule(name) for name in ("H2O", "CH4", "CH3CH2OH", "C6H6")]
    for k, atoms in enumerate(structures):
        atoms.rattle(0.05, seed=k)
    calc = MaceCalculator(model, result_cache=0)  # every call reaches the model
    expected = []
    for atoms in structures:  # one at a time first (this also compiles: the threads race through calls)
        calc.calculate(atoms, ["energy", "forces"])
        expected.append((calc.results["energy"], calc.results["forces"]))
    wrong, done = [], []

    def work(seed):
        rng = np.random.default_rng(seed)
        for _ in range(15):
            k = int(rng.integers(len(structures)))
            atoms = structures[k].copy()
            atoms.calc = calc
            energy, forces = atoms.get_potential_energy(), atoms.get_forces()
            if energy != expected[k][0] or not np.array_equal(forces, expected[k][1]):
                wrong.append(k)
            done.append(k)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(done) == 45 and not wrong


def test_charge_and_spin_are_named_once_per_calculator(model):
    import warnings

    from mace_ase.calculator import IgnoredInputWarning

    calc = MaceCalculator(model)
    ion = molecule("H2O")
    ion.info.update(charge=-1, spin=1)  # MLIPAudit's convention: spin is the multiplicity
    with pytest.warns(IgnoredInputWarning, match="total charge -1") as caught:
        calc.get_potential_energy(ion)
    assert len(caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ion.positions[0, 0] += 0.1
        calc.get_potential_energy(ion)  # the same calculator warns once
        neutral = molecule("CH4")
        neutral.info.update(charge=0, spin=1)
        MaceCalculator(model).get_potential_energy(neutral)  # a neutral singlet: nothing to say
    triplet = molecule("CH4")
    triplet.info["spin"] = 3
    with pytest.warns(IgnoredInputWarning, match="multiplicity 3"):
        calc.get_potential_energy(triplet)
    magnetic = molecule("CH4")
    magnetic.set_initial_magnetic_moments([1.0, 0, 0, 0, 0])
    with pytest.warns(IgnoredInputWarning, match="magnetic moments"):
        calc.calculate_batch([magnetic])


def test_allowed_atomic_numbers_are_the_model_elements(model):
    calc = MaceCalculator(model)
    assert calc.allowed_atomic_numbers == {1, 6, 7, 8} == set(model.config.atomic_numbers)


def test_compile_is_logged(model, caplog):
    calc = MaceCalculator(model)
    with caplog.at_level("INFO", logger="mace_ase.calculator"):
        calc.get_potential_energy(molecule("CH4"))
    assert any("compiling" in r.getMessage() for r in caplog.records)


@pytest.mark.x64  # the reference evaluates the model function itself, in float64
def test_no_atoms_needed_at_construction(smooth_model):
    calc = MaceCalculator(smooth_model, dtype="float64")
    assert calc.atoms is None and calc.compile_count == 0
    water = molecule("H2O")
    energy, forces = reference_energy_forces(smooth_model, water)
    assert calc.get_potential_energy(water) == pytest.approx(energy, abs=1e-10)
    np.testing.assert_allclose(calc.get_forces(water), forces, atol=1e-10)


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
    assert set(calc.timings) == {"neighbours", "padding", "compile", "model", "calls"}
    assert all(calc.timings[k] > 0 for k in ("neighbours", "padding", "compile", "model"))


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


def test_batch_is_split_into_chunks_and_applies_constraints(smooth_model, aspirin):
    from ase.constraints import FixAtoms

    structures = [aspirin, molecule("CH3CH2OH"), molecule("C6H6"), molecule("H2O")]
    aspirin.set_constraint(FixAtoms(indices=[0, 3]))
    calc = MaceCalculator(smooth_model, dtype="float64", batch_atoms=30)
    batch = calc.calculate_batch(structures)
    assert calc.timings["calls"] == 2  # 21 + 9 atoms, then 12 + 3
    single = MaceCalculator(smooth_model, dtype="float64")
    for atoms, result in zip(structures, batch):
        atoms.calc = single
        assert result["energy"] == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(result["forces"], atoms.get_forces(), atol=1e-10)  # constrained, as ASE's
    assert np.all(batch[0]["forces"][[0, 3]] == 0) and np.abs(batch[0]["forces"]).max() > 0.05


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
    rows = calc.get_hessian(atoms, indices=[4, 1])  # a partial Hessian: those atoms' rows
    np.testing.assert_allclose(rows, hessian[[12, 13, 14, 3, 4, 5]], atol=1e-12)


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


def test_persistent_compilation_cache_is_on_by_default_and_process_wide(tmp_path):
    """Subprocesses (JAX's cache is process-global). Default: a folder in the user cache; a second
    calculator asking for another folder is warned, naming it; MACE_ASE_COMPILATION_CACHE=0: off."""
    script = """
import sys, warnings, jax
sys.path.insert(0, {tests!r})
from ase.build import molecule
from conftest import small_model
from mace_ase.calculator import MaceCalculator
model = small_model(num_layers=1, num_channels=4, l_max=1, node_symmetry=1, readout_irreps=("4x0e", "0e"))
calc = MaceCalculator(model)
calc.get_potential_energy(molecule("CH4"))
print("folder", calc.compilation_cache, jax.config.jax_compilation_cache_dir)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    other = MaceCalculator(model, compilation_cache={second})
print("second", other.compilation_cache)
print("warnings", [str(w.message) for w in caught])
"""
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "MACE_ASE_COMPILATION_CACHE")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")

    def run(second, **extra):
        code = script.format(tests=str(REPO / "tests"), second=second)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**env, **extra})
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    out = run(repr(str(tmp_path / "other")))
    folder, jax_folder = next(line.split()[1:] for line in out.splitlines() if line.startswith("folder"))
    assert folder == jax_folder
    assert Path(folder).parent == tmp_path / "xdg" / "mace-ase" / "jax-compilation"  # one subfolder per CPU type
    assert any("energy_forces" in p.name for p in Path(folder).iterdir())
    assert f"second {folder}" in out and str(tmp_path / "other") in out.split("warnings", 1)[1]
    assert not (tmp_path / "other").exists()

    off = run("False", MACE_ASE_COMPILATION_CACHE="0", XDG_CACHE_HOME=str(tmp_path / "xdg-off"))
    assert "folder None None" in off and "second None" in off and "warnings []" in off
    assert not (tmp_path / "xdg-off").exists()
