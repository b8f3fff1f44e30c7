"""Every error mace-ase raises on purpose, under one base class.

Callers (the CLI above all) catch ``MaceAseError`` and show its message as one
line; anything else escaping is a bug. Each class subclasses the builtin that
fits it, so ``except ValueError`` keeps working for users who expect that.
"""

from __future__ import annotations

from ase.calculators.calculator import PropertyNotImplementedError


class MaceAseError(Exception):
    """Base class: a problem with the user's input, model or environment, explained."""


class UnsupportedConfigError(MaceAseError, ValueError):
    """A model configuration that mace-ase cannot evaluate faithfully."""


class ArchiveError(MaceAseError, ValueError):
    """An archive that cannot be read: missing, truncated, corrupt or malformed."""


class UnknownElementError(MaceAseError, ValueError):
    """The structure contains an element that the model was not trained on."""


class InvalidStructureError(MaceAseError, ValueError):
    """A structure the model cannot evaluate: empty, NaN/inf positions, overlapping atoms, bad cell."""


class StressNotAvailableError(InvalidStructureError, PropertyNotImplementedError):
    """Stress asked of a structure that is not fully periodic (ASE tools catch PropertyNotImplementedError)."""


class StructureTooLargeError(MaceAseError, MemoryError):
    """A structure (or batch) that does not fit in memory; the message names its size and what to do."""


class InvalidOptionError(MaceAseError, TypeError, ValueError):
    """An unknown option name (a typo) or an option value out of range."""


class LicenseNotAcceptedError(MaceAseError, PermissionError):
    """A model with a restrictive licence was loaded without accepting the licence."""


class ModelNotFoundError(MaceAseError, LookupError):
    """A model name, repository or file that does not exist (locally or remotely)."""


class DownloadError(MaceAseError, ConnectionError):
    """The network (or the Hugging Face Hub) could not be reached; the message says what to do instead."""


class ChecksumError(DownloadError):
    """A downloaded or cached model file whose sha256 is not the published one."""


class LicenseRelabelError(MaceAseError, ValueError):
    """A model derived from a licence-restricted one was asked to carry another licence."""
