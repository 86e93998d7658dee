"""``crd``: contrastive representation distillation (Tian et al. 2020).

Loss: ``ce_weight · CE(student, labels) + beta · NCE`` (:func:`ev3.losses.crd_loss`): the student's and the
teacher's penultimate embeddings (``Features.embedding``) go through their own trainable embedding heads
(:class:`ev3.models.connectors.Embed`, linear → L2 norm, ``feat_dim``; both trained with the student, the teacher
network frozen), and each side is scored against the other side's memory bank at the example's own row (the
positive) and ``nce_k`` negatives drawn among other-class examples (:func:`ev3.losses.crd_contrast_indices`,
RepDistiller's ``exact`` mode), temperature ``nce_temperature``.

Method state beside the trained parameters (``FeatureState.memory``, checkpointed with the state so a resumed run
continues with the same banks): one (N_train, feat_dim) bank per side (:func:`ev3.losses.crd_bank_init`), the
rows of the batch's examples updated after each step to ``normalize(momentum · row + (1 − momentum) · embedding)``
(:func:`ev3.losses.crd_bank_update`); the two NCE normalising constants, fixed from the first batch; the training
labels. Batches carry the examples' indices (:class:`ev3.train.IndexedStepWork`).

``nce_k`` is capped at the fewest other-class examples of any class (the draw is without replacement), so small
data sets run with fewer negatives than the authors' 16,384 (the run's value is in ``metrics.json``'s ``crd``).
Defaults as the authors' CIFAR-100 configs (RepDistiller ``--distill crd -a 0 -b 0.8``, ``feat_dim 128, nce_k
16384, nce_t 0.07, nce_m 0.5``; mdistiller ``CRD.FEAT.DIM 128, NCE.K 16384, TEMPERATURE 0.07, MOMENTUM 0.5,
LOSS.CE_WEIGHT 1.0, FEAT_WEIGHT 0.8``).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ev3.losses import crd_bank_init, crd_bank_update, crd_contrast_indices, crd_loss
from ev3.methods.common import (  # noqa: F401  (the default hooks: the method contract)
    budget_share, population_size, select, track, with_units,
)
from ev3.methods.feature import evaluate, feature_step, init_state, model, teacher_passes  # noqa: F401
from ev3.models.connectors import Embed
from ev3.rng import stream
from ev3.train import IndexedStepWork as work  # noqa: F401  (batches carry the examples' indices)


class ContrastHeads(nnx.Module):
    """CRD's two embedding heads: ``student`` (B, *student_shape) → (B, feat_dim), ``teacher`` likewise."""

    def __init__(self, student_shape, teacher_shape, feat_dim: int, *, rngs: nnx.Rngs):
        self.student = Embed(math.prod(student_shape), feat_dim, rngs=rngs)
        self.teacher = Embed(math.prod(teacher_shape), feat_dim, rngs=rngs)


def negatives(labels: np.ndarray, nce_k: int) -> int:
    """``nce_k`` capped at the fewest examples outside any one class (``labels``: the training labels)."""
    counts = np.bincount(np.asarray(labels))
    return int(min(nce_k, len(labels) - counts.max()))


def init(spec, data, teacher, key):
    o = spec.options
    labels = data.splits["train"][1]
    n, k = int(labels.shape[0]), negatives(labels, o["nce_k"])
    if k < 1:
        raise ValueError("crd: every training example has the same label; no negatives to contrast")

    def connector(student_feats, teacher_feats):
        s, t = student_feats.embedding.shape[1:], teacher_feats.embedding.shape[1:]
        return lambda rngs: ContrastHeads(s, t, o["feat_dim"], rngs=rngs)

    memory = {
        "student_bank": crd_bank_init(stream(key, "student_bank"), n, o["feat_dim"]),
        "teacher_bank": crd_bank_init(stream(key, "teacher_bank"), n, o["feat_dim"]),
        "normalizers": jnp.full((2,), -1.0, jnp.float32),  # unset until the first batch
        "labels": jnp.asarray(labels, jnp.int32),
    }
    hparams = {k_: o[k_] for k_ in ("beta", "nce_temperature", "momentum")}
    return init_state(spec, data, teacher, key, connector, hparams, memory, {"nce_k": k, "n_data": n})


def step(state, batch, key):
    x, y, indices = batch
    memory, h = state.memory, state.hparams
    contrast_idx = crd_contrast_indices(stream(key, "negatives"), indices, y, memory["labels"], state.fixed("nce_k"))

    def distill(heads, student_feats, teacher_feats, batch, state):
        student_emb, teacher_emb = heads.student(student_feats.embedding), heads.teacher(teacher_feats.embedding)
        loss, normalizers = crd_loss(student_emb, teacher_emb, memory["student_bank"], memory["teacher_bank"],
                                     contrast_idx, memory["normalizers"], temperature=h["nce_temperature"],
                                     n_data=state.fixed("n_data"))
        return h["beta"] * loss, (student_emb, teacher_emb, normalizers)

    state, logs, (student_emb, teacher_emb, normalizers) = feature_step(state, batch, distill)
    memory = {
        **memory,
        "student_bank": crd_bank_update(memory["student_bank"], indices, student_emb, h["momentum"]),
        "teacher_bank": crd_bank_update(memory["teacher_bank"], indices, teacher_emb, h["momentum"]),
        "normalizers": normalizers,
    }
    return state.replace(memory=memory), logs


def summary(result) -> dict:
    """The ``crd`` object of metrics.json: the negatives per example used (``nce_k`` after the cap), the bank
    rows and the NCE normalising constants (student side, teacher side) fixed at the first batch."""
    state = result.state
    return {"nce_k": state.fixed("nce_k"), "n_data": state.fixed("n_data"),
            "normalizers": [float(z) for z in np.asarray(state.memory["normalizers"])]}
