"""mlip's default optimiser, written out: the optax chain the card trains with.

    MultiSteps(k)[ add_decayed_weights(wd) -> clip_by_global_norm(500)
                   -> amsgrad(lr(step), b1=0.9, b2=0.999, eps=1e-8) ]

lr(step) rises linearly from init to peak over ``warmup_steps``, then goes
linearly from peak to final over ``transition_steps`` and stays there. The
learning rate is injected as a hyper-parameter so it can be logged.
"""

from __future__ import annotations

from dataclasses import dataclass

import optax


@dataclass(frozen=True)
class OptimizerSettings:
    init_learning_rate: float = 0.01
    peak_learning_rate: float = 0.01
    final_learning_rate: float = 0.01
    weight_decay: float = 0.0
    warmup_steps: int = 4000
    transition_steps: int = 360000
    grad_norm: float = 500.0
    gradient_accumulation_steps: int = 1
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8


def learning_rate_schedule(s: OptimizerSettings) -> optax.Schedule:
    return optax.join_schedules(
        [
            optax.linear_schedule(s.init_learning_rate, s.peak_learning_rate, s.warmup_steps),
            optax.linear_schedule(s.peak_learning_rate, s.final_learning_rate, s.transition_steps),
        ],
        boundaries=[s.warmup_steps],
    )


def make_optimizer(s: OptimizerSettings) -> optax.GradientTransformation:
    def inner(learning_rate):
        return optax.MultiSteps(
            optax.chain(
                optax.add_decayed_weights(s.weight_decay),
                optax.clip_by_global_norm(s.grad_norm),
                optax.amsgrad(learning_rate, b1=s.b1, b2=s.b2, eps=s.eps),
            ),
            every_k_schedule=s.gradient_accumulation_steps,
        )

    return optax.inject_hyperparams(inner)(learning_rate=learning_rate_schedule(s))
