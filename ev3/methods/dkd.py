"""``dkd``: Decoupled Knowledge Distillation (Zhao et al. 2022) from a frozen teacher.

Loss: ``ce_weight · CE(student, labels) + min(step / warmup_steps, 1) · (α · TCKD + β · NCKD)`` with TCKD and
NCKD as in :func:`ev3.losses.dkd_parts_per_sample` (both ``T²``-scaled KLs, teacher ‖ student). The linear
warm-up of the distillation term follows the reference recipe (20 of 240 epochs on CIFAR-100). One live
teacher forward per step. Needs hard labels (refused with mixup: ``ev3.config.MIXUP_REFUSED``).

``ls: true`` — logit standardization (Sun et al. 2024): TCKD and NCKD of the per-sample z-scored logits
(:func:`ev3.losses.standardize_logits`) at the base temperature ``T``; the cross-entropy keeps the raw logits. The
authors' CIFAR-100 DKD+LS (sunshangquan/logit-standardization-KD, README ``--logit-stand --base-temp 2 --kd-weight
9``, which multiplies DKD's α and β by 9): ``temperature: 2, alpha: 9, beta: 72`` for resnet32x4 → resnet8x4
(instance ``dkd-ls``; their logs use other β and T for some pairs).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from ev3.losses import cross_entropy, dkd_loss
from ev3.methods.common import (  # noqa: F401  (evaluate, work and the default hooks: the method contract)
    StepWork as work, SupervisedState, budget_share, evaluate, init_student, logit_pair, loss_step, model,
    population_size, select, summary, track, with_units,
)


def teacher_passes(spec) -> tuple[int, int]:
    """Teacher forwards and backwards per step."""
    return 1, 0


def init(spec, data, teacher, key) -> SupervisedState:
    o = {"ce_weight": 1.0, "warmup_steps": 0, **spec.options}
    hparams = {k: jnp.float32(o[k]) for k in ("temperature", "alpha", "beta", "ce_weight", "warmup_steps")}
    hparams["step"] = jnp.float32(0)
    static = (("ls", bool(o.get("ls", False))),)
    return SupervisedState(init_student(spec.model, spec.train, data, key), teacher, hparams, static)


def _loss(logits, teacher_logits, labels, h, *, ls: bool):
    warmup = jnp.minimum(h["step"] / jnp.maximum(h["warmup_steps"], 1.0), 1.0)
    student, teacher = logit_pair(logits, teacher_logits, ls)
    kd = dkd_loss(student, teacher, labels, temperature=h["temperature"], alpha=h["alpha"], beta=h["beta"])
    return h["ce_weight"] * cross_entropy(logits, labels) + warmup * kd


def step(state, batch, key):
    state, logs = loss_step(state, batch, functools.partial(_loss, ls=state.fixed("ls")))
    return state.replace(hparams={**state.hparams, "step": state.hparams["step"] + 1}), logs
