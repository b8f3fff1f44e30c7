"""The training loop: data -> statistics -> config -> epochs -> checkpoints -> archive.

One call, :func:`train`, runs (or resumes) a whole training described by a
:class:`TrainSettings`. Per epoch it shuffles with a generator seeded by
(seed, epoch), takes one optimiser step per fixed-shape batch, updates the EMA,
validates the EMA parameters, appends a metrics row, redraws the plot and
replaces the checkpoint (also every ``checkpoint_every_steps`` steps inside an
epoch). A resumed run therefore continues with exactly the numbers an
uninterrupted one would have had.

The model trains with its per-element reference energies E0 removed from the
targets on the host (float64), and a config whose E0 are zero: float32 then
only sees interaction energies of a few eV. The exported archive carries the
real E0, so the same parameters give total energies.

One device: the plain jitted step (``Steps``). Several devices, several micro-batches
per device or several processes: the data parallel step of :mod:`.parallel`, the same
update on the same global batch. In a multi-process run every process calls
:func:`train` with the same settings; process 0 writes the metrics, checkpoints and
archive, and holds the lock on the output folder.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..archive import MaceModel, save_archive
from ..fileio import atomic_write, file_lock
from ..heap import TRAINING_TUNABLES, training_tunables_missing
from ..model import MaceConfig, init_params
from ..model.basis import without_stored_basis
from ..weights import derived_metadata, load_model
from . import data as data_module
from .batching import BatchShape, InMemoryData, plan_epoch
from .checkpoint import load_checkpoint, save_checkpoint
from .ema import EmaState, ema_init, ema_params, ema_update
from .errors import ProcessLostError, TrainingDataError
from .loader import Prefetcher
from .loss import LossWeights, error_sums, loss_fn, metrics_from_sums
from .metrics import plot_metrics, read_metrics, write_metrics
from .optimizer import OptimizerSettings, make_optimizer
from .parallel import Layout, ShardedSteps, global_batch, is_lost_peer, make_layout, replicate, to_host
from .settings import TrainSettings
from .statistics import reference_energies, statistics_from_summaries, summarize, to_structures

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"
PLOT = "metrics.png"
LOCK = ".mace-ase-train.lock"


@dataclass
class Prepared:
    """What a run needs besides its state: the model config and the data, ready to batch."""

    config: MaceConfig  # the exported config (real E0)
    train_config: MaceConfig  # same, E0 = 0
    train: object  # InMemoryData or stream.StreamedData
    valid: object
    shape: BatchShape  # of one micro-batch (the whole batch on one device)
    batch_graphs: int  # graphs per optimiser step
    init_params: dict
    licence: dict = field(default_factory=dict)  # licence fields of the export (a fine-tune keeps its source's)


# ------------------------------------------------------------------ data


def load_data(s: TrainSettings):
    """Frames in memory: (train, valid, isolated atoms, elements of everything read)."""
    from .datasets import resolve_data_file

    hdf5 = dict(s.hdf5_options or {})
    frames = data_module.read_frames(resolve_data_file(s.train_file), s.energy_key, s.forces_key, **hdf5)
    isolated = [f for f in frames if data_module.is_isolated_atom(f)]
    frames = [f for f in frames if not data_module.is_isolated_atom(f)]
    if s.valid_file:
        train = frames
        valid_frames = data_module.read_frames(resolve_data_file(s.valid_file), s.energy_key, s.forces_key, **hdf5)
        valid = [f for f in valid_frames if not data_module.is_isolated_atom(f)]
    else:
        train, valid = data_module.split_frames(frames, s.valid_fraction, s.seed, s.group_key)
    if s.max_train_frames is not None:
        train = train[: s.max_train_frames]
    if s.max_valid_frames is not None:
        valid = valid[: s.max_valid_frames]
    if s.isolated_atoms_file:
        isolated = data_module.read_frames(s.isolated_atoms_file, s.energy_key, s.forces_key)
    if not train or not valid:
        raise TrainingDataError(f"need training and validation frames, got {len(train)} and {len(valid)}")
    # The model knows every element of the data read, even one only the validation set has.
    elements = tuple(sorted({int(z) for f in list(frames) + list(valid) for z in f.numbers}))
    return train, valid, isolated, elements


def config_from_statistics(s: TrainSettings, stats: dict) -> MaceConfig:
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


def model_config(s: TrainSettings, train_frames, isolated, elements=None) -> MaceConfig:
    from .statistics import compute_statistics

    return config_from_statistics(s, compute_statistics(train_frames, s.cutoff, s.atomic_energies, isolated, s.scaling, elements))


def in_memory_data(frames, config: MaceConfig, structures=None) -> InMemoryData:
    """Structures and targets (E0 removed on the host, float64) of frames held in memory."""
    structures = to_structures(frames, config.atomic_numbers, config.cutoff) if structures is None else structures
    energies = np.array([f.energy for f in frames]) - reference_energies(frames, config.atomic_numbers, config.atomic_energies)
    return InMemoryData(structures, energies, [np.asarray(f.forces, float) for f in frames])


def _targets(frames, config: MaceConfig):
    data = in_memory_data(frames, config)
    return data.structures, data.energies, data.forces


def _base_model(s: TrainSettings, dtype, accept_license: bool | None):
    """The model to fine-tune: a registered name or a file, through the licence gate; and the licence its result keeps
    (a relabelled licence is refused here, before any work)."""
    base = load_model(s.init_from, accept_license=accept_license)
    # A product basis stored with the weights (float32-computed, from mace-torch) is not trained: move to the exact one.
    config, params = without_stored_basis(base.config, base.params)
    return config, jax.tree.map(lambda a: np.asarray(a, dtype), params), derived_metadata(base, s.license)


def prepare(s: TrainSettings, layout: Layout | None = None, log: Callable = print, accept_license: bool | None = None) -> Prepared:
    """Read (or index) the data, compute the statistics, build the config and initial parameters."""
    micro_batches = 1 if layout is None else layout.micro_batches
    dtype = np.dtype(s.dtype)
    base = _base_model(s, dtype, accept_license) if s.init_from else None
    licence = base[2] if base else {"license": s.license or "MIT"}
    if s.stream:
        config, params, train_data, valid_data = _prepare_streamed(s, dtype, log, base)
    else:
        train, valid, isolated, elements = load_data(s)
        structures = None
        if base:
            config, params = base[:2]
        else:
            structures = to_structures(train, elements, s.cutoff)
            stats = statistics_from_summaries(summarize(train, structures, elements), s.cutoff, s.atomic_energies, isolated, s.scaling)
            config = config_from_statistics(s, stats)
            params = init_params(config, jax.random.key(s.seed), dtype=dtype)
        train_data, valid_data = in_memory_data(train, config, structures), in_memory_data(valid, config)
    shape = BatchShape(s.batch_size, s.nodes_per_graph, s.edges_per_graph).micro(micro_batches)
    for name, d in (("training", train_data), ("validation", valid_data)):
        try:
            shape.fits(num_nodes=d.num_nodes, num_edges=d.num_edges)
        except ValueError as error:
            raise TrainingDataError(f"{name} data: {error}") from None
    train_config = config.replace(atomic_energies=(0.0,) * config.num_species)
    return Prepared(config, train_config, train_data, valid_data, shape, s.batch_size, params, licence)


def _prepare_streamed(s: TrainSettings, dtype, log, base=None):
    from .data import split_indices
    from .datasets import resolve_data_file
    from .hdf5 import Hdf5Options
    from .stream import StreamedData, open_index

    train_path = resolve_data_file(s.train_file)
    if Path(train_path).suffix.lower() not in (".h5", ".hdf5"):
        raise TrainingDataError(f"stream=true reads HDF5 files; {train_path} is not one (drop stream for other formats)")
    options = Hdf5Options.make(s.energy_key, s.forces_key, **dict(s.hdf5_options or {}))
    cutoff = base[0].cutoff if base else s.cutoff
    index = open_index(train_path, options, cutoff, log)
    valid_index = open_index(resolve_data_file(s.valid_file), options, cutoff, log) if s.valid_file else index
    if s.valid_file:
        train_rows, valid_rows = np.arange(len(index)), np.arange(len(valid_index))
    else:
        groups = None
        if s.group_key is not None:
            if s.group_key != "group":
                raise TrainingDataError(f"HDF5 frames can be split by their group only (group_key='group'), not {s.group_key!r}")
            groups = index.groups[index.group_of]
        train_rows, valid_rows = split_indices(len(index), s.valid_fraction, s.seed, groups)
    train_rows, valid_rows = train_rows[: s.max_train_frames], valid_rows[: s.max_valid_frames]
    if not len(train_rows) or not len(valid_rows):
        raise TrainingDataError(f"need training and validation frames, got {len(train_rows)} and {len(valid_rows)}")
    if base:
        config, params = base[:2]
    else:
        elements = tuple(sorted(set(index.summaries.atomic_numbers) | set(valid_index.summaries.atomic_numbers)))
        isolated = data_module.read_frames(s.isolated_atoms_file, s.energy_key, s.forces_key) if s.isolated_atoms_file else []
        summaries = index.summaries.rows(train_rows).restricted_to(elements)
        config = config_from_statistics(s, statistics_from_summaries(summaries, cutoff, s.atomic_energies, isolated, s.scaling))
        params = init_params(config, jax.random.key(s.seed), dtype=dtype)
    make = functools.partial(StreamedData, atomic_numbers=config.atomic_numbers, cutoff=config.cutoff, atomic_energies=config.atomic_energies)
    return config, params, make(index, train_rows), make(valid_index, valid_rows)


# ------------------------------------------------------------------ compiled steps


class Steps:
    """The two compiled programs of a one-device run (one training step, one evaluation)."""

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
def compiled_steps(train_config: MaceConfig, optimizer_settings: OptimizerSettings, ema_decay: float, layout: Layout | None = None):
    """One Steps per (model, optimiser, decay, layout): runs in one process (resumes, tests) share compiled code."""
    if layout is None or not layout.sharded:
        return Steps(train_config, make_optimizer(optimizer_settings), ema_decay)
    return ShardedSteps(train_config, make_optimizer(optimizer_settings), ema_decay, layout)


# ------------------------------------------------------------------ batches on the devices


def device_batch(data, micro: list, shape: BatchShape, layout: Layout, dtype):
    """The batch of one step on the devices; this process builds only its own micro-batches."""
    with _precision(dtype):
        if not layout.sharded:
            return jax.device_put(data.micro_batch(micro[0], shape, dtype))
        return global_batch(layout, {r: data.micro_batch(micro[r], shape, dtype) for r in layout.local_rows()})


def evaluate(steps, params, data, shape: BatchShape, dtype, layout: Layout | None = None, batch_graphs: int | None = None,
             depth: int = 2, threads: int = 1) -> dict:
    layout = layout or make_layout(1)
    plan = plan_epoch(data.num_nodes, data.num_edges, shape, layout.micro_batches, batch_graphs)
    build = lambda k: device_batch(data, plan.step(k), shape, layout, dtype)  # noqa: E731
    totals: dict = {}
    for batch in Prefetcher(build, range(plan.num_steps), depth, threads):
        for k, v in steps.eval_sums(params, batch).items():
            totals[k] = totals.get(k, 0.0) + float(to_host(v))
    return metrics_from_sums(totals)


# ------------------------------------------------------------------ precision


def _precision(dtype):
    """float64 training needs JAX's x64 mode: on for the block only (and in each loader thread)."""
    return jax.enable_x64(True) if np.dtype(dtype) == np.float64 else contextlib.nullcontext()


def evaluate_model(model, frames, shape: BatchShape | None = None, dtype=np.float32) -> dict:
    """MAE/RMSE of a MaceModel (e.g. a loaded archive) on labelled frames, in fixed-shape batches."""
    model = load_model(model)  # the licence gate
    config = model.config
    with _precision(dtype):
        data = in_memory_data(frames, config)
        if shape is None:
            shape = BatchShape(16, int(data.num_nodes.max()), int(data.num_edges.max()))
        train_config = config.replace(atomic_energies=(0.0,) * config.num_species)
        params = jax.tree.map(lambda a: jnp.asarray(a, dtype), model.params)
        steps = Steps(train_config, optax.identity(), 0.0)
        return evaluate(steps, params, data, shape, dtype)


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


# ------------------------------------------------------------------ the run


@dataclass
class Position:
    """Where a run stands: the epoch, the steps already taken in it, and their running sums."""

    epoch: int = 0
    step: int = 0
    sums: tuple = (0.0, 0.0, 0.0)  # loss, energy MSE, forces MSE summed over the epoch's steps


def output_lock(folder: Path):
    """The lock a training run holds on its output folder: a second `train` on it stops at once."""
    return file_lock(Path(folder) / LOCK, blocking=False, what=f"the training folder {folder}")


def train(s: TrainSettings, resume: bool = False, progress: Callable | None = None, log: Callable = print,
          accept_license: bool | None = None) -> dict:
    """Run (or resume) the training; returns a summary with the archive path and final metrics.

    `progress(epoch, batch_index, num_batches, loss)` is called after every step. float64
    settings train with JAX's x64 mode on for the call only.
    `accept_license`: accepts the licence of a restricted `init_from` model (as in load_model).
    """
    with _precision(s.dtype):
        primary = jax.process_index() == 0
        out = Path(s.output_dir)
        _check_same_settings(s)
        with output_lock(out) if primary else contextlib.nullcontext():
            return _train(s, resume, progress, log if primary else (lambda *_, **__: None), primary, accept_license)


def _train(s: TrainSettings, resume: bool, progress, log, primary: bool, accept_license: bool | None) -> dict:
    start = time.perf_counter()
    out = Path(s.output_dir)
    dtype = np.dtype(s.dtype)
    checkpoint = out / CHECKPOINT
    if checkpoint.exists() and not resume:
        raise FileExistsError(f"{checkpoint} exists: pass --resume to continue it, or choose another output_dir")
    if resume and jax.process_count() > 1:
        _everyone_sees(checkpoint)
    layout = make_layout(s.devices, s.micro_batches_per_device)
    prep = prepare(s, layout, log, accept_license)
    opt = optimizer_settings(s)
    optimizer = make_optimizer(opt)
    weights = LossWeights(s.energy_weight, s.forces_weight, s.swap_epoch, s.energy_weight_after, s.forces_weight_after)
    params = prep.init_params
    # One compiled program for the zeros of the optimiser and the EMA (not one per leaf and op).
    opt_state, ema = jax.jit(lambda p: (optimizer.init(p), ema_init(p)))(params)
    state = jax.tree.map(np.asarray, (params, opt_state, ema))
    position, rows = Position(), []
    if resume and checkpoint.exists():
        state, meta = load_checkpoint(checkpoint, state)
        changed = _changed_settings(meta["settings"], _resumable(s.to_dict()))
        if changed:
            raise ValueError(f"{checkpoint} was written with different settings ({', '.join(changed)}); "
                             "start a new output_dir or drop --resume")
        position = _resume_position(meta, layout, checkpoint)
        rows = [r for r in read_metrics(out / METRICS) if r["epoch"] < position.epoch]
        log(f"resuming from {checkpoint} at epoch {position.epoch}, step {position.step}")
    if primary:
        atomic_write(out / "settings.json", json.dumps(s.to_dict(), indent=1))
    log(
        f"{len(prep.train)} training / {len(prep.valid)} validation frames; elements {prep.config.atomic_numbers}; "
        f"avg_num_neighbors {prep.config.avg_num_neighbors:.2f}; scaling {prep.config.scaling_mean:.4f} +- {prep.config.scaling_std:.4f}"
        + (f"; {layout.micro_batches} micro-batches of {prep.shape.graphs} graphs per step on {len(layout.devices)} device(s)"
           f" in {jax.process_count()} process(es)" if layout.sharded else "")
    )
    # Padding costs compute like real atoms: say how much of each graph slot the data fills (the card's 32 nodes
    # per graph are sized for SPICE; 21-atom aspirin fills 66 % of them).
    nodes, edges = float(np.mean(prep.train.num_nodes)), float(np.mean(prep.train.num_edges))
    log(f"capacity used: nodes {nodes / prep.shape.nodes_per_graph:.0%}, edges {edges / prep.shape.edges_per_graph:.0%} "
        f"(per frame {nodes:.1f} atoms and {edges:.0f} edges on average; nodes_per_graph {prep.shape.nodes_per_graph}, "
        f"edges_per_graph {prep.shape.edges_per_graph})")
    if layout.devices[0].platform == "cpu":
        if training_tunables_missing():
            log(f"note: on the CPU, start Python with GLIBC_TUNABLES={TRAINING_TUNABLES} for faster steps (huge pages for "
                "XLA's temporaries: 1.6x on the card's step on 2 cores; `mace-ase train` does it itself)")
        elif "GLIBC_TUNABLES" in os.environ:
            log(f"C heap: GLIBC_TUNABLES={os.environ['GLIBC_TUNABLES']}")

    steps = compiled_steps(prep.train_config, opt, s.ema_decay, layout if layout.sharded else None)
    put = functools.partial(replicate, layout=layout) if layout.sharded else (lambda tree: jax.tree.map(jnp.asarray, tree))
    params, opt_state, ema = put(state)
    stopped_early = False
    epoch_times = []

    def save(epoch: int, step: int, complete: bool, sums=(0.0, 0.0, 0.0)):
        if primary:
            meta = {"epoch": epoch, "step": step, "epoch_complete": complete, "sums": list(sums), "micro_batches": layout.micro_batches,
                    "settings": _resumable(s.to_dict()), "config": prep.config.to_dict()}
            save_checkpoint(checkpoint, jax.tree.map(to_host, (params, opt_state, ema)), meta)

    for epoch in range(position.epoch, s.epochs):
        epoch_start = time.perf_counter()
        energy_weight, forces_weight = weights.at(epoch)
        loss_weights = put((np.asarray(energy_weight, dtype), np.asarray(forces_weight, dtype)))
        plan = plan_epoch(prep.train.num_nodes, prep.train.num_edges, prep.shape, layout.micro_batches, prep.batch_graphs,
                          rng=np.random.default_rng([s.seed, epoch]))
        first = position.step if epoch == position.epoch else 0
        total_loss, e_sq, f_sq = position.sums if epoch == position.epoch else (0.0, 0.0, 0.0)
        build = lambda k, plan=plan: device_batch(prep.train, plan.step(k), prep.shape, layout, dtype)  # noqa: E731
        batches = Prefetcher(build, range(first, plan.num_steps), s.prefetch_batches, s.loader_threads)
        for k, batch in zip(range(first, plan.num_steps), batches):
            try:
                params, opt_state, ema, step_out = steps.train_step(params, opt_state, ema, batch, *loss_weights)
                loss, e_mse, f_mse = (float(to_host(step_out[key])) for key in ("loss", "energy_mse", "forces_mse"))
            except Exception as error:
                if is_lost_peer(error):
                    raise _lost(error, epoch, k, checkpoint) from error
                raise
            if not np.isfinite(loss):
                raise FloatingPointError(f"the loss became {loss} at epoch {epoch}, batch {k}: lower the learning rate")
            total_loss, e_sq, f_sq = total_loss + loss, e_sq + e_mse, f_sq + f_mse
            done = k + 1
            if s.checkpoint_every_steps and done % s.checkpoint_every_steps == 0 and done < plan.num_steps:
                save(epoch, done, False, (total_loss, e_sq, f_sq))
            if progress:
                progress(epoch, k, plan.num_steps, loss)
        averaged = steps.ema_params(ema)
        valid = evaluate(steps, averaged, prep.valid, prep.shape, dtype, layout, prep.batch_graphs, s.prefetch_batches, s.loader_threads)
        epoch_times.append(time.perf_counter() - epoch_start)
        n = max(plan.num_steps, 1)
        row = {
            "epoch": epoch,
            "step": int(to_host(ema.count)),
            "learning_rate": float(to_host(opt_state.hyperparams["learning_rate"])),
            "energy_weight": energy_weight,
            "forces_weight": forces_weight,
            "train_loss": total_loss / n,
            "train_energy_per_atom_rmse_meV": 1000 * (e_sq / n) ** 0.5,
            "train_forces_rmse_meV_A": 1000 * (f_sq / n) ** 0.5,
            **{f"valid_{k}": v for k, v in valid.items()},
            "epoch_s": epoch_times[-1],
            "data_wait_s": batches.waited_s,
        }
        rows.append(row)
        if primary:
            write_metrics(out / METRICS, rows)
            plot_metrics(rows, out / PLOT)
        save(epoch, plan.num_steps, True)
        log(
            f"epoch {epoch}: loss {row['train_loss']:.4g}, valid E MAE {valid['energy_per_atom_mae_meV']:.2f} meV/atom "
            f"({valid['energy_mae_meV']:.1f} meV), F MAE {valid['forces_mae_meV_A']:.1f} meV/Å, {epoch_times[-1]:.1f} s"
        )
        elapsed = time.perf_counter() - start
        over_budget = s.max_wall_s is not None and epoch < s.epochs - 1 and elapsed + max(epoch_times[-3:]) + 30 > s.max_wall_s
        if _agreed(over_budget):
            log(f"stopping after epoch {epoch}: the wall-clock budget of {s.max_wall_s:.0f} s would be exceeded")
            stopped_early = True
            break

    last = rows[-1] if rows else {}
    final = jax.tree.map(to_host, steps.ema_params(ema) if int(to_host(ema.count)) > 0 else params)  # no step: the initial parameters
    target = Path(s.export_path) if s.export_path else out / s.archive_name
    archive = target
    if primary:
        archive = export_model(
            prep.config, final, target, s,
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
        "params": jax.tree.map(to_host, params),
        "ema_params": final,
        "frames_read": getattr(prep.train, "frames_read", None),  # streamed data: by this process
        "devices": len(layout.devices),
        "micro_batches": layout.micro_batches,
    }


def _resume_position(meta: dict, layout: Layout, checkpoint: Path) -> Position:
    if meta.get("epoch_complete", True):  # checkpoints of older versions are written after an epoch only
        return Position(meta["epoch"] + 1)
    if meta.get("micro_batches") != layout.micro_batches:
        raise ValueError(
            f"{checkpoint} stopped inside epoch {meta['epoch']} of a run with {meta.get('micro_batches')} micro-batches per step, "
            f"this one has {layout.micro_batches} (devices x micro_batches_per_device): the epoch's batches would differ. "
            "Resume with the same devices and micro_batches_per_device"
        )
    return Position(meta["epoch"], meta["step"], tuple(meta["sums"]))


def _lost(error: BaseException, epoch: int, step: int, checkpoint: Path) -> ProcessLostError:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    resume_from = f"the last checkpoint is {checkpoint}" if checkpoint.exists() else "no checkpoint was written yet"
    return ProcessLostError(
        f"training stopped at epoch {epoch}, step {step}: process {jax.process_index()} of {jax.process_count()} lost contact "
        f"with the others during the step ({text}). Another process has most likely stopped (see its log); "
        f"{resume_from}: start every process again with --resume"
    )


def _check_same_settings(s: TrainSettings) -> None:
    """Every process of a multi-process run must train the same thing."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    digest = int(hashlib.sha256(json.dumps(s.to_dict(), sort_keys=True).encode()).hexdigest()[:7], 16)
    digests = np.asarray(multihost_utils.process_allgather(np.array([digest], np.int32))).reshape(-1)
    different = [p for p, d in enumerate(digests) if d != digests[0]]
    if different:
        raise ValueError(f"process(es) {different} were started with other training settings than process 0: "
                         "give every process the same config and options")


def _everyone_sees(checkpoint: Path) -> None:
    """A resume needs the checkpoint in every process (a shared output folder), or in none."""
    from jax.experimental import multihost_utils

    seen = np.asarray(multihost_utils.process_allgather(np.array([checkpoint.exists()], np.int32))).reshape(-1)
    if seen.any() and not seen.all():
        raise ValueError(f"process(es) {np.flatnonzero(seen == 0).tolist()} do not see {checkpoint}, which the others resume from: "
                         "the output folder must be on a file system that every process shares")


def _agreed(flag: bool) -> bool:
    """Process 0's decision, in every process (a run must stop everywhere at the same epoch)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.array(flag, np.int32)))


def _changed_settings(stored: dict, current: dict) -> list[str]:
    """Names whose values differ; an option missing on one side counts as its default."""
    defaults = _resumable(TrainSettings().to_dict())
    return sorted(k for k in set(stored) | set(current) if stored.get(k, defaults.get(k)) != current.get(k, defaults.get(k)))


# Options that say how a run is executed, not what it computes: a resume may change them.
EXECUTION_OPTIONS = ("max_wall_s", "epochs", "output_dir", "export_path", "stream", "devices", "micro_batches_per_device",
                     "checkpoint_every_steps", "prefetch_batches", "loader_threads")


def _resumable(d: dict) -> dict:
    """Settings that must match for a resume (not the budget, not the final epoch count, not the devices)."""
    return {k: v for k, v in d.items() if k not in EXECUTION_OPTIONS}
