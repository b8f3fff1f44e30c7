"""The parameter layout of MACE: one table that drives initialisation and I/O.

Each entry names a leaf of mace-ase's params pytree, its key in mlip's flat
``params.npz`` (flax module path joined by '#'), its shape and the standard
deviation mlip initialises it with. Keeping this in one place means the
archive reader, the writer and ``init_params`` cannot disagree.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np

from .config import MaceConfig
from .mace import (
    input_irreps,
    interaction_irreps,
    message_paths,
    node_irreps,
    num_message_weights,
    product_basis,
    product_keep,
)

MLIP_PREFIX = "params#mlip_network#MaceBlock_0#"


class Leaf(NamedTuple):
    path: tuple  # into the mace-ase pytree
    mlip_key: str  # flat key in mlip's params.npz
    shape: tuple[int, ...]
    init_std: float


def _linear_leaves(path, module, irreps_in, irreps_out, mul_in, mul_out) -> list[Leaf]:
    """e3nn Linear: one weight per irrep present on both sides, keyed w[i_in,i_out]."""
    leaves = []
    for i_out, ir in enumerate(irreps_out):
        if ir in irreps_in:
            i_in = irreps_in.index(ir)
            m_in = mul_in[ir] if isinstance(mul_in, dict) else mul_in
            key = f"{module}#w[{i_in},{i_out}] {m_in}x{ir},{mul_out}x{ir}"
            leaves.append(Leaf(path + (str(ir),), key, (m_in, mul_out), 1.0))
    return leaves


def _species_linear_leaves(path, module, irreps_in, irreps_out, channels, num_species) -> list[Leaf]:
    """mlip's FullyConnectedTensorProduct(x, one_hot(species)): w[i_in,0,i_out]."""
    leaves = []
    for i_out, ir in enumerate(irreps_out):
        if ir in irreps_in:
            i_in = irreps_in.index(ir)
            key = f"{module}#w[{i_in},0,{i_out}] {channels}x{ir},{num_species}x0e,{channels}x{ir}"
            leaves.append(Leaf(path + (str(ir),), key, (channels, num_species, channels), 1.0))
    return leaves


def parameter_layout(config: MaceConfig) -> list[Leaf]:
    C, S = config.num_channels, config.num_species
    leaves = [Leaf(("embedding",), "LinearNodeEmbeddingBlock_0#embeddings", (S, C), 1.0)]
    hidden_mlp = (config.num_bessel,) + config.radial_mlp_hidden
    for layer in range(config.num_layers):
        last = layer == config.num_layers - 1
        p, m = ("layers", layer), f"layer_{layer}#"
        block = m + "InteractionBlock_0#"
        x_in = input_irreps(config, layer)
        targets = interaction_irreps(config)
        leaves += _linear_leaves(p + ("linear_up",), block + "linear_up", x_in, x_in, C, C)
        sizes = hidden_mlp + (num_message_weights(config, layer),)
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            key = f"{block}MessagePassingConvolution_0#MultiLayerPerceptron_0#Dense_{i}#kernel"
            leaves.append(Leaf(p + ("radial_mlp", i), key, (a, b), 1.0))
        paths = message_paths(config, layer)
        leaves += _linear_leaves(
            p + ("linear_down",), block + "linear_down", tuple(paths), targets,
            {ir: len(ps) * C for ir, ps in paths.items()}, C,
        )
        outs = node_irreps(config, layer)
        if layer == 0:
            leaves += _species_linear_leaves(p + ("selector",), m + "FullyConnectedTensorProduct_0", targets, targets, C, S)
        else:
            leaves += _species_linear_leaves(p + ("skip",), m + "FullyConnectedTensorProduct_0", x_in, outs, C, S)
        product = m + "EquivariantProductBasisBlock_0#"
        keep = product_keep(config, layer)
        product_out = set()
        for order in range(config.correlation, 0, -1):
            for ir, mul, _ in product_basis(config, order, keep):
                key = f"{product}SymmetricContraction_0#w{order}_{ir}"
                leaves.append(Leaf(p + ("product", f"w{order}_{ir}"), key, (S, mul, C), mul**-0.5))
                product_out.add(ir)
        leaves += _linear_leaves(p + ("product_linear",), product + "Linear_0", tuple(sorted(product_out)), outs, C, C)
        scalar = (e3nn.Irrep("0e"),)
        for head in range(config.num_readout_heads):
            r = p + ("readout", head)
            if not last:
                leaves += _linear_leaves(r, f"{m}LinearReadoutBlock_{head}#Linear_0", outs, scalar, C, 1)
            else:
                hidden = e3nn.Irreps(config.readout_irreps[0]).simplify().num_irreps
                module = f"{m}NonLinearReadoutBlock_{head}#"
                leaves += _linear_leaves(r + ("hidden",), module + "Linear_0", outs, scalar, C, hidden)
                leaves += _linear_leaves(r + ("output",), module + "Linear_1", scalar, scalar, hidden, 1)
    return [leaf._replace(mlip_key=MLIP_PREFIX + leaf.mlip_key) for leaf in leaves]


def _set(tree: dict, path: tuple, value) -> None:
    """Insert into nested dicts; integer path components make lists."""
    node = tree
    for key, nxt in zip(path[:-1], path[1:]):
        if isinstance(node, list):
            while len(node) <= key:
                node.append(None)
            if node[key] is None:
                node[key] = [] if isinstance(nxt, int) else {}
            node = node[key]
        else:
            node = node.setdefault(key, [] if isinstance(nxt, int) else {})
    if isinstance(node, list):
        while len(node) <= path[-1]:
            node.append(None)
    node[path[-1]] = value


def _get(tree, path: tuple):
    for key in path:
        tree = tree[key]
    return tree


def init_params(config: MaceConfig, key: jax.Array, dtype=jnp.float32) -> dict[str, Any]:
    """Random parameters with mlip's initial distributions."""
    layout = parameter_layout(config)
    keys = jax.random.split(key, len(layout))
    params: dict[str, Any] = {}
    for leaf, k in zip(layout, keys):
        _set(params, leaf.path, leaf.init_std * jax.random.normal(k, leaf.shape, dtype))
    return params


def params_from_flat(config: MaceConfig, flat: dict[str, np.ndarray]) -> dict[str, Any]:
    """mlip's flat '#'-keyed arrays -> mace-ase params. Raises KeyError/ValueError naming the leaf."""
    params: dict[str, Any] = {}
    for leaf in parameter_layout(config):
        if leaf.mlip_key not in flat:
            raise KeyError(f"parameter '{leaf.mlip_key}' is missing from the archive")
        array = np.asarray(flat[leaf.mlip_key])
        if array.shape == (1,) + leaf.shape:  # archives trained with pmap keep a device axis
            array = array[0]
        if array.shape != leaf.shape:
            raise ValueError(f"parameter '{leaf.mlip_key}' has shape {array.shape}, expected {leaf.shape}")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"parameter '{leaf.mlip_key}' contains NaN or infinite values")
        _set(params, leaf.path, array)  # NumPy, as stored: a JAX array would drop float64 unless x64 is on
    return params


def params_to_flat(config: MaceConfig, params) -> dict[str, np.ndarray]:
    return {leaf.mlip_key: np.asarray(_get(params, leaf.path)) for leaf in parameter_layout(config)}
