"""Weighted MSE on energy per atom and forces, with weights scheduled by epoch.

    loss = w_E * mean_graphs ((E_pred - E_ref) / n_atoms)^2
         + w_F * mean_graphs ( mean_{atoms, xyz} (F_pred - F_ref)^2 )

The card trains with (w_E, w_F) = (40, 1000) until epoch 115, then (1000, 40).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from ..model import energy_forces_stress
from ..model.config import MaceConfig
from .batching import Batch


@dataclass(frozen=True)
class LossWeights:
    energy: float = 40.0
    forces: float = 1000.0
    swap_epoch: int | None = 115  # from this epoch on (0-based) use the *_after weights
    energy_after: float = 1000.0
    forces_after: float = 40.0

    def at(self, epoch: int) -> tuple[float, float]:
        if self.swap_epoch is not None and epoch >= self.swap_epoch:
            return self.energy_after, self.forces_after
        return self.energy, self.forces


def predict(params, config: MaceConfig, batch: Batch):
    # No edge chunking: a force loss differentiates twice, and the scan's backward pass would
    # keep per-chunk state (more memory, not less).
    out = energy_forces_stress(params, config, batch.graph, compute_stress=False, message_chunk_bytes=None)
    return out["energy"], out["forces"]


def errors(params, config: MaceConfig, batch: Batch):
    """Per-graph energy-per-atom errors [G] and per-graph mean squared force errors [G], masked."""
    energy, forces = predict(params, config, batch)
    e_err = jnp.where(batch.graph_mask, (energy - batch.energy) / batch.num_atoms, 0.0)
    f_sq = jnp.sum((forces - batch.forces) ** 2, axis=1) * batch.graph.node_mask
    num_graphs = batch.graph_mask.shape[0]
    f_per_graph = jax.ops.segment_sum(f_sq, batch.graph.node_graph, num_segments=num_graphs) / (3 * batch.num_atoms)
    f_per_graph = jnp.where(batch.graph_mask, f_per_graph, 0.0)
    return e_err, f_per_graph, energy, forces


def loss_fn(params, config: MaceConfig, batch: Batch, energy_weight, forces_weight):
    e_err, f_per_graph, _, _ = errors(params, config, batch)
    count = jnp.maximum(jnp.sum(batch.graph_mask), 1)
    e_mse = jnp.sum(e_err**2) / count
    f_mse = jnp.sum(f_per_graph) / count
    return energy_weight * e_mse + forces_weight * f_mse, (e_mse, f_mse)


def weighted_sums(params, config: MaceConfig, batch: Batch, energy_weight, forces_weight):
    """The loss before the division by the number of graphs, and (sum e^2, sum f, graphs).

    Data parallel training adds these over devices and micro-batches, then divides once:
    the loss of the whole global batch, however its graphs were split.
    """
    e_err, f_per_graph, _, _ = errors(params, config, batch)
    e_sq, f_sum = jnp.sum(e_err**2), jnp.sum(f_per_graph)
    count = jnp.sum(batch.graph_mask).astype(e_sq.dtype)
    return energy_weight * e_sq + forces_weight * f_sum, (e_sq, f_sum, count)


def error_sums(params, config: MaceConfig, batch: Batch) -> dict:
    """Sums for validation metrics (combine over batches, then divide by the counts)."""
    energy, forces = predict(params, config, batch)
    de = jnp.where(batch.graph_mask, energy - batch.energy, 0.0)
    df = (forces - batch.forces) * batch.graph.node_mask[:, None]
    return {
        "energy_abs": jnp.sum(jnp.abs(de)),
        "energy_sq": jnp.sum(de**2),
        "energy_per_atom_abs": jnp.sum(jnp.abs(de) / batch.num_atoms),
        "energy_per_atom_sq": jnp.sum((de / batch.num_atoms) ** 2),
        "forces_abs": jnp.sum(jnp.abs(df)),
        "forces_sq": jnp.sum(df**2),
        "graphs": jnp.sum(batch.graph_mask).astype(de.dtype),
        "force_components": 3.0 * jnp.sum(batch.graph.node_mask).astype(de.dtype),
    }


def metrics_from_sums(sums: dict) -> dict:
    """MAE/RMSE in meV (energy), meV/atom and meV/Å (force components)."""
    g, c = max(sums["graphs"], 1.0), max(sums["force_components"], 1.0)
    return {
        "energy_mae_meV": 1000 * sums["energy_abs"] / g,
        "energy_rmse_meV": 1000 * (sums["energy_sq"] / g) ** 0.5,
        "energy_per_atom_mae_meV": 1000 * sums["energy_per_atom_abs"] / g,
        "energy_per_atom_rmse_meV": 1000 * (sums["energy_per_atom_sq"] / g) ** 0.5,
        "forces_mae_meV_A": 1000 * sums["forces_abs"] / c,
        "forces_rmse_meV_A": 1000 * (sums["forces_sq"] / c) ** 0.5,
    }
