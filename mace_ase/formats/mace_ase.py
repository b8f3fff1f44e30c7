"""mace-ase's own archive: the whole MaceConfig and the params pytree as they are.

For models whose physics mlip v1 cannot express (a converted mace-torch model: its
activation constant, Bessel buffers, density normalisation, ZBL, ...). A zip holding

* ``mace_ase.json``: ``{"format": "mace-ase", "format_version": 1, "config": {MaceConfig
  fields}, "metadata": {licence, origin, ...}}``;
* ``params.npz``: one array per leaf of ``parameter_layout(config)``, keyed by its path
  joined with '/' (``layers/0/linear_up/0e``).

Models that mlip v1 can express are still written as mlip v1 archives (``mace_ase.archive``).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArchiveError, UnsupportedConfigError

MANIFEST = "mace_ase.json"
PARAMS = "params.npz"
FORMAT = "mace-ase"
FORMAT_VERSION = 1


def leaf_key(path: tuple) -> str:
    return "/".join(str(part) for part in path)


def is_manifest(data: dict) -> bool:
    return isinstance(data, dict) and data.get("format") == FORMAT


def read(path: str | os.PathLike):
    from ..archive import MaceModel
    from ..model.config import MaceConfig
    from ..model.params import checked_leaf, parameter_layout, set_leaf

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read(MANIFEST))
            with np.load(io.BytesIO(archive.read(PARAMS)), allow_pickle=False) as npz:
                flat = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, KeyError) as error:
        raise ArchiveError(f"{path} is truncated or corrupt and cannot be read as a mace-ase archive ({error})") from None
    if not is_manifest(manifest):
        raise ArchiveError(f"{path}: {MANIFEST} does not describe a mace-ase archive")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UnsupportedConfigError(
            f"{path}: mace-ase archive format version {version!r}; this mace-ase reads up to {FORMAT_VERSION} (upgrade mace-ase)"
        )
    try:
        config = MaceConfig.from_dict(_tuples(manifest["config"]))
    except KeyError:
        raise ArchiveError(f"{path}: {MANIFEST} has no 'config'") from None
    except TypeError as error:
        raise ArchiveError(f"{path}: the config in {MANIFEST} is incomplete ({error})") from None
    params: dict[str, Any] = {}
    expected = parameter_layout(config)
    for leaf in expected:
        key = leaf_key(leaf.path)
        if key not in flat:
            raise ArchiveError(f"{path}: parameter '{key}' is missing from the archive")
        try:
            set_leaf(params, leaf.path, checked_leaf(key, flat[key], leaf.shape))
        except ValueError as error:
            raise ArchiveError(f"{path}: {error}") from None
    extra = set(flat) - {leaf_key(leaf.path) for leaf in expected}
    if extra:
        raise ArchiveError(f"{path}: parameters {sorted(extra)[:3]} do not belong to the model its config describes")
    return MaceModel(config=config, params=params, metadata=dict(manifest.get("metadata") or {}))


def write(model, path: str | os.PathLike) -> Path:
    from ..fileio import atomic_save
    from ..model.params import get_leaf, parameter_layout

    arrays = {leaf_key(leaf.path): np.asarray(get_leaf(model.params, leaf.path)) for leaf in parameter_layout(model.config)}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.config.to_dict(),
                "metadata": dict(model.metadata)}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)

    def write_zip(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(MANIFEST, json.dumps(manifest, indent=1))
            archive.writestr(PARAMS, buffer.getvalue())

    return atomic_save(path, write_zip)


def _tuples(config: dict) -> dict:
    """JSON lists back to the tuples MaceConfig hashes."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
