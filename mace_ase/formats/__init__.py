"""Model file formats, one module each, all mapping into one MaceConfig + params layout.

    mace_ase    mace-ase's own archive (any MaceConfig; mace_ase.json + params.npz)
    mlip_v1     mlip's v1 MACE archives (hyperparams.json + params.npz, '#'-keyed)
    mlip_v2     mlip's v2 MACE archives
    mace_torch  mace-torch ``.model`` files and state_dicts (read without torch)

``detect(path)`` names the format from the file's contents (never its name) and
``read(path)`` hands it to that module's ``read``. A format module is a reader (and,
where mace-ase writes the format, a writer) and nothing else: the model core never
learns where its numbers came from.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import zipfile
from pathlib import Path

from ..errors import ArchiveError, UnsupportedConfigError

FORMATS = ("mace_ase", "mlip_v1", "mlip_v2", "mace_torch")
# torch's legacy (pre-1.6) serialisation starts with this pickled magic number.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def detect(path: str | os.PathLike) -> str:
    """The format of the file at `path`, one of FORMATS; ArchiveError if it is none of them."""
    path = Path(path)
    if not path.exists():
        raise ArchiveError(f"model archive not found: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "hyperparams.json" in names and "params.npz" in names:
                from .mlip_v1 import MLIP_PREFIX

                with zipfile.ZipFile(io.BytesIO(archive.read("params.npz"))) as npz:
                    keys = [name.removesuffix(".npy") for name in npz.namelist()]
                return "mlip_v1" if any(k.startswith(MLIP_PREFIX) for k in keys) else "mlip_v2"
            if "mace_ase.json" in names and "params.npz" in names:
                from .mace_ase import is_manifest

                if is_manifest(json.loads(archive.read("mace_ase.json"))):
                    return "mace_ase"
            if any(name.endswith("/data.pkl") and name.count("/") == 1 for name in names):
                return "mace_torch"
            missing = "hyperparams.json" if "hyperparams.json" not in names else "params.npz"
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as error:
        with open(path, "rb") as handle:
            if handle.read(len(_TORCH_LEGACY_MAGIC)) == _TORCH_LEGACY_MAGIC:
                raise ArchiveError(
                    f"{path} is a torch file in the legacy (pre-1.6) format, which mace-ase does not read; "
                    "load it with torch and save it again with a recent torch.save"
                ) from None
        raise ArchiveError(f"{path} is truncated or corrupt and cannot be read as a model archive ({error})") from None
    raise ArchiveError(
        f"{path} is not a model archive: it has no {missing} (mlip/mace-ase archive), no mace-ase "
        "manifest and no data.pkl (mace-torch model)"
    )


def reader(name: str):
    """The module of format `name` (imported on demand)."""
    if name not in FORMATS:
        raise ValueError(f"unknown model format {name!r}; formats: {', '.join(FORMATS)}")
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise
        raise UnsupportedConfigError(f"{name.replace('_', ' ')} archives are not supported by this mace-ase") from None


def read(path: str | os.PathLike, *, head: str | None = None):
    """Any supported model file -> MaceModel. `head` picks one head of a multi-head model."""
    name = detect(path)
    module = reader(name)
    if head is not None and name != "mace_torch":
        return _single_head(module.read(path), head, path)
    return module.read(path, head=head) if head is not None else module.read(path)


def _single_head(model, head: str, path):
    """Archives hold one named head at most (a converted model keeps the head it was made from)."""
    kept = model.metadata.get("head")
    if kept != head:
        raise UnsupportedConfigError(
            f"{path} holds {'the head ' + repr(kept) if kept else 'a model without named heads'}; "
            f"head={head!r} cannot be selected from it"
        )
    return model
