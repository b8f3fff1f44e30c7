"""Radial basis of MACE: Bessel functions times a smooth cutoff envelope.

Optionally the Bessel functions see a transformed distance T(r) (Agnesi or soft transform,
which depend on the two elements' covalent radii) while the envelope always sees r.
"""

from __future__ import annotations

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp


def bessel_basis(r, num_basis: int, cutoff: float, frequencies=None, prefactor=None):
    """prefactor sin(w_n r) / r for n = 1..num_basis, shape [..., num_basis].

    Defaults: w_n = n pi / rc and prefactor sqrt(2/rc); models may carry their own (rounded) values.
    """
    if frequencies is None:
        w = jnp.arange(1, num_basis + 1, dtype=r.dtype) * jnp.pi / cutoff
    else:
        w = jnp.asarray(frequencies, dtype=r.dtype)
    prefactor = jnp.sqrt(2.0 / cutoff) if prefactor is None else prefactor
    r = r[..., None]
    r_safe = jnp.where(r == 0.0, 1.0, r)  # the r -> 0 limit is finite; keep gradients finite too
    value = jnp.sin(w * r_safe) / r_safe
    return prefactor * jnp.where(r == 0.0, w, value)


def polynomial_envelope(r, cutoff: float, p: int = 5):
    """Klicpera et al. (DimeNet) envelope: 1 at r=0, zero with p derivatives at the cutoff."""
    x = r / cutoff
    value = (
        1.0
        - (p + 1.0) * (p + 2.0) / 2.0 * x**p
        + p * (p + 2.0) * x ** (p + 1)
        - p * (p + 1.0) / 2.0 * x ** (p + 2)
    )
    return value * (r < cutoff)


def soft_envelope(r, cutoff: float):
    return e3nn.soft_envelope(r, cutoff, arg_multiplicator=2.0, value_at_origin=1.2)


ENVELOPES = {"polynomial_envelope": polynomial_envelope, "soft_envelope": soft_envelope}


def _raw_embedding(r, num_basis, cutoff, envelope):
    return bessel_basis(r, num_basis, cutoff) * ENVELOPES[envelope](r, cutoff)[..., None]


def embedding_scale(num_basis: int, cutoff: float, envelope: str, avg_r_min: float | None) -> float:
    """1 / RMS of the basis on [avg_r_min, cutoff], sampled at 1000 float32 points (mlip v1's definition).

    mlip defines the constant by this float32 computation, so its last bits depend on the XLA
    that runs it. It is therefore evaluated once, when a config is made (``MaceConfig.radial_scale``),
    in the mode of mlip's float64 runs, and stored in the archives mace-ase writes: a saved
    model gives the same numbers on every JAX version.
    """
    if avg_r_min is None:
        return 1.0
    with jax.enable_x64(True), jax.ensure_compile_time_eval():
        r = jnp.linspace(avg_r_min, cutoff, 1000, dtype=jnp.float32)
        return float(jnp.mean(_raw_embedding(r, num_basis, cutoff, envelope) ** 2).item() ** -0.5)


def radial_embedding(r, num_basis: int, cutoff: float, envelope: str):
    """[E] lengths -> [E, num_basis], unscaled (the model multiplies by config.radial_scale); zero at r = 0 (padding)."""
    value = _raw_embedding(r, num_basis, cutoff, envelope)
    return jnp.where((r == 0.0)[..., None], 0.0, value)


def transformed_embedding(r, t, num_basis: int, cutoff: float, envelope_p: int, frequencies=None, prefactor=None):
    """Bessel functions of the transformed distance t times the polynomial envelope of r: [E, num_basis].

    (mace-torch's radial embedding; t = r without a transform.) Zero for padding edges (r = 0).
    """
    value = bessel_basis(t, num_basis, cutoff, frequencies, prefactor) * polynomial_envelope(r, cutoff, envelope_p)[..., None]
    return jnp.where((r == 0.0)[..., None], 0.0, value)


def agnesi_transform(r, r0, q: float, p: float, a: float):
    """T = 1 / (1 + a x^q / (1 + x^(q - p))), x = r / r0 (ACEpotentials.jl's Agnesi transform), in (0, 1]."""
    x = jnp.where(r == 0.0, 1.0, r / r0)  # padding edges: any finite value
    return 1.0 / (1.0 + a * x**q / (1.0 + x ** (q - p)))


def soft_transform(r, r0, alpha: float):
    """T = p0 + (r - p0) (1 + tanh(alpha' (r - m))) / 2: ~p0 = 3/4 r0 at short range, ~r beyond 4/3 r0."""
    p0, p1 = (3 / 4) * r0, (4 / 3) * r0
    m = 0.5 * (p0 + p1)
    s = 0.5 * (1.0 + jnp.tanh(alpha / (p1 - p0) * (r - m)))
    return p0 + (r - p0) * s


def safe_norm(v, axis=-1):
    """|v| with a zero (not NaN) gradient at v = 0."""
    v2 = jnp.sum(v * v, axis=axis)
    safe = jnp.where(v2 == 0.0, 1.0, v2)
    return jnp.where(v2 == 0.0, 0.0, jnp.sqrt(safe))

