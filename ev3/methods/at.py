"""``at``: attention transfer (Zagoruyko & Komodakis 2017).

Loss: ``ce_weight · CE(student, labels) + beta · Σ_stages attention_loss`` (:func:`ev3.losses.attention_loss`,
power ``p``) over the stage outputs after their activation (``Features.stages``), paired in order; of each pair
the larger map is average-pooled to the smaller one's size (:func:`ev3.methods.feature.pair_maps`). Needs
students and teachers with feature maps and the same number of stages (refused at config validation otherwise).
No connector. Defaults as the authors' CIFAR-100 configs (RepDistiller ``--distill attention -a 0 -b 1000``;
mdistiller ``AT.P 2, LOSS.CE_WEIGHT 1.0, FEAT_WEIGHT 1000.0``): ``beta = 1000``, ``p = 2``, ``ce_weight = 1``.
"""

from __future__ import annotations

import jax

from ev3.losses import attention_loss
from ev3.methods.common import (  # noqa: F401  (work and the default hooks: the method contract)
    StepWork as work, budget_share, population_size, select, summary, track, with_units,
)
from ev3.methods.feature import evaluate, feature_step, init_state, model, pair_maps, teacher_passes  # noqa: F401


def init(spec, data, teacher, key):
    def check(student_feats, teacher_feats):
        jax.eval_shape(pair_maps, student_feats.stages, teacher_feats.stages)  # raises where they cannot pair
        return None

    return init_state(spec, data, teacher, key, check, {"beta": spec.options["beta"]},
                      static={"p": float(spec.options["p"])})


def _distill(connector, student_feats, teacher_feats, batch, state):
    fs, ft = pair_maps(student_feats.stages, teacher_feats.stages)
    return state.hparams["beta"] * attention_loss(fs, ft, p=state.fixed("p")), None


def step(state, batch, key):
    state, logs, _ = feature_step(state, batch, _distill)
    return state, logs
