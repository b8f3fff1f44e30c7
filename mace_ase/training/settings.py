"""All options of a training run in one dataclass (the `mace-ase train` config file)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class TrainSettings:
    # Data
    train_file: str = ""  # a path, or a registered data set "name:part" (mace_ase.weights.DATASETS), e.g. "spice2-curated:train"
    valid_file: str | None = None  # else a split of train_file
    energy_key: str | None = None  # ASE files: default "energy"; HDF5: default "wb97x_dz.energy"
    forces_key: str | None = None
    hdf5_options: dict | None = None  # e.g. SPICE: {"positions_key": "conformations", "length_unit": "bohr", ...}
    stream: bool = False  # HDF5 only: read frames from disk by index (data larger than memory)
    valid_fraction: float = 0.1
    group_key: str | None = None  # split whole groups (e.g. "mol_name")
    max_train_frames: int | None = None  # first N after the split (small runs, tests)
    max_valid_frames: int | None = None
    seed: int = 0
    # Model (ignored when fine-tuning from init_from, which fixes the architecture)
    init_from: str | None = None  # model to fine-tune: a registered name or a model file
    cutoff: float = 5.0
    num_layers: int = 2
    num_channels: int = 128
    l_max: int = 3
    node_symmetry: int | None = None  # default l_max
    correlation: int = 2
    readout_irreps: tuple = ("16x0e", "0e")
    num_bessel: int = 8
    radial_mlp_hidden: tuple = (64, 64, 64)
    atomic_energies: str = "average"  # average | isolated | zero
    isolated_atoms_file: str | None = None  # for atomic_energies="isolated"
    scaling: str = "none"  # none (mlip: mean 0, std 1) | rms_forces (mace-torch)
    # Batching (the card: 64 graphs, 32 nodes and 288 edges per graph)
    batch_size: int = 64
    nodes_per_graph: int = 32
    edges_per_graph: int = 288
    # Loss (the card: energy 40, forces 1000, swapped at epoch 115 of 220)
    epochs: int = 220
    energy_weight: float = 40.0
    forces_weight: float = 1000.0
    swap_epoch: int | None = 115
    energy_weight_after: float = 1000.0
    forces_weight_after: float = 40.0
    # Optimiser (mlip's default, the card's values)
    init_learning_rate: float = 0.01
    peak_learning_rate: float = 0.01
    final_learning_rate: float = 0.01
    warmup_steps: int = 4000
    transition_steps: int = 360000
    weight_decay: float = 0.0
    grad_norm: float = 500.0
    gradient_accumulation_steps: int = 1
    ema_decay: float = 0.99
    # Devices and data pipeline (how the run executes; a resume may change them)
    devices: int | None = None  # data parallel over the first N of jax.devices() (None: all of them)
    micro_batches_per_device: int = 1  # gradients of several micro-batches summed per step (less memory per device)
    prefetch_batches: int = 2  # batches built ahead by the loader threads
    loader_threads: int = 2
    checkpoint_every_steps: int | None = None  # also inside an epoch (long epochs on large data sets)
    # Run
    output_dir: str = "training-run"
    archive_name: str = "model.zip"
    export_path: str | None = None  # write the archive here instead of output_dir/archive_name
    model_name: str = "mace-ase-model"
    license: str | None = None  # None: MIT for a new model; a fine-tune keeps its source's licence
    max_wall_s: float | None = None  # stop (and export) before this many seconds of this invocation
    dtype: str = "float32"

    @classmethod
    def fields(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainSettings":
        unknown = sorted(set(d) - cls.fields())
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(unknown)}")
        d = dict(d)
        for name in ("readout_irreps", "radial_mlp_hidden"):
            if name in d and d[name] is not None:
                d[name] = tuple(d[name])
        return cls(**d)

    @classmethod
    def from_file(cls, path) -> "TrainSettings":
        """JSON or TOML (by suffix); relative data paths are resolved against the file's folder."""
        path = Path(path)
        if path.suffix.lower() == ".toml":
            import tomllib

            d = tomllib.loads(path.read_text())
        else:
            d = json.loads(path.read_text())
        d = {k: v for k, v in d.items() if not k.startswith("_")}  # "_comment" keys
        from ..weights import DATASETS, REGISTRY

        for name in ("train_file", "valid_file", "isolated_atoms_file", "init_from", "output_dir", "export_path"):
            if name == "init_from" and d.get(name) in REGISTRY:
                continue  # a registered model name, not a path
            if name.endswith("_file") and str(d.get(name)).partition(":")[0] in DATASETS:
                continue  # a registered data set ("spice2-curated:train"), not a path
            if d.get(name) and not Path(d[name]).is_absolute():
                d[name] = str((path.parent / d[name]).resolve())
        return cls.from_dict(d)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
