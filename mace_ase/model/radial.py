"""Radial basis of MACE: Bessel functions times a smooth cutoff envelope."""

from __future__ import annotations

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp


def bessel_basis(r, num_basis: int, cutoff: float):
    """sqrt(2/rc) sin(n pi r / rc) / r for n = 1..num_basis, shape [..., num_basis]."""
    n = jnp.arange(1, num_basis + 1, dtype=r.dtype)
    r = r[..., None]
    r_safe = jnp.where(r == 0.0, 1.0, r)  # the r -> 0 limit is finite; keep gradients finite too
    value = jnp.sin(n * jnp.pi / cutoff * r_safe) / r_safe
    return jnp.sqrt(2.0 / cutoff) * jnp.where(r == 0.0, n * jnp.pi / cutoff, value)


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


def safe_norm(v, axis=-1):
    """|v| with a zero (not NaN) gradient at v = 0."""
    v2 = jnp.sum(v * v, axis=axis)
    safe = jnp.where(v2 == 0.0, 1.0, v2)
    return jnp.where(v2 == 0.0, 0.0, jnp.sqrt(safe))

