"""Fixed-shape padded batches, so that training compiles once.

A :class:`BatchShape` is the card's (graphs per batch, nodes per graph, edges
per graph): every batch is padded to ``graphs`` graph slots (plus one spare
slot that owns the padding nodes), ``graphs * nodes_per_graph`` nodes and
``graphs * edges_per_graph`` edges. Structures are packed greedily in the
(shuffled) order until one capacity would overflow, so a batch can hold fewer
graphs than ``graphs`` when the molecules are large. One shape = one compiled
training step and one compiled evaluation step.

Data parallel training splits each optimiser step into M micro-batches (M = devices
x micro-batches per device) of ``ceil(batch_size / M)`` graph slots each, packed one
after the other in the shuffled order, at most ``batch_size`` graphs per step. An
epoch's :class:`Plan` says which frames each micro-batch takes; it depends on the
seed, the epoch, the sizes and M only, so every process of a run computes the same
plan and builds only its own micro-batches. With M = 1 it is the one-device packing.
"""

from __future__ import annotations

import math
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

    def micro(self, micro_batches: int) -> "BatchShape":
        """The shape of one of `micro_batches` parts of this batch (same capacities per graph)."""
        return BatchShape(math.ceil(self.graphs / micro_batches), self.nodes_per_graph, self.edges_per_graph)

    def fits(self, structures: Sequence[Structure] | None = None, num_nodes=None, num_edges=None) -> None:
        """Raise if some structure alone exceeds a whole batch."""
        if structures is not None:
            num_nodes = [s.num_nodes for s in structures]
            num_edges = [s.num_edges for s in structures]
        nodes, edges = np.asarray(num_nodes), np.asarray(num_edges)
        too_big = np.flatnonzero((nodes > self.num_nodes) | (edges > self.num_edges))
        if len(too_big):
            k = int(too_big[0])
            raise ValueError(
                f"structure {k} ({nodes[k]} atoms, {edges[k]} edges) does not fit in a batch of "
                f"{self.num_nodes} nodes / {self.num_edges} edges ({self.graphs} graph slots): "
                "raise nodes_per_graph/edges_per_graph"
            )


class Batch(NamedTuple):
    graph: Graph
    energy: np.ndarray  # [G] eV, E0 already subtracted (padding slots 0)
    forces: np.ndarray  # [N, 3] eV/Å (padding rows 0)
    graph_mask: np.ndarray  # [G] bool, real structures
    num_atoms: np.ndarray  # [G] float, atoms per structure (1 on padding slots)


class Plan(NamedTuple):
    """One epoch's micro-batches: micro-batch j is ``order[starts[j]:starts[j + 1]]``; step k is
    micro-batches ``k*M .. k*M + M - 1`` (some possibly empty)."""

    order: np.ndarray  # frame positions, in the order the epoch visits them
    starts: np.ndarray  # [num_steps * M + 1]
    micro_batches: int  # M

    @property
    def num_steps(self) -> int:
        return (len(self.starts) - 1) // self.micro_batches

    def micro(self, j: int) -> np.ndarray:
        return self.order[self.starts[j]: self.starts[j + 1]]

    def step(self, k: int) -> list[np.ndarray]:
        return [self.micro(k * self.micro_batches + r) for r in range(self.micro_batches)]


def plan_epoch(num_nodes, num_edges, shape: BatchShape, micro_batches: int = 1, batch_graphs: int | None = None,
               rng: np.random.Generator | None = None) -> Plan:
    """Greedy packing of the (shuffled) frames into steps of `micro_batches` micro-batches of `shape`.

    A micro-batch closes when it has ``shape.graphs`` graphs or the next frame would overflow
    its nodes or edges; a step closes after `micro_batches` micro-batches or `batch_graphs`
    graphs (default: all slots). With one micro-batch this is plain greedy batching.
    """
    num_nodes, num_edges = np.asarray(num_nodes), np.asarray(num_edges)
    order = np.arange(len(num_nodes)) if rng is None else rng.permutation(len(num_nodes))
    batch_graphs = shape.graphs * micro_batches if batch_graphs is None else batch_graphs
    starts, in_step, in_micro, in_batch, nodes, edges = [0], 0, 0, 0, 0, 0
    nodes_of, edges_of = num_nodes[order].tolist(), num_edges[order].tolist()
    for position, (n, e) in enumerate(zip(nodes_of, edges_of)):
        if in_micro and (in_micro == shape.graphs or nodes + n > shape.num_nodes or edges + e > shape.num_edges
                         or in_batch == batch_graphs):
            starts.append(position)
            in_step += 1
            if in_step == micro_batches or in_batch == batch_graphs:
                starts.extend([position] * (micro_batches - in_step))  # empty micro-batches end the step
                in_step, in_batch = 0, 0
            in_micro, nodes, edges = 0, 0, 0
        in_micro += 1
        in_batch += 1
        nodes += n
        edges += e
    if in_micro:
        starts.append(len(order))
        in_step += 1
        starts.extend([len(order)] * (micro_batches - in_step))
    return Plan(order.astype(np.int64), np.asarray(starts, np.int64), micro_batches)


def make_batch(indices: Sequence[int], structures: Sequence[Structure], energies: np.ndarray, forces: Sequence[np.ndarray],
               shape: BatchShape, dtype=np.float32) -> Batch:
    picked = [structures[i] for i in indices]
    graph = pad_graph(picked, shape.num_nodes, shape.num_edges, shape.num_graphs, dtype=dtype)
    G, N = shape.num_graphs, shape.num_nodes
    energy = np.zeros(G, dtype)
    energy[: len(indices)] = np.asarray(energies)[list(indices)]
    force = np.zeros((N, 3), dtype)
    n = sum(s.num_nodes for s in picked)
    if n:
        force[:n] = np.concatenate([forces[i] for i in indices])
    mask = np.zeros(G, bool)
    mask[: len(indices)] = True
    num_atoms = np.ones(G, dtype)
    num_atoms[: len(indices)] = [s.num_nodes for s in picked]
    return Batch(graph, energy, force, mask, num_atoms)


def stack_batches(batches: Sequence[Batch]) -> Batch:
    """Micro-batches of one shape -> one Batch with a leading micro-batch axis."""
    return Batch(*[_stack([getattr(b, f) for b in batches]) for f in Batch._fields])


def _stack(leaves):
    if isinstance(leaves[0], Graph):
        return Graph(*[np.stack([getattr(g, f) for g in leaves]) for f in Graph._fields])
    return np.stack(leaves)


class InMemoryData:
    """Structures with their targets, all in memory (the default, for data that fits)."""

    def __init__(self, structures: Sequence[Structure], energies: np.ndarray, forces: Sequence[np.ndarray]):
        self.structures, self.energies, self.forces = structures, np.asarray(energies), forces
        self.num_nodes = np.array([s.num_nodes for s in structures], np.int64)
        self.num_edges = np.array([s.num_edges for s in structures], np.int64)

    def __len__(self) -> int:
        return len(self.structures)

    def micro_batch(self, indices, shape: BatchShape, dtype) -> Batch:
        return make_batch(indices, self.structures, self.energies, self.forces, shape, dtype)


def iterate_batches(structures, energies, forces, shape: BatchShape, rng: np.random.Generator | None = None, dtype=np.float32) -> Iterator[Batch]:
    """Batches over all structures; shuffled when `rng` is given (training)."""
    data = InMemoryData(structures, energies, forces)
    plan = plan_epoch(data.num_nodes, data.num_edges, shape, rng=rng)
    for k in range(plan.num_steps):
        yield data.micro_batch(plan.micro(k), shape, dtype)
