"""MaceCalculator: MACE as an ASE calculator, compiled once per size bucket.

    atoms.calc = MaceCalculator("model.zip", dtype="float64")
    atoms.get_forces()

How a call reaches the model:
  * Neighbours: a Verlet list built at cutoff + skin is reused while no atom moved more
    than skin / 2; the host keeps only the pairs closer than the cutoff (lengths it computes
    anyway for the overlap check), in one canonical order (receiver, sender, image shift).
    The model thus sees the same edges, in the same order, as a fresh list would give:
    one geometry, one result, bit for bit, whatever the calculator saw before.
  * Shapes: atoms and edges are padded to size buckets (``neighbours.size_bucket``, a
    x1.25 ladder) chosen from the structure alone. Compiled programs are kept per bucket,
    at most ``max_executables``, least recently used dropped.
  * Results of the last ``result_cache`` structures are kept (keyed by atomic numbers,
    positions, cell and pbc), so a calculator shared by several Atoms (NEB images) answers
    a state it has seen from memory; ``calculate(atoms, properties, all_changes)`` always
    runs the model.
  * JAX's persistent compilation cache is on by default (``mace_ase.compilation_cache``):
    a second process loads compiled programs from disk.
  * Memory that reading the model and each compilation freed goes back to the operating
    system (``mace_ase.heap``): the program's buffers do not come on top of it.

One calculator may be shared between threads: every entry point holds a lock (calls
run one at a time).
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import logging
import os
import threading
import time
import warnings
from collections import OrderedDict
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from . import compilation_cache as _compilation_cache
from .errors import InvalidOptionError, InvalidStructureError, MaceAseError, StressNotAvailableError, StructureTooLargeError
from .heap import release_freed_memory
from .model import energy_forces_stress, node_energies, node_features
from .model.graph import Graph
from .neighbours import (
    LIST_MARGIN,
    MIN_DISTANCE,
    Edges,
    Structure,
    VerletList,
    check_overlaps,
    check_structure,
    edge_lengths,
    neighbour_edges,
    pad_graph,
    size_bucket,
    species_indices,
)
from .weights import load_model

logger = logging.getLogger(__name__)

DTYPES = {"float32": np.float32, "float64": np.float64}


class IgnoredInputWarning(UserWarning):
    """The structure carries information the model has no input for (total charge, spin, ...)."""


def state_key(atoms) -> tuple:
    """What a result depends on: atomic numbers, positions, cell, pbc (exact bytes)."""
    return (
        np.asarray(atoms.numbers).tobytes(),
        np.ascontiguousarray(atoms.positions, dtype=float).tobytes(),
        np.ascontiguousarray(atoms.cell.array, dtype=float).tobytes(),
        np.asarray(atoms.pbc, dtype=bool).tobytes(),
    )


def ignored_inputs(atoms) -> dict[str, str]:
    """Inputs a MACE model without charge or spin embeddings cannot honour, by kind: a description."""
    found = {}
    charge = atoms.info.get("charge", atoms.info.get("total_charge"))
    if charge is not None and float(charge) != 0:
        found["charge"] = f"total charge {charge} (atoms.info['charge'])"
    for key in ("spin", "multiplicity"):  # a multiplicity, as MLIPAudit and fairchem use it; 0 read as closed-shell
        spin = atoms.info.get(key)
        if spin is not None and float(spin) not in (0.0, 1.0):
            found["spin"] = f"spin multiplicity {spin} (atoms.info[{key!r}])"
    if "initial_charges" in atoms.arrays and np.any(atoms.arrays["initial_charges"] != 0):
        found["initial_charges"] = f"initial charges on the atoms (sum {atoms.arrays['initial_charges'].sum():g})"
    if "initial_magmoms" in atoms.arrays and np.any(atoms.arrays["initial_magmoms"] != 0):
        found["initial_magmoms"] = f"initial magnetic moments on the atoms (sum {np.sum(atoms.arrays['initial_magmoms']):g})"
    return found


def _out_of_memory(error: BaseException) -> bool:
    text = str(error)
    return isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


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
    compilation_cache: JAX's persistent compilation cache, process-wide (``mace_ase.compilation_cache``):
        None (default: $MACE_ASE_COMPILATION_CACHE, else JAX's own setting, else the user cache
        folder), a folder, or False (do not turn it on).
    max_executables: compiled programs kept (one per kind and size bucket), least recently used dropped.
    result_cache: results of this many recent structures kept (0: none).
    hessian_block: Hessian rows computed together (memory grows ~linearly with it; on a CPU speed
        hardly does; accelerators gain more).
    batch_atoms: ``calculate_batch`` packs at most this many atoms into one call.
    atoms, directory, label: as for any ASE calculator.

    Attributes: ``allowed_atomic_numbers`` (the model's elements), ``compile_count``,
    ``timings`` (seconds in neighbours, padding, compile, model; number of model calls),
    ``neighbour_builds``, ``result_cache_hits``.
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
        compilation_cache: str | os.PathLike | bool | None = None,
        max_executables: int = 16,
        result_cache: int = 16,
        hessian_block: int = 1,
        batch_atoms: int = 2048,
        head: str | None = None,
        atoms=None,
        directory: str | os.PathLike = ".",
        label: str | None = None,
        **unknown,
    ):
        if unknown:
            valid = [p for p in inspect.signature(MaceCalculator.__init__).parameters if p not in ("self", "unknown")]
            hints = [f"{name!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(name, valid, 1))
                     else repr(name) for name in unknown]
            raise InvalidOptionError(
                f"MaceCalculator got unknown option(s) {', '.join(hints)}; valid options: {', '.join(valid)}"
            )
        if str(dtype) not in DTYPES:
            raise InvalidOptionError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        for name, value, least in (("max_executables", max_executables, 1), ("result_cache", result_cache, 0),
                                   ("hessian_block", hessian_block, 1), ("batch_atoms", batch_atoms, 1)):
            if int(value) != value or value < least:
                raise InvalidOptionError(f"{name} must be an integer >= {least}, got {value!r}")
        super().__init__(atoms=atoms, directory=directory, label=label)
        self.dtype = DTYPES[str(dtype)]
        self.compilation_cache = _compilation_cache.enable(compilation_cache)
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
        self.max_executables = int(max_executables)
        self.result_cache = int(result_cache)
        self.hessian_block = int(hessian_block)
        self.batch_atoms = int(batch_atoms)
        self.compile_count = 0
        self.result_cache_hits = 0
        self.timings = {"neighbours": 0.0, "padding": 0.0, "compile": 0.0, "model": 0.0, "calls": 0}
        self._executables: OrderedDict[tuple, object] = OrderedDict()  # (kind, nodes, edges, graphs) -> program
        self._recent: OrderedDict[tuple, dict] = OrderedDict()  # state_key -> results
        self._warned: set[str] = set()
        self._lock = threading.RLock()
        with self._precision():
            self.params = jax.device_put(jax.tree.map(self._cast, self.model.params))
        release_freed_memory()  # what reading the model file freed
        self._bodies = {
            "energy_forces": self._energy_forces(False),
            "energy_forces_stress": self._energy_forces(True),
            "hessian": self._hessian_rows,
            "features": self._node_features,
        }

    # ---------------------------------------------------------------- setup

    @property
    def allowed_atomic_numbers(self) -> set[int]:
        """The atomic numbers this model knows (MLIPAudit and other ASE tools ask for it)."""
        return {int(z) for z in self.config.atomic_numbers}

    @property
    def neighbour_builds(self) -> int:
        return self.neighbours.builds

    @property
    def executables(self) -> list[tuple]:
        """The compiled programs held: (kind, nodes, edges, graphs), least recently used first."""
        return list(self._executables)

    def _cast(self, leaf):
        leaf = np.asarray(leaf)
        return leaf.astype(self.dtype) if np.issubdtype(leaf.dtype, np.floating) else leaf

    def _precision(self):
        """float64 needs JAX's x64 mode; enable it locally rather than for the whole process."""
        return jax.enable_x64(True) if self.dtype == np.float64 else contextlib.nullcontext()

    # ------------------------------------------------------- compiled bodies

    def _energy_forces(self, compute_stress: bool):
        config = self._device_config

        def energy_forces(params, graph):
            return energy_forces_stress(params, config, graph, compute_stress)

        return energy_forces

    def _hessian_rows(self, params, graph, rows):
        """Rows `rows` of d^2E/dx dx, [R, 3N]: Hessian-vector products (forward over reverse mode),
        `hessian_block` at a time.

        Each product redoes one force call and its tangent, so peak memory is about three force
        calls per row of the block (jax.hessian takes all 3N tangents at once; keeping a
        linearisation would double the memory for no speed on CPU: measured on 81 waters).
        """
        config = self._device_config

        def energy(positions):
            return jnp.sum(node_energies(params, config, graph, positions, graph.cells))

        force_field = jax.grad(energy)
        positions = graph.positions

        def row(k):
            unit = jnp.zeros(positions.size, positions.dtype).at[k].set(1.0).reshape(positions.shape)
            return jax.jvp(force_field, (positions,), (unit,))[1].reshape(-1)

        return jax.lax.map(row, rows, batch_size=min(self.hessian_block, rows.shape[0]))

    def _node_features(self, params, graph):
        features, _ = node_features(params, self._device_config, graph)
        return [{str(ir): v for ir, v in layer.items()} for layer in features]

    def _executable(self, kind: str, graph: Graph, *extra):
        """The compiled program for this kind and padded shape: cached, or compiled now (LRU-bounded)."""
        key = (kind, graph.positions.shape[0], graph.senders.shape[0], graph.cells.shape[0]) + tuple(e.shape[0] for e in extra)
        program = self._executables.get(key)
        if program is not None:
            self._executables.move_to_end(key)
            return program
        body = self._bodies[kind]

        def traced(params, graph, *extra):  # a new function per shape: dropping the program frees JAX's caches of it
            return body(params, graph, *extra)

        traced.__name__ = kind  # names the program (logs, persistent cache entries)
        start = time.perf_counter()
        self.compile_count += 1
        logger.info("mace-ase: compiling %s for %d nodes, %d edges, %d graph(s), %s (compilation #%d)",
                    kind, key[1], key[2], key[3], np.dtype(self.dtype).name, self.compile_count)
        with self._precision():
            program = jax.jit(traced).lower(self.params, graph, *extra).compile()
        release_freed_memory()  # what compiling freed, before the program's buffers come on top
        self.timings["compile"] += time.perf_counter() - start
        self._executables[key] = program
        while len(self._executables) > self.max_executables:
            self._executables.popitem(last=False)
        return program

    # ------------------------------------------------------------- helpers

    def _warn_ignored(self, atoms) -> None:
        for kind, what in ignored_inputs(atoms).items():
            if kind not in self._warned:
                self._warned.add(kind)
                warnings.warn(
                    f"mace-ase: this structure declares {what}, but the model has no charge or spin input: "
                    "it is evaluated as given (neutral, non-magnetic). Warned once per calculator.",
                    IgnoredInputWarning, stacklevel=4,
                )

    def _structure(self, atoms, verlet: bool) -> Structure:
        """Checks, species and neighbour list (the Verlet list, or a fresh one) for one Atoms."""
        start = time.perf_counter()
        positions = np.asarray(atoms.positions, dtype=float)
        cell = np.asarray(atoms.cell.array, dtype=float)
        pbc = np.asarray(atoms.pbc, dtype=bool)
        check_structure(positions, cell, pbc)
        species = species_indices(atoms.numbers, self.config.atomic_numbers)
        if verlet:
            edges, _ = self.neighbours.update(positions, cell, pbc, atoms.numbers)
        else:
            edges = neighbour_edges(positions, cell, pbc, self.cutoff + LIST_MARGIN)
        lengths = edge_lengths(positions, cell, edges)
        check_overlaps(lengths, edges, self.min_distance)
        # The host decides which pairs are within the cutoff, by one rule for every list: the
        # model sees the same edges, in canonical order, however the list was built.
        keep = lengths < self.cutoff
        edges = Edges(edges.senders[keep], edges.receivers[keep], edges.shifts[keep])
        self.timings["neighbours"] += time.perf_counter() - start
        # E, F, stress and Hessian are translation invariant; centring keeps float32 edge
        # vectors accurate for molecules far from the origin.
        return Structure(positions - positions.mean(axis=0), species, cell, edges)

    def _pad(self, structures: Sequence[Structure], batch: bool = False) -> Graph:
        """One padded graph in the size bucket of these structures (a function of their sizes only)."""
        start = time.perf_counter()
        nodes = size_bucket(sum(s.num_nodes for s in structures))
        edges = size_bucket(sum(s.num_edges for s in structures))
        graphs = size_bucket(len(structures)) if batch else len(structures)
        graph = pad_graph(structures, nodes, edges, graphs, dtype=self.dtype)
        with self._precision():
            graph = jax.device_put(graph)  # one transfer for the whole pytree
        self.timings["padding"] += time.perf_counter() - start
        return graph

    def _too_large(self, structures: Sequence[Structure], graph: Graph, kind: str, error, key) -> StructureTooLargeError:
        atoms = sum(s.num_nodes for s in structures)
        edges = sum(s.num_edges for s in structures)
        program = self._executables.get(key)
        estimate = ""
        with contextlib.suppress(Exception):
            memory = program.memory_analysis()
            total = memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
            estimate = f", needing ~{total / 2**30:.2f} GB by XLA's estimate"
        what = "the Hessian" if kind == "hessian" else "this evaluation"
        return StructureTooLargeError(
            f"out of memory: {what} of {atoms} atoms and {edges} edges (padded to {graph.positions.shape[0]} nodes, "
            f"{graph.senders.shape[0]} edges{estimate}) does not fit ({str(error).splitlines()[0][:200]}). "
            "Use a machine with more memory, float32 instead of float64, a smaller structure"
            + (", or a smaller hessian_block" if kind == "hessian" else ", or fewer structures per batch (batch_atoms)")
        )

    def _run(self, kind: str, graph: Graph, structures: Sequence[Structure], *extra):
        try:
            program = self._executable(kind, graph, *extra)
            start = time.perf_counter()
            with self._precision():
                out = jax.device_get(program(self.params, graph, *extra))
        except (jax.errors.JaxRuntimeError, MemoryError) as error:
            if _out_of_memory(error):
                key = (kind, graph.positions.shape[0], graph.senders.shape[0], graph.cells.shape[0])
                raise self._too_large(structures, graph, kind, error, key + tuple(e.shape[0] for e in extra)) from None
            raise
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

    def _remember(self, key: tuple, results: dict) -> None:
        if self.result_cache:
            self._recent[key] = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in results.items()}
            self._recent.move_to_end(key)
            while len(self._recent) > self.result_cache:
                self._recent.popitem(last=False)

    def _recall(self, key: tuple, properties) -> dict | None:
        cached = self._recent.get(key)
        if cached is None or not all(p in cached for p in properties):
            return None
        self._recent.move_to_end(key)
        self.result_cache_hits += 1
        return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in cached.items()}

    # ---------------------------------------------------------------- ASE API

    def get_property(self, name, atoms=None, allow_calculation=True):
        with self._lock:  # check_state, calculate and reading results belong together
            return super().get_property(name, atoms, allow_calculation)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        with self._lock:
            super().calculate(atoms, properties, system_changes)
            atoms = self.atoms
            periodic = bool(np.all(atoms.pbc))
            if "stress" in properties and not periodic:
                raise StressNotAvailableError(
                    f"stress needs a fully periodic cell; this system has pbc={atoms.pbc.tolist()}"
                )
            self._warn_ignored(atoms)
            key = state_key(atoms)
            # A call declaring everything changed (a fresh calculator, after reset(), or a caller
            # forcing a recompute, as MLIPAudit's inference_speed does to time the model) runs it.
            forced = set(all_changes) <= set(system_changes or ())
            cached = None if forced else self._recall(key, properties)
            if cached is not None:
                self.results = cached
                return
            structure = self._structure(atoms, verlet=True)
            graph = self._pad([structure])
            # Periodic systems always get the stress: one compiled program per run, not two.
            out = self._run("energy_forces_stress" if periodic else "energy_forces", graph, [structure])
            self.results = self._results(out, [structure], periodic)[0]
            self._remember(key, self.results)

    def calculate_batch(self, atoms_list: Sequence, properties: Sequence[str] = ("energy", "forces")) -> list[dict]:
        """Evaluate many structures, packed into few compiled calls; one result dict per structure.

        Every structure gets energy, free_energy, energies and forces; stress too when asked
        for (then every structure must be fully periodic). Forces and stress have the Atoms'
        constraints applied, as ``atoms.get_forces()`` / ``get_stress()`` do. Structures are
        packed into calls of at most ``batch_atoms`` atoms (a larger one runs alone); a call
        that runs out of memory is split in two and retried.
        """
        atoms_list = list(atoms_list)
        if not atoms_list:
            return []
        compute_stress = "stress" in properties
        kind = "energy_forces_stress" if compute_stress else "energy_forces"
        with self._lock:
            if compute_stress:
                for k, atoms in enumerate(atoms_list):
                    if not np.all(atoms.pbc):
                        raise StressNotAvailableError(
                            f"stress needs fully periodic cells; structure {k} has pbc={atoms.pbc.tolist()}"
                        )
            structures = []
            for k, atoms in enumerate(atoms_list):
                try:
                    structures.append(self._structure(atoms, verlet=False))
                except MaceAseError as error:  # say which structure, keep the error's class
                    raise type(error)(f"structure {k}: {error}") from None
                self._warn_ignored(atoms)
            chunks, chunk, size = [], [], 0
            for structure in structures:
                if chunk and size + structure.num_nodes > self.batch_atoms:
                    chunks.append(chunk)
                    chunk, size = [], 0
                chunk.append(structure)
                size += structure.num_nodes
            chunks.append(chunk)
            results = []
            for chunk in chunks:
                results += self._batch_chunk(chunk, kind, compute_stress)
        for atoms, result in zip(atoms_list, results):
            for constraint in atoms.constraints:
                constraint.adjust_forces(atoms, result["forces"])
                if compute_stress and hasattr(constraint, "adjust_stress"):
                    constraint.adjust_stress(atoms, result["stress"])
        return results

    def _batch_chunk(self, structures: list[Structure], kind: str, stress: bool) -> list[dict]:
        graph = self._pad(structures, batch=True)
        try:
            out = self._run(kind, graph, structures)
        except StructureTooLargeError:
            if len(structures) == 1:
                raise
            half = len(structures) // 2
            logger.info("mace-ase: batch of %d structures out of memory; split in two", len(structures))
            return self._batch_chunk(structures[:half], kind, stress) + self._batch_chunk(structures[half:], kind, stress)
        return self._results(out, structures, stress)

    def get_hessian(self, atoms=None, indices: Sequence[int] | None = None) -> np.ndarray:
        """d^2E / dx_i dx_j in eV/Å^2 (autodiff, exact for the model): [3N, 3N], or with `indices`
        the rows of those atoms only, [3 len(indices), 3N] (a partial Hessian, as ase.vibrations'
        ``indices``).

        Computed in blocks of ``hessian_block`` rows: peak memory a few force calls.
        """
        with self._lock:
            atoms = self._atoms(atoms)
            n = len(atoms)
            indices = np.arange(n) if indices is None else np.asarray(indices, dtype=int).reshape(-1)
            if indices.size == 0 or indices.min() < -n or indices.max() >= n:
                raise InvalidOptionError(f"indices must name atoms of this structure (0..{n - 1}), got {indices.tolist()}")
            indices = indices % n
            structure = self._structure(atoms, verlet=False)
            graph = self._pad([structure])
            wanted = (3 * indices[:, None] + np.arange(3)).reshape(-1)
            rows = np.zeros(size_bucket(len(wanted)), np.int32)  # padded with row 0, dropped below
            rows[: len(wanted)] = wanted
            out = np.asarray(self._run("hessian", graph, [structure], rows), dtype=float)[: len(wanted)]
        padded = graph.positions.shape[0]
        return out.reshape(len(wanted), padded, 3)[:, :n, :].reshape(len(wanted), 3 * n)

    def get_descriptors(self, atoms=None, invariants_only: bool = True, num_layers: int = -1) -> np.ndarray:
        """Per-atom node features of the first `num_layers` layers (-1: all), like mace-torch.

        invariants_only: the scalar (0e) channels of each layer, [N, layers * channels];
        otherwise every irrep of each layer flattened, layer after layer.
        """
        with self._lock:
            atoms = self._atoms(atoms)
            structure = self._structure(atoms, verlet=False)
            layers = self._run("features", self._pad([structure]), [structure])
        num_layers = len(layers) if num_layers == -1 else int(num_layers)
        if not 1 <= num_layers <= len(layers):
            raise ValueError(f"num_layers must be -1 or 1..{len(layers)}, got {num_layers}")
        n = len(atoms)
        blocks = []
        for layer in layers[:num_layers]:
            keys = ["0e"] if invariants_only else list(layer)
            blocks += [np.asarray(layer[k][:n], dtype=float).reshape(n, -1) for k in keys]
        return np.concatenate(blocks, axis=-1)
