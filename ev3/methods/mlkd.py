"""``mlkd``: Multi-level Logit Distillation (Jin et al. 2023) from a frozen teacher, optionally with logit
standardization.

Loss: ``ce_weight · (CE(weak) + CE(strong)) + kd_weight · D``, D the instance-, class- and batch-level alignment
at the temperatures (T, 3, 5, 2, 6) with the teacher's confidence masks, exactly as the authors' code combines
them (:func:`ev3.losses.mlkd_loss`; its docstring states the terms, the masks and two quirks of the code that are
kept). Needs no labels beyond the cross-entropy, so it trains on mixed (soft) targets. ``ls: true``: the
instance-level (KD) terms of the standardized logits (Sun et al. 2024), at base temperature T.

Views (:class:`ev3.train.TwoViewStepWork`): the weak view is the step's training view (``train.augment``, then
``train.mixup``). ``strong_view`` (transforms with the keys of ``train.augment``) makes a second view of the same
clean examples, mixed as the first; the student and the teacher run on both (two teacher forwards a step).
Without ``strong_view`` the strong view is the weak one: the same loss with both views equal, one forward each.

Recipes: the authors train MLKD with a weak view (crop + flip) and a strong one (crop + flip + RandAugment(2, 10) +
Cutout, PIL ops on the host) for 480 epochs (sunshangquan/logit-standardization-KD ``configs/cifar100/mlkd``:
EPOCHS 480, lr 0.025 for ResNet/WRN students, 0.01 for MobileNet/ShuffleNet, decay at 150/180/210) — a different
recipe from the 240-epoch rows of the CIFAR-100 table. RandAugment is not built here: on images ``strong_view`` can
only be another draw of the on-device crop + flip, on signals stronger mnist1d transforms. The CIFAR configs run
``mlkd`` with one view on the shared 240-epoch recipe. Defaults (mdistiller's KD config that MLKD reads):
``temperature: 4, kd_weight: 0.9, ce_weight: 0.1``; with LS (the LS authors' README ``--logit-stand --base-temp 2
--kd-weight 9``): ``temperature: 2, kd_weight: 9``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ev3 import models
from ev3.losses import cross_entropy, mlkd_loss
from ev3.methods.common import (  # noqa: F401  (evaluate and the default hooks: the method contract)
    SupervisedState, budget_share, evaluate, init_student, model, population_size, select, summary, track,
    update_student, with_units,
)
from ev3.train import TwoViewStepWork as work  # noqa: F401  (batches carry the strong view)


def teacher_passes(spec) -> tuple[int, int]:
    """Teacher forwards and backwards per step: one per view."""
    return (2 if spec.options.get("strong_view") else 1), 0


def init(spec, data, teacher, key) -> SupervisedState:
    o = spec.options
    hparams = {k: jnp.float32(o[k]) for k in ("temperature", "kd_weight", "ce_weight")}
    static = (("ls", bool(o.get("ls", False))),)
    return SupervisedState(init_student(spec.model, spec.train, data, key), teacher, hparams, static)


def step(state: SupervisedState, batch, key):
    x, y, x_strong = batch
    s, h = state.student, state.hparams
    views = (x,) if x_strong is None else (x, x_strong)
    teacher_logits = [jax.lax.stop_gradient(state.teacher(v)) for v in views]

    def objective(params):
        rest, logits = s.rest, []
        for v in views:  # one train-mode forward per view, as the authors (BatchNorm statistics of each)
            out, rest = models.apply(s.graphdef, params, rest, v, train=True)
            logits.append(out)
        weak, strong = logits[0], logits[-1]  # one view: the strong view is the weak one
        distill = mlkd_loss(weak, teacher_logits[0], strong, teacher_logits[-1], temperature=h["temperature"],
                            ls=state.fixed("ls"))
        return h["ce_weight"] * (cross_entropy(weak, y) + cross_entropy(strong, y)) + h["kd_weight"] * distill, rest

    (loss, rest), grads = jax.value_and_grad(objective, has_aux=True)(s.params)
    return state.replace(student=update_student(s, grads, rest)), {"loss": loss}
