"""Data parallel training on JAX's own machinery: a 1-D mesh over ``jax.devices()``.

One optimiser step takes M = devices x micro-batches-per-device micro-batches (see
:mod:`.batching`). The batch is an array with a leading micro-batch axis, split over the
mesh axis ``"data"``; parameters, optimiser state and EMA are replicated. Inside
``shard_map`` every device runs the one-device model on its own micro-batches and sums
the gradients of the *unnormalised* weighted errors; one ``psum`` adds them over devices,
and the division by the global number of graphs happens once, after. The update is
therefore the one-device update on the same global batch, up to float round-off in the
sums, whatever the device count and however unevenly the graphs fall.

Across hosts the same code runs in every process after :func:`initialize_distributed`
(``jax.distributed.initialize``): the mesh spans every process's devices, each process
builds only the micro-batches of its own devices, and replicated outputs are read from
the local copy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ..model.config import MaceConfig
from .batching import Batch, stack_batches
from .ema import EmaState, ema_params, ema_update
from .loss import error_sums, weighted_sums

DATA_AXIS = "data"

# Errors of a collective whose peer went away (CPU: Gloo; GPU: NCCL; the coordination service).
LOST_PEER_SIGNS = ("gloo", "nccl", "connection", "peer", "unavailable", "heartbeat", "coordination", "deadline", "socket")


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Join a multi-process run (``jax.distributed.initialize``), before any other JAX call.

    Values not given come from JAX's own detection: ``JAX_COORDINATOR_ADDRESS``, and the
    variables of SLURM, Open MPI and the other cluster managers JAX knows.
    """
    if jax.distributed.is_initialized():
        return
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


@dataclass(frozen=True)
class Layout:
    """Which devices train, and how many micro-batches each runs per optimiser step."""

    devices: tuple
    micro_batches_per_device: int = 1

    @property
    def micro_batches(self) -> int:
        return len(self.devices) * self.micro_batches_per_device

    @property
    def sharded(self) -> bool:
        """False: the plain one-device step (the simple path, unchanged)."""
        return self.micro_batches > 1 or jax.process_count() > 1

    @functools.cached_property
    def mesh(self) -> Mesh:
        return Mesh(np.array(self.devices), (DATA_AXIS,))

    def local_rows(self) -> list[int]:
        """The micro-batches (rows of the global batch) that this process builds."""
        me, a = jax.process_index(), self.micro_batches_per_device
        return [k * a + r for k, d in enumerate(self.devices) if d.process_index == me for r in range(a)]


def make_layout(num_devices: int | None = None, micro_batches_per_device: int = 1) -> Layout:
    devices = jax.devices()
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"devices={num_devices}, but {len(devices)} device(s) are available: {devices}")
        if jax.process_count() > 1 and num_devices != len(devices):
            raise ValueError("a multi-process run trains on every device of every process: leave devices unset")
        devices = devices[:num_devices]
    if micro_batches_per_device < 1:
        raise ValueError(f"micro_batches_per_device must be at least 1, not {micro_batches_per_device}")
    return Layout(tuple(devices), micro_batches_per_device)


# ------------------------------------------------------------------ arrays


def replicate(tree, layout: Layout):
    """Host arrays (the same in every process) -> arrays replicated on every device of the mesh."""
    sharding = NamedSharding(layout.mesh, P())

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


def global_batch(layout: Layout, micro_batches: dict[int, Batch]) -> Batch:
    """This process's micro-batches {row: Batch} -> one Batch [M, ...] split over the mesh."""
    sharding = NamedSharding(layout.mesh, P(DATA_AXIS))
    a = layout.micro_batches_per_device
    me = jax.process_index()
    per_device = [(d, stack_batches([micro_batches[k * a + r] for r in range(a)]))
                  for k, d in enumerate(layout.devices) if d.process_index == me]
    leaves = [jax.tree.leaves(batch) for _, batch in per_device]
    treedef = jax.tree.structure(per_device[0][1])
    out = []
    for i, first in enumerate(leaves[0]):
        shape = (layout.micro_batches, *first.shape[1:])
        arrays = [jax.device_put(device_leaves[i], device) for (device, _), device_leaves in zip(per_device, leaves)]
        out.append(jax.make_array_from_single_device_arrays(shape, sharding, arrays))
    return jax.tree.unflatten(treedef, out)


def to_host(x) -> np.ndarray:
    """A (replicated) array as NumPy, from this process's copy."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def is_lost_peer(error: BaseException) -> bool:
    text = str(error).lower()
    return jax.process_count() > 1 and any(sign in text for sign in LOST_PEER_SIGNS)


# ------------------------------------------------------------------ steps


class ShardedSteps:
    """The compiled programs of a data parallel run (same interface as trainer.Steps)."""

    def __init__(self, config: MaceConfig, optimizer: optax.GradientTransformation, ema_decay: float, layout: Layout):
        mesh = layout.mesh
        replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(DATA_AXIS))
        a = layout.micro_batches_per_device

        def device_sums(params, batches, energy_weight, forces_weight):
            """Gradients and sums of this device's micro-batches, added over every device."""
            value_and_grad = jax.value_and_grad(weighted_sums, has_aux=True)
            total = None
            for r in range(a):  # a is small (memory per device): unrolled
                batch = jax.tree.map(lambda x: x[r], batches)
                (_, sums), grads = value_and_grad(params, config, batch, energy_weight, forces_weight)
                total = (grads, sums) if total is None else jax.tree.map(jnp.add, total, (grads, sums))
            return jax.lax.psum(total, DATA_AXIS)

        summed = jax.shard_map(device_sums, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P(), P()), out_specs=P(), check_vma=False)

        def train_step(params, opt_state, ema: EmaState, batch, energy_weight, forces_weight):
            grads, (e_sq, f_sum, count) = summed(params, batch, energy_weight, forces_weight)
            count = jnp.maximum(count, 1)
            grads = jax.tree.map(lambda g: g / count, grads)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            ema = ema_update(ema, params, ema_decay)
            e_mse, f_mse = e_sq / count, f_sum / count
            return params, opt_state, ema, {"loss": energy_weight * e_mse + forces_weight * f_mse, "energy_mse": e_mse, "forces_mse": f_mse}

        def device_error_sums(params, batches):
            total = None
            for r in range(a):
                sums = error_sums(params, config, jax.tree.map(lambda x: x[r], batches))
                total = sums if total is None else jax.tree.map(jnp.add, total, sums)
            return jax.lax.psum(total, DATA_AXIS)

        self.decay = ema_decay
        self.train_step = jax.jit(train_step, in_shardings=(replicated, replicated, replicated, split, replicated, replicated),
                                  out_shardings=replicated, donate_argnums=(0, 1, 2))
        self.eval_sums = jax.jit(jax.shard_map(device_error_sums, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=P(), check_vma=False),
                                 in_shardings=(replicated, split), out_shardings=replicated)
        self.ema_params = jax.jit(lambda ema: ema_params(ema, ema_decay), in_shardings=replicated, out_shardings=replicated)
