"""The padded, fixed-shape graph that every jitted model function takes.

Conventions (the same as ASE's ``neighbour_list('ijS')`` with i = sender,
j = receiver): the edge vector from sender to receiver is

    r_ij = positions[receiver] - positions[sender] + cell_offsets @ cells[graph]

Messages flow from senders to receivers. Padding: extra nodes and edges carry
``node_mask``/``edge_mask`` False; padding edges may point at any node (use a
padding node) and are removed from every sum, value and gradient alike.
Several structures can share one graph (a batch): ``node_graph`` says which
structure, and so which cell, each node belongs to.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np


class Graph(NamedTuple):
    positions: jax.Array  # [N, 3] Å
    species: jax.Array  # [N] int32, index into config.atomic_numbers (0 on padding)
    senders: jax.Array  # [E] int32
    receivers: jax.Array  # [E] int32
    cell_offsets: jax.Array  # [E, 3] integer image offsets S, stored as float
    cells: jax.Array  # [G, 3, 3] Å, rows are lattice vectors (zeros if no cell)
    node_graph: jax.Array  # [N] int32, structure index of each node
    node_mask: jax.Array  # [N] bool
    edge_mask: jax.Array  # [E] bool

    @property
    def num_graphs(self) -> int:
        return self.cells.shape[0]


def edge_vectors(positions, cells, graph: Graph):
    """r_ij for every edge, from (possibly strained) positions and cells."""
    edge_cells = cells[graph.node_graph[graph.senders]]  # [E, 3, 3]
    shifts = jax.numpy.einsum("ei,eij->ej", graph.cell_offsets, edge_cells)
    return positions[graph.receivers] - positions[graph.senders] + shifts


def single_graph(positions, species, senders, receivers, cell_offsets=None, cell=None) -> Graph:
    """An unpadded one-structure graph from NumPy arrays (tests, small scripts)."""
    positions = np.asarray(positions)
    n, e = len(positions), len(senders)
    return Graph(
        positions=positions,
        species=np.asarray(species, dtype=np.int32),
        senders=np.asarray(senders, dtype=np.int32),
        receivers=np.asarray(receivers, dtype=np.int32),
        cell_offsets=np.zeros((e, 3), positions.dtype) if cell_offsets is None else np.asarray(cell_offsets, positions.dtype),
        cells=np.zeros((1, 3, 3), positions.dtype) if cell is None else np.asarray(cell, positions.dtype)[None],
        node_graph=np.zeros(n, np.int32),
        node_mask=np.ones(n, bool),
        edge_mask=np.ones(e, bool),
    )
