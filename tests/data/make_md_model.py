"""Fit the small test MACE to rMD17 aspirin, so that MD tests run on a bound molecule.

A random model has no bonds: aspirin evaporates within a picosecond and an NVE
test would measure a free gas. This short fit (energies and forces of 400
train_01 frames, a few minutes on a laptop CPU) gives a smooth, bound surface
near the equilibrium geometry. Not a usable force field; a test fixture.

    python tests/data/make_md_model.py   # writes tests/data/aspirin-small.zip
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

jax.config.update("jax_enable_x64", True)
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from conftest import SHARED_DATA, small_model  # noqa: E402

from mace_ase.archive import MaceModel, save_archive  # noqa: E402
from mace_ase.model import energy_forces_stress  # noqa: E402
from mace_ase.neighbours import Structure, neighbour_edges, pad_graph, species_indices  # noqa: E402

KCAL = 0.0433641  # eV per kcal/mol


def main(steps=int(sys.argv[1]) if len(sys.argv) > 1 else 1500, batch=8, frames=400, seed=0):
    data = np.load(SHARED_DATA / "rmd17" / "rmd17_aspirin_train_01.npz")
    numbers = data["nuclear_charges"].astype(int)
    energies = data["energies"][:frames] * KCAL
    forces = data["forces"][:frames] * KCAL
    # mlip's archive format fixes the radial MLP at 64x64x64 (it is not a hyper-parameter there).
    base = small_model(seed=seed, radial_mlp_hidden=(64, 64, 64))
    e0 = np.array([base.config.atomic_energies[base.atomic_numbers.index(z)] for z in numbers]).sum()
    config = base.config.replace(
        scaling_mean=float((energies.mean() - e0) / len(numbers)),
        scaling_std=float(np.sqrt(np.mean(forces**2))),
    )
    species = species_indices(numbers, config.atomic_numbers)
    structures = [
        Structure(x, species, np.zeros((3, 3)), neighbour_edges(x, np.zeros((3, 3)), [False] * 3, config.cutoff))
        for x in data["coords"][:frames]
    ]
    max_edges = max(s.num_edges for s in structures) * batch

    def loss_fn(params, graph, target_energy, target_forces):
        out = energy_forces_stress(params, config, graph, compute_stress=False)
        e = jnp.mean(((out["energy"] - target_energy) / len(numbers)) ** 2)
        f = jnp.sum(((out["forces"] - target_forces) ** 2) * graph.node_mask[:, None]) / (3 * jnp.sum(graph.node_mask))
        return 10.0 * e + 10.0 * f, (e, f)

    schedule = optax.cosine_decay_schedule(5e-3, steps, alpha=0.05)
    optimiser = optax.adam(schedule)

    @jax.jit
    def step(params, state, graph, target_energy, target_forces):
        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, graph, target_energy, target_forces)
        updates, state = optimiser.update(grads, state, params)
        return optax.apply_updates(params, updates), state, parts

    params = base.params
    state = optimiser.init(params)
    rng = np.random.default_rng(seed)
    for k in range(steps):
        pick = rng.choice(frames, batch, replace=False)
        graph = pad_graph([structures[i] for i in pick], batch * len(numbers), max_edges, batch)
        params, state, (e, f) = step(params, state, graph, energies[pick], forces[pick].reshape(-1, 3))
        if k % 100 == 0 or k == steps - 1:
            print(f"step {k}: energy RMSE {np.sqrt(e) * 1000:.1f} meV/atom, force RMSE {np.sqrt(f):.3f} eV/Å", flush=True)
    params = jax.tree.map(np.asarray, params)
    model = MaceModel(config, params, metadata={"name": "aspirin-small-test", "license": "MIT",
                                                "training": f"rMD17 aspirin train_01 frames 0-{frames - 1}, {steps} Adam steps"})
    save_archive(model, HERE / "aspirin-small.zip")


if __name__ == "__main__":
    main()
