"""MetaDistil meta-gradient maths (ev3.methods.metadistil_math) on tiny 4→5→3 tanh MLPs with dict-of-array params.

Everything is jitted: op-by-op (eager) second-order autodiff compiles every primitive separately and costs
several seconds, while one jit per (function, dtype) is shared across tests.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ev3.losses import cross_entropy
from ev3.methods.metadistil_math import (
    meta_gradient,
    meta_value_and_gradient,
    pilot_step,
    quiz_loss_after_pilot,
    train_loss,
)

HP = dict(pilot_lr=0.5, temperature=2.0, alpha=0.7)
SHAPES = dict(w1=(4, 5), b1=(5,), w2=(5, 3), b2=(3,))


def mlp_apply(params, x):
    """``(B, 4) -> (B, 3)`` logits."""
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def _problem(seed=0):
    """``(teacher_params, student_params, batch, quiz_batch)`` in the current default float dtype (numpy RNG)."""
    r = np.random.default_rng(seed)
    tp = {k: jnp.asarray(r.normal(size=s)) for k, s in SHAPES.items()}
    sp = {k: jnp.asarray(0.7 * r.normal(size=s)) for k, s in SHAPES.items()}
    batch = (jnp.asarray(r.normal(size=(8, 4))), jnp.asarray(r.integers(0, 3, 8)))
    quiz = (jnp.asarray(r.normal(size=(6, 4))), jnp.asarray(r.integers(0, 3, 6)))
    return tp, sp, batch, quiz


@jax.jit
def _jit_value_and_grad(tp, sp, batch, quiz, pilot_lr, temperature, alpha):
    # apply functions closed over; hyper-parameters traced
    return meta_value_and_gradient(
        mlp_apply, mlp_apply, tp, sp, batch, quiz, pilot_lr=pilot_lr, temperature=temperature, alpha=alpha
    )


def _meta(tp, sp, batch, quiz, **hp):
    """``(quiz_loss, flat meta-gradient)``."""
    hp = {**HP, **hp}
    loss, grad = _jit_value_and_grad(tp, sp, batch, quiz, hp["pilot_lr"], hp["temperature"], hp["alpha"])
    return loss, ravel_pytree(grad)[0]


def test_meta_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        tp, sp, batch, quiz = _problem(0)
        flat, unravel = ravel_pytree(tp)
        assert flat.dtype == jnp.float64 and flat.size == 4 * 5 + 5 + 5 * 3 + 3
        loss, g = _meta(tp, sp, batch, quiz)

        @jax.jit
        def fd_and_loss(flat):
            def f(v):
                return quiz_loss_after_pilot(mlp_apply, mlp_apply, unravel(v), sp, batch, quiz, **HP)

            eps = 1e-5
            fd = jax.vmap(lambda e: (f(flat + eps * e) - f(flat - eps * e)) / (2 * eps))(jnp.eye(flat.size))
            return fd, f(flat)

        fd, loss_ref = fd_and_loss(flat)
        np.testing.assert_allclose(loss, loss_ref, rtol=1e-12)
        assert jnp.linalg.norm(fd) > 1e-3  # not vacuous
        rel = jnp.linalg.norm(g - fd) / jnp.linalg.norm(fd)
        assert rel < 1e-4, rel


def test_meta_gradient_equals_closed_form_hvp():
    with jax.enable_x64(True):
        tp, sp, batch, quiz = _problem(1)

        @jax.jit
        def closed_form(tp):
            # −λ ∇_θt ⟨∇_θs L_train(θs, θt), v⟩ with v = ∇L_quiz at the piloted student, held constant
            piloted = pilot_step(mlp_apply, mlp_apply, tp, sp, batch, **HP)
            v = jax.grad(lambda s: cross_entropy(mlp_apply(s, quiz[0]), quiz[1]))(piloted)
            v = jax.lax.stop_gradient(ravel_pytree(v)[0])

            def inner(t):
                gs = jax.grad(
                    lambda s: train_loss(
                        mlp_apply, mlp_apply, t, s, batch, temperature=HP["temperature"], alpha=HP["alpha"]
                    )
                )(sp)
                return jnp.vdot(ravel_pytree(gs)[0], v)

            return -HP["pilot_lr"] * ravel_pytree(jax.grad(inner)(tp))[0]

        closed = closed_form(tp)
        assert jnp.linalg.norm(closed) > 1e-3
        np.testing.assert_allclose(_meta(tp, sp, batch, quiz)[1], closed, rtol=1e-10, atol=1e-14)


def test_zero_pilot_lr_gives_exactly_zero():
    tp, sp, batch, quiz = _problem(2)
    assert _meta(tp, sp, batch, quiz)[1].any()
    g = _meta(tp, sp, batch, quiz, pilot_lr=0.0)[1]
    assert g.shape == (43,) and not g.any()


def test_nonzero_with_kd_and_zero_without_teacher_term():
    tp, sp, batch, quiz = _problem(3)
    g = _meta(tp, sp, batch, quiz, alpha=0.5)[1]
    assert all(jnp.abs(leaf).max() > 0 for leaf in jax.tree.leaves(ravel_pytree(tp)[1](g)))  # every leaf moves
    loss0, g0 = _meta(tp, sp, batch, quiz, alpha=0.0)
    assert jnp.isfinite(loss0) and not g0.any()


def test_jit_with_static_apply_and_closure_agree_with_float64():
    tp, sp, batch, quiz = _problem(4)
    closure = _meta(tp, sp, batch, quiz)[1]  # apply functions closed over, hyper-parameters traced
    static = jax.jit(meta_gradient, static_argnums=(0, 1), static_argnames=("pilot_lr", "temperature", "alpha"))
    got = ravel_pytree(static(mlp_apply, mlp_apply, tp, sp, batch, quiz, **HP))[0]
    assert closure.dtype == got.dtype == jnp.float32
    np.testing.assert_allclose(got, closure, rtol=1e-5, atol=1e-7)
    with jax.enable_x64(True):  # same problem in float64 (the path checked against finite differences)
        ref = np.asarray(_meta(*_problem(4))[1])
    assert np.abs(ref).max() > 1e-3
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)
