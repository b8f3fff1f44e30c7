"""Fixed-shape padded batches, so that training compiles once.

A :class:`BatchShape` is the card's (graphs per batch, nodes per graph, edges
per graph): every batch is padded to ``graphs`` graph slots (plus one spare
slot that owns the padding nodes), ``graphs * nodes_per_graph`` nodes and
``graphs * edges_per_graph`` edges. Structures are packed greedily in the
(shuffled) order until one capacity would overflow, so a batch can hold fewer
graphs than ``graphs`` when the molecules are large. One shape = one compiled
training step and one compiled evaluation step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from ..model.graph import Graph
from ..neighbours import Structure, pad_graph


@dataclass(frozen=True)
class BatchShape:
    graphs: int = 64
    nodes_per_graph: int = 32
    edges_per_graph: int = 288

    @property
    def num_graphs(self) -> int:  # + 1 slot for the padding nodes
        return self.graphs + 1

    @property
    def num_nodes(self) -> int:
        return self.graphs * self.nodes_per_graph

    @property
    def num_edges(self) -> int:
        return self.graphs * self.edges_per_graph

    def fits(self, structures: Sequence[Structure]) -> None:
        """Raise if some structure alone exceeds a whole batch."""
        for k, s in enumerate(structures):
            if s.num_nodes > self.num_nodes or s.num_edges > self.num_edges:
                raise ValueError(
                    f"structure {k} ({s.num_nodes} atoms, {s.num_edges} edges) does not fit in a batch of "
                    f"{self.num_nodes} nodes / {self.num_edges} edges: raise nodes_per_graph/edges_per_graph"
                )


class Batch(NamedTuple):
    graph: Graph
    energy: np.ndarray  # [G] eV, E0 already subtracted (padding slots 0)
    forces: np.ndarray  # [N, 3] eV/Å (padding rows 0)
    graph_mask: np.ndarray  # [G] bool, real structures
    num_atoms: np.ndarray  # [G] float, atoms per structure (1 on padding slots)


def pack(order: Sequence[int], structures: Sequence[Structure], shape: BatchShape) -> list[list[int]]:
    """Greedy packing of `order` into index lists that respect the capacities."""
    batches, current, nodes, edges = [], [], 0, 0
    for i in order:
        s = structures[i]
        if current and (len(current) == shape.graphs or nodes + s.num_nodes > shape.num_nodes or edges + s.num_edges > shape.num_edges):
            batches.append(current)
            current, nodes, edges = [], 0, 0
        current.append(int(i))
        nodes += s.num_nodes
        edges += s.num_edges
    if current:
        batches.append(current)
    return batches


def make_batch(indices: Sequence[int], structures: Sequence[Structure], energies: np.ndarray, forces: Sequence[np.ndarray],
               shape: BatchShape, dtype=np.float32) -> Batch:
    picked = [structures[i] for i in indices]
    graph = pad_graph(picked, shape.num_nodes, shape.num_edges, shape.num_graphs, dtype=dtype)
    G, N = shape.num_graphs, shape.num_nodes
    energy = np.zeros(G, dtype)
    energy[: len(indices)] = energies[list(indices)]
    force = np.zeros((N, 3), dtype)
    n = sum(s.num_nodes for s in picked)
    if n:
        force[:n] = np.concatenate([forces[i] for i in indices])
    mask = np.zeros(G, bool)
    mask[: len(indices)] = True
    num_atoms = np.ones(G, dtype)
    num_atoms[: len(indices)] = [s.num_nodes for s in picked]
    return Batch(graph, energy, force, mask, num_atoms)


def iterate_batches(structures, energies, forces, shape: BatchShape, rng: np.random.Generator | None = None, dtype=np.float32) -> Iterator[Batch]:
    """Batches over all structures; shuffled when `rng` is given (training)."""
    order = np.arange(len(structures)) if rng is None else rng.permutation(len(structures))
    for indices in pack(order, structures, shape):
        yield make_batch(indices, structures, energies, forces, shape, dtype)
