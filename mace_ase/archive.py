"""Model files in and out: ``load_archive`` reads any supported format, ``save_archive`` writes.

Reading detects the format from the file's contents (``mace_ase.formats``): mlip v1 and v2
archives, mace-ase's own archives and mace-torch ``.model`` files (read without torch).
Writing produces an mlip v1 archive whenever mlip v1 can express the model (so mlip loads
it too), else mace-ase's own archive (a converted mace-torch model, say). Either kind
loads back without conversion.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .model.config import MaceConfig


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


def load_archive(path: str | os.PathLike, *, head: str | None = None) -> MaceModel:
    """Read a model file of any supported format; `head` picks one head of a multi-head model."""
    from . import formats

    model = formats.read(path, head=head)
    # The licence gate (mace_ase.weights.gate) recognises published files by name, also when
    # a model read here is handed to MaceCalculator directly; the first name sticks through re-saves.
    model.metadata.setdefault("source_file", Path(path).name)
    return model


ARCHIVE_FORMATS = ("mlip-v1", "mlip-v2", "mace-ase")


def save_archive(model: MaceModel, path: str | os.PathLike, format: str | None = None) -> Path:
    """Write `model` (atomically).

    `format`: None (an mlip v1 archive if mlip v1 can express the model, else mace-ase's own),
    "mlip-v1" (``mlip.models_v1.mace.Mace``), "mlip-v2" (``mlip.models.mace.Mace``, what MLIPAudit
    loads) or "mace-ase". A format that cannot hold the model is refused, naming what it lacks.
    """
    from .formats import mace_ase, mlip_v1, mlip_v2

    writers = {"mlip-v1": mlip_v1.write, "mlip-v2": mlip_v2.write, "mace-ase": mace_ase.write}
    if format is None:
        format = "mace-ase" if mlip_v1.unexpressible(model.config) else "mlip-v1"
    if format not in writers:
        raise ValueError(f"unknown archive format {format!r}: choose one of {', '.join(ARCHIVE_FORMATS)}")
    return writers[format](model, path)
