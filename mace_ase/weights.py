"""Model resolution: a name, a path or a loaded model -> MaceModel.

This is the single entry point the calculator, the CLI and training use.
(Names, Hugging Face downloads and the licence gate are added by the weights work.)
"""

from __future__ import annotations

import os

from .archive import MaceModel, load_archive


def load_model(spec: "str | os.PathLike | MaceModel | None" = None, *, accept_license: bool | None = None) -> MaceModel:
    """Resolve `spec` into a loaded model."""
    if isinstance(spec, MaceModel):
        return spec
    if spec is None:
        raise NotImplementedError("no bundled default model yet; pass model=<path to a model archive>")
    return load_archive(spec)
