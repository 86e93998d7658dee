"""``reviewkd``: distilling knowledge via knowledge review (Chen et al. 2021), as mdistiller's ``ReviewKD``.

The student's stage outputs and embedding, ``[*stages, embedding]`` (post-activation, mdistiller's
``STU_PREACT False``), are fused top-down by :class:`ev3.models.connectors.ReviewFusion` (one attention-based
fusion per level, trained with the student) into the shapes of the teacher's pre-activation stage outputs and
embedding, ``[*preact, embedding]``. Loss: ``ce_weight · CE(student, labels) + weight · ramp · hcl_loss``
(:func:`ev3.losses.hcl_loss`; ``ramp = min((step + 1) / warmup_steps, 1)`` at the 0-based step,
:func:`ev3.methods.feature.warmup`). Needs feature maps in student and teacher (refused at config validation
otherwise). Defaults as the authors' CIFAR-100 configs: mdistiller ``configs/cifar100/reviewkd.yaml``
(``REVIEWKD_WEIGHT 5.0``; ``CE_WEIGHT 1.0, WARMUP_EPOCHS 20, MAX_MID_CHANNEL 512``), the weight the ReviewKD
authors use for resnet32x4 → resnet8x4 and wrn40_2 → wrn16_2 (their ``script/reviewKD.sh``; 0.6 for resnet56 →
resnet20).
"""

from __future__ import annotations

from ev3.losses import hcl_loss
from ev3.methods.common import (  # noqa: F401  (work and the default hooks: the method contract)
    StepWork as work, budget_share, population_size, select, summary, track, with_units,
)
from ev3.methods.feature import evaluate, feature_step, init_state, model, teacher_passes, warmup  # noqa: F401
from ev3.models.connectors import ReviewFusion


def levels(feats, *, teacher: bool):
    """The reviewed levels, shallow to deep: the student's ``[*stages, embedding]``, the teacher's
    ``[*preact, embedding]``."""
    return [*(feats.preact if teacher else feats.stages), feats.embedding]


def init(spec, data, teacher, key):
    o = spec.options

    def connector(student_feats, teacher_feats):
        for who, feats in (("student", student_feats), ("teacher", teacher_feats)):
            if feats.stages[0].ndim < 3:
                raise ValueError(f"reviewkd: the {who} has no feature maps (an MLP); ReviewKD needs conv stages")
        s = [f.shape[1:] for f in levels(student_feats, teacher=False)]
        t = [f.shape[1:] for f in levels(teacher_feats, teacher=True)]
        return lambda rngs: ReviewFusion(s, t, max_mid_channel=o["max_mid_channel"], rngs=rngs)

    return init_state(spec, data, teacher, key, connector, {k: o[k] for k in ("weight", "warmup_steps")})


def _distill(fusion, student_feats, teacher_feats, batch, state):
    outputs = fusion(levels(student_feats, teacher=False))
    targets = [t.reshape(o.shape) for o, t in zip(outputs, levels(teacher_feats, teacher=True), strict=True)]
    return state.hparams["weight"] * warmup(state) * hcl_loss(outputs, targets), None


def step(state, batch, key):
    state, logs, _ = feature_step(state, batch, _distill)
    return state, logs
