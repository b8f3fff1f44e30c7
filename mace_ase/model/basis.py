"""Moving product-basis weights from one set of coupling tensors to another.

The ACE product of order nu is B = sum_k W[k] U[j1..jnu, k, i] x_j1 ... x_jnu: only the part
of U symmetric in j1..jnu matters (the x's are the same vector). Two bases describe the same
model when U_source = U_target M on that symmetric part; then W_target = M W_source. M is
found by least squares and its residual says whether the two bases span the same space
(exactly, or up to the rounding of a basis computed in float32).
"""

from __future__ import annotations

import itertools

import numpy as np


def symmetrise(u: np.ndarray, order: int) -> np.ndarray:
    """The average of u over permutations of its first `order` axes."""
    rest = tuple(range(order, u.ndim))
    perms = list(itertools.permutations(range(order)))
    return sum(np.transpose(u, p + rest) for p in perms) / len(perms)


def basis_map(u_source: np.ndarray, u_target: np.ndarray, order: int, symmetric: bool) -> tuple[np.ndarray, float]:
    """(M [K_target, K_source], max residual) with U_source ~ U_target M; U layout [D]*order + [K, d].

    symmetric=False compares the tensors as they are (then a signed permutation is rounded to
    exact +-1 and 0, so weights are copied bit for bit); True compares their symmetric parts.
    """
    if symmetric:
        u_source, u_target = symmetrise(u_source, order), symmetrise(u_target, order)
    a = np.moveaxis(u_source, -2, -1).reshape(-1, u_source.shape[-2])
    b = np.moveaxis(u_target, -2, -1).reshape(-1, u_target.shape[-2])
    m, *_ = np.linalg.lstsq(b, a, rcond=None)
    if not symmetric:
        rounded = np.round(m)
        if np.all(np.abs(m - rounded) < 1e-6) and np.all(np.abs(rounded).sum(axis=0) == 1):
            m = rounded
    residual = float(np.abs(b @ m - a).max()) if a.size else 0.0
    return m, residual


def map_weights(m: np.ndarray, w: np.ndarray) -> np.ndarray:
    """W_target[s, k, c] = sum_k' M[k, k'] W_source[s, k', c]."""
    return np.einsum("jk,skc->sjc", m, np.asarray(w, np.float64)).astype(np.asarray(w).dtype)


def without_stored_basis(config, params, symmetric: bool = True, tolerance: float = 1e-6):
    """The same model on e3nn-jax's exact basis (symmetric by default): (config, params).

    A stored basis computed in float32 is then replaced by the exact one; the numbers move by
    that rounding (~1e-8 relative). For training, where the stored tensors would otherwise be
    carried (and averaged) as parameters.
    """
    from .mace import product_basis, product_keep

    if not config.stored_product_basis:
        return config, params
    target = config.replace(stored_product_basis=False, symmetric_tensor_product_basis=symmetric)
    layers = []
    for layer, layer_params in enumerate(params["layers"]):
        keep = product_keep(config, layer)
        product = {}
        for order in range(1, config.correlation + 1):
            exact = {str(ir): u for ir, _, u in product_basis(target, order, keep)}
            for ir, _, _ in product_basis(config, order, keep):
                name = f"{order}_{ir}"
                stored = np.asarray(layer_params["product"][f"u{name}"], np.float64)
                if str(ir) not in exact:
                    continue
                m, residual = basis_map(stored, exact[str(ir)], order, symmetric=True)
                if residual > tolerance:
                    raise ValueError(f"layer {layer}: stored product basis u{name} is not spanned by e3nn-jax's "
                                     f"(residual {residual:.1e})")
                product[f"w{name}"] = map_weights(m, layer_params["product"][f"w{name}"])
        layers.append({**layer_params, "product": product})
    return target, {**params, "layers": layers}
