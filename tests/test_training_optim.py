"""Optimiser (mlip's default chain), loss weights and EMA: numbers checked by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mace_ase.training.ema import ema_init, ema_params, ema_update
from mace_ase.training.loss import LossWeights
from mace_ase.training.optimizer import OptimizerSettings, learning_rate_schedule, make_optimizer


def test_learning_rate_schedule_points():
    s = OptimizerSettings(init_learning_rate=0.001, peak_learning_rate=0.01, final_learning_rate=0.0001,
                          warmup_steps=100, transition_steps=1000)
    lr = learning_rate_schedule(s)
    assert float(lr(0)) == pytest.approx(0.001)
    assert float(lr(50)) == pytest.approx(0.0055)
    assert float(lr(100)) == pytest.approx(0.01)
    assert float(lr(600)) == pytest.approx(0.01 + 0.5 * (0.0001 - 0.01))
    assert float(lr(1100)) == pytest.approx(0.0001)
    assert float(lr(5000)) == pytest.approx(0.0001)
    card = learning_rate_schedule(OptimizerSettings())  # the card: 0.01 throughout
    assert [float(card(k)) for k in (0, 4000, 364000)] == pytest.approx([0.01] * 3)


def _updates(optimizer, grads_list, params):
    state = optimizer.init(params)
    out = []
    for g in grads_list:
        u, state = optimizer.update(g, state, params)
        out.append(u)
    return out, state


def test_gradients_are_clipped_at_global_norm_500():
    params = {"a": jnp.zeros(3), "b": jnp.zeros(2)}
    big = {"a": jnp.array([3000.0, -4000.0, 0.0]), "b": jnp.array([1.0, 2.0])}  # norm ~5000
    small = {"a": jnp.array([1.0, 0.5, -0.2]), "b": jnp.array([0.3, 0.1])}
    s = OptimizerSettings(warmup_steps=0, transition_steps=10)
    ours, state = _updates(make_optimizer(s), [big, small], params)
    norm = float(optax.tree.norm(big))
    clipped = jax.tree.map(lambda g: g * 500.0 / norm, big)
    reference, _ = _updates(optax.amsgrad(0.01, b1=0.9, b2=0.999, eps=1e-8), [clipped, small], params)
    unclipped, _ = _updates(optax.amsgrad(0.01, b1=0.9, b2=0.999, eps=1e-8), [big, small], params)
    for mine, ref, raw in zip(ours, reference, unclipped):
        for key in params:
            np.testing.assert_allclose(mine[key], ref[key], rtol=1e-6, atol=1e-12)
    # The second step shows the clipped second moment: far from the unclipped optimiser.
    assert not np.allclose(ours[1]["b"], unclipped[1]["b"], rtol=1e-3)
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.01)


def test_gradient_accumulation_averages_k_steps():
    params = {"a": jnp.zeros(2)}
    g1, g2 = {"a": jnp.array([1.0, 0.0])}, {"a": jnp.array([0.0, 3.0])}
    ours, _ = _updates(make_optimizer(OptimizerSettings(warmup_steps=0, gradient_accumulation_steps=2)), [g1, g2], params)
    np.testing.assert_array_equal(ours[0]["a"], [0.0, 0.0])  # no step yet
    ref, _ = _updates(optax.amsgrad(0.01, eps=1e-8), [{"a": jnp.array([0.5, 1.5])}], params)
    np.testing.assert_allclose(ours[1]["a"], ref[0]["a"], rtol=1e-6)


def test_loss_weights_swap_at_the_configured_epoch():
    card = LossWeights()
    assert card.at(0) == (40.0, 1000.0) and card.at(114) == (40.0, 1000.0)
    assert card.at(115) == (1000.0, 40.0) and card.at(219) == (1000.0, 40.0)
    assert LossWeights(swap_epoch=None).at(500) == (40.0, 1000.0)
    assert LossWeights(1.0, 2.0, 3, 4.0, 5.0).at(3) == (4.0, 5.0)


def test_ema_formula():
    decay = 0.9
    p = [jnp.array([1.0, -2.0]), jnp.array([3.0, 0.0]), jnp.array([-1.0, 5.0])]
    state = ema_init({"w": p[0]})
    state = ema_update(state, {"w": p[0]}, decay)
    np.testing.assert_allclose(ema_params(state, decay)["w"], p[0], rtol=1e-6)  # bias-corrected: exact at t=1
    state = ema_update(state, {"w": p[1]}, decay)
    state = ema_update(state, {"w": p[2]}, decay)
    m = (1 - decay) * (decay**2 * p[0] + decay * p[1] + p[2])
    np.testing.assert_allclose(state.average["w"], m, rtol=1e-6)
    np.testing.assert_allclose(ema_params(state, decay)["w"], m / (1 - decay**3), rtol=1e-6)
    assert int(state.count) == 3
