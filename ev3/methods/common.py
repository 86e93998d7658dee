"""Pieces shared by the methods, and the defaults of the optional hooks of :class:`ev3.methods.contract.Method`.

A supervised method module implements ``init(spec, data, teacher, key) -> state``, a pure ``step(state, batch,
key) -> (state, logs)`` (``logs["loss"]``: the step's scalar training loss) whose unit of work is
``work = StepWork`` (the loop compiles the step), ``evaluate(state, x) -> logits`` and ``teacher_passes``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax
from flax import struct

from ev3 import models
from ev3.losses import standardize_logits
from ev3.methods.options import step_share as budget_share, step_units as with_units  # noqa: F401  (the contract's defaults)
from ev3.optim import make_optimizer
from ev3.train import StepWork  # noqa: F401  (the supervised methods' unit of work)


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
    """``student`` trains; ``teacher`` (or None) is frozen; ``hparams`` are loss hyperparameters as arrays;
    ``static``: hashable (name, value) options that choose the loss's form (e.g. ``ls``), see :meth:`fixed`."""

    student: Student
    teacher: Frozen | None
    hparams: dict
    static: tuple = struct.field(pytree_node=False, default=())

    def fixed(self, name: str, default=None):
        """The static option ``name`` (``default`` when absent)."""
        return dict(self.static).get(name, default)


def init_student(model_config: dict, train_config: dict, data, key: jax.Array) -> Student:
    net = models.build(model_config, data.input_shape, data.num_classes, key)
    tx = make_optimizer(train_config["optimizer"], train_config["steps"])
    return Student(net.graphdef, tx, net.params, net.rest, tx.init(net.params))


def optimizer_step(tx: optax.GradientTransformation, params, opt_state, grads) -> tuple[Any, Any]:
    """One update of ``params`` by ``tx``: (new params, new optimizer state)."""
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def update_student(student: Student, grads, rest) -> Student:
    """The student after one optimizer step on ``grads``, with the train-mode forward's new ``rest`` (BatchNorm)."""
    params, opt_state = optimizer_step(student.tx, student.params, student.opt_state, grads)
    return student.replace(params=params, rest=rest, opt_state=opt_state)


def loss_step(state: SupervisedState, batch, loss_fn: Callable) -> tuple[SupervisedState, dict]:
    """One optimizer step on ``loss_fn(student_logits, teacher_logits | None, labels, hparams)``."""
    x, y = batch
    s = state.student
    teacher_logits = None if state.teacher is None else jax.lax.stop_gradient(state.teacher(x))

    def objective(params):
        logits, rest = models.apply(s.graphdef, params, s.rest, x, train=True)
        return loss_fn(logits, teacher_logits, y, state.hparams), rest

    (loss, rest), grads = jax.value_and_grad(objective, has_aux=True)(s.params)
    return state.replace(student=update_student(s, grads, rest)), {"loss": loss}


def logit_pair(student_logits, teacher_logits, ls: bool):
    """(student, teacher) logits as a distillation term sees them: standardized per sample with ``ls``
    (:func:`ev3.losses.standardize_logits`, Sun et al. 2024), unchanged otherwise."""
    if not ls:
        return student_logits, teacher_logits
    return standardize_logits(student_logits), standardize_logits(teacher_logits)


def evaluate(state: SupervisedState, x: jax.Array) -> jax.Array:
    return state.student.logits(x)


# --- Defaults of the optional hooks (see ev3.methods.contract.Method) ------------------------------------------


def model(state):
    """The state itself is the model."""
    return state


def population_size(spec) -> None:
    return None


def select(model, k: int):
    raise TypeError("select: not a population")


def track(state, data, counter, teacher) -> None:
    return None


def summary(result) -> None:
    return None
