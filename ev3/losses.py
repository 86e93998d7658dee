"""Losses as pure functions of logits.

Shapes: ``logits`` and ``teacher_logits`` are ``(B, C)`` floats, ``labels`` is ``(B,)`` int.
Every loss returns the batch mean of a per-sample loss (a scalar); ``*_per_sample`` variants return ``(B,)``.

KL direction: ``kd_loss`` is ``T² · KL(p_teacher^T ‖ p_student^T)`` with ``p^T = softmax(logits / T)``, i.e.
``Σ_c p_t log(p_t / p_s)`` summed over classes, averaged over the batch. The ``T²`` factor (Hinton et al.
2015) keeps the gradient magnitude of the soft term independent of ``T``.

The EV3 reference implementation (google-research/google-research, ``ev3/examples/cifar_kd/train.py``, ``kld``)
distils with the other direction and a single ``T``: ``reverse_kd_loss`` is ``T · KL(p_student^T ‖
p_teacher^T)``, no cross-entropy term. Its label loss (``ev3/examples/cifar10/train.py``) is the cross-entropy
of ``T · logits``; that is ``ev3.protocol.explore.candidate_loss`` with ``w = 0`` and ``t_ce = 1/T``
(``CE(logits / t_ce)``), so it has no function of its own here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy_per_sample(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``-log softmax(logits)[label]`` per sample, shape ``(B,)``."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy (nats)."""
    return jnp.mean(cross_entropy_per_sample(logits, labels))


def kd_per_sample(student_logits: jax.Array, teacher_logits: jax.Array, temperature) -> jax.Array:
    """``T² · KL(softmax(t/T) ‖ softmax(s/T))`` per sample, shape ``(B,)``; gradients flow into both sides."""
    t_log_p = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    s_log_p = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(t_log_p) * (t_log_p - s_log_p), axis=-1)
    return temperature**2 * kl


def kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, temperature) -> jax.Array:
    """Hinton KD term: batch mean of ``T² · KL(p_teacher^T ‖ p_student^T)``."""
    return jnp.mean(kd_per_sample(student_logits, teacher_logits, temperature))


def reverse_kd_per_sample(student_logits: jax.Array, teacher_logits: jax.Array, temperature) -> jax.Array:
    """``T · KL(softmax(s/T) ‖ softmax(t/T))`` per sample, shape ``(B,)``: reverse (student-first) KL scaled by
    ``T`` (not ``T²``), as the EV3 reference's ``kld``; gradients flow into both sides."""
    s_log_p = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    t_log_p = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    return temperature * jnp.sum(jnp.exp(s_log_p) * (s_log_p - t_log_p), axis=-1)


def reverse_kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, temperature) -> jax.Array:
    """The EV3 reference's KD loss: batch mean of ``T · KL(p_student^T ‖ p_teacher^T)`` (no cross-entropy)."""
    return jnp.mean(reverse_kd_per_sample(student_logits, teacher_logits, temperature))


def hinton_loss(student_logits, teacher_logits, labels, *, temperature, alpha) -> jax.Array:
    """``α · T² · KL(p_teacher^T ‖ p_student^T) + (1 − α) · CE(student, labels)`` (batch means)."""
    return alpha * kd_loss(student_logits, teacher_logits, temperature) + (1.0 - alpha) * cross_entropy(
        student_logits, labels
    )


def dkd_parts_per_sample(student_logits, teacher_logits, labels, temperature) -> tuple[jax.Array, jax.Array]:
    """Decoupled KD (Zhao et al. 2022) terms per sample, each with the ``T²`` factor, shapes ``(B,)``:

    - TCKD = ``T² · KL(b_t ‖ b_s)`` over the binary target/non-target split ``b = [p_gt, 1 − p_gt]``;
    - NCKD = ``T² · KL(p̂_t ‖ p̂_s)`` over the non-target classes, ``p̂ = softmax`` of the non-target logits
      (the target class masked out), all at temperature ``T``.

    They decompose Hinton KD exactly: ``kd_per_sample = TCKD + (1 − p_t,gt) · NCKD``.
    """
    gt = jax.nn.one_hot(labels, student_logits.shape[-1], dtype=bool)
    t_log_p = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    s_log_p = jax.nn.log_softmax(student_logits / temperature, axis=-1)

    def binary(log_p):  # log [p_gt, 1 − p_gt], the second computed stably as logsumexp over non-targets
        log_gt = jnp.sum(jnp.where(gt, log_p, 0.0), axis=-1)
        log_rest = jax.nn.logsumexp(jnp.where(gt, -jnp.inf, log_p), axis=-1)
        return jnp.stack([log_gt, log_rest], axis=-1)

    bt, bs = binary(t_log_p), binary(s_log_p)
    tckd = jnp.sum(jnp.exp(bt) * (bt - bs), axis=-1)
    t_hat = jax.nn.log_softmax(jnp.where(gt, -jnp.inf, teacher_logits / temperature), axis=-1)
    s_hat = jax.nn.log_softmax(jnp.where(gt, -jnp.inf, student_logits / temperature), axis=-1)
    nckd = jnp.sum(jnp.where(gt, 0.0, jnp.exp(t_hat) * (t_hat - s_hat)), axis=-1)
    return temperature**2 * tckd, temperature**2 * nckd


def dkd_loss(student_logits, teacher_logits, labels, *, temperature, alpha, beta) -> jax.Array:
    """DKD distillation term: batch mean of ``α · TCKD + β · NCKD`` (see :func:`dkd_parts_per_sample`)."""
    tckd, nckd = dkd_parts_per_sample(student_logits, teacher_logits, labels, temperature)
    return jnp.mean(alpha * tckd + beta * nckd)
