"""Atomic checkpoints: the whole training state in one .npz, replaced in one rename.

The file holds the leaves of (params, optimiser state, EMA state) as arrays
``leaf_00000 ...`` and a JSON ``meta`` entry (epoch, step, model config, ...).
It is written to ``<name>.tmp``, flushed to disk, then ``os.replace``d over the
old checkpoint: a crash at any moment leaves either the old or the new file,
never half of one. Loading needs a template state of the same structure (the
trainer builds one from the config), which also checks that the checkpoint
belongs to this run.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import jax
import numpy as np


def save_checkpoint(path, state, meta: dict) -> Path:
    path = Path(path)
    leaves = jax.tree.leaves(state)
    arrays = {f"leaf_{k:05d}": np.asarray(leaf) for k, leaf in enumerate(leaves)}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
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
