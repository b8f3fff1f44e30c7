"""Registered training data sets, named in a config as ``"<name>:<part>"``.

``train_file = "spice2-curated:train"`` fetches the data set's file (``SPICE2_curated.zip``
from ``InstaDeepAI/SPICE2-curated``) through :func:`mace_ase.weights.fetch_dataset`: the
Hugging Face cache, ``HF_HUB_OFFLINE`` and the named download errors of the models. A zip
is unpacked once into the mace-ase cache folder (``$XDG_CACHE_HOME/mace-ase/datasets``,
keyed by the file's content), and ``<part>`` picks the one HDF5 file whose name contains it
(``train``, ``valid``, ``test``). Anything else is a path, returned as it is.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from ..fileio import file_lock
from .errors import TrainingDataError

DATA_SUFFIXES = (".h5", ".hdf5")


def resolve_data_file(spec) -> str:
    """A local file for `spec`: a registered ``name:part`` fetched and unpacked, else the path itself."""
    from .. import weights

    text = str(spec)
    name, sep, part = text.partition(":")
    if not sep or name not in weights.DATASETS:
        return text
    archive = weights.fetch_dataset(name)
    folder = unpacked(archive) if zipfile.is_zipfile(archive) else Path(archive).parent
    return str(pick_part(folder, part, name))


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mace-ase" / "datasets"


def unpacked(archive) -> Path:
    """The folder holding the zip's files, unpacked on first use (atomically: a rename of a finished folder)."""
    archive = Path(archive)
    blob = archive.resolve()  # the Hugging Face cache links a snapshot file to its blob, named by content hash
    target = cache_root() / f"{archive.stem}-{blob.name[:16]}"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.with_name(target.name + ".lock")):
        if not target.exists():
            work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
            try:
                with zipfile.ZipFile(blob) as z:
                    z.extractall(work)
                os.replace(work, target)
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                raise
    return target


def pick_part(folder: Path, part: str, name: str) -> Path:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in DATA_SUFFIXES)
    matches = [p for p in files if part.lower() in p.stem.lower()]
    if len(matches) != 1:
        listing = ", ".join(str(p.relative_to(folder)) for p in files) or "no HDF5 file"
        how = "no" if not matches else "several"
        raise TrainingDataError(f"data set '{name}': {how} HDF5 file(s) named like {part!r} in {folder} ({listing}); "
                                f"name one of them as '{name}:<part of its name>'")
    return matches[0]
