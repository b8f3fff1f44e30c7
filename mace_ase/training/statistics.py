"""Dataset statistics that become part of the model config.

* per-element reference energies E0: "average" = least squares of the total
  energies against the element counts (what mlip calls "average"), or read
  from isolated-atom frames;
* the average number of neighbours: mean in-degree of the receivers over all
  atoms of the training set at the model cutoff;
* the energy scaling: mlip's default is mean 0, std 1 (nothing rescaled);
  "rms_forces" (mace-torch's choice) sets mean to the mean residual energy per
  atom and std to the RMS force component.

Everything is computed from a few numbers per frame (:class:`FrameSummaries`: element
counts, energy, edges, atoms with a neighbour, shortest edge, sum of squared forces), so
frames streamed from disk give the statistics in one pass and a cache of these numbers
gives them for any split. The least squares go through the normal equations, summed in
chunks of frames: memory does not grow with the data set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..neighbours import Structure, edge_lengths, neighbour_edges, species_indices
from .data import Frame, is_isolated_atom

CHUNK = 65536  # frames per block of the normal equations


@dataclass
class FrameSummaries:
    """One row per frame: what the statistics (and the batch packing) need."""

    atomic_numbers: tuple  # the columns of `counts`
    counts: np.ndarray  # [F, Z] atoms of each element
    energy: np.ndarray  # [F] eV, total
    num_atoms: np.ndarray  # [F]
    num_edges: np.ndarray  # [F] at the cutoff
    num_receivers: np.ndarray  # [F] atoms with at least one neighbour
    r_min: np.ndarray  # [F] shortest edge (NaN without edges)
    forces_sq: np.ndarray  # [F] sum of squared force components

    def rows(self, index) -> "FrameSummaries":
        return FrameSummaries(self.atomic_numbers, *[getattr(self, f)[index] for f in _ROW_FIELDS])

    def restricted_to(self, atomic_numbers: Sequence[int]) -> "FrameSummaries":
        """Counts over `atomic_numbers` (a superset of the elements present)."""
        columns = {z: k for k, z in enumerate(self.atomic_numbers)}
        counts = np.zeros((len(self.energy), len(atomic_numbers)), self.counts.dtype)
        for k, z in enumerate(atomic_numbers):
            if z in columns:
                counts[:, k] = self.counts[:, columns[z]]
        missing = sorted(set(self.atomic_numbers) - set(atomic_numbers))
        if missing and np.any(self.counts[:, [columns[z] for z in missing]]):
            raise ValueError(f"element(s) {missing} present but not in {tuple(atomic_numbers)}")
        return FrameSummaries(tuple(atomic_numbers), counts, *[getattr(self, f) for f in _ROW_FIELDS[1:]])


_ROW_FIELDS = ("counts", "energy", "num_atoms", "num_edges", "num_receivers", "r_min", "forces_sq")


def frame_summary(frame: Frame, structure: Structure) -> tuple[int, int, int, float, float]:
    """(atoms, edges, atoms with a neighbour, shortest edge, sum of squared forces) of one frame."""
    edges = structure.edges
    receivers = len(np.unique(edges.receivers))
    r_min = float(edge_lengths(structure.positions, structure.cell, edges).min()) if len(edges.senders) else float("nan")
    return len(frame.numbers), len(edges.senders), receivers, r_min, float(np.sum(np.square(frame.forces)))


def summarize(frames: Sequence[Frame], structures: Sequence[Structure], atomic_numbers: Sequence[int]) -> FrameSummaries:
    rows = np.array([frame_summary(f, s) for f, s in zip(frames, structures)], float).reshape(-1, 5)
    return FrameSummaries(
        tuple(atomic_numbers), element_counts(frames, atomic_numbers), np.array([f.energy for f in frames], float),
        rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64), rows[:, 2].astype(np.int64), rows[:, 3], rows[:, 4],
    )


def element_counts(frames: Sequence[Frame], atomic_numbers: Sequence[int]) -> np.ndarray:
    """[frames, elements] count matrix."""
    index = {z: k for k, z in enumerate(atomic_numbers)}
    counts = np.zeros((len(frames), len(atomic_numbers)))
    for i, frame in enumerate(frames):
        for z, c in zip(*np.unique(frame.numbers, return_counts=True)):
            counts[i, index[int(z)]] = c
    return counts


def reference_energies(frames: Sequence[Frame], atomic_numbers: Sequence[int], atomic_energies) -> np.ndarray:
    """sum over atoms of E0 per frame, element by element (the same floats whatever the number of frames)."""
    counts = element_counts(frames, atomic_numbers)
    total = np.zeros(len(frames))
    for k, e0 in enumerate(atomic_energies):
        total += counts[:, k] * float(e0)
    return total


def least_squares_energies(counts: np.ndarray, energies: np.ndarray) -> np.ndarray:
    """E0 minimising sum_frames (E - counts @ E0)^2, by the normal equations summed in chunks.

    The pseudo-inverse (rcond 1e-8) picks the minimum-norm solution when an element's count
    is tied to another's (then only their combination is determined, as with lstsq).
    """
    z = counts.shape[1]
    gram, rhs = np.zeros((z, z)), np.zeros(z)
    for start in range(0, len(energies), CHUNK):
        c = np.asarray(counts[start: start + CHUNK], float)
        gram += c.T @ c
        rhs += c.T @ np.asarray(energies[start: start + CHUNK], float)
    return np.linalg.pinv(gram, rcond=1e-8, hermitian=True) @ rhs


def average_atomic_energies(frames: Sequence[Frame], atomic_numbers: Sequence[int]) -> np.ndarray:
    """E0 per element minimising sum_frames (E - sum_atoms E0)^2 (least squares)."""
    return least_squares_energies(element_counts(frames, atomic_numbers), np.array([f.energy for f in frames]))


def isolated_atom_energies(frames: Sequence[Frame], atomic_numbers: Sequence[int]) -> np.ndarray:
    """E0 from single-atom frames (config_type=IsolatedAtom or any one-atom frame)."""
    found = {int(f.numbers[0]): f.energy for f in frames if len(f) == 1}
    missing = [z for z in atomic_numbers if z not in found]
    if missing:
        raise ValueError(f"no isolated-atom energy for element(s) {missing}")
    return np.array([found[z] for z in atomic_numbers])


def to_structures(frames: Sequence[Frame], atomic_numbers: Sequence[int], cutoff: float) -> list[Structure]:
    out = []
    for f in frames:
        edges = neighbour_edges(f.positions, f.cell, f.pbc, cutoff)
        out.append(Structure(np.asarray(f.positions, float), species_indices(f.numbers, atomic_numbers), np.asarray(f.cell, float), edges))
    return out


def average_num_neighbors(structures: Sequence[Structure]) -> float:
    """Mean number of edges per receiving atom (atoms with no neighbour are not counted, as in mlip)."""
    counts = [np.unique(s.edges.receivers, return_counts=True)[1] for s in structures]
    return float(np.mean(np.concatenate(counts)))


def dataset_atomic_numbers(frames: Sequence[Frame]) -> tuple[int, ...]:
    return tuple(sorted({int(z) for f in frames for z in f.numbers}))


def statistics_from_summaries(
    summaries: FrameSummaries,
    cutoff: float,
    atomic_energies: str = "average",
    isolated_atoms: Sequence[Frame] = (),
    scaling: str = "none",
) -> dict:
    """Everything a MaceConfig needs from the training set, as a dict of its field names."""
    zs = summaries.atomic_numbers
    if atomic_energies == "average":
        e0 = least_squares_energies(summaries.counts, summaries.energy)
    elif atomic_energies == "isolated":
        e0 = isolated_atom_energies(isolated_atoms, zs)
    elif atomic_energies == "zero":
        e0 = np.zeros(len(zs))
    else:
        raise ValueError(f"unknown atomic_energies '{atomic_energies}': choose average, isolated or zero")
    if scaling == "none":
        mean, std = 0.0, 1.0
    elif scaling == "rms_forces":
        residual = summaries.energy - _dot_chunked(summaries.counts, e0)
        mean = float(np.mean(residual / summaries.num_atoms))
        std = float(np.sqrt(np.sum(summaries.forces_sq) / (3.0 * np.sum(summaries.num_atoms))))
    else:
        raise ValueError(f"unknown scaling '{scaling}': choose 'none' or 'rms_forces'")
    with_edges = np.isfinite(summaries.r_min)
    return {
        "atomic_numbers": tuple(zs),
        "atomic_energies": tuple(float(e) for e in e0),
        "cutoff": float(cutoff),
        "avg_num_neighbors": float(np.sum(summaries.num_edges) / np.sum(summaries.num_receivers)),
        "avg_r_min": float(np.mean(summaries.r_min[with_edges])),
        "scaling_mean": mean,
        "scaling_std": std,
    }


def _dot_chunked(counts, e0) -> np.ndarray:
    return np.concatenate([np.asarray(counts[s: s + CHUNK], float) @ e0 for s in range(0, len(counts), CHUNK)] or [np.zeros(0)])


def scaling_statistics(frames: Sequence[Frame], atomic_numbers: Sequence[int], atomic_energies, mode: str = "none") -> tuple[float, float]:
    """(scaling_mean, scaling_std): 'none' -> (0, 1) as mlip; 'rms_forces' as mace-torch."""
    if mode == "none":
        return 0.0, 1.0
    if mode != "rms_forces":
        raise ValueError(f"unknown scaling '{mode}': choose 'none' or 'rms_forces'")
    counts = element_counts(frames, atomic_numbers)
    residual = np.array([f.energy for f in frames]) - counts @ np.asarray(atomic_energies)
    per_atom = residual / counts.sum(axis=1)
    forces = np.concatenate([f.forces.reshape(-1) for f in frames])
    return float(per_atom.mean()), float(np.sqrt(np.mean(forces**2)))


def compute_statistics(
    frames: Sequence[Frame],
    cutoff: float = 5.0,
    atomic_energies: str = "average",
    isolated_atoms: Sequence[Frame] = (),
    scaling: str = "none",
    atomic_numbers: Sequence[int] | None = None,
) -> dict:
    """The statistics of frames held in memory (same numbers as from streamed summaries)."""
    frames = [f for f in frames if not is_isolated_atom(f)]
    zs = tuple(atomic_numbers) if atomic_numbers is not None else dataset_atomic_numbers(list(frames) + list(isolated_atoms))
    summaries = summarize(frames, to_structures(frames, zs, cutoff), zs)
    return statistics_from_summaries(summaries, cutoff, atomic_energies, isolated_atoms, scaling)
