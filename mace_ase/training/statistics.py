"""Dataset statistics that become part of the model config.

* per-element reference energies E0: "average" = least squares of the total
  energies against the element counts (what mlip calls "average"), or read
  from isolated-atom frames;
* the average number of neighbours: mean in-degree of the receivers over all
  atoms of the training set at the model cutoff;
* the energy scaling: mlip's default is mean 0, std 1 (nothing rescaled);
  "rms_forces" (mace-torch's choice) sets mean to the mean residual energy per
  atom and std to the RMS force component.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..neighbours import Structure, neighbour_edges, species_indices
from .data import Frame, is_isolated_atom


def element_counts(frames: Sequence[Frame], atomic_numbers: Sequence[int]) -> np.ndarray:
    """[frames, elements] count matrix."""
    index = {z: k for k, z in enumerate(atomic_numbers)}
    counts = np.zeros((len(frames), len(atomic_numbers)))
    for i, frame in enumerate(frames):
        for z, c in zip(*np.unique(frame.numbers, return_counts=True)):
            counts[i, index[int(z)]] = c
    return counts


def average_atomic_energies(frames: Sequence[Frame], atomic_numbers: Sequence[int]) -> np.ndarray:
    """E0 per element minimising sum_frames (E - sum_atoms E0)^2 (least squares, rcond 1e-8)."""
    counts = element_counts(frames, atomic_numbers)
    energies = np.array([f.energy for f in frames])
    solution, *_ = np.linalg.lstsq(counts, energies, rcond=1e-8)
    return solution


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


def average_min_distance(structures: Sequence[Structure]) -> float:
    """Mean over structures of the shortest edge length."""
    from ..neighbours import edge_lengths

    mins = [edge_lengths(s.positions, s.cell, s.edges).min() for s in structures if s.num_edges]
    return float(np.mean(mins))


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


def dataset_atomic_numbers(frames: Sequence[Frame]) -> tuple[int, ...]:
    return tuple(sorted({int(z) for f in frames for z in f.numbers}))


def compute_statistics(
    frames: Sequence[Frame],
    cutoff: float = 5.0,
    atomic_energies: str = "average",
    isolated_atoms: Sequence[Frame] = (),
    scaling: str = "none",
    atomic_numbers: Sequence[int] | None = None,
) -> dict:
    """Everything a MaceConfig needs from the training set, as a dict of its field names."""
    frames = [f for f in frames if not is_isolated_atom(f)]
    zs = tuple(atomic_numbers) if atomic_numbers is not None else dataset_atomic_numbers(list(frames) + list(isolated_atoms))
    if atomic_energies == "average":
        e0 = average_atomic_energies(frames, zs)
    elif atomic_energies == "isolated":
        e0 = isolated_atom_energies(isolated_atoms, zs)
    elif atomic_energies == "zero":
        e0 = np.zeros(len(zs))
    else:
        raise ValueError(f"unknown atomic_energies '{atomic_energies}': choose average, isolated or zero")
    structures = to_structures(frames, zs, cutoff)
    mean, std = scaling_statistics(frames, zs, e0, scaling)
    return {
        "atomic_numbers": zs,
        "atomic_energies": tuple(float(e) for e in e0),
        "cutoff": float(cutoff),
        "avg_num_neighbors": average_num_neighbors(structures),
        "avg_r_min": average_min_distance(structures),
        "scaling_mean": mean,
        "scaling_std": std,
    }
