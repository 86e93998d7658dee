"""``dist``: DIST (Huang et al. 2022, "Knowledge Distillation from A Stronger Teacher") from a frozen teacher.

Loss: ``ce_weight · CE(student, labels) + weight · (β · inter + γ · intra)``, the inter- and intra-class relation
terms of :func:`ev3.losses.dist_parts` (``T² · (1 − mean Pearson correlation)`` of the softmax distributions at
``T``, per sample over the classes and per class over the batch). Needs no labels beyond the cross-entropy, so it
trains on mixed (soft) targets. One live teacher forward per step.

Defaults as the authors' CIFAR-100 config (hunto/image_classification_sota ``configs/strategies/distill/
dist_cifar.yaml``: ``kd: dist_t4`` = ``DIST(beta=1, gamma=1, tau=4)``, ``kd_loss_weight: 2``, ``ori_loss_weight:
1``): ``temperature: 4, beta: 1, gamma: 1, weight: 2, ce_weight: 1``.
"""

from __future__ import annotations

import jax.numpy as jnp

from ev3.losses import cross_entropy, dist_loss
from ev3.methods.common import (  # noqa: F401  (evaluate, work and the default hooks: the method contract)
    StepWork as work, SupervisedState, budget_share, evaluate, init_student, loss_step, model, population_size,
    select, summary, track, with_units,
)

OPTIONS = ("temperature", "beta", "gamma", "weight", "ce_weight")


def teacher_passes(spec) -> tuple[int, int]:
    """Teacher forwards and backwards per step."""
    return 1, 0


def init(spec, data, teacher, key) -> SupervisedState:
    o = {"ce_weight": 1.0, **spec.options}
    hparams = {k: jnp.float32(o[k]) for k in OPTIONS}
    return SupervisedState(init_student(spec.model, spec.train, data, key), teacher, hparams)


def _loss(logits, teacher_logits, labels, h):
    relation = dist_loss(logits, teacher_logits, temperature=h["temperature"], beta=h["beta"], gamma=h["gamma"])
    return h["ce_weight"] * cross_entropy(logits, labels) + h["weight"] * relation


def step(state, batch, key):
    return loss_step(state, batch, _loss)
