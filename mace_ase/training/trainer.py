"""The training loop: data -> statistics -> config -> epochs -> checkpoints -> archive.

One call, :func:`train`, runs (or resumes) a whole training described by a
:class:`TrainSettings`. Per epoch it shuffles with a generator seeded by
(seed, epoch), takes one optimiser step per fixed-shape batch, updates the EMA,
validates the EMA parameters, appends a metrics row, redraws the plot and
replaces the checkpoint. A resumed run therefore continues with exactly the
numbers an uninterrupted one would have had.

The model trains with its per-element reference energies E0 removed from the
targets on the host (float64), and a config whose E0 are zero: float32 then
only sees interaction energies of a few eV. The exported archive carries the
real E0, so the same parameters give total energies.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..archive import MaceModel, save_archive
from ..model import MaceConfig, init_params
from ..model.basis import without_stored_basis
from ..weights import derived_metadata, load_model
from . import data as data_module
from .batching import BatchShape, iterate_batches
from .checkpoint import load_checkpoint, save_checkpoint
from .ema import EmaState, ema_init, ema_params, ema_update
from .loss import LossWeights, error_sums, loss_fn, metrics_from_sums
from .metrics import plot_metrics, read_metrics, write_metrics
from .optimizer import OptimizerSettings, make_optimizer
from .settings import TrainSettings
from .statistics import compute_statistics, element_counts, to_structures

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"
PLOT = "metrics.png"


@dataclass
class Prepared:
    """What a run needs besides its state: the model config and the batched data."""

    config: MaceConfig  # the exported config (real E0)
    train_config: MaceConfig  # same, E0 = 0
    train: tuple  # (structures, energies without E0, forces)
    valid: tuple
    shape: BatchShape
    init_params: dict
    licence: dict = field(default_factory=dict)  # licence fields of the export (a fine-tune keeps its source's)


def load_data(s: TrainSettings):
    hdf5 = dict(s.hdf5_options or {})
    frames = data_module.read_frames(s.train_file, s.energy_key, s.forces_key, **hdf5)
    isolated = [f for f in frames if data_module.is_isolated_atom(f)]
    frames = [f for f in frames if not data_module.is_isolated_atom(f)]
    if s.valid_file:
        train = frames
        valid = [f for f in data_module.read_frames(s.valid_file, s.energy_key, s.forces_key, **hdf5) if not data_module.is_isolated_atom(f)]
    else:
        train, valid = data_module.split_frames(frames, s.valid_fraction, s.seed, s.group_key)
    if s.max_train_frames is not None:
        train = train[: s.max_train_frames]
    if s.max_valid_frames is not None:
        valid = valid[: s.max_valid_frames]
    if s.isolated_atoms_file:
        isolated = data_module.read_frames(s.isolated_atoms_file, s.energy_key, s.forces_key)
    if not train or not valid:
        raise ValueError(f"need training and validation frames, got {len(train)} and {len(valid)}")
    # The model knows every element of the data read, even one only the validation set has.
    elements = tuple(sorted({int(z) for f in list(frames) + list(valid) for z in f.numbers}))
    return train, valid, isolated, elements


def model_config(s: TrainSettings, train_frames, isolated, elements=None) -> MaceConfig:
    stats = compute_statistics(train_frames, s.cutoff, s.atomic_energies, isolated, s.scaling, elements)
    return MaceConfig(
        **stats,
        num_layers=s.num_layers,
        num_channels=s.num_channels,
        l_max=s.l_max,
        node_symmetry=s.l_max if s.node_symmetry is None else s.node_symmetry,
        correlation=s.correlation,
        readout_irreps=tuple(s.readout_irreps),
        num_bessel=s.num_bessel,
        radial_mlp_hidden=tuple(s.radial_mlp_hidden),
    )


def _targets(frames, config: MaceConfig):
    structures = to_structures(frames, config.atomic_numbers, config.cutoff)
    e0 = element_counts(frames, config.atomic_numbers) @ np.asarray(config.atomic_energies)
    energies = np.array([f.energy for f in frames]) - e0  # float64 on the host
    forces = [np.asarray(f.forces, float) for f in frames]
    return structures, energies, forces


def prepare(s: TrainSettings, accept_license: bool | None = None) -> Prepared:
    base, licence = None, {"license": s.license or "MIT"}
    if s.init_from:
        # A registered name or a file, through the licence gate; a relabelled licence is refused before any work.
        base = load_model(s.init_from, accept_license=accept_license)
        licence = derived_metadata(base, s.license)
    train, valid, isolated, elements = load_data(s)
    dtype = np.dtype(s.dtype)
    if base is not None:
        # A basis stored with the weights (float32-computed, from mace-torch) is not trained: move to the exact one.
        config, params = without_stored_basis(base.config, base.params)
        params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
    else:
        config = model_config(s, train, isolated, elements)
        params = init_params(config, jax.random.key(s.seed), dtype=dtype)
    shape = BatchShape(s.batch_size, s.nodes_per_graph, s.edges_per_graph)
    train_data, valid_data = _targets(train, config), _targets(valid, config)
    shape.fits(train_data[0])
    shape.fits(valid_data[0])
    train_config = config.replace(atomic_energies=(0.0,) * config.num_species)
    return Prepared(config, train_config, train_data, valid_data, shape, params, licence)


class Steps:
    """The two compiled programs of a run (one training step, one evaluation)."""

    def __init__(self, config: MaceConfig, optimizer: optax.GradientTransformation, ema_decay: float):
        self.decay = ema_decay

        def train_step(params, opt_state, ema: EmaState, batch, energy_weight, forces_weight):
            (loss, (e_mse, f_mse)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, config, batch, energy_weight, forces_weight)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            ema = ema_update(ema, params, ema_decay)
            return params, opt_state, ema, {"loss": loss, "energy_mse": e_mse, "forces_mse": f_mse}

        self.train_step = jax.jit(train_step, donate_argnums=(0, 1, 2))
        self.eval_sums = jax.jit(lambda params, batch: error_sums(params, config, batch))
        self.ema_params = jax.jit(lambda ema: ema_params(ema, ema_decay))


def optimizer_settings(s: TrainSettings) -> OptimizerSettings:
    return OptimizerSettings(
        s.init_learning_rate, s.peak_learning_rate, s.final_learning_rate, s.weight_decay,
        s.warmup_steps, s.transition_steps, s.grad_norm, s.gradient_accumulation_steps,
    )


@functools.lru_cache(maxsize=8)
def compiled_steps(train_config: MaceConfig, optimizer_settings: OptimizerSettings, ema_decay: float) -> Steps:
    """One Steps per (model, optimiser, decay): runs in one process (resumes, tests) share compiled code."""
    return Steps(train_config, make_optimizer(optimizer_settings), ema_decay)


def evaluate(steps: Steps, params, data, shape: BatchShape, dtype) -> dict:
    totals: dict = {}
    for batch in iterate_batches(*data, shape, rng=None, dtype=dtype):
        for k, v in steps.eval_sums(params, batch).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    return metrics_from_sums(totals)


def evaluate_model(model, frames, shape: BatchShape | None = None, dtype=np.float32) -> dict:
    """MAE/RMSE of a MaceModel (e.g. a loaded archive) on labelled frames, in fixed-shape batches."""
    model = load_model(model)  # the licence gate
    config = model.config
    structures, energies, forces = _targets(frames, config)
    if shape is None:
        shape = BatchShape(16, max(len(f) for f in frames), max(s.num_edges for s in structures))
    train_config = config.replace(atomic_energies=(0.0,) * config.num_species)
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), model.params)
    sums = jax.jit(lambda p, b: error_sums(p, train_config, b))
    totals: dict = {}
    for batch in iterate_batches(structures, energies, forces, shape, rng=None, dtype=dtype):
        for k, v in sums(params, batch).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    return metrics_from_sums(totals)


def export_model(config: MaceConfig, params, path, s: TrainSettings, extra: dict | None = None) -> Path:
    metadata = {
        "name": s.model_name,
        "license": s.license or "MIT",
        "training": {k: (Path(v).name if k.endswith(("_file", "_from")) and v else v)
                     for k, v in s.to_dict().items() if k not in ("output_dir", "export_path")},
        **(extra or {}),
    }
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
    return save_archive(MaceModel(config, params, metadata), path)


def train(s: TrainSettings, resume: bool = False, progress: Callable | None = None, log: Callable = print,
          accept_license: bool | None = None) -> dict:
    """Run (or resume) the training; returns a summary with the archive path and final metrics.

    `progress(epoch, batch_index, num_batches, loss)` is called after every step.
    `accept_license`: accepts the licence of a restricted `init_from` model (as in load_model).
    """
    start = time.perf_counter()
    out = Path(s.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(s.dtype)
    prep = prepare(s, accept_license)
    opt = optimizer_settings(s)
    optimizer = make_optimizer(opt)
    weights = LossWeights(s.energy_weight, s.forces_weight, s.swap_epoch, s.energy_weight_after, s.forces_weight_after)
    params = prep.init_params
    state = (params, optimizer.init(params), ema_init(params))
    first_epoch, rows = 0, []
    checkpoint = out / CHECKPOINT
    if resume and checkpoint.exists():
        state, meta = load_checkpoint(checkpoint, state)
        changed = _changed_settings(meta["settings"], _resumable(s.to_dict()))
        if changed:
            raise ValueError(f"{checkpoint} was written with different settings ({', '.join(changed)}); "
                             "start a new output_dir or drop --resume")
        first_epoch = meta["epoch"] + 1
        rows = [r for r in read_metrics(out / METRICS) if r["epoch"] <= meta["epoch"]]
        log(f"resuming from {checkpoint} after epoch {meta['epoch']}")
    elif checkpoint.exists():
        raise FileExistsError(f"{checkpoint} exists: pass --resume to continue it, or choose another output_dir")
    (out / "settings.json").write_text(json.dumps(s.to_dict(), indent=1))
    log(
        f"{len(prep.train[0])} training / {len(prep.valid[0])} validation frames; elements {prep.config.atomic_numbers}; "
        f"avg_num_neighbors {prep.config.avg_num_neighbors:.2f}; scaling {prep.config.scaling_mean:.4f} +- {prep.config.scaling_std:.4f}"
    )

    steps = compiled_steps(prep.train_config, opt, s.ema_decay)
    params, opt_state, ema = jax.tree.map(jnp.asarray, state)
    stopped_early = False
    epoch_times = []
    for epoch in range(first_epoch, s.epochs):
        epoch_start = time.perf_counter()
        energy_weight, forces_weight = weights.at(epoch)
        rng = np.random.default_rng([s.seed, epoch])
        batches = list(iterate_batches(*prep.train, prep.shape, rng=rng, dtype=dtype))
        total_loss, e_sq, f_sq = 0.0, 0.0, 0.0
        for k, batch in enumerate(batches):
            params, opt_state, ema, step_out = steps.train_step(
                params, opt_state, ema, batch, dtype.type(energy_weight), dtype.type(forces_weight)
            )
            loss = float(step_out["loss"])
            if not np.isfinite(loss):
                raise FloatingPointError(f"the loss became {loss} at epoch {epoch}, batch {k}: lower the learning rate")
            total_loss += loss
            e_sq += float(step_out["energy_mse"])
            f_sq += float(step_out["forces_mse"])
            if progress:
                progress(epoch, k, len(batches), loss)
        averaged = steps.ema_params(ema)
        valid = evaluate(steps, averaged, prep.valid, prep.shape, dtype)
        epoch_times.append(time.perf_counter() - epoch_start)
        n = len(batches)
        row = {
            "epoch": epoch,
            "step": int(ema.count),
            "learning_rate": float(opt_state.hyperparams["learning_rate"]),
            "energy_weight": energy_weight,
            "forces_weight": forces_weight,
            "train_loss": total_loss / n,
            "train_energy_per_atom_rmse_meV": 1000 * (e_sq / n) ** 0.5,
            "train_forces_rmse_meV_A": 1000 * (f_sq / n) ** 0.5,
            **{f"valid_{k}": v for k, v in valid.items()},
            "epoch_s": epoch_times[-1],
        }
        rows.append(row)
        write_metrics(out / METRICS, rows)
        plot_metrics(rows, out / PLOT)
        meta = {"epoch": epoch, "settings": _resumable(s.to_dict()), "config": prep.config.to_dict()}
        save_checkpoint(checkpoint, (params, opt_state, ema), meta)
        log(
            f"epoch {epoch}: loss {row['train_loss']:.4g}, valid E MAE {valid['energy_per_atom_mae_meV']:.2f} meV/atom "
            f"({valid['energy_mae_meV']:.1f} meV), F MAE {valid['forces_mae_meV_A']:.1f} meV/Å, {epoch_times[-1]:.1f} s"
        )
        elapsed = time.perf_counter() - start
        if s.max_wall_s is not None and epoch < s.epochs - 1 and elapsed + max(epoch_times[-3:]) + 30 > s.max_wall_s:
            log(f"stopping after epoch {epoch}: the wall-clock budget of {s.max_wall_s:.0f} s would be exceeded")
            stopped_early = True
            break

    last = rows[-1] if rows else {}
    final = steps.ema_params(ema) if int(ema.count) > 0 else params  # no step taken: the initial parameters
    archive = export_model(
        prep.config, final, Path(s.export_path) if s.export_path else out / s.archive_name, s,
        {**prep.licence, "validation": {k: v for k, v in last.items() if k.startswith("valid_")},
         "epochs_trained": last.get("epoch", -1) + 1},
    )
    return {
        "archive": str(archive),
        "epochs_completed": last.get("epoch", -1) + 1,
        "stopped_early": stopped_early,
        "wall_s": time.perf_counter() - start,
        "metrics": last,
        "config": prep.config,
        "params": params,
        "ema_params": final,
    }


def _changed_settings(stored: dict, current: dict) -> list[str]:
    """Names whose values differ; an option missing on one side counts as its default."""
    defaults = _resumable(TrainSettings().to_dict())
    return sorted(k for k in set(stored) | set(current) if stored.get(k, defaults.get(k)) != current.get(k, defaults.get(k)))


def _resumable(d: dict) -> dict:
    """Settings that must match for a resume (not the budget, not the final epoch count)."""
    return {k: v for k, v in d.items() if k not in ("max_wall_s", "epochs", "output_dir", "export_path")}
