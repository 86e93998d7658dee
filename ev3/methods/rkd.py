"""``rkd``: relational knowledge distillation (Park et al. 2019) on the penultimate embeddings.

Loss: ``ce_weight · CE(student, labels) + beta · (distance_weight · distance + angle_weight · angle)``
(:func:`ev3.losses.rkd_loss` on ``Features.embedding``, the head's input). No connector. Defaults as the authors'
CIFAR-100 configs (RepDistiller ``--distill rkd -a 0 -b 1``, ``RKDLoss(w_d=25, w_a=50)``; mdistiller
``RKD.DISTANCE_WEIGHT 25, ANGLE_WEIGHT 50, LOSS.CE_WEIGHT 1.0, FEAT_WEIGHT 1.0``): ``beta = 1``,
``distance_weight = 25``, ``angle_weight = 50``, ``ce_weight = 1``.
"""

from __future__ import annotations

from ev3.losses import rkd_loss
from ev3.methods.common import (  # noqa: F401  (work and the default hooks: the method contract)
    StepWork as work, budget_share, population_size, select, summary, track, with_units,
)
from ev3.methods.feature import evaluate, feature_step, init_state, model, teacher_passes  # noqa: F401


def init(spec, data, teacher, key):
    o = spec.options
    return init_state(spec, data, teacher, key, None,
                      {k: o[k] for k in ("beta", "distance_weight", "angle_weight")})


def _distill(connector, student_feats, teacher_feats, batch, state):
    h = state.hparams
    loss = rkd_loss(student_feats.embedding, teacher_feats.embedding, distance_weight=h["distance_weight"],
                    angle_weight=h["angle_weight"])
    return h["beta"] * loss, None


def step(state, batch, key):
    state, logs, _ = feature_step(state, batch, _distill)
    return state, logs
