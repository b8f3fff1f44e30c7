"""Model archives in mlip's zip format, read and written.

An archive is a zip holding ``hyperparams.json`` (``config``, ``dataset_info``,
``version``, ...) and ``params.npz`` (flax parameters keyed by their module
path joined with '#'). mace-ase adds an optional ``mace_ase.json`` member with
provenance and licence metadata; mlip ignores members it does not know, so
archives written here load in mlip and the other way round.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArchiveError, UnsupportedConfigError
from .model.config import MaceConfig
from .model.params import MLIP_PREFIX, params_from_flat, params_to_flat

HYPERPARAMS = "hyperparams.json"
PARAMS = "params.npz"
METADATA = "mace_ase.json"
MLIP_VERSION_WRITTEN = "0.2.5"
# mace_ase.json key for MaceConfig fields that mlip's hyperparams.json has no place for.
CONFIG_KEY = "mace_ase_config"
MLIP_RADIAL_MLP_HIDDEN = (64, 64, 64)  # mlip v1's fixed radial MLP




@dataclass
class MaceModel:
    """A whole model: hyper-parameters, parameters and metadata (licence, origin)."""

    config: MaceConfig
    params: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def cutoff(self) -> float:
        return self.config.cutoff

    @property
    def atomic_numbers(self) -> tuple[int, ...]:
        return self.config.atomic_numbers


# mlip MaceConfig fields that change nothing numerically, or that we implement.
_IGNORED_MLIP_FIELDS = {"deterministic_scatter_ops"}


def config_from_mlip(hyperparams: dict) -> MaceConfig:
    """mlip's hyperparams.json -> MaceConfig; refuses unsupported values by name."""
    try:
        config = dict(hyperparams["config"])
        info = dict(hyperparams["dataset_info"])
    except (KeyError, TypeError) as error:
        raise ArchiveError(f"{HYPERPARAMS} lacks the '{error.args[0]}' section") from None

    def refuse(name, why):
        raise UnsupportedConfigError(f"unsupported MACE config: {name}={config.get(name)!r} ({why})")

    if config.get("gate_nodes"):
        refuse("gate_nodes", "node gating is not implemented in mace-ase")
    if config.get("species_embedding_dim") is not None:
        refuse("species_embedding_dim", "edge species embeddings are not implemented in mace-ase")
    if config.get("include_pseudotensors"):
        refuse("include_pseudotensors", "pseudotensor irreps are not implemented in mace-ase")
    known = {
        "num_layers", "num_channels", "l_max", "node_symmetry", "correlation", "readout_irreps",
        "num_readout_heads", "include_pseudotensors", "num_bessel", "activation", "radial_envelope",
        "symmetric_tensor_product_basis", "atomic_energies", "avg_num_neighbors", "avg_r_min",
        "num_species", "gate_nodes", "species_embedding_dim",
    } | _IGNORED_MLIP_FIELDS
    for name in config:
        if name not in known:
            refuse(name, "this field is not part of mlip's v1 MaceConfig that mace-ase reads")

    energies_map = info.get("atomic_energies_map")
    if not isinstance(energies_map, dict) or not energies_map:
        raise UnsupportedConfigError(
            "unsupported dataset_info: atomic_energies_map must be one non-empty mapping (multi-dataset models are not supported)"
        )
    energies_map = {int(z): float(e) for z, e in energies_map.items()}
    zs = tuple(sorted(energies_map))
    num_species = config.get("num_species")
    if num_species is not None and num_species != len(zs):
        refuse("num_species", f"must equal the {len(zs)} elements of the atomic energies map")

    strategy = config.get("atomic_energies")
    if strategy in (None, "average"):
        atomic_energies = [energies_map[z] for z in zs]
    elif strategy == "zero":
        atomic_energies = [0.0] * len(zs)
    elif isinstance(strategy, dict):
        # mlip v1 reads an explicit dict by species *index*, not atomic number.
        by_index = {int(k): float(v) for k, v in strategy.items()}
        atomic_energies = [by_index.get(i, 0.0) for i in range(len(zs))]
    else:
        refuse("atomic_energies", "expected 'average', 'zero', None or a mapping")

    cutoff = info.get("graph_cutoff_angstrom", info.get("cutoff_distance_angstrom"))
    if cutoff is None:
        raise ArchiveError("dataset_info lacks graph_cutoff_angstrom")
    avg_neighbors = config.get("avg_num_neighbors")
    if avg_neighbors is None:
        avg_neighbors = info.get("avg_num_neighbors", 1.0)
    avg_r_min = config.get("avg_r_min")
    if avg_r_min is None:
        avg_r_min = info.get("avg_r_min_angstrom")
    node_symmetry = config.get("node_symmetry")
    l_max = config.get("l_max", 3)
    return MaceConfig(
        atomic_numbers=zs,
        atomic_energies=atomic_energies,
        cutoff=float(cutoff),
        num_layers=config.get("num_layers", 2),
        num_channels=config.get("num_channels", 128),
        l_max=l_max,
        node_symmetry=l_max if node_symmetry is None else node_symmetry,
        correlation=config.get("correlation", 3),
        readout_irreps=tuple(config.get("readout_irreps", ("16x0e", "0e"))),
        num_readout_heads=config.get("num_readout_heads", 1),
        num_bessel=config.get("num_bessel", 8),
        activation=config.get("activation", "silu"),
        radial_envelope=config.get("radial_envelope", "polynomial_envelope"),
        symmetric_tensor_product_basis=config.get("symmetric_tensor_product_basis", False),
        avg_num_neighbors=float(avg_neighbors),
        avg_r_min=None if avg_r_min is None else float(avg_r_min),
        scaling_mean=float(info.get("scaling_mean", 0.0)),
        scaling_std=float(info.get("scaling_stdev", 1.0)),
    )


def config_to_mlip(config: MaceConfig) -> dict:
    """MaceConfig -> the ``config`` and ``dataset_info`` sections mlip expects."""
    if config.activation_scale is not None:
        raise UnsupportedConfigError(
            f"activation_scale={config.activation_scale!r} has no place in an mlip archive "
            "(mlip always uses e3nn-jax's normalisation)"
        )
    if config.avg_r_min is None and config.radial_scale != 1.0:
        raise UnsupportedConfigError(
            f"radial_scale={config.radial_scale!r} without avg_r_min has no place in an mlip archive"
        )
    return {
        "config": {
            "num_layers": config.num_layers,
            "num_channels": config.num_channels,
            "l_max": config.l_max,
            "node_symmetry": config.node_symmetry,
            "correlation": config.correlation,
            "readout_irreps": list(config.readout_irreps),
            "num_readout_heads": config.num_readout_heads,
            "include_pseudotensors": False,
            "num_bessel": config.num_bessel,
            "activation": config.activation,
            "radial_envelope": config.radial_envelope,
            "symmetric_tensor_product_basis": config.symmetric_tensor_product_basis,
            "atomic_energies": "average",
            "avg_num_neighbors": config.avg_num_neighbors,
            "avg_r_min": config.avg_r_min,
            "num_species": None,
            "gate_nodes": False,
            "species_embedding_dim": None,
            "deterministic_scatter_ops": False,
        },
        "dataset_info": {
            "dataset_name": None,
            "num_graphs": None,
            "atomic_energies_map": {str(z): e for z, e in zip(config.atomic_numbers, config.atomic_energies)},
            "total_charge_set": None,
            "graph_cutoff_angstrom": config.cutoff,
            "long_range_cutoff_angstrom": None,
            "avg_num_neighbors": config.avg_num_neighbors,
            "avg_r_min_angstrom": config.avg_r_min,
            "scaling_mean": config.scaling_mean,
            "scaling_stdev": config.scaling_std,
            "atomic_energies_removed": False,
        },
        "available_properties": {"energy": True, "forces": True, "partial_charges": False, "hessian": False, "stress": True},
    }


def read_archive(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray], dict]:
    """Raw contents (hyperparams, flat params, metadata), with errors that say what is wrong."""
    path = Path(path)
    if not path.exists():
        raise ArchiveError(f"model archive not found: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            for required in (HYPERPARAMS, PARAMS):
                if required not in names:
                    raise ArchiveError(f"{path} is not an mlip/mace-ase model archive: it has no {required}")
            hyperparams = json.loads(archive.read(HYPERPARAMS))
            with np.load(io.BytesIO(archive.read(PARAMS)), allow_pickle=False) as npz:
                flat = {key: npz[key] for key in npz.files}
            metadata = json.loads(archive.read(METADATA)) if METADATA in names else {}
    except ArchiveError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, KeyError) as error:
        raise ArchiveError(f"{path} is truncated or corrupt and cannot be read as a model archive ({error})") from None
    return hyperparams, flat, metadata


def load_archive(path: str | os.PathLike) -> MaceModel:
    """Read an mlip v1 or v2 MACE archive (or one written by mace-ase)."""
    hyperparams, flat, metadata = read_archive(path)
    # ---- mlip v2 (mace_ase.formats.mlip_v2) ----
    from .formats import mlip_v2

    if mlip_v2.is_mlip_v2(hyperparams, flat):
        metadata = dict(metadata)
        stored = metadata.pop(CONFIG_KEY, {}) or {}
        metadata.setdefault("source_file", Path(path).name)  # as for v1, below
        try:
            return mlip_v2.model_from_mlip_v2(hyperparams, flat, metadata, radial_scale=stored.get("radial_scale"))
        except ArchiveError as error:
            raise ArchiveError(f"{path}: {error}") from None
    # ---- mlip v1 ----
    if not any(key.startswith(MLIP_PREFIX) for key in flat):
        raise UnsupportedConfigError(
            f"{path}: the parameters are those of neither mlip's v1 MACE (mlip.models_v1.mace) "
            "nor its v2 MACE (mlip.models.mace); other architectures are not supported"
        )
    config = config_from_mlip(hyperparams)
    metadata = dict(metadata)
    stored = metadata.pop(CONFIG_KEY, {}) or {}
    hidden = _radial_mlp_hidden(flat)
    if "radial_mlp_hidden" in stored and tuple(stored["radial_mlp_hidden"]) != hidden:
        raise ArchiveError(
            f"{path}: {METADATA} says radial_mlp_hidden={tuple(stored['radial_mlp_hidden'])} "
            f"but the radial MLP parameters have hidden sizes {hidden}"
        )
    if hidden:
        config = config.replace(radial_mlp_hidden=hidden)
    if stored.get("radial_scale") is not None:
        # The constant this model was saved with (mlip recomputes it, in float32, on its XLA).
        config = config.replace(radial_scale=float(stored["radial_scale"]))
    try:
        params = params_from_flat(config, flat)
    except (KeyError, ValueError) as error:
        raise ArchiveError(f"{path}: {error.args[0]}") from None
    metadata = {"mlip_version": hyperparams.get("version"), **metadata}
    # The licence gate (mace_ase.weights.gate) recognises published files by name, also when
    # a model read here is handed to MaceCalculator directly; the first name sticks through re-saves.
    metadata.setdefault("source_file", Path(path).name)
    return MaceModel(config=config, params=params, metadata=metadata)


_RADIAL_KERNEL = MLIP_PREFIX + "layer_0#InteractionBlock_0#MessagePassingConvolution_0#MultiLayerPerceptron_0#Dense_{}#kernel"


def _radial_mlp_hidden(flat: dict[str, np.ndarray]) -> tuple[int, ...]:
    """Hidden widths of the radial MLP, read off the kernels' shapes (mlip itself fixes 64,64,64).

    Empty when the archive has no such kernels (params_from_flat then names what is missing).
    """
    shapes = []
    while _RADIAL_KERNEL.format(len(shapes)) in flat:
        shapes.append(np.shape(flat[_RADIAL_KERNEL.format(len(shapes))]))
    return tuple(int(shape[-1]) for shape in shapes[:-1])


ARCHIVE_FORMATS = ("mlip-v1", "mlip-v2")


def save_archive(model: MaceModel, path: str | os.PathLike, format: str = "mlip-v1") -> Path:
    """Write `model` so that both mace-ase and ``mlip.models.model_io`` load it.

    `format`: "mlip-v1" (``mlip.models_v1.mace.Mace``) or "mlip-v2" (``mlip.models.mace.Mace``,
    what MLIPAudit loads from a zip whose name contains "mace").
    Written to a temporary name and renamed, so a crash never leaves half an archive.
    """
    path = Path(path)
    metadata = {k: v for k, v in model.metadata.items() if k not in ("mlip_version", "mlip_model", CONFIG_KEY)}
    # ---- mlip v2 (mace_ase.formats.mlip_v2) ----
    if format == "mlip-v2":
        from .formats.mlip_v2 import mlip_v2_from_model

        hyperparams, flat = mlip_v2_from_model(model)  # refuses what v2 cannot express
        if model.config.avg_r_min is not None:
            # mlip recomputes it from avg_r_min (same definition); mace-ase reads back this value.
            metadata[CONFIG_KEY] = {"radial_scale": model.config.radial_scale}
    # ---- mlip v1 ----
    elif format == "mlip-v1":
        hyperparams = config_to_mlip(model.config)
        hyperparams["version"] = MLIP_VERSION_WRITTEN
        flat = params_to_flat(model.config, model.params)
        stored = {}
        if model.config.radial_mlp_hidden != MLIP_RADIAL_MLP_HIDDEN:
            # Not an mlip hyper-parameter (mlip fixes 64,64,64): kept where mlip does not look.
            stored["radial_mlp_hidden"] = list(model.config.radial_mlp_hidden)
        if model.config.avg_r_min is not None:
            stored["radial_scale"] = model.config.radial_scale  # fixed once, see MaceConfig
        if stored:
            metadata[CONFIG_KEY] = stored
    else:
        raise ValueError(f"unknown archive format {format!r}: choose one of {', '.join(ARCHIVE_FORMATS)}")
    buffer = io.BytesIO()
    np.savez(buffer, **flat)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(HYPERPARAMS, json.dumps(hyperparams))
        archive.writestr(PARAMS, buffer.getvalue())
        if metadata:
            archive.writestr(METADATA, json.dumps(metadata, indent=1))
    os.replace(tmp, path)
    return path
