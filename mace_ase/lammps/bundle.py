"""A MACE model as a lammps-jax bundle: export, load, evaluate one rank's atoms.

lammps-jax (``pair_style jax/kk``) runs a JAX function exported as StableHLO
inside LAMMPS. Per MPI rank it calls the function on fixed-capacity arrays:

    positions[max_atoms, 3]   owned atoms first, then ghost atoms, then padding
    species[max_atoms]        LAMMPS type - 1
    nlocal, nghost            int32 scalars
    senders, receivers, mask  [max_edges] the neighbour list: row atom i, neighbour j

Ghost atoms are explicit periodic images, so the model sees no cell and no
shifts. MACE with L layers sees L cutoffs deep, so the bundle is exported with
``n_hops = L``: LAMMPS keeps a ghost shell L * cutoff (+ skin) wide, lists
neighbours for ghost rows too, and the energy counts owned atoms only; the
forces on ghost rows are summed into their owners by LAMMPS (newton on).
"""

from __future__ import annotations

import base64
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import MaceAseError, UnknownElementError

BUNDLE_KEY = "mace_ase"  # our own section of the bundle JSON (lammps-jax ignores it)
PROGRAM = "energy_and_forces_mlir"
DTYPES = {"float32": np.float32, "float64": np.float64}


class CapacityError(MaceAseError, ValueError):
    """A rank holds more atoms or neighbour pairs than the bundle's fixed capacities."""


class MissingDependencyError(MaceAseError, ImportError):
    """An optional package (the `lammps` extra) is not installed."""


class BundleError(MaceAseError, ValueError):
    """A file that is not a usable mace-ase lammps-jax bundle."""


def require(module: str, extra: str = "lammps"):
    """Import an optional dependency, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(
            f"{module} is not installed ({error}); install it with: pip install 'mace-ase[{extra}]'"
        ) from None


def element_numbers(elements: Sequence[str | int]) -> tuple[int, ...]:
    """'H,O' / ['H', 'O'] / [1, 8] -> (1, 8): LAMMPS type t is element t - 1 of this list."""
    from ase.data import atomic_numbers, chemical_symbols

    if isinstance(elements, str):
        elements = [e for e in elements.replace(",", " ").split() if e]
    numbers = []
    for element in elements:
        if isinstance(element, (int, np.integer)) and 0 < int(element) < len(chemical_symbols):
            numbers.append(int(element))
        elif isinstance(element, str) and element.strip().capitalize() in atomic_numbers:
            numbers.append(atomic_numbers[element.strip().capitalize()])
        else:
            raise UnknownElementError(f"{element!r} is not a chemical element")
    if not numbers:
        raise UnknownElementError("no elements given: list one per LAMMPS atom type, e.g. H,C,N,O")
    return tuple(numbers)


def type_species(elements: Sequence[int], model_numbers: Sequence[int]) -> np.ndarray:
    """LAMMPS type - 1 -> the model's species index; an element the model lacks is named."""
    from ase.data import chemical_symbols

    missing = [z for z in elements if z not in model_numbers]
    if missing:
        raise UnknownElementError(
            f"the LAMMPS type list {' '.join(chemical_symbols[z] for z in elements)} has "
            f"{', '.join(sorted({chemical_symbols[z] for z in missing}))}, which this model does not know; "
            f"it knows {' '.join(chemical_symbols[z] for z in model_numbers)}"
        )
    return np.array([list(model_numbers).index(z) for z in elements], np.int32)


def energy_function(model, elements: Sequence[int], dtype=np.float64):
    """Per-atom MACE energies [max_atoms] in lammps-jax's calling convention.

    lammps-jax lists pairs as (senders = row atom i, receivers = neighbour j); the
    row atom gathers what its neighbours send, so in mace-ase's graph the neighbour
    is the sender. Padding edges (index max_atoms) are masked and pointed at atom 0.
    """
    import jax
    import jax.numpy as jnp

    from ..model.mace import DEFAULT_MESSAGE_CHUNK_BYTES, Graph, node_energies

    config = model.config
    species_of_type = type_species(elements, config.atomic_numbers)
    params = jax.tree.map(lambda a: np.asarray(a, dtype) if np.issubdtype(np.asarray(a).dtype, np.floating) else np.asarray(a), model.params)

    def energies(positions, types, graph):
        num_atoms, num_edges = positions.shape[0], graph.senders.shape[0]
        mask = graph.edge_mask
        species = jnp.asarray(species_of_type)[jnp.clip(types, 0, len(species_of_type) - 1)]
        mace_graph = Graph(
            positions=positions,
            species=species,
            senders=jnp.where(mask, graph.receivers, 0),
            receivers=jnp.where(mask, graph.senders, 0),
            cell_offsets=jnp.zeros((num_edges, 3), positions.dtype),
            cells=jnp.zeros((1, 3, 3), positions.dtype),
            node_graph=jnp.zeros(num_atoms, jnp.int32),
            node_mask=jnp.ones(num_atoms, bool),  # the exporter counts owned rows only
            edge_mask=mask,
        )
        # Parameters become constants of the exported program.
        return node_energies(jax.tree.map(jnp.asarray, params), config, mace_graph,
                             message_chunk_bytes=DEFAULT_MESSAGE_CHUNK_BYTES)

    return energies


def export_bundle(
    model,
    elements: Sequence[str | int] | str,
    max_atoms: int,
    max_edges: int,
    dtype: str = "float64",
    *,
    path: str | os.PathLike | None = None,
    platform: str = "cpu",
    accept_license: bool | None = None,
) -> dict:
    """Export `model` as a lammps-jax bundle for ``pair_style jax/kk`` (and ``mace-ase lammps``).

    model: anything ``mace_ase.weights.load_model`` takes (the licence gate applies).
    elements: the element of each LAMMPS atom type, in type order ('H,C,N,O').
    max_atoms, max_edges: capacities per MPI rank, owned + ghost atoms and directed
        pairs within the cutoff among them (ghost rows included). Overflow is an error.
    dtype: "float64" (energy conservation, parity) or "float32".
    path: where to write the JSON bundle (atomically); the bundle dict is returned either way.
    platform: "cpu" or "cuda", the PJRT plugin that will run it.
    """
    import jax

    from ..fileio import atomic_write
    from ..weights import derived_metadata, load_model

    export = require("lammps_jax.export")
    if str(dtype) not in DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if int(max_atoms) < 1 or int(max_edges) < 1:
        raise CapacityError(f"capacities must be positive, got max_atoms={max_atoms}, max_edges={max_edges}")
    model = load_model(model, accept_license=accept_license)
    numbers = element_numbers(elements)
    fn = energy_function(model, numbers, DTYPES[str(dtype)])
    config = model.config
    with jax.enable_x64(str(dtype) == "float64"), tempfile.TemporaryDirectory() as tmp:
        bundle = export.export_model(
            energy_fn=fn,
            path=Path(tmp) / "bundle.json",
            max_atoms=int(max_atoms),
            max_edges=int(max_edges),
            cutoff=float(config.cutoff),
            unit_style="metal",
            precision=str(dtype),
            n_hops=config.num_layers,
            n_species=len(numbers),
            platform=platform,
        )
    # An exported model is a derived model: it keeps a restricted source licence (weights.derived_metadata).
    metadata = {key: model.metadata[key] for key in ("name", "source") if key in model.metadata}
    metadata.update(derived_metadata(model))
    bundle[BUNDLE_KEY] = {
        "elements": list(numbers),
        "num_layers": config.num_layers,
        "cutoff": float(config.cutoff),
        # A derived model keeps its source's licence (and its gate: see load_bundle).
        "model": metadata,
    }
    if path is not None:
        atomic_write(path, json.dumps(bundle, indent=1, sort_keys=True) + "\n")
    return bundle


def suggested_capacity(needed: int) -> int:
    """20 % headroom, rounded up to a multiple of 64: atom counts per rank fluctuate during MD."""
    return int(math.ceil(1.2 * needed / 64) * 64)


@dataclass
class Counts:
    nlocal: int
    nghost: int
    edges: int


class LammpsBundle:
    """A loaded bundle: its contract, its element map, and its compiled program.

    The program is lammps-jax's serialized StableHLO (read back with
    ``lammps_jax.export.program_text``), compiled once for JAX's CPU client or,
    with `pjrt`, for a PJRT plugin (lammps-jax-pjrt-cpu, the runtime of
    ``pair_style jax/kk`` on CPU).
    """

    def __init__(self, bundle: dict, name: str = "bundle", pjrt: str | os.PathLike | None = None):
        self.bundle, self.name = bundle, name
        contract = bundle.get("contract", {})
        ours = bundle.get(BUNDLE_KEY)
        if ours is None or PROGRAM + "_b64" not in bundle.get("programs", {}):
            raise BundleError(f"{name} is not a mace-ase lammps-jax bundle (export one with `mace-ase export-lammps`)")
        if contract.get("input_layout", "sparse-edge") != "sparse-edge" or contract.get("comm_widths"):
            raise BundleError(f"{name}: only sparse-edge ghost-scheme bundles are supported")
        self.contract = contract
        self.elements = tuple(ours["elements"])
        self.metadata = ours.get("model", {})
        self.max_atoms = int(contract["max_atoms"])
        self.max_edges = int(contract["max_edges"])
        self.cutoff = float(contract["cutoff"])
        self.n_hops = int(contract["n_hops"])
        self.dtype = DTYPES[contract["precision"]]
        self.pjrt = None if pjrt is None else str(pjrt)
        self._executable = None
        self._device = None

    # ------------------------------------------------------------ compiling

    def _backend(self):
        import jax.extend.backend  # noqa: F401

        if self.pjrt is None:
            import jax

            return jax.extend.backend.get_backend("cpu")
        from jax._src import xla_bridge  # the public API has no plugin registration by path

        platform = "lammps_jax_" + str(abs(hash(self.pjrt)))
        if platform not in xla_bridge._backend_factories:  # noqa: SLF001
            xla_bridge.register_plugin(platform, library_path=self.pjrt)
        return xla_bridge.get_backend(platform)

    def compile(self):
        """Compile the energy-and-forces program (once)."""
        if self._executable is not None:
            return self._executable
        export = require("lammps_jax.export")
        from jaxlib import xla_client

        backend = self._backend()
        options = xla_client.CompileOptions.ParseFromString(base64.b64decode(self.bundle["compile_options_b64"]))
        # Portable executables pick their device at run time, as the pair style does; in a
        # Python process that leaves them without one ("local device count is 0").
        options.compile_portable_executable = False
        self._device = backend.local_devices()[0]
        devices = xla_client.DeviceList((self._device,))
        self._executable = backend.compile_and_load(export.program_text(self.bundle, PROGRAM), devices, options)
        return self._executable

    # ----------------------------------------------------------- evaluating

    def check_capacity(self, counts: Counts, where: str = "") -> None:
        """A CapacityError naming the size needed, before any padding."""
        atoms = counts.nlocal + counts.nghost
        where = f"{where} " if where else ""
        if atoms > self.max_atoms:
            raise CapacityError(
                f"{where}holds {atoms} atoms ({counts.nlocal} owned + {counts.nghost} ghosts) but the bundle "
                f"{self.name} has max_atoms={self.max_atoms}; export it again with --max-atoms "
                f"{suggested_capacity(atoms)} (needed {atoms}, plus 20 % headroom)"
            )
        if counts.edges > self.max_edges:
            raise CapacityError(
                f"{where}has {counts.edges} neighbour pairs but the bundle {self.name} has "
                f"max_edges={self.max_edges}; export it again with --max-edges {suggested_capacity(counts.edges)} "
                f"(needed {counts.edges}, plus 20 % headroom)"
            )

    def evaluate(self, positions, types, nlocal: int, senders, receivers, where: str = ""):
        """(energy of the owned atoms, forces [nlocal + nghost, 3]) for one rank.

        positions: owned then ghost atoms [n, 3] (Å); types: LAMMPS types - 1;
        senders/receivers: the row atom / neighbour of every listed pair.
        """
        import jax

        positions = np.asarray(positions, self.dtype)
        n, e = len(positions), len(senders)
        self.check_capacity(Counts(int(nlocal), n - int(nlocal), e), where)
        types = np.asarray(types, np.int32)
        if types.size and (types.min() < 0 or types.max() >= len(self.elements)):
            raise BundleError(
                f"{where or 'the input'} has atom type {int(types.max()) + 1}, but the bundle {self.name} "
                f"maps {len(self.elements)} types"
            )
        executable = self.compile()
        padded_positions = np.zeros((self.max_atoms, 3), self.dtype)
        padded_positions[:n] = positions
        padded_types = np.zeros(self.max_atoms, np.int32)
        padded_types[:n] = types
        pad = np.full(self.max_edges, self.max_atoms, np.int32)  # lammps-jax pads indices with max_atoms
        padded_senders, padded_receivers = pad.copy(), pad.copy()
        padded_senders[:e], padded_receivers[:e] = senders, receivers
        mask = np.zeros(self.max_edges, bool)
        mask[:e] = True
        arguments = (padded_positions, padded_types, np.int32(nlocal), np.int32(n - nlocal),
                     padded_senders, padded_receivers, mask)
        with jax.enable_x64(self.dtype == np.float64):
            buffers = [jax.device_put(a, self._device) for a in arguments]
            energy, forces = executable.execute(buffers)
            return float(np.asarray(energy)), np.asarray(forces, dtype=float)[:n]


def load_bundle(bundle: str | os.PathLike | dict, *, accept_license: bool | None = None,
                pjrt: str | os.PathLike | None = None) -> LammpsBundle:
    """Read a bundle written by ``export_bundle``; a non-commercial source model needs its licence accepted."""
    from .. import weights

    if isinstance(bundle, dict):
        name, data, where = "bundle", bundle, Path("bundle.json")
    else:
        where = Path(bundle)
        name = str(where)
        if not where.is_file():
            raise BundleError(f"no bundle at {where} (file not found)")
        try:
            data = json.loads(where.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise BundleError(f"{where} is not a JSON bundle: {error}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{name} is not a JSON bundle")
    loaded = LammpsBundle(data, name=name, pjrt=pjrt)
    weights.gate(_ExportedModel(dict(loaded.metadata)), accept_license=accept_license)
    return loaded


class _ExportedModel:
    """The bundle's model at the licence gate, which reads only a model's metadata."""

    def __init__(self, metadata: dict):
        self.metadata = metadata


def rank_pairs(positions: np.ndarray, nlocal: int, cutoff: float, n_hops: int) -> tuple[np.ndarray, np.ndarray]:
    """The pairs ``pair_style jax/kk`` packs for one rank: (row atom, neighbour) within the cutoff.

    Rows are every atom, ghosts included, when the model needs more than one hop;
    owned atoms only otherwise. Ghosts are explicit images: no periodicity here.
    """
    from ..neighbours import neighbour_edges

    edges = neighbour_edges(positions, np.zeros((3, 3)), np.zeros(3, bool), cutoff)
    rows, neighbours = edges.senders, edges.receivers
    if n_hops == 1:
        keep = rows < nlocal
        rows, neighbours = rows[keep], neighbours[keep]
    return rows.astype(np.int32), neighbours.astype(np.int32)
