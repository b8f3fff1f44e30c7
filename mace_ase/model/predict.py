"""Energy, forces and stress from one differentiable energy function.

Forces are -dE/dpositions. Stress is (1/V) dE/d(epsilon) for a symmetric
strain epsilon applied to positions and cell alike (x -> x (1 + eps)), which
is the ASE sign convention (positive = tensile).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .config import MaceConfig
from .graph import Graph
from .mace import DEFAULT_MESSAGE_CHUNK_BYTES, node_energies


def _strained_energy(params, config: MaceConfig, graph: Graph, positions, strain, chunk_bytes):
    symmetric = 0.5 * (strain + jnp.swapaxes(strain, 1, 2))  # [G, 3, 3]
    positions = positions + jnp.einsum("ni,nij->nj", positions, symmetric[graph.node_graph])
    cells = graph.cells + jnp.einsum("gij,gjk->gik", graph.cells, symmetric)
    energies = node_energies(params, config, graph, positions, cells, message_chunk_bytes=chunk_bytes)
    return jnp.sum(energies), energies


def energy_forces_stress(
    params, config: MaceConfig, graph: Graph, compute_stress: bool = True, *,
    message_chunk_bytes: int | None = DEFAULT_MESSAGE_CHUNK_BYTES,
) -> dict:
    """Per-structure energy [G], per-atom energies [N], forces [N, 3] and stress [G, 3, 3] (eV/Å^3).

    config, compute_stress and message_chunk_bytes are static (Python values).
    """
    strain = jnp.zeros_like(graph.cells)
    grad_fn = jax.grad(_strained_energy, argnums=(3, 4) if compute_stress else 3, has_aux=True)
    grads, atom_energies = grad_fn(params, config, graph, graph.positions, strain, message_chunk_bytes)
    position_grad, strain_grad = grads if compute_stress else (grads, None)
    num_graphs = graph.cells.shape[0]
    out = {
        "energy": jax.ops.segment_sum(atom_energies, graph.node_graph, num_segments=num_graphs),
        "energies": atom_energies,
        "forces": jnp.where(graph.node_mask[:, None], -position_grad, 0.0),
    }
    if compute_stress:
        volume = jnp.abs(jnp.linalg.det(graph.cells))
        out["stress"] = strain_grad / jnp.where(volume > 0, volume, 1.0)[:, None, None]
    return out
