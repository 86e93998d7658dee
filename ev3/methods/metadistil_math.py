r"""MetaDistil's teacher meta-gradient (Zhou, Xu & McAuley 2021, arXiv 2106.04570) as pure JAX functions.

Flax-free: models enter only through apply functions ``apply(params, x) -> logits`` with ``x`` of shape
``(B, ...)`` and logits ``(B, C)``; params are arbitrary pytrees; a batch is a tuple ``(x, y)`` with int
labels ``y`` of shape ``(B,)``.

Maths. With the training loss (``ev3.losses.hinton_loss``)

    L_train(θs, θt) = α · T² · KL(p_teacher^T(θt; x) ‖ p_student^T(θs; x)) + (1 − α) · CE(student(θs; x), y)

the *pilot update* is one plain-SGD step of the student that keeps its dependence on the teacher,

    θs'(θt) = θs − λ · ∇_θs L_train(θs, θt)            (λ = ``pilot_lr``; teacher logits NOT stop-gradiented)

and the teacher is trained on the piloted student's *quiz loss* ``L_quiz(θs') = CE(student(θs'; x_q), y_q)``:

    ∇_θt L_quiz(θs'(θt)) = (∂θs'/∂θt)ᵀ v = −λ · (∂²L_train / ∂θs ∂θt)ᵀ v = −λ · ∇_θt ⟨∇_θs L_train(θs, θt), v⟩,

with ``v = ∇_θs' L_quiz(θs')`` held constant. This is a mixed second derivative (a Hessian-vector product),
computed here by nesting ``jax.grad``.

Why a first-order approximation gives exactly zero: the quiz loss depends on θt *only* through θs'. First-order
meta-learning (FOMAML-style) drops the second-order term, i.e. treats ∂θs'/∂θt ≈ 0 (θs' as a constant), and then
L_quiz has no θt dependence left — its gradient is identically zero and the teacher never moves. For the same
reason the meta-gradient is exactly zero when λ = 0 (no pilot step) or α = 0 (the teacher does not enter
L_train).
"""

from __future__ import annotations

import jax

from ev3.losses import cross_entropy, hinton_loss

__all__ = ["train_loss", "pilot_step", "quiz_loss_after_pilot", "meta_value_and_gradient", "meta_gradient"]


def train_loss(teacher_apply, student_apply, teacher_params, student_params, batch, *, temperature, alpha):
    """``L_train(θs, θt)``: Hinton KD loss of the student against the (differentiable) teacher on ``batch``; scalar."""
    x, y = batch
    return hinton_loss(
        student_apply(student_params, x), teacher_apply(teacher_params, x), y, temperature=temperature, alpha=alpha
    )


def pilot_step(teacher_apply, student_apply, teacher_params, student_params, batch, *, pilot_lr, temperature, alpha):
    """Piloted student ``θs' = θs − pilot_lr · ∇_θs L_train(θs, θt)``: a pytree like ``student_params``.

    Differentiable w.r.t. ``teacher_params`` (that dependence is what the meta-gradient flows through).
    """
    g = jax.grad(
        lambda sp: train_loss(
            teacher_apply, student_apply, teacher_params, sp, batch, temperature=temperature, alpha=alpha
        )
    )(student_params)
    return jax.tree.map(lambda p, gi: p - pilot_lr * gi, student_params, g)


def quiz_loss_after_pilot(
    teacher_apply, student_apply, teacher_params, student_params, batch, quiz_batch, *, pilot_lr, temperature, alpha
):
    """``L_quiz(θs'(θt))``: mean cross-entropy of the piloted student on ``quiz_batch = (x_q, y_q)``; scalar."""
    piloted = pilot_step(
        teacher_apply, student_apply, teacher_params, student_params, batch,
        pilot_lr=pilot_lr, temperature=temperature, alpha=alpha,
    )
    x_q, y_q = quiz_batch
    return cross_entropy(student_apply(piloted, x_q), y_q)


def meta_value_and_gradient(
    teacher_apply, student_apply, teacher_params, student_params, batch, quiz_batch, *, pilot_lr, temperature, alpha
) -> tuple[jax.Array, object]:
    """``(L_quiz(θs'(θt)), ∇_θt L_quiz(θs'(θt)))``; the gradient is a pytree like ``teacher_params``."""
    return jax.value_and_grad(
        lambda tp: quiz_loss_after_pilot(
            teacher_apply, student_apply, tp, student_params, batch, quiz_batch,
            pilot_lr=pilot_lr, temperature=temperature, alpha=alpha,
        )
    )(teacher_params)


def meta_gradient(
    teacher_apply, student_apply, teacher_params, student_params, batch, quiz_batch, *, pilot_lr, temperature, alpha
):
    """MetaDistil teacher gradient ``∇_θt L_quiz(θs − λ ∇_θs L_train(θs, θt))`` (second order); like ``teacher_params``.

    ``teacher_apply`` / ``student_apply``: ``(params, x) -> logits (B, C)``. ``batch`` / ``quiz_batch``: ``(x, y)``.
    ``pilot_lr`` (λ), ``temperature`` (T) and ``alpha`` (α) may be Python floats or traced scalars.
    """
    return meta_value_and_gradient(
        teacher_apply, student_apply, teacher_params, student_params, batch, quiz_batch,
        pilot_lr=pilot_lr, temperature=temperature, alpha=alpha,
    )[1]
