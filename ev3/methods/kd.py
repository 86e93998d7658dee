"""``kd``: Hinton et al. (2015) distillation from a frozen teacher, optionally with logit standardization.

Loss: ``ce_weight · CE(student, labels) + kd_weight · T² · KL(p_teacher^T ‖ p_student^T)``, batch means, with
``p^T = softmax(logits / T)``; the teacher forward runs live inside each step (one forward per step). The weights
are ``alpha`` (``kd_weight = α``, ``ce_weight = 1 − α``: :func:`ev3.losses.hinton_loss`) or ``kd_weight`` and
``ce_weight`` given apart. Accepts mixed (soft) targets.

``ls: true`` — logit standardization (Sun et al. 2024): the KL term is taken of the per-sample z-scored student and
teacher logits (:func:`ev3.losses.standardize_logits`), each divided by the base temperature ``T``, with ``T²`` of
that base temperature; the cross-entropy keeps the raw logits. The authors' CIFAR-100 KD+LS
(sunshangquan/logit-standardization-KD, README: ``--logit-stand --base-temp 2 --kd-weight 9`` on mdistiller's KD,
whose CE weight is 0.1): ``temperature: 2, kd_weight: 9, ce_weight: 0.1`` (instance ``kd-ls``), where plain KD uses
``T = 4, α = 0.9``.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from ev3.losses import cross_entropy, kd_loss
from ev3.methods.common import (  # noqa: F401  (evaluate, work and the default hooks: the method contract)
    StepWork as work, SupervisedState, budget_share, evaluate, init_student, logit_pair, loss_step, model,
    population_size, select, summary, track, with_units,
)


def teacher_passes(spec) -> tuple[int, int]:
    """Teacher forwards and backwards per step."""
    return 1, 0


def init(spec, data, teacher, key) -> SupervisedState:
    o = spec.options
    weights = ("alpha",) if "alpha" in o else ("kd_weight", "ce_weight")
    hparams = {k: jnp.float32(o[k]) for k in ("temperature", *weights)}
    static = (("ls", bool(o.get("ls", False))),)
    return SupervisedState(init_student(spec.model, spec.train, data, key), teacher, hparams, static)


def _loss(logits, teacher_logits, labels, h, *, ls: bool):
    kd = kd_loss(*logit_pair(logits, teacher_logits, ls), h["temperature"])
    if "alpha" in h:  # the ops of ev3.losses.hinton_loss
        return h["alpha"] * kd + (1.0 - h["alpha"]) * cross_entropy(logits, labels)
    return h["kd_weight"] * kd + h["ce_weight"] * cross_entropy(logits, labels)


def step(state, batch, key):
    return loss_step(state, batch, functools.partial(_loss, ls=state.fixed("ls")))
