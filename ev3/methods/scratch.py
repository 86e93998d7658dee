"""``scratch``: the student trained with cross-entropy only (also used to train teachers)."""

from __future__ import annotations

from ev3.losses import cross_entropy
from ev3.methods.common import SupervisedState, evaluate, init_student, loss_step  # noqa: F401

TEACHER_FORWARDS_PER_STEP = 0
TEACHER_BACKWARDS_PER_STEP = 0


def init(spec, data, teacher, key) -> SupervisedState:
    return SupervisedState(init_student(spec.model, spec.train, data, key), None, {})


def _loss(logits, teacher_logits, labels, hparams):
    return cross_entropy(logits, labels)


def step(state, batch, key):
    return loss_step(state, batch, _loss)
