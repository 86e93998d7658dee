"""Losses against closed forms and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ev3.losses import cross_entropy, hinton_loss, kd_loss, kd_per_sample


def _logits(seed, shape=(6, 5), scale=2.0):
    return scale * jax.random.normal(jax.random.key(seed), shape)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_cross_entropy_closed_form():
    logits, labels = _logits(0), jnp.array([0, 1, 2, 3, 4, 0])
    p = _softmax(np.asarray(logits, np.float64))
    expected = -np.mean(np.log(p[np.arange(6), np.asarray(labels)]))
    assert float(cross_entropy(logits, labels)) == pytest.approx(expected, rel=1e-5)


def test_kd_is_zero_when_logits_match_and_positive_otherwise():
    t = _logits(1)
    assert float(kd_loss(t, t, 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_loss(_logits(2), t, 4.0)) > 1e-3


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 8.0])
def test_kd_matches_t_squared_kl_teacher_to_student(temperature):
    s, t = np.asarray(_logits(3), np.float64), np.asarray(_logits(4), np.float64)
    ps, pt = _softmax(s / temperature), _softmax(t / temperature)
    kl_teacher_student = np.sum(pt * (np.log(pt) - np.log(ps)), -1)  # KL(p_t ‖ p_s), not KL(p_s ‖ p_t)
    expected = temperature**2 * kl_teacher_student
    np.testing.assert_allclose(kd_per_sample(jnp.asarray(s), jnp.asarray(t), temperature), expected, rtol=1e-4, atol=1e-6)
    reverse = temperature**2 * np.sum(ps * (np.log(ps) - np.log(pt)), -1)
    assert not np.allclose(expected, reverse, rtol=1e-3)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_gradient_closed_form(temperature):
    """∂/∂s [T²·KL(p_t^T ‖ p_s^T)] = T·(p_s^T − p_t^T); the batch mean divides by B."""
    s, t = _logits(5), _logits(6)
    grad = jax.grad(kd_loss)(s, t, temperature)
    expected = temperature * (jax.nn.softmax(s / temperature) - jax.nn.softmax(t / temperature)) / s.shape[0]
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


def test_hinton_loss_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        s = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float64)
        t = jnp.asarray(np.random.default_rng(1).normal(size=(4, 3)), jnp.float64)
        y = jnp.array([0, 2, 1, 1])

        def f(z):
            return hinton_loss(z, t, y, temperature=3.0, alpha=0.7)

        grad = np.asarray(jax.grad(f)(s))
        eps, fd = 1e-6, np.zeros_like(grad)
        for idx in np.ndindex(*s.shape):
            d = jnp.zeros_like(s).at[idx].set(eps)
            fd[idx] = (f(s + d) - f(s - d)) / (2 * eps)
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)


def test_hinton_loss_mixes_terms():
    s, t, y = _logits(7), _logits(8), jnp.array([1, 2, 3, 4, 0, 1])
    mixed = hinton_loss(s, t, y, temperature=2.0, alpha=0.25)
    expected = 0.25 * kd_loss(s, t, 2.0) + 0.75 * cross_entropy(s, y)
    assert float(mixed) == pytest.approx(float(expected), rel=1e-6)


def test_dkd_parts_match_their_closed_forms_and_decompose_kd():
    """TCKD/NCKD against a float64 numpy reference, and Zhao et al.'s identity KD = TCKD + (1 − p_t,gt)·NCKD."""
    from ev3.losses import dkd_loss, dkd_parts_per_sample

    T = 4.0
    s, t = np.asarray(_logits(7), np.float64), np.asarray(_logits(8), np.float64)
    y = np.array([0, 1, 2, 3, 4, 2])
    ps, pt = _softmax(s / T), _softmax(t / T)
    rows = np.arange(len(y))
    bs = np.stack([ps[rows, y], 1 - ps[rows, y]], -1)
    bt = np.stack([pt[rows, y], 1 - pt[rows, y]], -1)
    tckd = T**2 * np.sum(bt * np.log(bt / bs), -1)
    mask = np.ones_like(s, bool)
    mask[rows, y] = False
    nckd = np.empty(len(y))
    for i in rows:
        qs, qt = _softmax(s[i][mask[i]] / T), _softmax(t[i][mask[i]] / T)
        nckd[i] = T**2 * np.sum(qt * np.log(qt / qs))
    got_t, got_n = dkd_parts_per_sample(jnp.asarray(s), jnp.asarray(t), jnp.asarray(y), T)
    np.testing.assert_allclose(got_t, tckd, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got_n, nckd, rtol=1e-4, atol=1e-6)
    kd = np.asarray(kd_per_sample(jnp.asarray(s), jnp.asarray(t), T))
    np.testing.assert_allclose(kd, tckd + (1 - pt[rows, y]) * nckd, rtol=1e-4, atol=1e-6)
    expected = np.mean(1.0 * tckd + 8.0 * nckd)
    assert float(dkd_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(y), temperature=T, alpha=1.0, beta=8.0)) == pytest.approx(expected, rel=1e-4)


def test_dkd_is_zero_for_identical_logits_and_has_finite_gradients():
    from ev3.losses import dkd_loss

    s, y = _logits(9), jnp.array([0, 1, 2, 3, 4, 0])
    assert float(dkd_loss(s, s, y, temperature=4.0, alpha=1.0, beta=8.0)) == pytest.approx(0.0, abs=1e-6)
    g = jax.grad(lambda z: dkd_loss(z, _logits(10), y, temperature=4.0, alpha=1.0, beta=8.0))(s)
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.max(jnp.abs(g))) > 0
