"""``kd``: Hinton et al. (2015) distillation from a frozen teacher.

Loss: ``α · T² · KL(p_teacher^T ‖ p_student^T) + (1 − α) · CE(student, labels)``, batch means, with
``p^T = softmax(logits / T)``; the teacher forward runs live inside each step (one forward per step).
"""

from __future__ import annotations

import jax.numpy as jnp

from ev3.losses import hinton_loss
from ev3.methods.common import (  # noqa: F401  (evaluate, work and the default hooks: the method contract)
    StepWork as work, SupervisedState, budget_share, evaluate, init_student, loss_step, model, population_size,
    select, summary, track, with_units,
)


def teacher_passes(spec) -> tuple[int, int]:
    """Teacher forwards and backwards per step."""
    return 1, 0


def init(spec, data, teacher, key) -> SupervisedState:
    hparams = {k: jnp.float32(spec.options[k]) for k in ("temperature", "alpha")}
    return SupervisedState(init_student(spec.model, spec.train, data, key), teacher, hparams)


def _loss(logits, teacher_logits, labels, hparams):
    return hinton_loss(logits, teacher_logits, labels, temperature=hparams["temperature"], alpha=hparams["alpha"])


def step(state, batch, key):
    return loss_step(state, batch, _loss)
