"""``ctkd``: Curriculum Temperature for Knowledge Distillation (Li et al. 2023) on Hinton KD, from a frozen teacher.

Loss: ``α · T² · KL(p_teacher^T ‖ p_student^T) + (1 − α) · CE(student, labels)`` at a learnable global
temperature ``T = t_start + t_end · sigmoid(θ)`` (in (1, 21) with the authors' defaults), θ reached through a
gradient reversal layer of strength λ (:func:`ev3.losses.ctkd_loss`): the student descends the loss, θ ascends it
(its gradient is ``−λ · ∂loss/∂θ``), so the temperature makes distillation harder as λ grows. λ follows the authors' cosine
curriculum per 1-based epoch, ``λ_max · (1 − cos(π · min(epoch, lambda_epochs) / lambda_epochs)) / 2``
(:func:`ev3.losses.ctkd_lambda`), an epoch being the loop's ``N // batch_size`` steps. Accepts mixed (soft) targets.
One live teacher forward per step.

Method state beside the student (checkpointed and resumed with it, as every leaf of the state): θ (initialised to
1, as the authors' ``Global_T``) and its own optimizer state. θ's optimizer is the run's ``train.optimizer`` and
schedule, as the authors train ``Global_T`` in the student's SGD (with its weight decay); optax's optimizers are
elementwise, so a separate state for θ is the same update. Defaults as the authors' CIFAR-100 script
(zhengli97/CTKD ``scripts/run_cifar_distill.sh``: ``-r 0.1 -a 0.9 --kd_T 4 --have_mlp 1 --t_start 1 --t_end 20
--cosine_decay 1 --decay_max 0 --decay_min -1 --decay_loops 10``): ``alpha: 0.9, t_start: 1, t_end: 20,
lambda_max: 1, lambda_epochs: 10``. The temperature and λ at each evaluation are in ``metrics.json``'s ``ctkd``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from ev3 import models
from ev3.losses import ctkd_lambda, ctkd_loss, ctkd_temperature
from ev3.methods.common import (  # noqa: F401  (evaluate, work and the default hooks: the method contract)
    Frozen, StepWork as work, Student, budget_share, evaluate, init_student, model, optimizer_step, population_size,
    select, update_student, with_units,
)
from ev3.optim import make_optimizer

OPTIONS = ("alpha", "t_start", "t_end", "lambda_max", "lambda_epochs")


@struct.dataclass
class Temperature:
    """CTKD's learnable global temperature: the parameter θ (a scalar) and its optimizer state."""

    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    theta: jax.Array = None
    opt_state: Any = None


@struct.dataclass
class CTKDState:
    """``student`` trains; ``teacher`` is frozen; ``temperature`` is θ with its optimizer; ``hparams``: the options
    as arrays, ``steps_per_epoch`` and ``step`` (steps done, for λ's curriculum)."""

    student: Student
    teacher: Frozen
    temperature: Temperature
    hparams: dict


def teacher_passes(spec) -> tuple[int, int]:
    """Teacher forwards and backwards per step."""
    return 1, 0


def init(spec, data, teacher, key) -> CTKDState:
    tx = make_optimizer(spec.train["optimizer"], spec.train["steps"])
    theta = jnp.float32(1.0)
    hparams = {k: jnp.float32(spec.options[k]) for k in OPTIONS}
    hparams["steps_per_epoch"] = jnp.float32(data.splits["train"][0].shape[0] // spec.train["batch_size"])
    hparams["step"] = jnp.float32(0)
    return CTKDState(init_student(spec.model, spec.train, data, key), teacher, Temperature(tx, theta, tx.init(theta)),
                     hparams)


def reversal_strength(hparams: dict) -> jax.Array:
    """λ at the current step: the curriculum at its 1-based epoch ``step // steps_per_epoch + 1``."""
    epoch = jnp.floor(hparams["step"] / hparams["steps_per_epoch"]) + 1.0
    return ctkd_lambda(epoch, loops=hparams["lambda_epochs"], max_value=hparams["lambda_max"])


def temperature(state: CTKDState) -> jax.Array:
    """The current temperature ``t_start + t_end · sigmoid(θ)``."""
    h = state.hparams
    return ctkd_temperature(state.temperature.theta, t_start=h["t_start"], t_end=h["t_end"])


def step(state: CTKDState, batch, key):
    x, y = batch
    s, h, temp = state.student, state.hparams, state.temperature
    teacher_logits = jax.lax.stop_gradient(state.teacher(x))
    strength = reversal_strength(h)

    def objective(params, theta):
        logits, rest = models.apply(s.graphdef, params, s.rest, x, train=True)
        loss = ctkd_loss(logits, teacher_logits, y, theta, strength, alpha=h["alpha"], t_start=h["t_start"],
                         t_end=h["t_end"])
        return loss, rest

    gradient = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)
    (loss, rest), (grads, theta_grad) = gradient(s.params, temp.theta)
    theta, opt_state = optimizer_step(temp.tx, temp.theta, temp.opt_state, theta_grad)
    state = state.replace(student=update_student(s, grads, rest), hparams={**h, "step": h["step"] + 1},
                          temperature=temp.replace(theta=theta, opt_state=opt_state))
    return state, {"loss": loss}


def track(state: CTKDState, data, counter, teacher) -> dict:
    """The temperature and the reversal strength λ of the next step, at an evaluation."""
    return {"temperature": float(temperature(state)), "lambda": float(reversal_strength(state.hparams))}


def summary(result) -> dict:
    """The ``ctkd`` object of metrics.json: the final temperature and the temperature and λ at every evaluation."""
    return {"temperature_final": float(temperature(result.state)), "history": result.tracked}
