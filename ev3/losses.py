"""Losses as pure functions of logits.

Shapes: ``logits`` and ``teacher_logits`` are ``(B, C)`` floats, ``labels`` is ``(B,)`` int.
Every loss returns the batch mean of a per-sample loss (a scalar); ``*_per_sample`` variants return ``(B,)``.

KL direction: ``kd_loss`` is ``T² · KL(p_teacher^T ‖ p_student^T)`` with ``p^T = softmax(logits / T)``, i.e.
``Σ_c p_t log(p_t / p_s)`` summed over classes, averaged over the batch. The ``T²`` factor (Hinton et al.
2015) keeps the gradient magnitude of the soft term independent of ``T``.
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


def hinton_loss(student_logits, teacher_logits, labels, *, temperature, alpha) -> jax.Array:
    """``α · T² · KL(p_teacher^T ‖ p_student^T) + (1 − α) · CE(student, labels)`` (batch means)."""
    return alpha * kd_loss(student_logits, teacher_logits, temperature) + (1.0 - alpha) * cross_entropy(
        student_logits, labels
    )
