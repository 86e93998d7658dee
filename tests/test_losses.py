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


def test_reverse_kd_closed_form_and_the_forward_direction_differs():
    """s = [0, 0], t = [ln 3, 0]: p_s = [1/2, 1/2]; p_t = [3/4, 1/4] at T = 1, [√3, 1]/(1 + √3) at T = 2.
    T·KL(p_s ‖ p_t) = ½ ln(4/3) = 0.14384 (T = 1) and ln((1 + √3)² / (4√3)) = 0.07450 (T = 2); the forward
    T²·KL(p_t ‖ p_s) = ¾ ln(3/2) + ¼ ln(1/2) = 0.13081 (T = 1) and 4·Σ p_t ln(2 p_t) = 0.14536 (T = 2)."""
    from ev3.losses import reverse_kd_loss, reverse_kd_per_sample

    p2 = np.array([np.sqrt(3.0), 1.0]) / (1.0 + np.sqrt(3.0))
    expected = {
        1.0: (0.5 * np.log(4 / 3), 0.75 * np.log(1.5) + 0.25 * np.log(0.5)),
        2.0: (np.log((1 + np.sqrt(3.0)) ** 2 / (4 * np.sqrt(3.0))), 4.0 * np.sum(p2 * np.log(2 * p2))),
    }
    rounded = {1.0: (0.14384, 0.13081), 2.0: (0.07450, 0.14536)}
    with jax.enable_x64(True):
        s = jnp.array([[0.0, 0.0]], jnp.float64)
        t = jnp.array([[np.log(3.0), 0.0]], jnp.float64)
        for temperature, (reverse, forward) in expected.items():
            got_reverse = float(reverse_kd_loss(s, t, temperature))
            got_forward = float(kd_loss(s, t, temperature))
            assert got_reverse == pytest.approx(reverse, rel=1e-12)
            assert got_forward == pytest.approx(forward, rel=1e-12)
            assert (got_reverse, got_forward) == pytest.approx(rounded[temperature], abs=5e-6)
            assert reverse_kd_per_sample(s, t, temperature).shape == (1,)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_reverse_kd_matches_a_float64_reference_and_its_gradient(temperature):
    """Against numpy T·Σ p_s log(p_s / p_t), and the gradient
    ∂/∂s_j [T·KL(p_s^T ‖ p_t^T)] = p_s,j (log p_s,j − log p_t,j − KL)."""
    from ev3.losses import reverse_kd_loss, reverse_kd_per_sample

    s, t = np.asarray(_logits(9), np.float64), np.asarray(_logits(10), np.float64)
    ps, pt = _softmax(s / temperature), _softmax(t / temperature)
    kl = np.sum(ps * (np.log(ps) - np.log(pt)), -1)
    got = reverse_kd_per_sample(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), temperature)
    np.testing.assert_allclose(got, temperature * kl, rtol=1e-4, atol=1e-6)
    grad = jax.grad(reverse_kd_loss)(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), temperature)
    expected = ps * (np.log(ps) - np.log(pt) - kl[:, None]) / s.shape[0]
    np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_the_references_ce_on_t_times_logits_is_the_candidate_loss_with_w0_and_t_ce_one_over_t(temperature):
    import optax

    from ev3.protocol.explore import candidate_loss

    s, t, y = _logits(11), _logits(12), jnp.array([1, 2, 3, 4, 0, 1])
    reference = jnp.mean(optax.softmax_cross_entropy(temperature * s, jax.nn.one_hot(y, s.shape[-1])))
    hp = {"w": jnp.float32(0.0), "t_kd": jnp.float32(4.0), "t_ce": jnp.float32(1.0 / temperature)}
    assert float(candidate_loss(s, t, y, hp)) == pytest.approx(float(reference), rel=1e-5)
