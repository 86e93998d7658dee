"""Distillation diagnostics: how informative the teacher's targets are, and how faithfully a student matches it.

Pure functions of logits (numpy; any float dtype in, float64 statistics out), plus the fixed sample of the
students' training views they are measured on.

- :func:`confidence`: of the teacher on the students' training views — mean top softmax probability, mean
  entropy (nats) and the fraction of views whose top probability exceeds 0.99. A teacher at ≈ 1 and 0 entropy
  gives one-hot targets: nothing to distil beyond the labels.
- :func:`fidelity` (Stanton et al. 2021, "Does knowledge distillation really work?"): of a student to its
  teacher on the test split — top-1 agreement and the mean ``KL(p_teacher ‖ p_student)`` at T = 1 (nats).
- :func:`confidently_wrong`: the fraction of samples on which a model puts more than 0.99 on a class other
  than the teacher's argmax (EV3's reverse-KL failure mode: such samples get almost no gradient).
- :func:`training_views`: the fixed sample of :data:`VIEW_SAMPLES` training inputs, augmented (``train.augment``)
  and mixed (``train.mixup``) with a fixed key, the same for every run of a benchmark, so every method's
  numbers describe the same views.
"""

from __future__ import annotations

import numpy as np

CONFIDENT = 0.99
VIEW_SAMPLES = 1024
VIEW_SEED = 0


def _log_softmax(logits) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def confidence(logits, threshold: float = CONFIDENT) -> dict:
    """``{"mean_max_prob", "mean_entropy", "confident_fraction"}`` of ``logits`` (N, C); entropy in nats."""
    log_p = _log_softmax(logits)
    p = np.exp(log_p)
    top = p.max(-1)
    return {"mean_max_prob": float(top.mean()), "mean_entropy": float(-(p * log_p).sum(-1).mean()),
            "confident_fraction": float((top > threshold).mean())}


def fidelity(student_logits, teacher_logits) -> dict:
    """``{"agreement", "kl_teacher_student"}``: top-1 agreement and mean ``KL(p_t ‖ p_s)`` at T = 1 (nats)."""
    log_s, log_t = _log_softmax(student_logits), _log_softmax(teacher_logits)
    return {"agreement": float(np.mean(log_s.argmax(-1) == log_t.argmax(-1))),
            "kl_teacher_student": float((np.exp(log_t) * (log_t - log_s)).sum(-1).mean())}


def confidently_wrong(logits, teacher_class, threshold: float = CONFIDENT) -> float:
    """Fraction of rows of ``logits`` (N, C) whose top softmax probability exceeds ``threshold`` at a class other
    than ``teacher_class`` (N,) int."""
    p = np.exp(_log_softmax(logits))
    return float(np.mean((p.max(-1) > threshold) & (p.argmax(-1) != np.asarray(teacher_class))))


def training_views(train: dict, data, samples: int = VIEW_SAMPLES):
    """``samples`` training inputs (the first of a fixed permutation, in row order), augmented and mixed as the
    run config's ``train`` section says, with a fixed key: device array (n, *input_shape)."""
    import jax

    from ev3.data.augment import view_fn
    from ev3.rng import stream

    x, y = data.splits["train"]
    rows = np.sort(np.random.default_rng(VIEW_SEED).permutation(x.shape[0])[:samples])
    key = stream(jax.random.key(VIEW_SEED), "teacher_views")
    return view_fn(train, data.num_classes)(key, x[rows], y[rows])[0]
