"""The pure model functions obey the physics: float64, on mace_ase.model.energy_forces_stress.

Forces are the negative gradient (central finite differences), the stress the strain
derivative, the energy is invariant under rotation, translation and permutation and the
forces (and stress) rotate with the structure, and distant molecules do not interact.
test_calculator.py checks some of these through MaceCalculator; here the graph is built once
and the model function is differentiated and transformed directly (one compiled program).
"""

from __future__ import annotations

import ase
import jax
import numpy as np
import pytest
from ase.build import molecule
from conftest import molecules_in_cell, small_model
from scipy.spatial.transform import Rotation

from mace_ase.model import energy_forces_stress
from mace_ase.neighbours import pad_graph, structure_from_atoms

pytestmark = pytest.mark.x64  # float64 model functions throughout

NODES, EDGES = 48, 3072  # one capacity for every structure here: one compile


@pytest.fixture(scope="module")
def model():
    # scaling_std=20 makes the surface steep enough (forces ~1 eV/Å) that errors show.
    return small_model(atomic_numbers=(1, 6, 7, 8), scaling_std=20.0, seed=2)


@pytest.fixture(scope="module")
def evaluate(model):
    efs = jax.jit(energy_forces_stress, static_argnums=(1, 3))

    def run(graph):
        out = efs(model.params, model.config, graph, True)
        return {key: np.asarray(value) for key, value in out.items()}

    return run


def graph_of(model, atoms):
    structure = structure_from_atoms(atoms, model.config.atomic_numbers, model.cutoff)
    return pad_graph([structure], NODES, EDGES, 1, dtype=np.float64)


def periodic_box(seed=0):
    placed = [("H2O", (1.0, 1.0, 1.0)), ("NH3", (4.0, 3.5, 2.0)), ("CH4", (2.0, 4.0, 4.5))]
    return molecules_in_cell(placed, [[6.0, 0.0, 0.0], [0.5, 6.3, 0.0], [-0.4, 0.3, 5.8]], seed)  # triclinic, < 2 x cutoff


@pytest.fixture(scope="module")
def aspirin_atoms():
    from conftest import shared_data

    data = np.load(shared_data("rmd17", "rmd17_aspirin_train_01.npz"))
    return ase.Atoms(numbers=data["nuclear_charges"], positions=data["coords"][3])


def test_surface_is_not_flat(model, evaluate, aspirin_atoms):
    out = evaluate(graph_of(model, aspirin_atoms))
    assert np.abs(out["forces"]).max() > 0.5


@pytest.mark.parametrize("system", ["aspirin", "periodic"])
def test_forces_are_minus_the_energy_gradient(model, evaluate, aspirin_atoms, system):
    atoms = aspirin_atoms if system == "aspirin" else periodic_box()
    graph = graph_of(model, atoms)
    forces = evaluate(graph)["forces"][: len(atoms)]
    h = 1e-4
    numerical = np.zeros_like(forces)
    for i in range(len(atoms)):
        for k in range(3):
            energies = []
            for sign in (1, -1):
                positions = np.array(graph.positions)
                positions[i, k] += sign * h
                energies.append(evaluate(graph._replace(positions=positions))["energy"][0])
            numerical[i, k] = -(energies[0] - energies[1]) / (2 * h)
    assert np.abs(forces).max() > 0.5
    assert np.abs(forces - numerical).max() <= 1e-6


def test_stress_is_the_strain_derivative(model, evaluate):
    atoms = periodic_box(seed=1)
    graph = graph_of(model, atoms)
    out = evaluate(graph)
    stress = out["stress"][0]
    volume = abs(np.linalg.det(atoms.cell.array))
    h = 1e-5
    numerical = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            energies = []
            for sign in (1, -1):
                strain = np.zeros((3, 3))
                strain[a, b] += sign * h / 2
                strain[b, a] += sign * h / 2
                deform = np.eye(3) + strain
                strained = graph._replace(positions=np.asarray(graph.positions) @ deform,
                                          cells=np.asarray(graph.cells) @ deform)
                energies.append(evaluate(strained)["energy"][0])
            numerical[a, b] = (energies[0] - energies[1]) / (2 * h) / volume
    assert np.abs(stress).max() > 1e-3  # eV/Å^3
    np.testing.assert_allclose(stress, stress.T, atol=1e-14)
    assert np.abs(stress - numerical).max() <= 1e-8


@pytest.mark.parametrize("system", ["aspirin", "periodic"])
def test_invariance_and_equivariance(model, evaluate, aspirin_atoms, system):
    atoms = aspirin_atoms.copy() if system == "aspirin" else periodic_box(seed=2)
    n = len(atoms)
    base = evaluate(graph_of(model, atoms))
    energy, forces, stress = base["energy"][0], base["forces"][:n], base["stress"][0]
    scale = np.abs(forces).max()

    def check(other, rotation=np.eye(3), order=np.arange(n)):
        out = evaluate(graph_of(model, other))
        assert abs(out["energy"][0] - energy) <= 1e-10 * abs(energy)
        assert np.abs(out["forces"][:n] - (forces @ rotation.T)[order]).max() <= 1e-10 * scale
        if system == "periodic":
            expected = rotation @ stress @ rotation.T
            assert np.abs(out["stress"][0] - expected).max() <= 1e-10 * np.abs(stress).max()

    rotation = Rotation.random(random_state=7).as_matrix()
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rotation.T
    if system == "periodic":
        rotated.cell = atoms.cell.array @ rotation.T
    check(rotated, rotation=rotation)

    translated = atoms.copy()
    translated.positions += np.array([3.7, -12.1, 25.3])  # periodic: also wraps differently
    check(translated)

    order = np.random.default_rng(3).permutation(n)
    permuted = atoms[order]
    check(permuted, order=order)


def test_distant_molecules_do_not_interact(model, evaluate):
    a, b = molecule("CH3CH2OH"), molecule("CH3CONH2")
    b.rotate(40, (1, 2, 3))
    b.translate(a.positions.mean(0) - b.positions.mean(0) + np.array([20.0, 3.0, -2.0]))
    gap = np.linalg.norm(a.positions[:, None] - b.positions[None], axis=-1).min()
    assert gap > 15.0
    separate = [evaluate(graph_of(model, m)) for m in (a, b)]
    together = evaluate(graph_of(model, a + b))
    e_a, e_b = separate[0]["energy"][0], separate[1]["energy"][0]
    assert abs(together["energy"][0] - (e_a + e_b)) <= 1e-12 * abs(e_a + e_b)
    forces = np.concatenate([separate[0]["forces"][: len(a)], separate[1]["forces"][: len(b)]])
    np.testing.assert_allclose(together["forces"][: len(a) + len(b)], forces, rtol=0, atol=1e-13)
    # the molecules themselves do interact internally (the check above is not vacuous)
    assert np.abs(forces).max() > 0.1
