"""Chunked message passing (a rematerialised scan over edge chunks) equals the one-shot sum.

The chunked path is what inference runs (it keeps memory O(nodes)); the one-shot path
(message_chunk_bytes=None) is what force-loss training runs. They are two different
programs for the same sum, so each checks the other: energies, forces, stress, and a
Hessian-vector product (a second derivative through the scan), in float64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import molecule

import mace_ase.model.mace as mace
from mace_ase.model import energy_forces_stress, node_energies
from mace_ase.neighbours import pad_graph, structure_from_atoms

from conftest import small_model

pytestmark = pytest.mark.x64  # float64 model functions throughout


@pytest.fixture(scope="module")
def setup():
    model = small_model(num_channels=4)
    atoms = molecule("CH3CH2OH")
    atoms.set_cell(np.eye(3) * 6.0)
    atoms.pbc = True  # periodic, so the stress is exercised too
    structure = structure_from_atoms(atoms, model.config.atomic_numbers, model.config.cutoff)
    # Capacities with padding nodes and edges (padding must add exactly zero in every chunk).
    graph = pad_graph([structure], structure.num_nodes + 2, structure.num_edges + 5, 1, dtype=np.float64)
    return model.config, model.params, graph  # NumPy float64: made into JAX arrays under the test's x64


def _evaluate(config, params, graph, chunk_bytes):
    def energy(positions):
        return jnp.sum(node_energies(params, config, graph, positions, graph.cells, message_chunk_bytes=chunk_bytes))

    out = energy_forces_stress(params, config, graph, compute_stress=True, message_chunk_bytes=chunk_bytes)
    direction = jnp.asarray(np.random.default_rng(0).normal(size=graph.positions.shape))
    _, hvp = jax.jvp(jax.grad(energy), (graph.positions,), (direction,))
    return {k: np.asarray(out[k]) for k in ("energy", "forces", "stress")} | {"hvp": np.asarray(hvp)}


def test_chunked_equals_one_shot(setup):
    config, params, graph = setup
    num_edges = graph.senders.shape[0]
    slots = mace.message_plan(config, 1)[2]
    bytes_per_edge = config.num_channels * slots * 8
    # At most 7 edges per chunk in the second layer: many equal chunks, padded at the end.
    chunked = _evaluate(config, params, graph, 7 * bytes_per_edge)
    num_chunks, chunk = mace.edge_chunks(num_edges, bytes_per_edge, 7 * bytes_per_edge)
    assert num_chunks > 3 and num_chunks * chunk > num_edges
    one_shot = _evaluate(config, params, graph, None)
    assert abs(one_shot["energy"][0]) > 1e-3  # a real number, not a vanishing one
    np.testing.assert_allclose(chunked["energy"], one_shot["energy"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(chunked["forces"], one_shot["forces"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(chunked["stress"], one_shot["stress"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(chunked["hvp"], one_shot["hvp"], rtol=0, atol=1e-10)
    assert np.abs(one_shot["hvp"]).max() > 1e-4
    assert np.abs(one_shot["forces"]).max() > 1e-4


def test_edge_chunks_are_equal_and_barely_padded():
    for num_edges in (1, 9, 10, 11, 99, 100, 101, 416):
        for bytes_per_edge in (1, 7, 10, 50, 100, 1000):
            num_chunks, chunk = mace.edge_chunks(num_edges, bytes_per_edge, 100)
            limit = max(1, 100 // bytes_per_edge)
            assert chunk <= max(limit, 1) or num_chunks == 1 and chunk == num_edges <= limit
            assert num_chunks == -(-num_edges // limit)  # the fewest chunks that fit
            assert 0 <= num_chunks * chunk - num_edges < num_chunks  # padding under one edge per chunk
    assert mace.edge_chunks(416, 10**6, None) == (1, 416)


def test_chunk_size_is_part_of_the_compiled_program(setup):
    """Two chunk sizes under one jit are two programs (the argument is static, not a global read at trace time)."""
    config, params, graph = setup
    traces = []

    def energy(params, graph, chunk_bytes):
        traces.append(chunk_bytes)
        return energy_forces_stress(params, config, graph, False, message_chunk_bytes=chunk_bytes)["energy"]

    evaluate = jax.jit(energy, static_argnums=2)
    small = 3 * config.num_channels * mace.message_plan(config, 1)[2] * 8
    chunked, one_shot, again = evaluate(params, graph, small), evaluate(params, graph, None), evaluate(params, graph, small)
    assert traces == [small, None]  # the third call reused the first program
    np.testing.assert_allclose(chunked, one_shot, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(chunked, again)


def test_message_plan_matches_path_layout(setup):
    """Every (output irrep, path) of the radial-weight layout gets exactly 2l+1 distinct slots."""
    config = setup[0]
    for layer in range(config.num_layers):
        sources, gather, num_slots = mace.message_plan(config, layer)
        paths = mace.message_paths(config, layer)
        used = np.concatenate([g.ravel() for g in gather.values()])
        assert sorted(used.tolist()) == list(range(num_slots))
        for ir_out, ir_paths in paths.items():
            assert gather[ir_out].shape == (len(ir_paths), ir_out.dim)
        assert sum(len(slot_path) for _, _, slot_path in sources) == num_slots
