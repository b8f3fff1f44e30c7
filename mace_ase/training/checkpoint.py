"""Atomic checkpoints: the whole training state in one .npz, replaced in one rename.

The file holds the leaves of (params, optimiser state, EMA state) as arrays
``leaf_00000 ...`` and a JSON ``meta`` entry (epoch, step, model config, ...).
It is written through :func:`mace_ase.fileio.atomic_writer` (a uniquely named
temporary file in the same folder, flushed, then renamed over the old checkpoint):
a crash at any moment leaves either the old or the new file, never half of one.
Loading needs a template state of the same structure (the trainer builds one from
the config), which also checks that the checkpoint belongs to this run.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from ..fileio import atomic_writer


def save_checkpoint(path, state, meta: dict) -> Path:
    path = Path(path)
    leaves = jax.tree.leaves(state)
    arrays = {f"leaf_{k:05d}": np.asarray(leaf) for k, leaf in enumerate(leaves)}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with atomic_writer(path) as handle:
        np.savez(handle, **arrays)
    return path


def load_checkpoint(path, template):
    """(state, meta): leaves from the file in the tree structure of `template`."""
    with np.load(Path(path), allow_pickle=False) as npz:
        meta = json.loads(bytes(npz["meta"]).decode())
        leaves = [npz[f"leaf_{k:05d}"] for k in range(len(npz.files) - 1)]
    template_leaves, treedef = jax.tree.flatten(template)
    if len(leaves) != len(template_leaves) or any(np.shape(a) != np.shape(b) for a, b in zip(leaves, template_leaves)):
        raise ValueError(f"{path} does not match this run's model/optimiser (different architecture or settings)")
    leaves = [np.asarray(a, dtype=np.asarray(b).dtype) for a, b in zip(leaves, template_leaves)]
    return jax.tree.unflatten(treedef, leaves), meta
