"""Training on HDF5 data larger than memory: a per-frame index built in one pass, then reads by index.

The first run over a file reads every frame once (in file order, a group at a time),
checks it, computes its neighbour list at the model cutoff and keeps a few numbers per
frame (:class:`~mace_ase.training.statistics.FrameSummaries` plus where the frame lives).
That index is cached beside the data (``<file>.mace-ase-<key>.npz``; in the user cache
folder when the data folder is read-only), keyed by the file's size and modification time,
the reader options and the cutoff, so later runs, resumes and the other processes of a
multi-process run start at once. The statistics of any split come from the cached rows.

During training a :class:`StreamedData` reads only the frames of the micro-batches it is
asked for, computes their neighbour lists and packs them (in the loader's background
threads). Host memory: the index kept in memory is about 100 bytes per frame (where it
lives, its sizes, its statistics inputs: 44 bytes + 2 per element in the index, 24 in
:class:`StreamedData`) plus the group names, and the loader holds ``prefetch`` batches;
nothing else grows with the data set (benchmarks/training_scaling.py measures it).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from ..fileio import atomic_writer, file_lock
from .batching import BatchShape, make_batch
from .data import check_frames
from .errors import TrainingDataError
from .hdf5 import Hdf5Frames, Hdf5Options
from .statistics import FrameSummaries, frame_summary, reference_energies, to_structures

INDEX_VERSION = 1
_BLOCK = 65536  # frames per block while the index grows


def index_key(path: Path, options: Hdf5Options, cutoff: float) -> str:
    stat = path.stat()
    text = json.dumps([INDEX_VERSION, path.name, stat.st_size, stat.st_mtime_ns, asdict(options), float(cutoff)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def index_path(path: Path, key: str) -> Path:
    """Beside the data when its folder is writable, else in the user's cache folder."""
    if os.access(path.parent, os.W_OK):
        return path.with_name(f"{path.name}.mace-ase-{key}.npz")
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mace-ase" / "data-index"
    return base / f"{path.name}.mace-ase-{key}.npz"


class FrameIndex:
    """Where every frame of one HDF5 file lives, and its summary (sizes and statistics inputs)."""

    def __init__(self, path, options: Hdf5Options, cutoff: float, groups, group_of, conformer, summaries: FrameSummaries):
        self.path, self.options, self.cutoff = Path(path), options, cutoff
        self.groups, self.group_of, self.conformer = groups, group_of, conformer
        self.summaries = summaries

    def __len__(self) -> int:
        return len(self.group_of)

    def frames(self) -> Hdf5Frames:
        return Hdf5Frames(self.path, self.options, self.groups, self.group_of, self.conformer)

    def save(self, target: Path) -> None:
        s = self.summaries
        arrays = dict(groups=self.groups, group_of=self.group_of, conformer=self.conformer,
                      atomic_numbers=np.asarray(s.atomic_numbers, np.int64),
                      **{f: getattr(s, f) for f in ("counts", "energy", "num_atoms", "num_edges", "num_receivers", "r_min", "forces_sq")},
                      meta=np.frombuffer(json.dumps({"options": asdict(self.options), "cutoff": self.cutoff}).encode(), np.uint8))
        with atomic_writer(target) as handle:
            np.savez(handle, **arrays)

    @classmethod
    def load(cls, path, source: Path) -> "FrameIndex":
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(bytes(npz["meta"]).decode())
            summaries = FrameSummaries(tuple(int(z) for z in npz["atomic_numbers"]),
                                       *[npz[f] for f in ("counts", "energy", "num_atoms", "num_edges", "num_receivers", "r_min", "forces_sq")])
            return cls(source, Hdf5Options(**meta["options"]), meta["cutoff"], npz["groups"], npz["group_of"], npz["conformer"], summaries)


def build_index(path, options: Hdf5Options, cutoff: float, log: Callable = print) -> FrameIndex:
    """One pass over the file: every frame checked, its neighbours counted, its summary kept."""
    path = Path(path)
    start = time.perf_counter()
    scan = Hdf5Frames.scan(path, options)
    resolved = next(scan)
    groups: list[str] = []
    blocks: list[np.ndarray] = []  # [rows, 7]: group, conformer, atoms, edges, receivers, r_min, forces_sq
    counts_blocks: list[dict] = []  # {Z: counts column} per block
    energies: list[np.ndarray] = []
    rows, block_counts, block_energy = [], {}, []
    last_group = -1
    for g, name, k, frame in scan:
        if g != last_group:
            groups.append(name)
            last_group = g
        check_frames([frame], f"{path}, group {name!r}")
        structure = to_structures([frame], sorted(set(frame.numbers.tolist())), cutoff)[0]
        n, e, receivers, r_min, f_sq = frame_summary(frame, structure)
        row = len(rows)
        for z, c in zip(*np.unique(frame.numbers, return_counts=True)):
            block_counts.setdefault(int(z), np.zeros(_BLOCK, np.uint16))[row] = c
        rows.append((len(groups) - 1, k, n, e, receivers, r_min, f_sq))
        block_energy.append(frame.energy)
        if len(rows) == _BLOCK:
            blocks.append(np.array(rows, float))
            counts_blocks.append(block_counts)
            energies.append(np.array(block_energy))
            rows, block_counts, block_energy = [], {}, []
    if rows:
        blocks.append(np.array(rows, float))
        counts_blocks.append({z: c[: len(rows)] for z, c in block_counts.items()})
        energies.append(np.array(block_energy))
    if not blocks:
        raise TrainingDataError(f"{path}: no frame with a finite energy")
    table = np.concatenate(blocks)
    zs = tuple(sorted({z for block in counts_blocks for z in block}))
    counts = np.zeros((len(table), len(zs)), np.uint16)
    offset = 0
    for block, size in zip(counts_blocks, (len(b) for b in blocks)):
        for z, column in block.items():
            counts[offset: offset + size, zs.index(z)] = column[:size]
        offset += size
    summaries = FrameSummaries(zs, counts, np.concatenate(energies), table[:, 2].astype(np.int32), table[:, 3].astype(np.int32),
                               table[:, 4].astype(np.int32), table[:, 5], table[:, 6])
    group_names = np.array([name.encode() for name in groups])
    index = FrameIndex(path, resolved, float(cutoff), group_names, table[:, 0].astype(np.int32), table[:, 1].astype(np.int32), summaries)
    log(f"indexed {path.name}: {len(table)} frames in {len(groups)} groups, {time.perf_counter() - start:.1f} s")
    return index


def open_index(path, options: Hdf5Options, cutoff: float, log: Callable = print) -> FrameIndex:
    """The cached index of `path` for these options and cutoff, built (and cached) if missing.

    Processes that open the same file at once build it one at a time (a lock beside the cache).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(2, "training data not found", str(path))
    key = index_key(path, options, cutoff)
    target = index_path(path, key)
    if not target.exists():
        with file_lock(target.with_name(target.name + ".lock")):
            if not target.exists():
                build_index(path, options, cutoff, log).save(target)
                log(f"cached the index as {target}")
    return FrameIndex.load(target, path)


class StreamedData:
    """Frames `rows` of an indexed HDF5 file, read from disk when a micro-batch asks for them."""

    def __init__(self, index: FrameIndex, rows: np.ndarray, atomic_numbers, cutoff: float, atomic_energies):
        self.index, self.rows = index, np.asarray(rows, np.int64)
        self.frames = index.frames()
        self.atomic_numbers, self.cutoff = tuple(atomic_numbers), cutoff
        self.atomic_energies = tuple(float(e) for e in atomic_energies)
        self.num_nodes = index.summaries.num_atoms[self.rows].astype(np.int64)
        self.num_edges = index.summaries.num_edges[self.rows].astype(np.int64)
        self.frames_read = 0

    def __len__(self) -> int:
        return len(self.rows)

    def micro_batch(self, indices, shape: BatchShape, dtype):
        frames = [self.frames.read(int(self.rows[i])) for i in indices]
        self.frames_read += len(frames)
        structures = to_structures(frames, self.atomic_numbers, self.cutoff)
        for i, s in zip(indices, structures):
            if s.num_edges != self.num_edges[i] or s.num_nodes != self.num_nodes[i]:
                raise TrainingDataError(f"{self.index.path} changed since it was indexed (frame {int(self.rows[i])}): "
                                        "delete its .mace-ase-*.npz index and start again")
        energies = np.array([f.energy for f in frames]) - reference_energies(frames, self.atomic_numbers, self.atomic_energies)
        return make_batch(range(len(frames)), structures, energies, [f.forces for f in frames], shape, dtype)
