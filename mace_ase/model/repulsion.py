"""Short-range pair repulsion added to the learned energy: ZBL screened nuclear repulsion.

Ziegler-Biersack-Littmark: V(r) = e^2/(4 pi eps0) Z_u Z_v / r * phi(r / a),
phi(x) = sum_k c_k exp(-beta_k x), a = a_prefactor * 0.529 Å / (Z_u^a_exp + Z_v^a_exp),
switched off by the polynomial envelope at the sum of the two covalent radii. Half of
each pair's energy goes to each atom (the pair appears once per direction).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .radial import polynomial_envelope

COULOMB = 14.3996  # e^2 / (4 pi eps0) in eV Å, as mace-torch has it
BOHR = 0.529  # Å
ZBL_EXPONENTS = (3.2, 0.9423, 0.4028, 0.2016)


def coulomb_prefactors(atomic_numbers, float32: bool) -> np.ndarray:
    """[S, S] table of 14.3996 Z_u Z_v; `float32`: rounded as torch evaluates it in float32."""
    z = np.asarray(atomic_numbers, dtype=np.float64)
    if float32:
        z32 = z.astype(np.float32)
        return ((np.float32(COULOMB) * z32)[:, None] * z32[None, :]).astype(np.float64)
    return COULOMB * z[:, None] * z[None, :]


def zbl_node_energies(config, lengths, graph) -> jax.Array:
    """Per-node ZBL energy [N]: the sum over incoming edges of half the pair energy."""
    c1, c2, c3, c4, a_exp, a_prefactor, p = config.pair_repulsion_params
    dtype = lengths.dtype
    zs = jnp.asarray(config.atomic_numbers, dtype=dtype)
    radii = jnp.asarray(config.covalent_radii, dtype=dtype)
    s, r = graph.species[graph.senders], graph.species[graph.receivers]
    prefactor = jnp.asarray(coulomb_prefactors(config.atomic_numbers, config.pair_repulsion_prefactor_float32), dtype)[s, r]
    length = jnp.where(graph.edge_mask, lengths, 1.0)  # padding edges: any finite length
    a = a_prefactor * BOHR / (zs[s] ** a_exp + zs[r] ** a_exp)
    x = length / a
    phi = sum(c * jnp.exp(-beta * x) for c, beta in zip((c1, c2, c3, c4), ZBL_EXPONENTS))
    pair = prefactor / length * phi
    envelope = polynomial_envelope(length, radii[s] + radii[r], int(p))
    edge_energy = jnp.where(graph.edge_mask, 0.5 * pair * envelope, 0.0)
    return jax.ops.segment_sum(edge_energy, graph.receivers, num_segments=graph.positions.shape[0])
