"""mlip's v2 MACE (``mlip.models.mace``, mlip 0.2.5) archives, read into mace-ase and written back.

Same zip as v1 (``hyperparams.json`` + ``params.npz``), another network. Where v2 differs from
v1 (``mlip.models_v1.mace``, whose numerics ``mace_ase.model`` follows) and what is done here:

* Parameters are e3j modules: one kernel per (l, p) block, ``weight{i}_{l}_{p}``, stored
  [out, in] (v1: [in, out]), with zero-size kernels for blocks absent on one side. Copied.
* Species-indexed linears (first-layer selector, skip connections) scale by 1/sqrt(C), v1 by
  1/sqrt(C * num_species): kernels are multiplied by sqrt(num_species) (in float64).
* Edge vectors point sender -> receiver (v1: the reverse), so odd harmonics change sign: the
  radial-MLP outputs of paths through an odd harmonic are negated (exact). This keeps the
  odd-parity node features equal to mlip's; energies, forces and stresses would agree without
  it (flipping every edge is an inversion of the structure, under which MACE is invariant), so
  the parity tests cannot detect this sign.
* Message paths within an irrep are ordered by (sender irrep, harmonic), v1 puts the
  pass-through path first; the aggregated messages interleave channels and paths as c*P + p
  (v1: p*C + c). Both are permutations of radial-MLP columns and ``linear_out`` rows (exact).
  v2 folds 1/avg_num_neighbors into the Clebsch-Gordan coefficients (same value, roundoff).
* Product basis: the default backend "e3j" forms powers of A by chained Clebsch-Gordan
  products (orthonormal coefficients, intermediate irreps kept while they can still reach an
  output) and mixes all orders with one species-indexed kernel. Per order and irrep this is
  another basis of the same equivariant multilinear maps as e3nn's (non-symmetric) reduced
  tensor product basis, so its weights are mapped onto that basis by a float64 change of basis
  (residual ~1e-16). Backends "e3nn" / "e3nn_symmetric" are v1's contraction: copied.
* avg_num_neighbors and avg_r_min come from ``dataset_info`` only (mlip ignores the config's
  copies); E0s are looked up by atomic number, ``add_atomic_energies=False`` means zero E0s;
  energies are E0 + mean + std * sum of readouts, as in v1. Activation constants are e3nn's
  ``normalize_function`` evaluated at trace time in both.
* The radial basis is scaled by 1/RMS on [avg_r_min, cutoff], which mlip recomputes from
  avg_r_min (float32, on its XLA): ``MaceConfig.radial_scale``. Archives mace-ase writes keep
  the value in mace-ase's metadata, read back exactly; a value v2 would not recompute (other
  than by float32 rounding) is refused on writing and reading, as is an ``activation_scale``
  (v2 always uses e3nn-jax's normalisation).
* Several readout heads: v2 uses head 0 only (v1 sums them): refused, as are charges
  (partial charges, Coulomb, total-charge embedding), node gating, soft normalisation, a first
  layer with a residual connection, Gaunt tensor products, pseudotensors, a radial-MLP
  activation other than the readout's, and multi-dataset E0s.

Written archives use the "e3j" backend by default (mlip's own; change of basis in float64) or
"e3nn" (v1's contraction, weights copied). A converted kernel is stored in float32 when that
value reads back to exactly the model's parameter, otherwise in float64.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import e3nn_jax as e3nn
import numpy as np

from ..errors import ArchiveError, UnsupportedConfigError
from ..model.config import MaceConfig
from ..model.mace import input_irreps, interaction_irreps, message_paths, node_irreps, product_basis, product_keep
from ..model.params import parameter_layout
from ..model.radial import embedding_scale

PREFIX = "params#mlip_network#"
MLIP_VERSION_WRITTEN = "0.2.5"
BACKENDS = ("e3j", "e3nn", "e3nn_symmetric")
SCALAR = e3nn.Irrep("0e")

Block = tuple[int, e3nn.Irrep]  # (multiplicity, irrep)


# ------------------------------------------------------------------ recognising and reading the config


def is_mlip_v2(hyperparams: dict, flat: dict[str, np.ndarray]) -> bool:
    """True for an archive of an mlip v2 network (MACE or another: ``model_from_mlip_v2`` tells)."""
    return any(key.startswith((PREFIX + "embedding_block#", PREFIX + "layers_0#")) for key in flat)


def _is_mace(flat: dict[str, np.ndarray]) -> bool:
    return any("#expansion_block#symmetric_contraction#" in key for key in flat)


# mlip 0.2.5 MaceConfig defaults, for archives written without some fields.
_DEFAULTS = {
    "add_atomic_energies": True, "num_layers": 2, "num_channels": 128, "l_max": 3, "node_symmetry": None,
    "correlation": 3, "readout_irreps": ["16x0e", "0e"], "num_readout_heads": 1, "include_pseudotensors": False,
    "num_rbf": 8, "activation": "silu", "radial_envelope": "polynomial_envelope", "radial_mlp_hidden": [64, 64, 64],
    "radial_mlp_activation": "silu", "avg_num_neighbors": None, "avg_r_min": None, "num_species": None,
    "gate_nodes": False, "residual_connection_first_layer": False, "soft_normalization": None,
    "predict_partial_charges": False, "use_coulomb_term": False, "use_total_charge_embedding": False,
    "embed_activation": "silu", "deterministic_scatter_ops": False, "symmetric_contraction_backend": "e3j",
    "use_gaunt_tp_message_passing": False,
}
# Fields that change nothing mace-ase computes: mlip ignores the config's avg_num_neighbors,
# avg_r_min and num_species (dataset_info decides); embed_activation acts only on charge embeddings.
_NO_EFFECT = {"avg_num_neighbors", "avg_r_min", "num_species", "embed_activation", "deterministic_scatter_ops"}
# Options whose non-default value needs physics mace-ase does not have.
_REFUSED = {
    "include_pseudotensors": "pseudotensor irreps are not implemented in mace-ase",
    "gate_nodes": "node gating is not implemented in mace-ase",
    "residual_connection_first_layer": "a first layer with a residual connection is not implemented in mace-ase",
    "soft_normalization": "soft normalisation of node features is not implemented in mace-ase",
    "predict_partial_charges": "mace-ase predicts no partial charges",
    "use_coulomb_term": "mace-ase has no Coulomb term",
    "use_total_charge_embedding": "mace-ase has no total-charge input",
    "use_gaunt_tp_message_passing": "Gaunt tensor products are not implemented in mace-ase",
}


def config_from_mlip_v2(hyperparams: dict) -> tuple[MaceConfig, str]:
    """(MaceConfig, product backend) from a v2 hyperparams.json; refuses what mace-ase cannot express, by name."""
    try:
        raw = dict(hyperparams["config"])
        info = dict(hyperparams["dataset_info"])
    except (KeyError, TypeError) as error:
        raise ArchiveError(f"hyperparams.json lacks the '{error.args[0]}' section") from None
    unknown = sorted(set(raw) - set(_DEFAULTS))
    if unknown:
        raise UnsupportedConfigError(
            f"unsupported MACE config field(s) {', '.join(unknown)}: not part of mlip 0.2.5's v2 MaceConfig that mace-ase reads"
        )
    config = {**_DEFAULTS, **raw}

    def refuse(name, why):
        raise UnsupportedConfigError(f"unsupported MACE config: {name}={config.get(name)!r} ({why})")

    for name, why in _REFUSED.items():
        if config[name] not in (None, False):
            refuse(name, why)
    if config["num_readout_heads"] != 1:
        refuse("num_readout_heads", "mlip's v2 MACE evaluates head 0 only unless given a dataset index; mace-ase has no head selection")
    backend = config["symmetric_contraction_backend"]
    if backend not in BACKENDS:
        refuse("symmetric_contraction_backend", f"mace-ase reads {', '.join(BACKENDS)}")
    if config["radial_mlp_activation"] != config["activation"]:
        refuse("radial_mlp_activation", f"mace-ase uses one activation for the radial MLP and the readout ({config['activation']!r})")

    energies_map = info.get("atomic_energies_map")
    if isinstance(energies_map, list):
        raise UnsupportedConfigError(
            "unsupported dataset_info: atomic_energies_map is a list (a multi-dataset model); mace-ase reads one mapping"
        )
    if not isinstance(energies_map, dict) or not energies_map:
        raise ArchiveError("dataset_info.atomic_energies_map must be a non-empty mapping of atomic number to energy")
    energies_map = {int(z): float(e) for z, e in energies_map.items()}
    zs = tuple(sorted(energies_map))
    atomic_energies = [energies_map[z] if config["add_atomic_energies"] else 0.0 for z in zs]
    cutoff = info.get("graph_cutoff_angstrom", info.get("cutoff_distance_angstrom"))
    if cutoff is None:
        raise ArchiveError("dataset_info lacks graph_cutoff_angstrom")
    avg_r_min = info.get("avg_r_min_angstrom")
    l_max = config["l_max"]
    readout = tuple(str(r) for r in config["readout_irreps"])
    mace_config = MaceConfig(
        atomic_numbers=zs,
        atomic_energies=atomic_energies,
        cutoff=float(cutoff),
        num_layers=config["num_layers"],
        num_channels=config["num_channels"],
        l_max=l_max,
        node_symmetry=l_max if config["node_symmetry"] is None else config["node_symmetry"],
        correlation=config["correlation"],
        readout_irreps=readout,
        num_readout_heads=1,
        num_bessel=config["num_rbf"],
        activation=config["activation"],
        radial_envelope=config["radial_envelope"],
        symmetric_tensor_product_basis=backend == "e3nn_symmetric",
        radial_mlp_hidden=tuple(config["radial_mlp_hidden"]),
        avg_num_neighbors=float(info.get("avg_num_neighbors", 1.0)),
        avg_r_min=None if avg_r_min is None else float(avg_r_min),
        scaling_mean=float(info.get("scaling_mean", 0.0)),
        scaling_std=float(info.get("scaling_stdev", 1.0)),
    )
    return mace_config, backend


def config_to_mlip_v2(config: MaceConfig, backend: str) -> dict:
    """The ``config``, ``dataset_info`` and ``available_properties`` sections mlip's v2 loader expects."""
    from .mlip_v1 import dataset_info

    return {
        "dataset_info": dataset_info(config),
        "config": {
            **_DEFAULTS,
            "num_layers": config.num_layers,
            "num_channels": config.num_channels,
            "l_max": config.l_max,
            "node_symmetry": config.node_symmetry,
            "correlation": config.correlation,
            "readout_irreps": list(config.readout_irreps),
            "num_readout_heads": 1,
            "num_rbf": config.num_bessel,
            "activation": config.activation,
            "radial_envelope": config.radial_envelope,
            "radial_mlp_hidden": list(config.radial_mlp_hidden),
            "radial_mlp_activation": config.activation,
            "symmetric_contraction_backend": backend,
        },
        "available_properties": {"energy": True, "forces": True, "partial_charges": False, "hessian": True, "stress": True},
        "version": MLIP_VERSION_WRITTEN,
    }


# ------------------------------------------------------------------ e3j's bookkeeping


def _canonical(ir: e3nn.Irrep) -> tuple[int, int]:
    """e3j's irrep order: by degree, the natural parity (-1)^l first."""
    return ir.l, 0 if ir.p == (-1) ** ir.l else 1


def _kernel_names(source: list[Block], target: list[Block]) -> list[tuple[str, e3nn.Irrep, int, int]]:
    """e3j's kernels of a linear map: (name, irrep, m_in, m_out) per block, zero-size ones included.

    Blocks pair up in order when both sides list the same irreps; otherwise over the union of
    irreps in e3j's order, a missing side counting multiplicity 0.
    """
    if [ir for _, ir in source] == [ir for _, ir in target]:
        pairs = [(ir, m_in, m_out) for (m_in, ir), (m_out, _) in zip(source, target)]
    else:
        m_in, m_out = {ir: m for m, ir in source}, {ir: m for m, ir in target}
        pairs = [(ir, m_in.get(ir, 0), m_out.get(ir, 0)) for ir in sorted(set(m_in) | set(m_out), key=_canonical)]
    return [(f"weight{i}_{ir.l}_{ir.p}", ir, a, b) for i, (ir, a, b) in enumerate(pairs)]


def _blocks(irreps, mul: int = 1) -> list[Block]:
    return [(mul, ir) for ir in irreps]


def _dim(blocks: list[Block]) -> int:
    return sum(m * ir.dim for m, ir in blocks)


def _slices(blocks: list[Block]) -> list[slice]:
    out, begin = [], 0
    for m, ir in blocks:
        out.append(slice(begin, begin + m * ir.dim))
        begin += m * ir.dim
    return out


def _e3j_paths(config: MaceConfig, layer: int) -> dict[e3nn.Irrep, list[tuple]]:
    """e3j's message paths per output irrep: (sender irrep, harmonic) in loop order, harmonics from 0e."""
    targets = interaction_irreps(config)
    paths: dict[e3nn.Irrep, list] = {}
    for ir_in in sorted(input_irreps(config, layer), key=_canonical):
        for ir_sh in interaction_irreps(config):
            for ir_out in ir_in * ir_sh:
                if ir_out in targets:
                    paths.setdefault(ir_out, []).append((ir_in, ir_sh))
    return {ir: paths[ir] for ir in sorted(paths, key=_canonical)}


def _path_maps(config: MaceConfig, layer: int):
    """For each irrep, mace-ase's paths as e3j path indices and harmonic signs (-1)^l_sh."""
    ours, theirs = message_paths(config, layer), _e3j_paths(config, layer)
    if list(ours) != list(theirs) or any(len(ours[ir]) != len(theirs[ir]) for ir in ours):
        raise UnsupportedConfigError(f"mlip v2's message paths of layer {layer} do not match mace-ase's for this config")
    maps = {}
    for ir, paths in ours.items():
        as_pairs = [(ir, SCALAR) if len(path) == 1 else path for path in paths]  # ("self",): through Y_0
        maps[ir] = (np.array([theirs[ir].index(p) for p in as_pairs]), np.array([(-1.0) ** p[1].l for p in as_pairs]))
    return maps


# ------------------------------------------------------------------ e3j's product basis


def _e3j_reachable(power: int, correlation: int, source, keep) -> set:
    """Irreps at `power` that can still reach an output irrep in the remaining products (e3j's filter)."""
    reachable, frontier = set(keep), set(keep)
    for _ in range(correlation - power):
        frontier = {
            e3nn.Irrep(l, ir.p * s.p) for ir in frontier for s in source for l in range(abs(ir.l - s.l), ir.l + s.l + 1)
        }
        reachable |= frontier
    return reachable


def _e3j_product_step(lhs: list[Block], rhs: list[Block], keep: set):
    """e3j's TensorProduct(lhs, rhs) with orthonormal Clebsch-Gordan coefficients.

    Returns the output blocks (sorted, equal irreps merged) and the dense coefficients
    [out, lhs, rhs]. Output copies of (k1, k2) are numbered k1 * m2 + k2.
    """
    blocks, pieces = [], []
    for (m1, ir1), s1 in zip(lhs, _slices(lhs)):
        for (m2, ir2), s2 in zip(rhs, _slices(rhs)):
            for ir0 in ir1 * ir2:
                if ir0 in keep:
                    blocks.append((m1 * m2, ir0))
                    pieces.append((s1.start, s2.start, m1, m2, ir1, ir2, ir0))
    coefficients = np.zeros((_dim(blocks), _dim(lhs), _dim(rhs)))
    begin = 0
    for a, b, m1, m2, ir1, ir2, ir0 in pieces:
        cg = np.asarray(e3nn.clebsch_gordan(ir0.l, ir1.l, ir2.l), np.float64)
        for k1 in range(m1):
            for k2 in range(m2):
                o = begin + (k1 * m2 + k2) * ir0.dim
                coefficients[o : o + ir0.dim, a + k1 * ir1.dim : a + (k1 + 1) * ir1.dim, b + k2 * ir2.dim : b + (k2 + 1) * ir2.dim] = cg
        begin += m1 * m2 * ir0.dim
    # Stable sort of the blocks by irrep, then merge neighbours with equal irreps.
    order = sorted(range(len(blocks)), key=lambda i: (_canonical(blocks[i][1]), i))
    slices = _slices(blocks)
    rows = np.concatenate([np.arange(slices[i].start, slices[i].stop) for i in order])
    merged: list[Block] = []
    for i in order:
        m, ir = blocks[i]
        merged[-1:] = [(merged[-1][0] + m, ir)] if merged and merged[-1][1] == ir else merged[-1:] + [(m, ir)]
    return merged, coefficients[rows]


@functools.lru_cache(maxsize=None)
def e3j_product_basis(irreps: tuple, correlation: int, keep: tuple) -> dict[tuple[int, e3nn.Irrep], np.ndarray]:
    """Coupling tensors of e3j's power expansion: {(order, irrep): U[j1..j_order, k, i]} (float64).

    x^1 = x; x^n = CG(x^(n-1), x) restricted to irreps that can still reach `keep`; each power
    is then restricted to `keep`. U holds power `order` of x as a function of x (x) ... (x) x.
    """
    source = _blocks(irreps)
    size = _dim(source)
    blocks, polynomial = source, np.eye(size)
    powers = [(blocks, polynomial)]
    for order in range(2, correlation + 1):
        blocks, step = _e3j_product_step(blocks, source, _e3j_reachable(order, correlation, irreps, keep))
        polynomial = np.einsum("oab,a...->o...b", step, polynomial)
        powers.append((blocks, polynomial))
    basis = {}
    for order, (blocks, polynomial) in enumerate(powers, start=1):
        for (m, ir), s in zip(blocks, _slices(blocks)):
            if ir in keep:
                u = polynomial[s].reshape((m, ir.dim) + (size,) * order)
                basis[(order, ir)] = np.moveaxis(u, (0, 1), (-2, -1))
    return basis


def _basis_change(config: MaceConfig, layer: int) -> dict[tuple[int, e3nn.Irrep], np.ndarray]:
    """{(order, irrep): T} with U_mace-ase @ T = U_e3j, T [mace-ase multiplicity, e3j multiplicity]."""
    keep = product_keep(config, layer)
    theirs = e3j_product_basis(interaction_irreps(config), config.correlation, tuple(keep))
    changes = {}
    for order in range(1, config.correlation + 1):
        for ir, mul, u in product_basis(config, order, keep):
            v = theirs.get((order, ir))
            if v is None:
                raise UnsupportedConfigError(f"e3j's product basis has no order-{order} {ir} term where mace-ase has one")
            ours = np.moveaxis(np.asarray(u, np.float64), -2, -1).reshape(-1, mul)
            target = np.moveaxis(v, -2, -1).reshape(-1, v.shape[-2])
            change, *_ = np.linalg.lstsq(ours, target, rcond=None)
            residual = np.abs(ours @ change - target).max()
            if residual > 1e-10:
                raise UnsupportedConfigError(
                    f"e3j's order-{order} {ir} product basis is not spanned by mace-ase's (residual {residual:.1e})"
                )
            if change.shape[0] != change.shape[1]:  # both are bases of the same maps: never expected
                raise UnsupportedConfigError(f"e3j's order-{order} {ir} product basis has {change.shape[1]} terms, mace-ase's {mul}")
            changes[(order, ir)] = change
    missing = {key for key in theirs if key not in changes and theirs[key].shape[-2] > 0}
    if missing:
        order, ir = sorted(missing, key=lambda k: (k[0], _canonical(k[1])))[0]
        raise UnsupportedConfigError(f"e3j's product basis has an order-{order} {ir} term that mace-ase lacks")
    return changes


# ------------------------------------------------------------------ parameter maps


class _Map:
    """One v2 kernel and the mace-ase leaves it becomes: read(v2) -> {path: array}, write({path: array}) -> v2."""

    def __init__(self, key: str, shape: tuple, read: Callable, write: Callable, paths: tuple, exact: bool = True):
        self.key, self.shape, self.read, self.write, self.paths, self.exact = key, shape, read, write, paths, exact


def _copy(key, path, shape, transpose=False) -> _Map:
    if transpose:
        return _Map(key, shape, lambda w: {path: w.T}, lambda leaves: leaves[path].T, (path,))
    return _Map(key, shape, lambda w: {path: w}, lambda leaves: leaves[path], (path,))


def _linear_maps(key, path, source: list[Block], target: list[Block]) -> list[_Map]:
    """e3j Linear: [m_out, m_in] kernels; mace-ase keeps the non-empty ones as [m_in, m_out]."""
    maps = []
    for name, ir, m_in, m_out in _kernel_names(source, target):
        if m_in and m_out:
            maps.append(_copy(f"{key}#{name}", path + (str(ir),), (m_out, m_in), transpose=True))
        else:
            maps.append(_Map(f"{key}#{name}", (m_out, m_in), lambda w: {}, lambda leaves, s=(m_out, m_in): np.zeros(s, np.float32), ()))
    return maps


def _species_maps(key, path, source: list[Block], target: list[Block], num_species: int) -> list[_Map]:
    """e3j LinearIndexwise [S, m_out, m_in], scaled 1/sqrt(m_in); mace-ase [m_in, S, m_out], 1/sqrt(m_in * S)."""
    scale = math.sqrt(num_species)
    maps = []
    for name, ir, m_in, m_out in _kernel_names(source, target):
        shape = (num_species, m_out, m_in)
        if m_in and m_out:
            leaf = path + (str(ir),)
            maps.append(_Map(
                f"{key}#{name}", shape,
                lambda w, leaf=leaf: {leaf: np.transpose(np.asarray(w, np.float64), (2, 0, 1)) * scale},
                lambda leaves, leaf=leaf: np.transpose(np.asarray(leaves[leaf], np.float64), (1, 2, 0)) / scale,
                (leaf,), exact=False,
            ))
        else:
            maps.append(_Map(f"{key}#{name}", shape, lambda w: {}, lambda leaves, s=shape: np.zeros(s, np.float32), ()))
    return maps


def _layer_maps(config: MaceConfig, layer: int, backend: str) -> list[_Map]:
    C, S = config.num_channels, config.num_species
    last = layer == config.num_layers - 1
    p, m = ("layers", layer), f"{PREFIX}layers_{layer}#"
    source = _blocks(input_irreps(config, layer), C)
    messages = _blocks(interaction_irreps(config), C)
    outputs = _blocks(node_irreps(config, layer), C)
    block = m + "interaction_block#"
    maps = _linear_maps(block + "linear_in", p + ("linear_up",), source, source)

    # Radial MLP: the last kernel's columns are (path, channel), paths reordered and signed.
    path_maps = _path_maps(config, layer)
    hidden = (config.num_bessel,) + config.radial_mlp_hidden
    for i, (a, b) in enumerate(zip(hidden[:-1], hidden[1:])):
        maps.append(_copy(f"{block}radial_mlp#layers_{i}#kernel", p + ("radial_mlp", i), (a, b)))
    columns = np.concatenate([idx + sum(len(v[0]) for v in list(path_maps.values())[:k]) for k, (idx, _) in enumerate(path_maps.values())])
    signs = np.concatenate([s for _, s in path_maps.values()])
    num_paths, width = len(columns), hidden[-1]
    last_path = p + ("radial_mlp", len(hidden) - 1)

    def read_radial(w):
        w = np.asarray(w).reshape(width, num_paths, C)[:, columns, :]
        return {last_path: (w * signs[None, :, None].astype(w.dtype)).reshape(width, num_paths * C)}

    def write_radial(leaves):
        w = np.asarray(leaves[last_path])
        out = np.empty((width, num_paths, C), w.dtype)
        out[:, columns, :] = w.reshape(width, num_paths, C) * signs[None, :, None].astype(w.dtype)
        return out.reshape(width, num_paths * C)

    maps.append(_Map(f"{block}radial_mlp#layers_{len(hidden) - 1}#kernel", (width, num_paths * C), read_radial, write_radial, (last_path,)))

    # linear_out: input rows are (channel, path) in e3j's path order; mace-ase's are (path, channel).
    for name, ir, m_in, m_out in _kernel_names([(len(path_maps[ir][0]) * C, ir) for ir in path_maps], messages):
        leaf = p + ("linear_down", str(ir))
        q = path_maps[ir][0]
        P = len(q)

        def read_down(w, leaf=leaf, q=q, P=P):
            w = np.asarray(w).T.reshape(C, P, -1)[:, q, :]
            return {leaf: np.swapaxes(w, 0, 1).reshape(P * C, -1)}

        def write_down(leaves, leaf=leaf, q=q, P=P):
            w = np.asarray(leaves[leaf]).reshape(P, C, -1)
            out = np.empty((C, P, w.shape[-1]), w.dtype)
            out[:, q, :] = np.swapaxes(w, 0, 1)
            return out.reshape(C * P, -1).T

        maps.append(_Map(f"{block}linear_out#{name}", (m_out, m_in), read_down, write_down, (leaf,)))

    if layer == 0:
        maps += _species_maps(m + "linear_by_species_block", p + ("selector",), messages, messages, S)
    else:
        maps += _species_maps(m + "residual_block", p + ("skip",), source, outputs, S)

    product = m + "expansion_block#"
    keep = product_keep(config, layer)
    if backend == "e3j":
        maps += _e3j_product_maps(config, layer, product + "symmetric_contraction#LinearIndexwise_0", p + ("product",))
    else:
        for order in range(config.correlation, 0, -1):
            for ir, mul, _ in product_basis(config, order, keep):
                name = f"w{order}_{ir}"
                maps.append(_copy(f"{product}symmetric_contraction#{name}", p + ("product", name), (S, mul, C)))
    maps += _linear_maps(product + "linear_block", p + ("product_linear",), _blocks(keep, C), outputs)

    readout = f"{m}readout_block#ReadoutBlock_0#"
    r = p + ("readout", 0)
    if not last:
        maps += _linear_maps(readout + "Linear_0", r, outputs, [(1, SCALAR)])
    else:
        hidden_width = e3nn.Irreps(config.readout_irreps[0]).num_irreps
        maps += _linear_maps(readout + "Linear_0", r + ("hidden",), outputs, [(hidden_width, SCALAR)])
        maps += _linear_maps(readout + "Linear_1", r + ("output",), [(hidden_width, SCALAR)], [(1, SCALAR)])
    return maps


def _e3j_product_maps(config: MaceConfig, layer: int, key: str, path: tuple) -> list[_Map]:
    """e3j's product kernels [S, C, 1, sum over orders of m_order] <-> mace-ase's w{order}_{irrep} [S, mul, C]."""
    C, S = config.num_channels, config.num_species
    keep = product_keep(config, layer)
    changes = _basis_change(config, layer)
    counts = {ir: [changes[(o, ir)].shape[1] if (o, ir) in changes else 0 for o in range(1, config.correlation + 1)] for ir in keep}
    source = [(sum(counts[ir]), ir) for ir in keep if sum(counts[ir])]
    maps = []
    for name, ir, m_in, m_out in _kernel_names(source, _blocks(keep)):
        shape = (S, C, m_out, m_in)
        if not (m_in and m_out):
            maps.append(_Map(f"{key}#{name}", shape, lambda w: {}, lambda leaves, s=shape: np.zeros(s, np.float32), ()))
            continue
        offsets = np.cumsum([0] + counts[ir])
        terms = [(o, f"w{o}_{ir}", changes[(o, ir)], offsets[o - 1], offsets[o]) for o in range(1, config.correlation + 1) if (o, ir) in changes]

        def read_product(w, terms=terms):
            w = np.asarray(w, np.float64)[:, :, 0, :]  # [S, C, m]
            return {path + (leaf,): np.einsum("mk,sck->smc", change, w[:, :, a:b]) for _, leaf, change, a, b in terms}

        def write_product(leaves, terms=terms, shape=shape):
            out = np.zeros(shape)
            for _, leaf, change, a, b in terms:
                w = np.asarray(leaves[path + (leaf,)], np.float64)  # [S, mul, C]
                out[:, :, 0, a:b] = np.einsum("km,smc->sck", np.linalg.inv(change), w)
            return out

        maps.append(_Map(f"{key}#{name}", shape, read_product, write_product, tuple(path + (t[1],) for t in terms), exact=False))
    return maps


def _maps(config: MaceConfig, backend: str) -> list[_Map]:
    maps = [_copy(PREFIX + "embedding_block#node_embedding_block#embed#embedding", ("embedding",), (config.num_species, config.num_channels))]
    for layer in range(config.num_layers):
        maps += _layer_maps(config, layer, backend)
    return maps


# ------------------------------------------------------------------ models


# mlip computes the radial scale in float32 on whatever XLA runs it: values that agree to this
# relative tolerance are the same constant; anything further apart is another model.
RADIAL_SCALE_RTOL = 1e-5


def _check_radial_scale(config: MaceConfig, value: float, where: str) -> None:
    """Refuse a radial_scale that mlip's v2 MACE, which derives it from avg_r_min, would not use."""
    derived = embedding_scale(config.num_bessel, config.cutoff, config.radial_envelope, config.avg_r_min)
    if not abs(value - derived) <= RADIAL_SCALE_RTOL * derived:
        raise UnsupportedConfigError(
            f"unsupported for mlip v2: radial_scale={value!r} {where}, but mlip's v2 MACE derives "
            f"{derived!r} from avg_r_min={config.avg_r_min!r} and has no field for another value"
        )


def model_from_mlip_v2(hyperparams: dict, flat: dict[str, np.ndarray], metadata: dict | None = None,
                       radial_scale: float | None = None):
    """A v2 archive's contents -> MaceModel (mace-ase's config and parameters).

    `radial_scale`: the value mace-ase stored when it wrote the archive (else derived from avg_r_min)."""
    from ..archive import MaceModel
    from ..model.params import checked_leaf, set_leaf
    from .mlip_v1 import flip_edge_vector

    if not _is_mace(flat):
        raise UnsupportedConfigError(
            "this is an mlip v2 archive of another architecture than MACE (no symmetric contraction "
            "among its parameters); mace-ase reads MACE only"
        )
    config, backend = config_from_mlip_v2(hyperparams)
    if radial_scale is not None:
        _check_radial_scale(config, float(radial_scale), "in the archive's mace-ase metadata")
        config = config.replace(radial_scale=float(radial_scale))
    maps = _maps(config, backend)
    expected = {mp.key for mp in maps}
    unused = sorted(set(flat) - expected)
    if unused:
        raise ArchiveError(
            f"the archive holds parameters that mlip 0.2.5's v2 MACE with this config does not use, e.g. '{unused[0]}' "
            f"({len(unused)} in all); its hyperparams.json does not describe its parameters"
        )
    leaves: dict[tuple, np.ndarray] = {}
    for mp in maps:
        if mp.key not in flat:
            raise ArchiveError(f"parameter '{mp.key}' is missing from the archive")
        array = np.asarray(flat[mp.key])
        if array.shape != mp.shape:
            raise ArchiveError(f"parameter '{mp.key}' has shape {array.shape}, expected {mp.shape}")
        if not np.all(np.isfinite(array)):
            raise ArchiveError(f"parameter '{mp.key}' contains NaN or infinite values")
        leaves.update(mp.read(array))
    params: dict[str, Any] = {}
    for leaf in parameter_layout(config):
        set_leaf(params, leaf.path, checked_leaf("/".join(map(str, leaf.path)), leaves[leaf.path], leaf.shape))
    # The maps above give v1's parameters; mace-ase's core takes ASE's edge vector (mlip_v1 flips too).
    params = flip_edge_vector(config, params)
    metadata = {"mlip_version": hyperparams.get("version"), "mlip_model": "mace-v2", **(metadata or {})}
    return MaceModel(config=config, params=params, metadata=metadata)


def mlip_v2_from_model(model, backend: str = "e3j") -> tuple[dict, dict[str, np.ndarray]]:
    """MaceModel -> (hyperparams, flat parameters) of mlip's v2 MACE, loadable by ``mlip.models.model_io``.

    `backend` "e3j" (mlip's default) or "e3nn" (v1's contraction, parameters copied). A model
    with a symmetric product basis is always written with "e3nn_symmetric", its own contraction.
    """
    config = model.config
    if backend not in BACKENDS:
        raise UnsupportedConfigError(f"unsupported mlip v2 product backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if config.symmetric_tensor_product_basis:
        backend = "e3nn_symmetric"
    elif backend != "e3j":
        backend = "e3nn"
    if config.activation_scale is not None:
        raise UnsupportedConfigError(
            f"unsupported for mlip v2: activation_scale={config.activation_scale!r} "
            "(mlip always uses e3nn-jax's normalisation of the activation)"
        )
    _check_radial_scale(config, config.radial_scale, "in this model")
    if config.num_readout_heads != 1:
        raise UnsupportedConfigError(
            f"unsupported for mlip v2: num_readout_heads={config.num_readout_heads} (v2 uses head 0 only, mace-ase sums the heads)"
        )
    from .mlip_v1 import flip_edge_vector, unexpressible

    problems = [p for p in unexpressible(config) if not p.startswith("radial_scale=")]
    if problems:
        raise UnsupportedConfigError(f"unsupported for mlip v2: {', '.join(problems)}")
    params_v1 = flip_edge_vector(config, model.params)  # back to v1's edge vector, which the maps expect
    leaves = {leaf.path: np.asarray(_get(params_v1, leaf.path)) for leaf in parameter_layout(config)}
    flat = {}
    for mp in _maps(config, backend):
        value = np.asarray(mp.write(leaves))
        flat[mp.key] = value if mp.exact else _narrowest(mp, value, leaves)
    return config_to_mlip_v2(config, backend), flat


def _narrowest(mp: _Map, value: np.ndarray, leaves: dict) -> np.ndarray:
    """float32 when the reader turns that float32 value back into exactly the model's parameters."""
    single = value.astype(np.float32)
    back = mp.read(single)
    if all(np.array_equal(np.asarray(back[path]).astype(np.asarray(leaves[path]).dtype), leaves[path]) for path in back):
        return single
    return value.astype(np.float64)


def _get(tree, path: tuple):
    for key in path:
        tree = tree[key]
    return tree


# ------------------------------------------------------------------ files


def read(path):
    """An mlip v2 MACE archive (or one mace-ase wrote in that format) -> MaceModel."""
    from .mlip_v1 import CONFIG_KEY, read_members

    hyperparams, flat, metadata = read_members(path)
    metadata = dict(metadata)
    stored = metadata.pop(CONFIG_KEY, {}) or {}
    try:
        return model_from_mlip_v2(hyperparams, flat, metadata, radial_scale=stored.get("radial_scale"))
    except ArchiveError as error:
        raise ArchiveError(f"{path}: {error}") from None


def write(model, path, backend: str = "e3j"):
    """Write `model` as an mlip v2 archive (atomic replace); refuses what v2 cannot express, by name."""
    from .mlip_v1 import CONFIG_KEY, write_members

    hyperparams, flat = mlip_v2_from_model(model, backend)
    metadata = {k: v for k, v in model.metadata.items() if k not in ("mlip_version", "mlip_model", CONFIG_KEY)}
    if model.config.avg_r_min is not None:
        # mlip recomputes it from avg_r_min (same definition); mace-ase reads back this value.
        metadata[CONFIG_KEY] = {"radial_scale": model.config.radial_scale}
    return write_members(path, hyperparams, flat, metadata)
