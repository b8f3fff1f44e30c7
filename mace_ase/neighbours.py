"""Neighbour lists (matscipy) and their packing into padded, fixed-shape graphs.

The compiled model sees arrays whose shapes are size buckets, not sizes: a
structure with 21 atoms and 380 edges runs in a graph of 24 nodes and 392
edges, the smallest rungs of a geometric ladder (x1.25) that hold it. The
bucket depends on the structure alone, so one geometry always meets the same
compiled program, and an MD run whose edge count wanders across a rung uses
two programs at most.

Edges come in one canonical order (by receiver, sender, image shift), whichever
list produced them, so the same geometry gives bit-identical results after
any history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from matscipy.neighbours import neighbour_list

from .errors import InvalidStructureError, StructureTooLargeError, UnknownElementError
from .model.graph import Graph


@dataclass(frozen=True)
class Edges:
    """Directed pairs (sender i, receiver j, integer image shift S), as ASE's 'ijS'."""

    senders: np.ndarray
    receivers: np.ndarray
    shifts: np.ndarray


def _close_gaps(coordinates: np.ndarray, cutoff: float) -> np.ndarray:
    """Shift coordinates along one free axis so that no empty gap is wider than cutoff + 1.

    Atoms on either side of a gap wider than the cutoff cannot be neighbours, and
    stay more than cutoff apart after the shift; pairs on one side keep their
    vectors. A molecule with a far-away fragment thus gets a small grid.
    """
    order = np.argsort(coordinates)
    gaps = np.diff(coordinates[order])
    excess = np.maximum(gaps - (cutoff + 1.0), 0.0)
    if not excess.any():
        return np.zeros_like(coordinates)
    shift = np.empty_like(coordinates)
    shift[order] = -np.concatenate([[0.0], np.cumsum(excess)])
    return shift


def _bounding_cell(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float):
    """A non-singular cell for matscipy, keeping the periodic lattice vectors.

    Each non-periodic direction gets a vector orthogonal to the periodic ones,
    long enough to hold every atom (plus the cutoff) so that no fake image
    appears; positions are shifted into it (empty gaps wider than the cutoff
    closed up), which leaves every pair within the cutoff unchanged.
    """
    periodic = [cell[k] for k in range(3) if pbc[k]]
    if periodic:
        q, _ = np.linalg.qr(np.array(periodic).T, mode="complete")
        free = list(q.T[len(periodic):])
    else:
        free = list(np.eye(3))
    new_cell = np.array(cell, dtype=float)
    positions = np.array(positions, dtype=float)
    for k in range(3):
        if pbc[k]:
            continue
        direction = free.pop(0)
        projections = positions @ direction
        shift = _close_gaps(projections, cutoff)
        projections = projections + shift
        positions += np.outer(shift - projections.min() + cutoff + 0.5, direction)
        extent = projections.max() - projections.min()
        new_cell[k] = direction * (extent + 2.0 * cutoff + 1.0)
    return new_cell, positions


# Lists are built this far beyond the radius asked for, so that every pair at the cutoff is
# decided by the caller's own length test (the same for a fresh list and a skin list), not
# by matscipy's rounding.
LIST_MARGIN = 1e-6  # Å

# Grid cells matscipy may allocate for a periodic cell before we refuse: ~8 bytes each, and
# it slows to seconds long before that (a small molecule in a 4,000 Å box takes 1.4 s).
MAX_GRID_CELLS = 50_000_000


def canonical_order(edges: Edges) -> Edges:
    """Edges sorted by receiver, then sender, then image shift: one order for one set of pairs."""
    S = edges.shifts
    order = np.lexsort((S[:, 2], S[:, 1], S[:, 0], edges.senders, edges.receivers))
    return Edges(edges.senders[order], edges.receivers[order], edges.shifts[order])


def neighbour_edges(positions, cell, pbc, cutoff: float) -> Edges:
    """All directed pairs closer than `cutoff`, periodic images included, no self-pairs, in canonical order."""
    positions = np.asarray(positions, dtype=float)
    cell = np.asarray(cell, dtype=float).reshape(3, 3)
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    if not pbc.all():
        cell, positions = _bounding_cell(positions, cell, pbc, cutoff)
    heights = 1.0 / np.maximum(np.linalg.norm(np.linalg.inv(cell).T, axis=1), 1e-300)  # lattice-plane spacings
    grid = float(np.prod(np.maximum(heights / cutoff, 1.0)))
    if grid > MAX_GRID_CELLS:
        raise StructureTooLargeError(
            f"the cell ({' x '.join(f'{h:.4g}' for h in heights)} Å between lattice planes, pbc={pbc.tolist()}) "
            f"would need a neighbour grid of ~{grid:.2g} cells of {cutoff:g} Å for {len(positions)} atoms; "
            "a periodic cell mostly filled with vacuum: shrink it, or set pbc=False along the empty directions"
        )
    try:
        i, j, S = neighbour_list("ijS", positions=positions, cell=cell, pbc=pbc, cutoff=cutoff)
    except MemoryError as error:
        raise StructureTooLargeError(
            f"the neighbour list of {len(positions)} atoms (cell {np.round(heights, 3).tolist()} Å between lattice "
            f"planes, cutoff {cutoff:g} Å) does not fit in memory ({error}); split the structure or shrink the cell"
        ) from None
    return canonical_order(Edges(i.astype(np.int32), j.astype(np.int32), S.astype(np.int32)))


def species_indices(numbers, atomic_numbers: Sequence[int]) -> np.ndarray:
    """Atomic numbers -> indices into the model's element list; unknown ones are named."""
    numbers = np.asarray(numbers, dtype=np.int64)
    lookup = np.full(max(max(atomic_numbers), int(numbers.max(initial=0))) + 1, -1, np.int32)
    lookup[list(atomic_numbers)] = np.arange(len(atomic_numbers), dtype=np.int32)
    species = lookup[np.clip(numbers, 0, None)]
    if (species < 0).any() or (numbers < 0).any():
        from ase.data import chemical_symbols

        unknown = sorted({int(z) for z in numbers[(species < 0) | (numbers < 0)]})
        names = [chemical_symbols[z] if 0 <= z < len(chemical_symbols) else f"Z={z}" for z in unknown]
        raise UnknownElementError(
            f"element(s) {', '.join(names)} not supported by this model; "
            f"it knows {' '.join(chemical_symbols[z] for z in atomic_numbers)}"
        )
    return species


# --------------------------------------------------------------------------
# Padding
# --------------------------------------------------------------------------


BUCKET_RATIO = 1.25


def size_bucket(needed: int, ratio: float = BUCKET_RATIO, minimum: int = 8) -> int:
    """The smallest rung of the ladder ceil8(minimum * ratio^k), k = 0, 1, ..., that holds `needed`.

    A function of `needed` alone: a structure's padded shape never depends on what was
    evaluated before it. Rungs are multiples of 8, so at most 25 % (plus 7) is padding.
    """
    rung, k = 0, 0
    while rung < needed:
        rung = 8 * math.ceil(minimum * ratio**k / 8)
        k += 1
    return max(rung, 8 * math.ceil(minimum / 8))


@dataclass(frozen=True)
class Structure:
    """One structure ready for the model: species indices, positions, cell, edges."""

    positions: np.ndarray  # [n, 3]
    species: np.ndarray  # [n] int32
    cell: np.ndarray  # [3, 3]
    edges: Edges

    @property
    def num_nodes(self) -> int:
        return len(self.positions)

    @property
    def num_edges(self) -> int:
        return len(self.edges.senders)


def pad_graph(structures: Sequence[Structure], num_nodes: int, num_edges: int, num_graphs: int | None = None, dtype=np.float64) -> Graph:
    """Pack structures into one Graph of the given capacities (NumPy arrays).

    Padding nodes sit at the origin with species 0 and belong to the last
    graph slot; padding edges loop on the last padding node (node 0 when
    there is no spare node). Masks remove both from every sum.
    """
    num_graphs = len(structures) if num_graphs is None else num_graphs
    total_nodes = sum(s.num_nodes for s in structures)
    total_edges = sum(s.num_edges for s in structures)
    if total_nodes > num_nodes or total_edges > num_edges or len(structures) > num_graphs:
        raise ValueError(
            f"capacity too small: {total_nodes}/{num_nodes} nodes, {total_edges}/{num_edges} edges, "
            f"{len(structures)}/{num_graphs} graphs"
        )
    positions = np.zeros((num_nodes, 3), dtype)
    species = np.zeros(num_nodes, np.int32)
    node_graph = np.full(num_nodes, num_graphs - 1, np.int32)
    node_mask = np.zeros(num_nodes, bool)
    pad_node = num_nodes - 1 if total_nodes < num_nodes else 0
    senders = np.full(num_edges, pad_node, np.int32)
    receivers = np.full(num_edges, pad_node, np.int32)
    shifts = np.zeros((num_edges, 3), dtype)
    edge_mask = np.zeros(num_edges, bool)
    cells = np.zeros((num_graphs, 3, 3), dtype)

    node_start = edge_start = 0
    for g, s in enumerate(structures):
        n, e = s.num_nodes, s.num_edges
        nodes, edges = slice(node_start, node_start + n), slice(edge_start, edge_start + e)
        positions[nodes] = s.positions
        species[nodes] = s.species
        node_graph[nodes] = g
        node_mask[nodes] = True
        senders[edges] = s.edges.senders + node_start
        receivers[edges] = s.edges.receivers + node_start
        shifts[edges] = s.edges.shifts
        edge_mask[edges] = True
        cells[g] = s.cell
        node_start += n
        edge_start += e
    return Graph(positions, species, senders, receivers, shifts, cells, node_graph, node_mask, edge_mask)


def structure_from_atoms(atoms, atomic_numbers: Sequence[int], cutoff: float) -> Structure:
    """ASE Atoms -> Structure (species lookup and neighbour list)."""
    species = species_indices(atoms.numbers, atomic_numbers)
    positions = np.asarray(atoms.positions, dtype=float)
    cell = np.asarray(atoms.cell.array, dtype=float)
    edges = neighbour_edges(positions, cell, atoms.pbc, cutoff)
    return Structure(positions, species, cell, edges)


# --------------------------------------------------------------------------
# Input checks and the Verlet (skin) list
# --------------------------------------------------------------------------

# Two atoms closer than this are "at the same position": no physical input
# gets there, and the edge direction (hence every l > 0 feature) is undefined.
MIN_DISTANCE = 1e-3  # Å


def check_structure(positions, cell, pbc) -> None:
    """Refuse what the model cannot evaluate, before any neighbour or JAX work."""
    positions = np.asarray(positions, dtype=float)
    if positions.shape[0] == 0:
        raise InvalidStructureError("the structure is empty (0 atoms)")
    bad = ~np.isfinite(positions).all(axis=1)
    if bad.any():
        raise InvalidStructureError(
            f"non-finite (NaN or inf) positions for atom(s) {', '.join(map(str, np.flatnonzero(bad)[:10]))}"
        )
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    if pbc.any():
        periodic = np.asarray(cell, dtype=float).reshape(3, 3)[pbc]
        if not np.isfinite(periodic).all():
            raise InvalidStructureError("the cell has non-finite (NaN or inf) entries")
        # Volume (area, length) spanned by the periodic lattice vectors.
        measure = math.sqrt(max(np.linalg.det(periodic @ periodic.T), 0.0))
        lengths = np.linalg.norm(periodic, axis=1)
        if measure <= 1e-6 * max(1.0, float(np.prod(lengths))) or (lengths < MIN_DISTANCE).any():
            raise InvalidStructureError(
                f"the cell is degenerate along its periodic direction(s) {np.flatnonzero(pbc).tolist()} "
                f"(lattice vectors {np.round(periodic, 6).tolist()} span zero volume); "
                "give a proper cell or set pbc=False there"
            )


def edge_lengths(positions: np.ndarray, cell: np.ndarray, edges: Edges) -> np.ndarray:
    """|r_ij| for every edge, on the host (cheap NumPy)."""
    vectors = positions[edges.receivers] - positions[edges.senders] + edges.shifts @ cell
    return np.sqrt(np.einsum("ij,ij->i", vectors, vectors))


def check_overlaps(lengths: np.ndarray, edges: Edges, min_distance: float = MIN_DISTANCE) -> None:
    """Two atoms (or an atom and a periodic image) closer than `min_distance` are refused by name."""
    close = lengths < min_distance
    if close.any():
        k = int(np.flatnonzero(close)[0])
        raise InvalidStructureError(
            f"atoms {edges.senders[k]} and {edges.receivers[k]} are {lengths[k]:.2e} Å apart "
            f"(closer than {min_distance} Å): two atoms at the same position"
        )


class VerletList:
    """A neighbour list at cutoff + skin, reused while it still holds every pair within cutoff.

    Reuse is exact as long as no atom moved more than skin / 2 since the list
    was built (two atoms then approached by less than skin) and the cell,
    atomic numbers and pbc are unchanged. Pairs that are listed but lie beyond
    the cutoff must be dropped by the caller (the calculator does it on the host);
    the edges are in canonical order, so the kept ones are too.
    skin = 0 rebuilds whenever anything moved.
    """

    def __init__(self, cutoff: float, skin: float = 0.5):
        if skin < 0:
            raise ValueError(f"skin must be >= 0, got {skin}")
        self.cutoff, self.skin = float(cutoff), float(skin)
        self.builds = 0
        self._key = None
        self._reference = None
        self.edges: Edges | None = None

    def update(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, numbers: np.ndarray) -> tuple[Edges, bool]:
        """The edges for these positions; the flag says whether the list was rebuilt."""
        key = (np.asarray(cell, float).tobytes(), np.asarray(pbc, bool).tobytes(), np.asarray(numbers).tobytes())
        if self._key == key and self._reference.shape == positions.shape:
            moved = np.max(np.sum((positions - self._reference) ** 2, axis=1))
            if moved <= (0.5 * self.skin) ** 2:
                return self.edges, False
        self.edges = neighbour_edges(positions, cell, pbc, self.cutoff + self.skin + LIST_MARGIN)
        self._key, self._reference = key, positions.copy()
        self.builds += 1
        return self.edges, True
