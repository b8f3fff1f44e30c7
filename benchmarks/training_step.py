"""Training-step time, mace-ase against mlip, on the mace-organics card's batch shape.

The card trains with batches of 64 graphs of at most 32 nodes and 288 edges each. Both
implementations take the same 64 rMD17 aspirin frames (21 atoms each), the same loss
(mean squared energy-per-atom error + mean squared force error, forces by autodiff) and the
same optimiser step (optax Adam, learning rate 0.01), jitted as one function; the time is
the median wall time of one step after the compiling first one. mace-ase's own training
module (mace_ase.training) had no training step when this was written, so this is a
minimal loss + optax step over `energy_forces_stress`, stated as such in the results.
mace-ase runs with message chunking off (mace_ase.model.mace.MESSAGE_CHUNK_BYTES = None),
as it should for any loss on forces. Both start from the same weights, so the first loss
values agree (a check that both compute the same thing).
"""

from __future__ import annotations

import statistics
import time

import numpy as np

BATCH = 64
NODES_PER_GRAPH = 32
EDGES_PER_GRAPH = 288
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


def _timed_steps(step, state, graph, steps=6):
    import jax

    start = time.perf_counter()
    state = jax.block_until_ready(step(*state, graph))
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state = jax.block_until_ready(step(*state, graph))
        times.append(time.perf_counter() - start)
    return {"first_step_s": first, "median_step_s": statistics.median(times), "steps": steps, "loss": float(state[-1])}


def worker_training(impl, archive, dtype="float32", **_):
    import jax
    import jax.numpy as jnp
    import optax

    from run import _peak_rss_gb

    frames = _frames()
    num_nodes = sum(len(a) for a, _, _ in frames)
    optimiser = optax.adam(1e-2)

    if impl == "mace-ase":
        import mace_ase.model.mace

        # A force loss differentiates twice; chunked message passing is for inference.
        mace_ase.model.mace.MESSAGE_CHUNK_BYTES = None
        from mace_ase.archive import load_archive
        from mace_ase.model import energy_forces_stress
        from mace_ase.neighbours import pad_graph, structure_from_atoms

        model = load_archive(archive)
        config = model.config
        structures = [structure_from_atoms(a, config.atomic_numbers, config.cutoff) for a, _, _ in frames]
        num_edges = sum(s.num_edges for s in structures)
        graph = jax.device_put(pad_graph(structures, BATCH * NODES_PER_GRAPH, max(num_edges, BATCH * EDGES_PER_GRAPH), BATCH, dtype=np.float32))
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), model.params)

        def predict(params, graph):
            out = energy_forces_stress(params, config, graph, compute_stress=False)
            return out["energy"], out["forces"]

        node_mask = np.asarray(graph.node_mask)
    elif impl == "mlip":
        from mlip.data.chemical_system import ChemicalSystem
        from mlip.data.helpers.dynamically_batch import dynamically_batch
        from mlip.graph import Graph
        from mlip.models.model_io import load_model_from_zip
        from mlip.models_v1 import Mace

        ff = load_model_from_zip(Mace, archive)
        graphs = [Graph.from_chemical_system(ChemicalSystem.from_ase_atoms(a, get_property_fields=False), ff.cutoff_distance) for a, _, _ in frames]
        num_edges = sum(len(g.senders) for g in graphs)
        graph = next(dynamically_batch(graphs, n_node=BATCH * NODES_PER_GRAPH + 1, n_edge=max(num_edges, BATCH * EDGES_PER_GRAPH) + 1, n_graph=BATCH + 1))
        params = ff.params
        predictor = ff.predictor

        def predict(params, graph):
            out = predictor.apply(params, graph)
            out = out.to_prediction() if hasattr(out, "to_prediction") else out
            return out.energy, out.forces

        node_mask = np.zeros(int(np.sum(graph.n_node)), bool)
        node_mask[:num_nodes] = True
    else:
        raise ValueError(impl)

    sizes = np.array([len(a) for a, _, _ in frames], float)
    ref_energy = np.array([e for _, e, _ in frames], np.float32)
    ref_forces = np.zeros((len(node_mask), 3), np.float32)
    ref_forces[:num_nodes] = np.concatenate([f for _, _, f in frames])
    mask = jnp.asarray(node_mask[:, None], jnp.float32)

    def loss(params, graph):
        energy, forces = predict(params, graph)
        energy_error = (energy[:BATCH] - ref_energy) / sizes
        force_error = (forces - ref_forces) * mask
        return jnp.mean(energy_error**2) + jnp.sum(force_error**2) / (3 * num_nodes)

    @jax.jit
    def step(params, opt_state, _, graph):  # the graph is an argument: mlip needs it traced
        value, grads = jax.value_and_grad(loss)(params, graph)
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    out = _timed_steps(step, (params, optimiser.init(params), jnp.zeros(())), graph)
    out.update(graphs=BATCH, nodes=num_nodes, edges=num_edges, peak_rss_gb=_peak_rss_gb())
    return out
