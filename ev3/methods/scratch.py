"""``scratch``: the student trained with cross-entropy only (also used to train teachers)."""

from __future__ import annotations

from ev3.losses import cross_entropy
from ev3.methods.common import (  # noqa: F401  (evaluate, work and the default hooks: the method contract)
    StepWork as work, SupervisedState, budget_share, evaluate, init_student, loss_step, model, population_size,
    select, summary, track, with_units,
)


def teacher_passes(spec) -> tuple[int, int]:
    """Teacher forwards and backwards per step."""
    return 0, 0


def init(spec, data, teacher, key) -> SupervisedState:
    return SupervisedState(init_student(spec.model, spec.train, data, key), None, {})


def _loss(logits, teacher_logits, labels, hparams):
    return cross_entropy(logits, labels)


def step(state, batch, key):
    return loss_step(state, batch, _loss)
