"""Exponential moving average of the parameters, bias-corrected.

    m_t = decay * m_{t-1} + (1 - decay) * p_t,  m_0 = 0
    ema_t = m_t / (1 - decay^t)

The bias correction makes ema_1 = p_1 exactly, and the average forgets the
early, poor parameters at the rate ``decay`` per optimiser step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class EmaState(NamedTuple):
    average: dict  # m_t, same tree as the params
    count: jax.Array  # t, number of updates


def ema_init(params) -> EmaState:
    return EmaState(jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.int32))


def ema_update(state: EmaState, params, decay: float) -> EmaState:
    average = jax.tree.map(lambda m, p: decay * m + (1.0 - decay) * p, state.average, params)
    return EmaState(average, state.count + 1)


def ema_params(state: EmaState, decay: float):
    """The bias-corrected average (the raw average would be shrunk toward 0 early on)."""
    correction = 1.0 - decay ** state.count.astype(jnp.float32)
    return jax.tree.map(lambda m: m / jnp.where(correction > 0, correction, 1.0).astype(m.dtype), state.average)
