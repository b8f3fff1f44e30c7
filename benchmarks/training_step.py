"""Training-step time, mace-ase against mlip, on the mace-organics card's batch shape.

The card trains with batches of 64 graphs (32 nodes and 288 edges per graph). Both
implementations take the same 64 rMD17 aspirin frames (21 atoms each) in one batch and
start from the same weights (the card archive). The time is the median wall time of one
jitted step after the compiling first one.

mace-ase: the real training step of ``mace_ase.training`` (the one ``train()`` runs):
``trainer.compiled_steps(...).train_step`` = ``loss.loss_fn`` (40 x energy-per-atom MSE +
1000 x per-graph mean force MSE, forces by autodiff, the card's first-phase weights) +
``optimizer.make_optimizer`` (amsgrad, clipping at 500, lr 0.01 with warm-up schedule,
MultiSteps) + the EMA update (decay 0.99), on a ``batching.make_batch`` batch, with
message chunking off as ``train()`` sets it. E0 is removed from the targets on the host,
as the trainer does.

mlip: the same loss definition written here over mlip's predictor (mlip's own ``MSELoss``
needs reference data inside its graphs and weights per graph; the numbers are the same
MSEs), mlip's own ``get_default_mlip_optimizer()`` (the chain mace-ase reimplements, same
defaults) and mlip's own ``exponentially_moving_average(0.99)``. mlip predicts total
energies, so its targets keep E0. Both first losses should agree to float32 precision.
"""

from __future__ import annotations

import math
import statistics
import time

import numpy as np

BATCH = 64
NODES_PER_GRAPH = 32
EDGES_PER_GRAPH = 288
ENERGY_WEIGHT, FORCES_WEIGHT = 40.0, 1000.0  # the card's weights until epoch 115
EMA_DECAY = 0.99
KCAL_PER_MOL = 0.0433641  # eV


def _frames():
    from ase import Atoms

    import systems

    data = np.load(systems.DATA / "rmd17" / "rmd17_aspirin_train_01.npz")
    frames = []
    for k in range(BATCH):
        atoms = Atoms(numbers=data["nuclear_charges"], positions=data["coords"][k])
        frames.append((atoms, data["energies"][k] * KCAL_PER_MOL, data["forces"][k] * KCAL_PER_MOL))
    return frames


def _timed_steps(step, state, steps=6):
    """step(state) -> (state, loss); the first call compiles."""
    import jax

    start = time.perf_counter()
    state, loss = jax.block_until_ready(step(state))
    first, first_loss = time.perf_counter() - start, float(loss)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, loss = jax.block_until_ready(step(state))
        times.append(time.perf_counter() - start)
    return {"first_step_s": first, "median_step_s": statistics.median(times), "steps": steps, "loss": first_loss, "last_loss": float(loss)}


def _mace_ase_step(archive, frames):
    import jax

    from mace_ase.archive import load_archive
    from mace_ase.neighbours import structure_from_atoms
    from mace_ase.training.batching import BatchShape, make_batch
    from mace_ase.training.ema import ema_init
    from mace_ase.training.optimizer import OptimizerSettings, make_optimizer
    from mace_ase.training.trainer import compiled_steps

    model = load_archive(archive)
    config = model.config
    structures = [structure_from_atoms(a, config.atomic_numbers, config.cutoff) for a, _, _ in frames]
    num_edges = sum(s.num_edges for s in structures)
    # All 64 frames in one batch: aspirin at 5 Å has more edges per graph than the card's 288.
    shape = BatchShape(BATCH, NODES_PER_GRAPH, max(EDGES_PER_GRAPH, math.ceil(num_edges / BATCH / 8) * 8))
    e0 = np.asarray(config.atomic_energies)
    species = [s.species for s in structures]
    energies = np.array([e - e0[sp].sum() for (_, e, _), sp in zip(frames, species)])  # float64 on the host
    forces = [np.asarray(f, float) for _, _, f in frames]
    batch = jax.device_put(make_batch(range(BATCH), structures, energies, forces, shape, dtype=np.float32))
    train_config = config.replace(atomic_energies=(0.0,) * config.num_species)
    settings = OptimizerSettings()
    steps = compiled_steps(train_config, settings, EMA_DECAY)
    params = jax.tree.map(lambda a: jax.numpy.asarray(a, jax.numpy.float32), model.params)
    state = (params, make_optimizer(settings).init(params), ema_init(params))
    weights = np.float32(ENERGY_WEIGHT), np.float32(FORCES_WEIGHT)

    def step(state):
        params, opt_state, ema, metrics = steps.train_step(*state, batch, *weights)
        return (params, opt_state, ema), metrics["loss"]

    return step, state, num_edges


def _mlip_step(archive, frames):
    import jax
    import jax.numpy as jnp
    import optax
    from mlip.data.chemical_system import ChemicalSystem
    from mlip.data.helpers.dynamically_batch import dynamically_batch
    from mlip.graph import Graph
    from mlip.models.model_io import load_model_from_zip
    from mlip.models_v1 import Mace
    from mlip.training.ema import exponentially_moving_average
    from mlip.training.optimizer import get_default_mlip_optimizer

    ff = load_model_from_zip(Mace, archive)
    graphs = [Graph.from_chemical_system(ChemicalSystem.from_ase_atoms(a, get_property_fields=False), ff.cutoff_distance) for a, _, _ in frames]
    num_edges = sum(len(g.senders) for g in graphs)
    edges_per_graph = max(EDGES_PER_GRAPH, math.ceil(num_edges / BATCH / 8) * 8)
    graph = next(dynamically_batch(graphs, n_node=BATCH * NODES_PER_GRAPH + 1, n_edge=BATCH * edges_per_graph + 1, n_graph=BATCH + 1))
    graph = jax.device_put(graph)
    predictor = ff.predictor
    num_nodes = sum(len(a) for a, _, _ in frames)
    total_nodes = int(np.sum(graph.n_node))
    node_graph = np.repeat(np.arange(len(graph.n_node)), np.asarray(graph.n_node))  # graph index of each node
    sizes = np.array([len(a) for a, _, _ in frames], np.float32)
    ref_energy = np.array([e for _, e, _ in frames], np.float32)
    ref_forces = np.zeros((total_nodes, 3), np.float32)
    ref_forces[:num_nodes] = np.concatenate([f for _, _, f in frames])
    node_mask = (np.arange(total_nodes) < num_nodes).astype(np.float32)

    def loss(params):
        out = predictor.apply(params, graph)
        out = out.to_prediction() if hasattr(out, "to_prediction") else out
        e_err = (out.energy[:BATCH] - ref_energy) / sizes
        f_sq = jnp.sum((out.forces - ref_forces) ** 2, axis=1) * node_mask
        f_per_graph = jax.ops.segment_sum(f_sq, node_graph, num_segments=len(graph.n_node))[:BATCH] / (3 * sizes)
        return ENERGY_WEIGHT * jnp.mean(e_err**2) + FORCES_WEIGHT * jnp.mean(f_per_graph)

    optimizer = get_default_mlip_optimizer()
    ema = exponentially_moving_average(EMA_DECAY)

    @jax.jit
    def train_step(params, opt_state, ema_state):
        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, ema.update(ema_state, params), value

    def step(state):
        params, opt_state, ema_state, value = train_step(*state)
        return (params, opt_state, ema_state), value

    params = ff.params
    return step, (params, optimizer.init(params), ema.init(params)), num_edges


def worker_training(impl, archive, dtype="float32", **_):
    from run import _peak_rss_gb

    frames = _frames()
    if impl == "mace-ase":
        step, state, num_edges = _mace_ase_step(archive, frames)
    elif impl == "mlip":
        step, state, num_edges = _mlip_step(archive, frames)
    else:
        raise ValueError(impl)
    out = _timed_steps(step, state)
    out.update(graphs=BATCH, nodes=sum(len(a) for a, _, _ in frames), edges=num_edges, peak_rss_gb=_peak_rss_gb(),
               step="mace_ase.training train_step" if impl == "mace-ase" else "same loss, mlip optimiser + EMA")
    return out
