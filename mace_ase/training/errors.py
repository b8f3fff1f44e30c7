"""Errors of a training run, each named after what the user must fix (all MaceAseError)."""

from __future__ import annotations

from ..errors import MaceAseError


class TrainingDataError(MaceAseError, ValueError):
    """Training data that cannot train a model: wrong shapes, NaN or infinite labels, no forces."""


class MissingLabelError(TrainingDataError, KeyError):
    """A label (energy or forces key) that the data file does not have."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ProcessLostError(MaceAseError, RuntimeError):
    """A process of a multi-process run stopped (or lost contact); the others stop too."""
