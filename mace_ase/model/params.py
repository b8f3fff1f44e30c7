"""The parameter layout of MACE: one table that drives initialisation and I/O.

Each entry names a leaf of mace-ase's params pytree (its path), its shape and the
standard deviation mlip initialises it with (or, for constants such as a stored
product basis, the value it starts from). File formats map their own storage
names onto these paths (``mace_ase.formats``); keeping the layout in one place
means readers, writers and ``init_params`` cannot disagree.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np

from .config import MaceConfig
from .mace import (
    has_skip,
    input_irreps,
    interaction_irreps,
    message_paths,
    node_irreps,
    num_message_weights,
    product_basis,
    product_keep,
)


class Leaf(NamedTuple):
    path: tuple  # into the mace-ase pytree
    shape: tuple[int, ...]
    init_std: float
    constant: Any = None  # a fixed initial value (NumPy), instead of a random one


def _linear_leaves(path, irreps_in, irreps_out, mul_in, mul_out) -> list[Leaf]:
    """Equivariant linear map: one [mul_in, mul_out] weight per irrep present on both sides."""
    leaves = []
    for ir in irreps_out:
        if ir in irreps_in:
            m_in = mul_in[ir] if isinstance(mul_in, dict) else mul_in
            leaves.append(Leaf(path + (str(ir),), (m_in, mul_out), 1.0))
    return leaves


def _species_linear_leaves(path, irreps_in, irreps_out, channels, num_species) -> list[Leaf]:
    """Element-dependent linear map (a tensor product with the one-hot species): [C, S, C] per irrep."""
    return [Leaf(path + (str(ir),), (channels, num_species, channels), 1.0) for ir in irreps_out if ir in irreps_in]


def parameter_layout(config: MaceConfig) -> list[Leaf]:
    C, S = config.num_channels, config.num_species
    leaves = [Leaf(("embedding",), (S, C), 1.0)]
    hidden_mlp = (config.num_bessel,) + config.radial_mlp_hidden
    for layer in range(config.num_layers):
        last = layer == config.num_layers - 1
        p = ("layers", layer)
        x_in = input_irreps(config, layer)
        targets = interaction_irreps(config)
        leaves += _linear_leaves(p + ("linear_up",), x_in, x_in, C, C)
        sizes = hidden_mlp + (num_message_weights(config, layer),)
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            leaves.append(Leaf(p + ("radial_mlp", i), (a, b), 1.0))
        if config.message_normalization == "density":
            leaves.append(Leaf(p + ("density",), (config.num_bessel, 1), 1.0))
        paths = message_paths(config, layer)
        leaves += _linear_leaves(p + ("linear_down",), tuple(paths), targets, {ir: len(ps) * C for ir, ps in paths.items()}, C)
        outs = node_irreps(config, layer)
        if has_skip(config, layer):
            leaves += _species_linear_leaves(p + ("skip",), x_in, outs, C, S)
        else:
            leaves += _species_linear_leaves(p + ("selector",), targets, targets, C, S)
        keep = product_keep(config, layer)
        product_out = set()
        for order in range(config.correlation, 0, -1):
            for ir, mul, u in product_basis(config, order, keep):
                leaves.append(Leaf(p + ("product", f"w{order}_{ir}"), (S, mul, C), mul**-0.5))
                if config.stored_product_basis:
                    leaves.append(Leaf(p + ("product", f"u{order}_{ir}"), u.shape, 0.0, u))
                product_out.add(ir)
        leaves += _linear_leaves(p + ("product_linear",), tuple(sorted(product_out)), outs, C, C)
        scalar = (e3nn.Irrep("0e"),)
        for head in range(config.num_readout_heads):
            r = p + ("readout", head)
            if not last:
                leaves += _linear_leaves(r, outs, scalar, C, 1)
            else:
                hidden = e3nn.Irreps(config.readout_irreps[0]).simplify().num_irreps
                leaves += _linear_leaves(r + ("hidden",), outs, scalar, C, hidden)
                leaves += _linear_leaves(r + ("output",), scalar, scalar, hidden, 1)
    return leaves


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
    """Random parameters with mlip's initial distributions (constants at their values)."""
    layout = parameter_layout(config)
    keys = jax.random.split(key, len(layout))
    params: dict[str, Any] = {}
    for leaf, k in zip(layout, keys):
        if leaf.constant is not None:
            value = jnp.asarray(leaf.constant, dtype)
        else:
            value = leaf.init_std * jax.random.normal(k, leaf.shape, dtype)
        _set(params, leaf.path, value)
    return params


def set_leaf(tree: dict, path: tuple, value) -> None:
    _set(tree, path, value)


def get_leaf(tree, path: tuple):
    return _get(tree, path)


def checked_leaf(name: str, array, shape: tuple) -> np.ndarray:
    """A stored array for a leaf of `shape`: NumPy, as stored (a JAX array would drop float64
    unless x64 is on); ValueError naming it if its shape is wrong or it holds NaN/inf."""
    array = np.asarray(array)
    if array.shape != tuple(shape):
        raise ValueError(f"parameter '{name}' has shape {array.shape}, expected {tuple(shape)}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"parameter '{name}' contains NaN or infinite values")
    return array


def check_params(config: MaceConfig, params) -> None:
    """ValueError naming the first leaf that is missing or has the wrong shape or values."""
    for leaf in parameter_layout(config):
        name = "/".join(str(part) for part in leaf.path)
        try:
            value = _get(params, leaf.path)
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"parameter '{name}' is missing") from None
        checked_leaf(name, value, leaf.shape)
