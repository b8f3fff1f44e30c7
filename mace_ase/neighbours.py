"""Neighbour lists (matscipy) and their packing into padded, fixed-shape graphs.

The compiled model sees arrays whose shapes are capacities, not sizes: a
structure with 21 atoms and 380 edges runs in a graph built for, say, 32 nodes
and 512 edges. Capacities only grow, in steps, so an MD run or an
optimisation compiles a handful of times at most.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from matscipy.neighbours import neighbour_list

from .errors import UnknownElementError
from .model.graph import Graph




@dataclass(frozen=True)
class Edges:
    """Directed pairs (sender i, receiver j, integer image shift S), as ASE's 'ijS'."""

    senders: np.ndarray
    receivers: np.ndarray
    shifts: np.ndarray


def _bounding_cell(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float):
    """A non-singular cell for matscipy, keeping the periodic lattice vectors.

    Each non-periodic direction gets a vector orthogonal to the periodic ones,
    long enough to hold every atom (plus the cutoff) so that no fake image
    appears; positions are shifted into it, which leaves all r_ij unchanged.
    """
    periodic = [cell[k] for k in range(3) if pbc[k]]
    if periodic:
        q, _ = np.linalg.qr(np.array(periodic).T, mode="complete")
        free = list(q.T[len(periodic):])
    else:
        free = list(np.eye(3))
    new_cell = np.array(cell, dtype=float)
    origin = np.zeros(3)
    for k in range(3):
        if pbc[k]:
            continue
        direction = free.pop(0)
        projections = positions @ direction
        extent = projections.max() - projections.min() if len(positions) else 0.0
        new_cell[k] = direction * (extent + 2.0 * cutoff + 1.0)
        origin -= direction * (projections.min() - cutoff - 0.5 if len(positions) else 0.0)
    return new_cell, positions + origin


def neighbour_edges(positions, cell, pbc, cutoff: float) -> Edges:
    """All directed pairs closer than `cutoff`, periodic images included, no self-pairs."""
    positions = np.asarray(positions, dtype=float)
    cell = np.asarray(cell, dtype=float).reshape(3, 3)
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    if not pbc.all():
        cell, positions = _bounding_cell(positions, cell, pbc, cutoff)
    i, j, S = neighbour_list("ijS", positions=positions, cell=cell, pbc=pbc, cutoff=cutoff)
    return Edges(i.astype(np.int32), j.astype(np.int32), S.astype(np.int32))


def species_indices(numbers, atomic_numbers: Sequence[int]) -> np.ndarray:
    """Atomic numbers -> indices into the model's element list; unknown ones are named."""
    from ase.data import chemical_symbols

    lookup = {z: k for k, z in enumerate(atomic_numbers)}
    unknown = sorted({int(z) for z in numbers} - set(lookup))
    if unknown:
        raise UnknownElementError(
            f"element(s) {', '.join(chemical_symbols[z] for z in unknown)} not supported by this model; "
            f"it knows {' '.join(chemical_symbols[z] for z in atomic_numbers)}"
        )
    return np.array([lookup[int(z)] for z in numbers], dtype=np.int32)


# --------------------------------------------------------------------------
# Padding
# --------------------------------------------------------------------------


def grown_capacity(needed: int, current: int = 0, factor: float = 1.25, minimum: int = 8) -> int:
    """The capacity to use for `needed` items: keep `current` if it fits, else grow by `factor`."""
    if needed <= current:
        return current
    target = max(minimum, math.ceil(needed * factor))
    # Round up to a multiple of 8 so that nearby sizes share a shape.
    return int(math.ceil(target / 8) * 8)


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
