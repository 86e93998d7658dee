"""``fitnet``: FitNets hints (Romero et al. 2015), trained in one stage as RepDistiller and mdistiller do.

Loss: ``ce_weight · CE(student, labels) + beta · MSE(regressor(h_s), h_t)`` (:func:`ev3.losses.fitnet_loss`), with
``h`` the second stage's output (``stages[1]``, the only stage of a one-stage model): RepDistiller's and
mdistiller's ``hint_layer = 2`` (their ``feats[2]``, ``feats[0]`` being the stem) for every network, the middle
stage of the three-stage CIFAR ResNets, WRNs and ShuffleNets, the second of four for VGG, MobileNetV2 and ResNet50
(e.g. vgg13 → MobileNetV2: 8×8×256 ← 8×8×16; ResNet50 → MobileNetV2: 16×16×512 ← 8×8×16). The regressor :class:`ev3.models.connectors.HintRegressor` (conv → BN → ReLU;
flatten → linear between an MLP and a CNN), trained with the student. Defaults as the authors' CIFAR-100 configs
(RepDistiller ``scripts/run_cifar_distill.sh``: ``--distill hint -a 0 -b 100``; mdistiller
``FITNET.LOSS.CE_WEIGHT 1.0, FEAT_WEIGHT 100.0, HINT_LAYER 2``): ``beta = 100``, ``ce_weight = 1``.
"""

from __future__ import annotations

from ev3.losses import fitnet_loss
from ev3.methods.common import (  # noqa: F401  (work and the default hooks: the method contract)
    StepWork as work, budget_share, population_size, select, summary, track, with_units,
)
from ev3.methods.feature import evaluate, feature_step, init_state, model, teacher_passes  # noqa: F401
from ev3.models.connectors import HintRegressor


HINT_LAYER = 2
"""The suites' ``hint_layer``: an index into their ``feats``, whose ``feats[0]`` is the stem (not in our stages)."""


def hint(stages):
    """The hint stage, the suites' ``feats[HINT_LAYER]``: ``stages[1]`` (``stages[0]`` for a one-stage model)."""
    return stages[min(HINT_LAYER, len(stages)) - 1]


def init(spec, data, teacher, key):
    def connector(student_feats, teacher_feats):
        s, t = hint(student_feats.stages).shape[1:], hint(teacher_feats.stages).shape[1:]
        return lambda rngs: HintRegressor(s, t, rngs=rngs)

    return init_state(spec, data, teacher, key, connector, {"beta": spec.options["beta"]})


def _distill(regressor, student_feats, teacher_feats, batch, state):
    projected = regressor(hint(student_feats.stages))
    return state.hparams["beta"] * fitnet_loss(projected, hint(teacher_feats.stages)), None


def step(state, batch, key):
    state, logs, _ = feature_step(state, batch, _distill)
    return state, logs
