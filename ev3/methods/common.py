"""Pieces shared by the supervised methods (teacher, scratch, kd).

A method module implements ``init(spec, data, teacher, key) -> state``, a pure ``step(state, batch, key) ->
(state, logs)`` (the loop jits it) and ``evaluate(state, x) -> logits``. It also declares
``TEACHER_FORWARDS_PER_STEP`` / ``TEACHER_BACKWARDS_PER_STEP`` for compute accounting. ``logs["loss"]`` is the
scalar training loss of the step.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax
from flax import struct

from ev3 import models
from ev3.optim import make_optimizer


@struct.dataclass
class Frozen:
    """A model that is only evaluated (a KD teacher): static graphdef, params/rest as arrays."""

    graphdef: Any = struct.field(pytree_node=False)
    params: Any = None
    rest: Any = None

    def __call__(self, x: jax.Array) -> jax.Array:
        return models.apply(self.graphdef, self.params, self.rest, x)[0]


@struct.dataclass
class Student:
    """A trainable model with its optimizer state."""

    graphdef: Any = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    params: Any = None
    rest: Any = None
    opt_state: Any = None

    def logits(self, x: jax.Array) -> jax.Array:
        return models.apply(self.graphdef, self.params, self.rest, x)[0]


@struct.dataclass
class SupervisedState:
    """``student`` trains; ``teacher`` (or None) is frozen; ``hparams`` are loss hyperparameters as arrays."""

    student: Student
    teacher: Frozen | None
    hparams: dict


def init_student(model_config: dict, train_config: dict, data, key: jax.Array) -> Student:
    net = models.build(model_config, data.input_shape, data.num_classes, key)
    tx = make_optimizer(train_config["optimizer"], train_config["steps"])
    return Student(net.graphdef, tx, net.params, net.rest, tx.init(net.params))


def loss_step(state: SupervisedState, batch, loss_fn: Callable) -> tuple[SupervisedState, dict]:
    """One optimizer step on ``loss_fn(student_logits, teacher_logits | None, labels, hparams)``."""
    x, y = batch
    s = state.student
    teacher_logits = None if state.teacher is None else jax.lax.stop_gradient(state.teacher(x))

    def objective(params):
        logits, rest = models.apply(s.graphdef, params, s.rest, x, train=True)
        return loss_fn(logits, teacher_logits, y, state.hparams), rest

    (loss, rest), grads = jax.value_and_grad(objective, has_aux=True)(s.params)
    updates, opt_state = s.tx.update(grads, s.opt_state, s.params)
    student = s.replace(params=optax.apply_updates(s.params, updates), rest=rest, opt_state=opt_state)
    return state.replace(student=student), {"loss": loss}


def evaluate(state: SupervisedState, x: jax.Array) -> jax.Array:
    return state.student.logits(x)
