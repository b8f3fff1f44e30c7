"""MaceCalculator: MACE as an ASE calculator, compiled once per run.

The model sees fixed-shape padded graphs (``mace_ase.neighbours.pad_graph``)
whose capacities only grow (x1.25), so MD and optimisations compile once or a
few times. A Verlet list built at cutoff + skin is reused while no atom moved
more than skin / 2; listed pairs beyond the cutoff are dropped on the host
(lengths it computes anyway for the overlap check), so the model sees exactly
the pairs of a fresh list at the cutoff.

    atoms.calc = MaceCalculator("model.zip", dtype="float64")
    atoms.get_forces()

Persistent compilation cache (compiled code reused across processes): set
``JAX_COMPILATION_CACHE_DIR=/path`` in the environment, or call
``jax.config.update("jax_compilation_cache_dir", "/path")``, or pass
``compilation_cache="/path"``. A cached program is still traced (and counted
in ``compile_count``) but not recompiled by XLA.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from .errors import InvalidStructureError, MaceAseError
from .model import energy_forces_stress, node_energies, node_features
from .model.graph import Graph
from .neighbours import (
    MIN_DISTANCE,
    Edges,
    Structure,
    VerletList,
    check_overlaps,
    check_structure,
    edge_lengths,
    grown_capacity,
    neighbour_edges,
    pad_graph,
    species_indices,
)
from .weights import load_model

logger = logging.getLogger(__name__)

DTYPES = {"float32": np.float32, "float64": np.float64}


class MaceCalculator(Calculator):
    """ASE calculator for a MACE model (mace-ase archive, registered name, or MaceModel).

    Parameters
    ----------
    model: None (the bundled default), a registered name, an archive path, or a MaceModel.
    dtype: "float32" (fast, MD) or "float64" (finite differences, phonons, tight relaxations).
    accept_license: passed to ``mace_ase.weights.load_model`` for licence-gated weights.
    head: which head of a multi-head model (mace-torch files); None: the first that is not 'pt_head'.
    skin: Verlet skin in Å; the list is rebuilt when an atom moved more than skin / 2. 0 disables.
    min_distance: two atoms closer than this (Å) are refused as overlapping.
    compilation_cache: a directory for JAX's persistent compilation cache (None: leave JAX's setting).
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]
    default_parameters: dict = {}

    def __init__(
        self,
        model=None,
        *,
        dtype: str = "float32",
        accept_license: bool | None = None,
        skin: float = 0.5,
        min_distance: float = MIN_DISTANCE,
        compilation_cache: str | os.PathLike | None = None,
        head: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if str(dtype) not in DTYPES:
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        self.dtype = DTYPES[str(dtype)]
        if compilation_cache is not None:
            jax.config.update("jax_compilation_cache_dir", os.fspath(compilation_cache))
        self.model = load_model(model, accept_license=accept_license, head=head)
        self.config = self.model.config
        # The per-atom constants E0[Z] + scaling_mean (often ~1e3 eV) are added on the host in
        # float64: summed in float32 on the device they would cost ~1e-3 eV of total-energy precision.
        self._device_config = self.config.replace(
            atomic_energies=(0.0,) * self.config.num_species, scaling_mean=0.0
        )
        self._reference_energies = np.asarray(self.config.atomic_energies, float) + self.config.scaling_mean
        self.cutoff = float(self.model.cutoff)
        self.min_distance = float(min_distance)
        self.neighbours = VerletList(self.cutoff, skin)
        self.compile_count = 0
        self.timings = {"neighbours": 0.0, "padding": 0.0, "model": 0.0, "calls": 0}
        self._capacity = {}  # purpose -> (nodes, edges, graphs); only grows
        with self._precision():
            self.params = jax.device_put(jax.tree.map(self._cast, self.model.params))
        self._evaluate = {
            stress: jax.jit(self._counted(self._energy_forces(stress)))
            for stress in (False, True)
        }
        self._hessian = jax.jit(self._counted(self._energy_hessian))
        self._features = jax.jit(self._counted(self._node_features))

    # ---------------------------------------------------------------- setup

    def _cast(self, leaf):
        leaf = np.asarray(leaf)
        return leaf.astype(self.dtype) if np.issubdtype(leaf.dtype, np.floating) else leaf

    def _precision(self):
        """float64 needs JAX's x64 mode; enable it locally rather than for the whole process."""
        return jax.enable_x64(True) if self.dtype == np.float64 else contextlib.nullcontext()

    @property
    def neighbour_builds(self) -> int:
        return self.neighbours.builds

    def _counted(self, fn):
        """Count real traces (each one is a compilation, or a persistent-cache hit)."""

        def traced(params, graph):
            self.compile_count += 1
            logger.info(
                "mace-ase: compiling %s for %d nodes, %d edges, %d graph(s), %s (compilation #%d)",
                getattr(fn, "__name__", "model"), graph.positions.shape[0], graph.senders.shape[0],
                graph.cells.shape[0], np.dtype(self.dtype).name, self.compile_count,
            )
            return fn(params, graph)

        traced.__name__ = getattr(fn, "__name__", "model")  # names the jit (logs, cache files)
        return traced

    # ------------------------------------------------------- jitted bodies

    def _energy_forces(self, compute_stress: bool):
        config = self._device_config

        def energy_forces(params, graph):
            return energy_forces_stress(params, config, graph, compute_stress)

        energy_forces.__name__ = "energy_forces_stress" if compute_stress else "energy_forces"
        return energy_forces

    def _energy_hessian(self, params, graph):

        def energy(positions):
            return jnp.sum(node_energies(params, self._device_config, graph, positions, graph.cells))

        return jax.hessian(energy)(graph.positions)  # [N, 3, N, 3]

    def _node_features(self, params, graph):
        features, _ = node_features(params, self._device_config, graph)
        return [{str(ir): v for ir, v in layer.items()} for layer in features]

    # ------------------------------------------------------------- helpers

    def _structure(self, atoms, verlet: bool) -> Structure:
        """Checks, species and (Verlet or fresh) neighbour list for one Atoms."""
        start = time.perf_counter()
        positions = np.asarray(atoms.positions, dtype=float)
        cell = np.asarray(atoms.cell.array, dtype=float)
        pbc = np.asarray(atoms.pbc, dtype=bool)
        check_structure(positions, cell, pbc)
        species = species_indices(atoms.numbers, self.config.atomic_numbers)
        if verlet:
            edges, _ = self.neighbours.update(positions, cell, pbc, atoms.numbers)
        else:
            edges = neighbour_edges(positions, cell, pbc, self.cutoff)
        lengths = edge_lengths(positions, cell, edges)
        check_overlaps(lengths, edges, self.min_distance)
        if verlet:
            # Only the pairs within the cutoff go to the device (the skin's extra pairs would be
            # masked there anyway): fewer edges to pad and to compute, all real ones first.
            keep = lengths < self.cutoff
            edges = Edges(edges.senders[keep], edges.receivers[keep], edges.shifts[keep])
        self.timings["neighbours"] += time.perf_counter() - start
        # E, F, stress and Hessian are translation invariant; centring keeps float32 edge
        # vectors accurate for molecules far from the origin.
        return Structure(positions - positions.mean(axis=0), species, cell, edges)

    def _pad(self, structures: Sequence[Structure], purpose: str) -> Graph:
        """One padded graph at this purpose's capacities (grown when needed, never shrunk)."""
        start = time.perf_counter()
        nodes, edges, graphs = self._capacity.get(purpose, (0, 0, 0))
        nodes = grown_capacity(sum(s.num_nodes for s in structures), nodes)
        edges = grown_capacity(sum(s.num_edges for s in structures), edges)
        graphs = len(structures) if purpose != "batch" else grown_capacity(len(structures), graphs, minimum=1)
        self._capacity[purpose] = (nodes, edges, graphs)
        graph = pad_graph(structures, nodes, edges, graphs, dtype=self.dtype)
        with self._precision():
            graph = jax.device_put(graph)  # one transfer for the whole pytree
        self.timings["padding"] += time.perf_counter() - start
        return graph

    def _run(self, fn, graph):
        start = time.perf_counter()
        with self._precision():
            out = jax.device_get(fn(self.params, graph))
        self.timings["model"] += time.perf_counter() - start
        self.timings["calls"] += 1
        return out

    def _results(self, out: dict, structures: Sequence[Structure], stress: bool) -> list[dict]:
        """Device output -> one ASE results dict per structure, reference energies added in float64."""
        results, start = [], 0
        for g, structure in enumerate(structures):
            nodes = slice(start, start + structure.num_nodes)
            start += structure.num_nodes
            energies = np.asarray(out["energies"][nodes], float) + self._reference_energies[structure.species]
            energy = float(energies.sum())
            result = {
                "energy": energy,
                "free_energy": energy,
                "energies": energies,
                "forces": np.array(out["forces"][nodes], dtype=float),
            }
            if stress:
                result["stress"] = full_3x3_to_voigt_6_stress(np.array(out["stress"][g], dtype=float))
            results.append(result)
        return results

    def _atoms(self, atoms):
        if atoms is None:
            atoms = self.atoms
        if atoms is None:
            raise InvalidStructureError("no atoms given and none attached to this calculator")
        return atoms

    # ---------------------------------------------------------------- ASE API

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        periodic = bool(np.all(atoms.pbc))
        if "stress" in properties and not periodic:
            raise InvalidStructureError(
                f"stress needs a fully periodic cell; this system has pbc={atoms.pbc.tolist()}"
            )
        structure = self._structure(atoms, verlet=True)
        graph = self._pad([structure], "single")
        # Periodic systems always get the stress: one compiled program per run, not two.
        out = self._run(self._evaluate[periodic], graph)
        self.results = self._results(out, [structure], periodic)[0]

    def calculate_batch(self, atoms_list: Sequence, properties: Sequence[str] = ("energy", "forces")) -> list[dict]:
        """Evaluate many structures in one compiled call; a list of result dicts (as ``calc.results``).

        Every structure gets energy, free_energy, energies and forces; stress too when asked
        for (then every structure must be fully periodic).
        """
        atoms_list = list(atoms_list)
        if not atoms_list:
            return []
        compute_stress = "stress" in properties
        if compute_stress:
            for k, atoms in enumerate(atoms_list):
                if not np.all(atoms.pbc):
                    raise InvalidStructureError(
                        f"stress needs fully periodic cells; structure {k} has pbc={atoms.pbc.tolist()}"
                    )
        structures = []
        for k, atoms in enumerate(atoms_list):
            try:
                structures.append(self._structure(atoms, verlet=False))
            except MaceAseError as error:  # say which structure, keep the error's class
                raise type(error)(f"structure {k}: {error}") from None
        graph = self._pad(structures, "batch")
        out = self._run(self._evaluate[compute_stress], graph)
        return self._results(out, structures, compute_stress)

    def get_hessian(self, atoms=None) -> np.ndarray:
        """d^2E / dx_i dx_j as a [3N, 3N] array in eV/Å^2 (autodiff, exact for the model)."""
        atoms = self._atoms(atoms)
        graph = self._pad([self._structure(atoms, verlet=False)], "hessian")
        n = len(atoms)
        hessian = np.asarray(self._run(self._hessian, graph), dtype=float)[:n, :, :n, :]
        return hessian.reshape(3 * n, 3 * n)

    def get_descriptors(self, atoms=None, invariants_only: bool = True, num_layers: int = -1) -> np.ndarray:
        """Per-atom node features of the first `num_layers` layers (-1: all), like mace-torch.

        invariants_only: the scalar (0e) channels of each layer, [N, layers * channels];
        otherwise every irrep of each layer flattened, layer after layer.
        """
        atoms = self._atoms(atoms)
        graph = self._pad([self._structure(atoms, verlet=False)], "features")
        layers = self._run(self._features, graph)
        num_layers = len(layers) if num_layers == -1 else int(num_layers)
        if not 1 <= num_layers <= len(layers):
            raise ValueError(f"num_layers must be -1 or 1..{len(layers)}, got {num_layers}")
        n = len(atoms)
        blocks = []
        for layer in layers[:num_layers]:
            keys = ["0e"] if invariants_only else list(layer)
            blocks += [np.asarray(layer[k][:n], dtype=float).reshape(n, -1) for k in keys]
        return np.concatenate(blocks, axis=-1)
