"""Training data and statistics: units converted once at read time, splits, E0, neighbours."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import require, shared_data
from mace_ase.training import data, statistics
from mace_ase.training.data import Frame


def test_rmd17_frames_are_in_ev():
    path = shared_data("rmd17", "rmd17_aspirin_train_01.npz")
    raw = np.load(path)
    frames = data.read_rmd17(path, indices=[0, 7])
    assert frames[1].energy == pytest.approx(raw["energies"][7] * 0.0433641, rel=1e-12)
    np.testing.assert_allclose(frames[1].forces, raw["forces"][7] * 0.0433641, rtol=1e-12)
    np.testing.assert_array_equal(frames[0].positions, raw["coords"][0])
    assert frames[0].energy < -17000  # aspirin total energy, eV (it is ~ -406,000 kcal/mol)
    assert len(data.read_frames(path)) == 1000


def test_ani_hdf5_hartree_to_ev():
    h5py = require("h5py")
    path = shared_data("ani1x_sample", "ani1_n5.hdf5")
    frames = data.read_hdf5(path)
    assert len(frames) == 8
    with h5py.File(path) as f:
        energy = f["C1H4N4O4/wb97x_dz.energy"][1]
        forces = f["C1H4N4O4/wb97x_dz.forces"][1]
    first = [fr for fr in frames if fr.info["group"] == "C1H4N4O4"]
    assert first[1].energy == pytest.approx(energy * 27.211386245988, rel=1e-12)
    np.testing.assert_allclose(first[1].forces, forces * 27.211386245988, rtol=1e-6)


def test_spice_style_hdf5_bohr_and_gradients(tmp_path):
    h5py = require("h5py")
    path = tmp_path / "spice.hdf5"
    coords = np.array([[[0.0, 0.0, 0.0], [0.0, 0.0, 2.0]]])  # Bohr
    with h5py.File(path, "w") as f:
        g = f.create_group("mol")
        g["atomic_numbers"] = np.array([1, 1])
        g["conformations"] = coords
        g["dft_total_energy"] = np.array([-1.0])
        g["dft_total_gradient"] = np.array([[[0.0, 0.0, 0.1], [0.0, 0.0, -0.1]]])  # Hartree/Bohr
    (frame,) = data.read_hdf5(path, "dft_total_energy", "dft_total_gradient", positions_key="conformations",
                              length_unit="bohr", forces_are_gradients=True)
    assert frame.energy == pytest.approx(-27.211386245988)
    assert frame.positions[1, 2] == pytest.approx(2 * 0.529177210903)
    assert frame.forces[0, 2] == pytest.approx(-0.1 * 27.211386245988 / 0.529177210903)


def test_custom_extxyz_keys():
    import ase.io

    path = shared_data("solvent_xtb", "solvent_xtb_train_20.xyz")
    frames = data.read_frames(path, energy_key="energy_xtb", forces_key="forces_xtb")
    atoms = ase.io.read(path, index=7)
    assert frames[7].energy == pytest.approx(atoms.info["energy_xtb"])
    np.testing.assert_array_equal(frames[7].forces, atoms.arrays["forces_xtb"])
    assert sum(data.is_isolated_atom(f) for f in frames) == 5
    with pytest.raises(KeyError, match="energy_dft"):
        data.read_frames(path, energy_key="energy_dft", forces_key="forces_xtb")


def _frames(n=40, seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        numbers = rng.choice([1, 6, 8], size=rng.integers(3, 9))
        positions = rng.uniform(0, 4, (len(numbers), 3))
        frames.append(Frame(numbers, positions, 0.0, np.zeros((len(numbers), 3)), info={"mol": f"m{k % 10}"}))
    return frames


def test_average_atomic_energies_recover_exact_references_and_match_normal_equations():
    frames = _frames()
    e0 = {1: -13.6, 6: -1029.0, 8: -2041.0}
    for f in frames:
        f.energy = sum(e0[int(z)] for z in f.numbers)
    np.testing.assert_allclose(statistics.average_atomic_energies(frames, (1, 6, 8)), [-13.6, -1029.0, -2041.0], atol=1e-8)
    rng = np.random.default_rng(1)
    for f in frames:  # with noise: the least-squares solution of the normal equations
        f.energy += rng.normal(0, 0.5)
    counts = np.array([[np.sum(f.numbers == z) for z in (1, 6, 8)] for f in frames], float)
    energies = np.array([f.energy for f in frames])
    direct = np.linalg.solve(counts.T @ counts, counts.T @ energies)
    np.testing.assert_allclose(statistics.average_atomic_energies(frames, (1, 6, 8)), direct, atol=1e-8)


def test_avg_num_neighbors_matches_a_direct_count():
    frames = _frames(10)
    cutoff = 2.5
    structures = statistics.to_structures(frames, (1, 6, 8), cutoff)
    counts = []
    for f in frames:
        d = np.linalg.norm(f.positions[:, None] - f.positions[None], axis=-1)
        per_atom = np.sum((d < cutoff) & (d > 0), axis=1)
        counts += [c for c in per_atom if c > 0]
    assert statistics.average_num_neighbors(structures) == pytest.approx(np.mean(counts), rel=1e-12)
    assert 1 < np.mean(counts) < 8  # the test data really has neighbours, and not all pairs


def test_split_is_seeded_and_keeps_groups_apart():
    frames = _frames()
    train, valid = data.split_frames(frames, 0.2, seed=3, group_key="mol")
    assert len(train) + len(valid) == 40 and len(valid) == 8  # 2 of 10 groups
    assert not {f.info["mol"] for f in train} & {f.info["mol"] for f in valid}
    again = data.split_frames(frames, 0.2, seed=3, group_key="mol")[1]
    assert [id(f) for f in again] == [id(f) for f in valid]
    other = data.split_frames(frames, 0.2, seed=4, group_key="mol")[1]
    assert {f.info["mol"] for f in other} != {f.info["mol"] for f in valid}
    plain_train, plain_valid = data.split_frames(frames, 0.25, seed=0)
    assert len(plain_valid) == 10 and len(plain_train) == 30


def test_rms_forces_scaling():
    frames = _frames(5)
    for f in frames:
        f.forces = np.full((len(f), 3), 2.0)
        f.energy = 0.5 * len(f)
    mean, std = statistics.scaling_statistics(frames, (1, 6, 8), [0.0, 0.0, 0.0], "rms_forces")
    assert (mean, std) == (pytest.approx(0.5), pytest.approx(2.0))
    assert statistics.scaling_statistics(frames, (1, 6, 8), [0.0] * 3, "none") == (0.0, 1.0)
