"""MACE (Batatia et al., arXiv 2206.07697) as pure functions over a params pytree.

Node features are dicts ``{Irrep: array[N, C, 2l+1]}``, one entry per irrep,
all with the same channel count C, in a fixed irrep order. Every equivariant
linear map then acts on the channel axis only, one matrix per irrep.

The numerics follow mlip's v1 MACE (``mlip.models_v1.mace``) exactly, so that
its published weights load and give the same numbers:
  * linear layers and the species-indexed "tensor products" are
    path-normalised: y = x @ W / sqrt(fan_in);
  * the radial MLP and the readout use e3nn's second-moment-normalised
    activations, edge directions enter as real spherical harmonics with
    "component" normalisation, Clebsch-Gordan paths are scaled by sqrt(2l+1);
  * messages run sender -> receiver along r = x_sender - x_receiver (mlip v1
    flips the sign of ASE's vector; only odd harmonics notice).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np

from .config import MaceConfig
from .graph import Graph, edge_vectors
from .radial import radial_embedding, safe_norm

Params = dict[str, Any]
Features = dict[e3nn.Irrep, jax.Array]

ACTIVATION_FUNCTIONS = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jax.nn.tanh,
    "relu": jax.nn.relu,
    "elu": jax.nn.elu,
    "sigmoid": jax.nn.sigmoid,
    "none": lambda x: x,
}


# --------------------------------------------------------------------------
# Irreps bookkeeping (all static, evaluated at trace time)
# --------------------------------------------------------------------------


def interaction_irreps(config: MaceConfig) -> tuple[e3nn.Irrep, ...]:
    """Irreps of the aggregated messages (input of the product basis)."""
    return tuple(ir for _, ir in e3nn.Irreps.spherical_harmonics(config.l_max))


def node_irreps(config: MaceConfig, layer: int) -> tuple[e3nn.Irrep, ...]:
    """Irreps of the node features leaving `layer` (the last layer keeps scalars)."""
    if layer == config.num_layers - 1:
        return (e3nn.Irrep("0e"),)
    return tuple(ir for _, ir in e3nn.Irreps.spherical_harmonics(config.node_symmetry))


def input_irreps(config: MaceConfig, layer: int) -> tuple[e3nn.Irrep, ...]:
    """Irreps of the node features entering `layer`."""
    return (e3nn.Irrep("0e"),) if layer == 0 else node_irreps(config, layer - 1)


def edge_harmonics_irreps(config: MaceConfig) -> tuple[e3nn.Irrep, ...]:
    return tuple(e3nn.Irrep(l, (-1) ** l) for l in range(1, config.l_max + 1))


@functools.lru_cache(maxsize=None)
def message_paths(config: MaceConfig, layer: int) -> dict[e3nn.Irrep, tuple]:
    """For each message irrep, its ordered list of paths.

    A path is ``("self",)`` (the sender feature passed through) or
    ``(ir_in, ir_sh)`` (sender feature x edge harmonic coupled to ir_out).
    The order is mlip's: self first, then (ir_in, ir_sh) in loop order; the
    irrep blocks themselves are sorted.
    """
    targets = interaction_irreps(config)
    sources = sorted(input_irreps(config, layer))
    paths: dict[e3nn.Irrep, list] = {}
    for ir in sources:
        if ir in targets:
            paths.setdefault(ir, []).append(("self",))
    for ir_in in sources:
        for ir_sh in edge_harmonics_irreps(config):
            for ir_out in ir_in * ir_sh:
                if ir_out in targets:
                    paths.setdefault(ir_out, []).append((ir_in, ir_sh))
    return {ir: tuple(paths[ir]) for ir in sorted(paths)}


def num_message_weights(config: MaceConfig, layer: int) -> int:
    return config.num_channels * sum(len(p) for p in message_paths(config, layer).values())


@functools.lru_cache(maxsize=None)
def product_basis(config: MaceConfig, order: int, keep: tuple[e3nn.Irrep, ...]):
    """Coupling tensors U[j1..j_order, k, i] of the ACE product, per output irrep."""
    irreps = e3nn.Irreps([(1, ir) for ir in interaction_irreps(config)])
    keep_ir = e3nn.Irreps([(1, ir) for ir in keep])
    if config.symmetric_tensor_product_basis:
        basis = e3nn.reduced_symmetric_tensor_product_basis(irreps, order, keep_ir=keep_ir)
    else:
        basis = e3nn.reduced_tensor_product_basis([irreps] * order, keep_ir=keep_ir)
    return [(ir, mul, np.asarray(chunk)) for (mul, ir), chunk in zip(basis.irreps, basis.chunks)]


def product_keep(config: MaceConfig, layer: int) -> tuple[e3nn.Irrep, ...]:
    return node_irreps(config, layer)


@functools.lru_cache(maxsize=None)
def second_moment_scale(name: str) -> float:
    """1 / sqrt(E[phi(z)^2]), z ~ N(0, 1): e3nn-jax's ``normalize_function`` constant for `name`.

    Computed once, in float64, on e3nn-jax's quantile grid, whatever precision the caller
    runs in: evaluated inside a float32 trace it would be off by 1.6e-6 (silu), and cached
    across dtypes that error would reach float64 models too. 1 where e3nn-jax leaves phi as is.
    """
    phi = ACTIVATION_FUNCTIONS[name]
    with jax.enable_x64(True), jax.ensure_compile_time_eval():
        z = math.sqrt(2) * jax.scipy.special.erfinv(jnp.linspace(-1.0, 1.0, 1_000_001 + 2, dtype=jnp.float64)[1:-1])
        rms = float(jnp.mean(phi(z) ** 2) ** 0.5)
    return 1.0 if np.isclose(rms, 1.0) else 1.0 / rms


def activation(config: MaceConfig):
    """The normalised non-linearity: phi(x) * scale (config.activation_scale, else second_moment_scale)."""
    phi = ACTIVATION_FUNCTIONS[config.activation]
    scale = config.activation_scale if config.activation_scale is not None else second_moment_scale(config.activation)
    if scale == 1.0:
        return phi
    return lambda x: phi(x) * jnp.asarray(scale, x.dtype)


@functools.lru_cache(maxsize=None)
def _clebsch_gordan(ir_in: e3nn.Irrep, ir_sh: e3nn.Irrep, ir_out: e3nn.Irrep) -> np.ndarray:
    # "component" normalisation: each output component has unit second moment.
    return np.asarray(e3nn.clebsch_gordan(ir_in.l, ir_sh.l, ir_out.l)) * math.sqrt(ir_out.dim)


# --------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------


def linear(weights: dict[str, jax.Array], x: Features, irreps_out) -> Features:
    """Equivariant linear map, one [C_in, C_out] matrix per irrep, path-normalised."""
    out = {}
    for ir in irreps_out:
        w = weights.get(str(ir))
        if w is not None and ir in x:
            out[ir] = jnp.einsum("ncd,ck->nkd", x[ir], w.astype(x[ir].dtype)) / math.sqrt(w.shape[0])
    return out


def species_linear(weights: dict[str, jax.Array], x: Features, species, num_species: int) -> Features:
    """Linear map whose weights depend on the node's element.

    mlip writes this as a fully connected tensor product with the one-hot
    species vector; with a one-hot input it reduces to picking W[:, species, :].
    """
    out = {}
    for ir in x:
        w = weights.get(str(ir))
        if w is None:
            continue
        # Species-major copy first, so each node gathers one contiguous [C_in, C_out] block.
        w_node = jnp.swapaxes(w.astype(x[ir].dtype), 0, 1)[species]  # [N, C_in, C_out]
        norm = 1.0 / math.sqrt(w.shape[0] * num_species)
        out[ir] = norm * jnp.einsum("ncd,nck->nkd", x[ir], w_node)
    return out


def radial_mlp(weights: list[jax.Array], x: jax.Array, act) -> jax.Array:
    """Bias-free MLP with explicit 1/sqrt(fan_in) scaling and no output activation."""
    for i, w in enumerate(weights):
        x = x @ w.astype(x.dtype) / math.sqrt(w.shape[0])
        if i < len(weights) - 1:
            x = act(x)
    return x


def spherical_harmonics(vectors: jax.Array, irreps) -> dict[e3nn.Irrep, jax.Array]:
    sh = e3nn.spherical_harmonics(e3nn.Irreps([(1, ir) for ir in irreps]), vectors, normalize=True, normalization="component")
    return {ir: chunk[..., 0, :] for ir, chunk in zip(irreps, sh.chunks)}


@functools.lru_cache(maxsize=None)
def message_plan(config: MaceConfig, layer: int):
    """Static tables that turn the edge tensor product into two small contractions.

    For each sender irrep ir_in, ``coupling[i, j, s]`` maps (sender component i,
    edge harmonic j over 0e + 1o + ... + l_max) to every output slot s of every
    path that starts at ir_in: a Clebsch-Gordan block, or the identity (through
    Y_0 = 1) for the ``("self",)`` path. ``slot_path[s]`` is the path index of
    slot s in the radial-weight layout; ``gather[ir_out]`` ([paths, 2l+1]) picks
    the slots of ir_out's paths, in path order, from all slots concatenated.
    """
    paths = message_paths(config, layer)
    harmonic_irreps = tuple(ir for _, ir in e3nn.Irreps.spherical_harmonics(config.l_max))
    harmonic_offset = dict(zip(harmonic_irreps, np.cumsum([0] + [ir.dim for ir in harmonic_irreps])))
    num_harmonics = sum(ir.dim for ir in harmonic_irreps)

    path_index, index = {}, 0
    for ir_out, ir_paths in paths.items():
        for p, path in enumerate(ir_paths):
            path_index[(ir_out, p)] = index
            index += 1

    sources, slot_of, total = [], {}, 0
    for ir_in in sorted(input_irreps(config, layer)):
        columns, slot_path = [], []
        for ir_out, ir_paths in paths.items():
            for p, path in enumerate(ir_paths):
                if len(path) == 1:  # ("self",)
                    if ir_out != ir_in:
                        continue
                    block = np.zeros((ir_in.dim, num_harmonics, ir_out.dim))
                    block[:, 0, :] = np.eye(ir_in.dim)  # Y_0 = 1 ("component" normalisation)
                elif path[0] == ir_in:
                    ir_sh = path[1]
                    block = np.zeros((ir_in.dim, num_harmonics, ir_out.dim))
                    o = harmonic_offset[ir_sh]
                    block[:, o : o + ir_sh.dim, :] = _clebsch_gordan(ir_in, ir_sh, ir_out)
                else:
                    continue
                slot_of[(ir_out, p)] = total + len(slot_path) + np.arange(ir_out.dim)
                columns.append(block)
                slot_path += [path_index[(ir_out, p)]] * ir_out.dim
        if columns:
            sources.append((ir_in, np.concatenate(columns, axis=-1), np.asarray(slot_path, np.int32)))
            total += len(slot_path)
    # int32 indices: these cached tables serve float32 and float64 (x64) programs alike, and an
    # int64 index inside a 32-bit program breaks JAX's index normalisation.
    gather = {
        ir_out: np.stack([slot_of[(ir_out, p)] for p in range(len(ir_paths))]).astype(np.int32)
        for ir_out, ir_paths in paths.items()
    }
    return tuple(sources), gather, total


# Edges are processed in chunks whose per-edge messages take at most about this many bytes:
# each chunk's messages are summed into the receivers and dropped (and recomputed in the
# backward pass), so memory is O(nodes), not O(edges x 12,672 floats). Small chunks are
# also much faster on CPU: a buffer that stays in the core's L2 cache, reused by every loop
# iteration, costs far less than writing (and page-faulting) one fresh buffer of tens or
# hundreds of MB per call. 2 MB measured best on the benchmark machine (aspirin, 114-atom
# cluster; 1-3 MB within noise, 4 MB ~10 % slower, no chunking 40 % slower even at 21 atoms).
# The edges are split into equal chunks (at most this size), so the padding of the last
# chunk never costs more than one edge per chunk.
# None: no chunking. Training losses on forces (a second derivative) pass None: the scan's
# own backward pass would keep per-chunk state there and take more memory, not less.
# It is an explicit (static) argument of every model function, never a global: two
# programs with different chunking are two compiled programs, each keyed by its value.
DEFAULT_MESSAGE_CHUNK_BYTES: int | None = 2 * 2**20


def edge_basis(config: MaceConfig, vectors, lengths):
    """Per-edge spherical harmonics [E, (l_max+1)^2] and radial basis [E, num_bessel], shared by all layers."""
    harmonic_irreps = [ir for _, ir in e3nn.Irreps.spherical_harmonics(config.l_max)]
    harmonics = e3nn.spherical_harmonics(harmonic_irreps, vectors, normalize=True, normalization="component").array
    radial = config.radial_scale * radial_embedding(lengths, config.num_bessel, config.cutoff, config.radial_envelope)
    return harmonics, radial


def edge_chunks(num_edges: int, bytes_per_edge: int, chunk_bytes: int | None) -> tuple[int, int]:
    """(number of chunks, edges per chunk) of at most `chunk_bytes`: equal chunks, the fewest that fit."""
    if chunk_bytes is None:
        return 1, num_edges
    limit = max(1, chunk_bytes // bytes_per_edge)
    num_chunks = max(1, -(-num_edges // limit))
    return num_chunks, -(-num_edges // num_chunks)


def interaction(
    layer_params: Params, config: MaceConfig, layer: int, x: Features, harmonics, radial, graph: Graph,
    chunk_bytes: int | None = DEFAULT_MESSAGE_CHUNK_BYTES,
) -> Features:
    """Equivariant message passing: A_i = sum_j R(r_ij) (x_j (x) Y(r_ij)) / avg_num_neighbors.

    Per edge and sender irrep, the harmonics are first folded into the coupling
    tensor (no channels involved), then one batched matmul over the channels
    gives every path's message at once; radial weights multiply each path and
    the messages are summed into the receivers before ``linear_down``.

    What has no channel axis, or a small one (harmonics, radial basis, the radial
    MLP up to its last hidden layer), is computed for all edges at once; only the
    channel-wide work runs per chunk of edges.
    """
    x = linear(layer_params["linear_up"], x, list(x))
    sources, gather, num_slots = message_plan(config, layer)
    paths = message_paths(config, layer)
    act = activation(config)
    C = config.num_channels
    num_nodes = graph.positions.shape[0]
    dtype = radial.dtype

    # Radial MLP up to its last hidden layer; padding edges get zero weights, so they carry nothing.
    mlp = layer_params["radial_mlp"]
    hidden = act(radial_mlp(mlp[:-1], radial, act)) * graph.edge_mask[:, None]
    last = mlp[-1].astype(dtype)
    # One gather of the sender features per chunk (all irreps side by side), sliced per irrep.
    sender_irreps = [ir for ir, _, _ in sources]
    offsets = np.cumsum([0] + [ir.dim for ir in sender_irreps])
    x_all = jnp.concatenate([x[ir] for ir in sender_irreps], axis=-1)  # [N, C, sum d_in]

    def messages(hidden, harmonics, senders, receivers):
        """Sum over these edges of the weighted messages, per receiver: [N, slots, C]."""
        mix = hidden @ last / math.sqrt(last.shape[0])
        mix = mix.reshape(mix.shape[0], -1, C)  # [E, paths, C]
        x_sent = x_all[senders]  # [E, C, sum d_in]
        blocks = []
        # Layout [E, slots, C]: channels stay the contiguous axis, so the radial weights
        # are picked per slot as whole rows and no large transpose is ever needed.
        for k, (ir_in, coupling, slot_path) in enumerate(sources):
            edge_coupling = jnp.einsum("ej,ijs->eis", harmonics, jnp.asarray(coupling, dtype))  # [E, d_in, S]
            sent = jnp.einsum("eis,eci->esc", edge_coupling, x_sent[:, :, offsets[k] : offsets[k + 1]])  # [E, S, C]
            blocks.append(sent * mix[:, slot_path, :])
        return jax.ops.segment_sum(jnp.concatenate(blocks, axis=1), receivers, num_segments=num_nodes)

    edges = (hidden, harmonics, graph.senders, graph.receivers)
    num_edges = radial.shape[0]
    num_chunks, chunk = edge_chunks(num_edges, C * num_slots * jnp.dtype(dtype).itemsize, chunk_bytes)
    if num_chunks == 1:
        summed = messages(*edges)
    else:
        pad = num_chunks * chunk - num_edges

        def split(e):  # padding edges: zero radial weights (no message) from node 0 to node 0
            e = jnp.concatenate([e, jnp.zeros((pad,) + e.shape[1:], e.dtype)])
            return e.reshape((num_chunks, chunk) + e.shape[1:])

        def step(total, chunk_edges):
            return total + jax.checkpoint(messages)(*chunk_edges), None

        summed, _ = jax.lax.scan(step, jnp.zeros((num_nodes, num_slots, C), dtype), [split(e) for e in edges])

    aggregated = {}
    for ir_out, ir_paths in paths.items():
        block = summed[:, gather[ir_out], :]  # [N, P, d, C]
        block = jnp.swapaxes(block, 2, 3).reshape(num_nodes, len(ir_paths) * C, ir_out.dim)
        aggregated[ir_out] = block / config.avg_num_neighbors
    return linear(layer_params["linear_down"], aggregated, interaction_irreps(config))


def symmetric_contraction(weights: dict[str, jax.Array], config: MaceConfig, layer: int, x: Features, species) -> Features:
    """ACE product basis: B = sum_nu W_nu[species] . U_nu . x^(x nu), channel-wise."""
    keep = product_keep(config, layer)
    xs = jnp.concatenate([x[ir] for ir in interaction_irreps(config)], axis=-1)  # [N, C, D]
    out: dict[e3nn.Irrep, jax.Array] = {}
    for order in range(config.correlation, 0, -1):
        started = set()
        for ir, _, u in product_basis(config, order, keep):
            u = jnp.asarray(u, dtype=xs.dtype)  # [D]*order + [K, d]
            w = weights[f"w{order}_{ir}"].astype(xs.dtype)[species]  # [N, K, C]
            if ir not in out:
                # The highest order of this irrep: contract one x right away.
                out[ir] = jnp.einsum("...jki,nkc,ncj->nc...i", u, w, xs)
                started.add(ir)
            else:
                out[ir] = out[ir] + jnp.einsum("...ki,nkc->nc...i", u, w)
        # Horner step: ((w3 x + w2) x + w1) x, one power of x per order.
        for ir in out:
            if ir not in started:
                out[ir] = jnp.einsum("nc...ji,ncj->nc...i", out[ir], xs)
    return {ir: out[ir] for ir in sorted(out)}


def readout(head_params: Params, config: MaceConfig, x: Features, last: bool) -> jax.Array:
    """Per-node scalar energy contribution of one head."""
    scalar = e3nn.Irrep("0e")
    if not last:
        return linear(head_params, x, [scalar])[scalar][:, 0, 0]
    hidden = linear(head_params["hidden"], x, [scalar])[scalar]  # [N, H, 1]
    hidden = activation(config)(hidden)
    return linear(head_params["output"], {scalar: hidden}, [scalar])[scalar][:, 0, 0]


# --------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------


def node_features(
    params: Params, config: MaceConfig, graph: Graph, positions=None, cells=None, *,
    message_chunk_bytes: int | None = DEFAULT_MESSAGE_CHUNK_BYTES,
):
    """Run the layers; returns (per-layer node features, per-layer per-head energies [N, L, H]).

    message_chunk_bytes: edge-chunk size of the message sums (None: one shot); see
    DEFAULT_MESSAGE_CHUNK_BYTES. Static: pass it as a Python value, not a traced one.
    """
    positions = graph.positions if positions is None else positions
    cells = graph.cells if cells is None else cells
    dtype = positions.dtype
    species = graph.species

    # mlip v1 sends r = x_sender - x_receiver (the negative of ASE's vector).
    vectors = -edge_vectors(positions, cells, graph)
    # Padding edges get a harmless unit vector, so no NaN leaks into gradients.
    vectors = jnp.where(graph.edge_mask[:, None], vectors, jnp.array([1.0, 0.0, 0.0], dtype))
    lengths = jnp.where(graph.edge_mask, safe_norm(vectors), 0.0)
    harmonics, radial = edge_basis(config, vectors, lengths)

    embedding = params["embedding"].astype(dtype) / math.sqrt(config.num_species)
    x: Features = {e3nn.Irrep("0e"): jnp.take(embedding, species, axis=0)[:, :, None]}

    all_features, energies = [], []
    for layer, layer_params in enumerate(params["layers"]):
        last = layer == config.num_layers - 1
        residual = None
        if layer > 0:
            residual = species_linear(layer_params["skip"], x, species, config.num_species)
        x = interaction(layer_params, config, layer, x, harmonics, radial, graph, message_chunk_bytes)
        if layer == 0:
            x = species_linear(layer_params["selector"], x, species, config.num_species)
        x = symmetric_contraction(layer_params["product"], config, layer, x, species)
        x = linear(layer_params["product_linear"], x, node_irreps(config, layer))
        if residual is not None:
            x = {ir: v + residual[ir] if ir in residual else v for ir, v in x.items()}
        energies.append(jnp.stack([readout(h, config, x, last) for h in layer_params["readout"]], axis=-1))
        all_features.append(x)
    return all_features, jnp.stack(energies, axis=1)


def node_energies(
    params: Params, config: MaceConfig, graph: Graph, positions=None, cells=None, *,
    message_chunk_bytes: int | None = DEFAULT_MESSAGE_CHUNK_BYTES,
) -> jax.Array:
    """Per-atom energies in eV, [N]; zero on padding nodes.

    E_i = E0[Z_i] + mean + std * sum_{layers, heads} readout_i.
    """
    _, contributions = node_features(params, config, graph, positions, cells, message_chunk_bytes=message_chunk_bytes)
    interaction_energy = jnp.sum(contributions, axis=(1, 2))
    e0 = jnp.asarray(config.atomic_energies, dtype=interaction_energy.dtype)[graph.species]
    energy = e0 + config.scaling_mean + config.scaling_std * interaction_energy
    return jnp.where(graph.node_mask, energy, 0.0)


def invariant_descriptors(
    params: Params, config: MaceConfig, graph: Graph, *,
    message_chunk_bytes: int | None = DEFAULT_MESSAGE_CHUNK_BYTES,
) -> jax.Array:
    """Scalar (0e) node features of every layer, concatenated: [N, L * C]."""
    features, _ = node_features(params, config, graph, message_chunk_bytes=message_chunk_bytes)
    scalar = e3nn.Irrep("0e")
    return jnp.concatenate([f[scalar][:, :, 0] for f in features], axis=-1)
