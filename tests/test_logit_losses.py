"""The logit losses of LS, DIST, MLKD, CTKD and WTTM against closed forms, numpy re-derivations and finite
differences (float64 where a derivative is compared)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ev3.losses import (
    MLKD_TEMPERATURES, ctkd_lambda, ctkd_loss, ctkd_temperature, dist_loss, dist_parts, hinton_loss,
    kd_loss, mlkd_batch_loss, mlkd_class_loss, mlkd_loss, mlkd_masks, standardize_logits, ttm_loss, ttm_per_sample,
    wttm_loss,
)

B, C = 6, 5


def _logits(seed, shape=(B, C), scale=2.0):
    return np.asarray(scale * np.random.default_rng(seed).normal(size=shape), np.float32)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _kd(s, t, tau):
    ps, pt = _softmax(s / tau), _softmax(t / tau)
    return tau**2 * np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), -1))


def _finite_difference(f, x, h=1e-6):
    """Central differences of scalar ``f`` at ``x``, every perturbed input in one vmapped, jitted call."""
    x = np.asarray(x, np.float64)
    steps = h * np.eye(x.size).reshape(x.size, *x.shape)
    values = np.asarray(jax.jit(jax.vmap(f))(jnp.asarray(np.concatenate([x + steps, x - steps]))))
    return ((values[: x.size] - values[x.size :]) / (2 * h)).reshape(x.shape)


# --- Logit standardization --------------------------------------------------------------------------------------


def _ls_kd(s, t, tau=2.0):
    return float(kd_loss(standardize_logits(jnp.asarray(s)), standardize_logits(jnp.asarray(t)), tau))


def test_ls_kd_is_invariant_to_a_per_sample_shift_or_positive_scale_of_either_side():
    s, t = _logits(0), _logits(1)
    shift, scale = _logits(2, (B, 1), 10.0), np.exp(_logits(3, (B, 1), 1.0))
    reference = _ls_kd(s, t)
    for s2, t2 in ((s + shift, t), (s, t + shift), (s * scale, t), (s, t * scale), (scale * s - shift, 3 * t + 1)):
        assert _ls_kd(s2, t2) == pytest.approx(reference, rel=1e-5)
    assert float(kd_loss(s * scale, t, 2.0)) != pytest.approx(float(kd_loss(s, t, 2.0)), rel=1e-3)  # KD: not scale-free


def test_ls_kd_of_standardized_logits_is_plain_kd_at_the_same_temperature():
    """Rows with mean 0 and sample standard deviation 1 (ddof 1, as the authors' ``Tensor.std``) stay as they are."""
    def standardized(z):
        z = z - z.mean(-1, keepdims=True)
        return z / z.std(-1, ddof=1, keepdims=True)

    s, t = standardized(_logits(4)), standardized(_logits(5))
    np.testing.assert_allclose(standardize_logits(jnp.asarray(s)), s, rtol=1e-5, atol=1e-6)
    for tau in (1.0, 2.0, 4.0):
        assert _ls_kd(s, t, tau) == pytest.approx(float(kd_loss(s, t, tau)), rel=1e-5)


# --- DIST -------------------------------------------------------------------------------------------------------


def _pearson(a, b):
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_dist_matches_a_numpy_re_derivation():
    s, t, tau = _logits(6).astype(np.float64), _logits(7).astype(np.float64), 4.0
    ys, yt = _softmax(s / tau), _softmax(t / tau)
    inter, intra = tau**2 * (1 - _pearson(ys, yt).mean()), tau**2 * (1 - _pearson(ys.T, yt.T).mean())
    got = dist_parts(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), tau)
    np.testing.assert_allclose(got, (inter, intra), rtol=1e-4)
    assert float(dist_loss(s, t, temperature=tau, beta=2.0, gamma=3.0)) == pytest.approx(2 * inter + 3 * intra, rel=1e-4)


def test_dist_is_zero_for_identical_distributions():
    t = _logits(8)
    np.testing.assert_allclose(dist_parts(t, t, 4.0), (0.0, 0.0), atol=1e-5)
    inter, intra = dist_parts(_logits(9), t, 4.0)
    assert float(inter) > 1e-3 and float(intra) > 1e-3


def test_dist_two_classes_closed_form():
    """With C = 2 a row is (p, 1 − p): per sample the correlation is the sign of (p_s − ½)(p_t − ½), so inter =
    T²·(1 − mean sign); both class columns correlate as p_s and p_t over the batch, so intra = T²·(1 − r(p_s, p_t))."""
    s, t, tau = _logits(10, (8, 2)), _logits(11, (8, 2)), 2.0
    ps, pt = _softmax(s.astype(np.float64) / tau)[:, 0], _softmax(t.astype(np.float64) / tau)[:, 0]
    inter = tau**2 * (1 - np.mean(np.sign((ps - 0.5) * (pt - 0.5))))
    intra = tau**2 * (1 - np.corrcoef(ps, pt)[0, 1])
    np.testing.assert_allclose(dist_parts(s, t, tau), (inter, intra), rtol=1e-4, atol=1e-4)


def test_a_joint_batch_or_class_permutation_leaves_both_dist_terms_unchanged_a_one_sided_one_does_not():
    """Inter averages per-sample correlations (order-free); intra correlates each class over the batch, a
    correlation of two vectors reordered alike. Permuting one side's rows pairs other samples: both change."""
    s, t = _logits(12), _logits(13)
    rows, cols = np.random.default_rng(0).permutation(B), np.random.default_rng(1).permutation(C)
    reference = np.asarray(dist_parts(s, t, 4.0))
    np.testing.assert_allclose(dist_parts(s[rows], t[rows], 4.0), reference, rtol=1e-5)
    np.testing.assert_allclose(dist_parts(s[:, cols], t[:, cols], 4.0), reference, rtol=1e-5)
    one_sided = np.asarray(dist_parts(s[rows], t, 4.0))
    assert np.all(np.abs(one_sided - reference) > 1e-3)


def test_dist_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        s, t = _logits(14, (4, 3)).astype(np.float64), jnp.asarray(_logits(15, (4, 3)), jnp.float64)

        def f(z):
            return dist_loss(z, t, temperature=4.0, beta=1.0, gamma=1.0)

        np.testing.assert_allclose(jax.jit(jax.grad(f))(jnp.asarray(s)), _finite_difference(f, s), rtol=1e-5, atol=1e-8)


# --- MLKD -------------------------------------------------------------------------------------------------------


def _np_class(s, t, tau):
    ps, pt = _softmax(s / tau), _softmax(t / tau)
    return np.sum((pt.T @ pt - ps.T @ ps) ** 2) / s.shape[1]


def _np_batch(s, t, tau):
    ps, pt = _softmax(s / tau), _softmax(t / tau)
    return np.sum((pt @ pt.T - ps @ ps.T) ** 2) / s.shape[0]


def test_mlkd_levels_match_numpy():
    s, t = _logits(16).astype(np.float64), _logits(17).astype(np.float64)
    for tau in (1.0, 4.0):
        assert float(mlkd_class_loss(s, t, tau)) == pytest.approx(_np_class(s, t, tau), rel=1e-4)
        assert float(mlkd_batch_loss(s, t, tau)) == pytest.approx(_np_batch(s, t, tau), rel=1e-4)
        assert float(mlkd_class_loss(t, t, tau)) == float(mlkd_batch_loss(t, t, tau)) == 0.0


def test_mlkd_masks_keep_exactly_the_samples_and_classes_at_or_below_the_median_teacher_confidence():
    """The authors' ``confidence.le(np.percentile(confidence, 50))``: with distinct confidences the B/2 least
    confident samples stay and the B/2 most confident go; ties at the median stay."""
    t = _logits(18, (8, C))
    p = _softmax(t.astype(np.float64))
    sample_mask, class_mask = (np.asarray(m) for m in mlkd_masks(jnp.asarray(t)))
    confidence = p.max(-1)
    order = np.argsort(confidence)
    assert sample_mask[order[:4]].all() and not sample_mask[order[4:]].any()
    np.testing.assert_array_equal(class_mask, p.sum(0) <= np.percentile(p.sum(0), 50))
    tied = np.tile(t[:1], (8, 1))  # every confidence equal: all at the median
    assert np.asarray(mlkd_masks(jnp.asarray(tied))[0]).all()


def _np_mlkd(sw, tw, ss, ts, temperature, ls):
    def z(x):
        return (x - x.mean(-1, keepdims=True)) / (1e-7 + x.std(-1, ddof=1, keepdims=True)) if ls else x

    p = _softmax(tw)
    conf, class_conf = p.max(-1), p.sum(0)
    m, c = np.mean(conf <= np.percentile(conf, 50)), np.mean(class_conf <= np.percentile(class_conf, 50))
    taus = (temperature, *MLKD_TEMPERATURES)
    weak = sum(m * _kd(z(sw), z(tw), u) + c * _np_class(sw, tw, u) + m * _np_batch(sw, tw, u) for u in taus)
    strong = sum(_kd(z(ss), z(ts), u) for u in taus[:3]) + sum(_kd(z(sw), z(tw), u) for u in taus[3:])
    return weak + strong


@pytest.mark.parametrize("ls", [False, True])
def test_mlkd_loss_matches_a_numpy_re_derivation(ls):
    sw, tw, ss, ts = (_logits(k).astype(np.float64) for k in (19, 20, 21, 22))
    temperature = 2.0 if ls else 4.0
    got = float(mlkd_loss(sw, tw, ss, ts, temperature=temperature, ls=ls))
    assert got == pytest.approx(_np_mlkd(sw, tw, ss, ts, temperature, ls), rel=1e-4)


def test_mlkd_mask_scales_a_term_by_the_kept_fraction_and_drops_no_sample_from_the_gradient():
    """The authors' masks multiply batch means: the gradient reaches every sample, also the masked ones."""
    sw, tw = _logits(23), _logits(24)
    grad = np.asarray(jax.jit(jax.grad(lambda s: mlkd_loss(s, tw, s, tw, temperature=4.0)))(jnp.asarray(sw)))
    kept = np.asarray(mlkd_masks(jnp.asarray(tw))[0])
    assert (~kept).any() and np.all(np.abs(grad[~kept]).sum(-1) > 1e-6)


# --- CTKD -------------------------------------------------------------------------------------------------------


def test_ctkd_lambda_follows_the_authors_cosine_curriculum():
    """Their ``CosineDecay(0, −1, 10).get_value(i)`` = (cos(iπ/10) + 1)/2 − 1 for 1-based epochs, clipped at 10."""
    for epoch in (0, 1, 5, 10, 11, 240):
        i = min(epoch, 10)
        authors = (np.cos(i * np.pi / 10) + 1) / 2 * (0 - (-1)) + (-1)
        assert float(ctkd_lambda(epoch, loops=10)) == pytest.approx(-authors, abs=1e-6)
    assert float(ctkd_temperature(jnp.float32(1.0))) == pytest.approx(1 + 20 / (1 + np.exp(-1)), rel=1e-6)


def test_ctkd_temperature_gets_the_reversed_loss_gradient_and_the_student_kds_gradient():
    with jax.enable_x64(True):
        s, t = jnp.asarray(_logits(25), jnp.float64), jnp.asarray(_logits(26), jnp.float64)
        y, theta, lam, alpha = jnp.array([0, 1, 2, 3, 4, 0]), jnp.float64(0.3), jnp.float64(0.7), 0.9

        def plain(th, z=s):  # the loss without the reversal layer
            return hinton_loss(z, t, y, temperature=ctkd_temperature(th), alpha=alpha)

        @jax.jit
        def gradients(th, z):
            reversed_ = jax.grad(lambda a, b: ctkd_loss(b, t, y, a, lam, alpha=alpha), argnums=(0, 1))(th, z)
            return reversed_, jax.grad(plain, argnums=1)(th, z), ctkd_loss(z, t, y, th, lam, alpha=alpha), plain(th, z)

        (g_theta, g_student), kd_grad, value, plain_value = gradients(theta, s)
        fd = _finite_difference(plain, theta)
        assert abs(fd) > 1e-3
        assert float(g_theta) == pytest.approx(-0.7 * fd, rel=1e-6)
        np.testing.assert_allclose(g_student, kd_grad, rtol=1e-10)  # KD's gradient at the current temperature
        assert float(value) == pytest.approx(float(plain_value), rel=1e-12)


# --- WTTM -------------------------------------------------------------------------------------------------------


def _np_ttm(s, t, gamma):
    pt = _softmax(t) ** gamma
    norm = pt.sum(-1)
    target = pt / norm[:, None]
    kl = np.sum(target * (np.log(target) - np.log(_softmax(s))), -1)
    return kl, norm


def test_wttm_matches_a_numpy_re_derivation():
    s, t = _logits(27).astype(np.float64), _logits(28).astype(np.float64)
    for gamma in (0.1, 0.25, 1.0):
        kl, norm = _np_ttm(s, t, gamma)
        got_kl, got_w = ttm_per_sample(s, t, gamma)
        np.testing.assert_allclose(got_kl, kl, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got_w, norm, rtol=1e-5)
        assert float(wttm_loss(s, t, gamma)) == pytest.approx(np.mean(norm * kl), rel=1e-4)
        assert float(ttm_loss(s, t, gamma)) == pytest.approx(np.mean(kl), rel=1e-4)


def test_wttm_with_uniform_weights_is_the_authors_ttm():
    """Teacher rows that permute one another have the same Σ p^γ: WTTM = w · TTM, TTM the authors' mean KL, and the
    transformed teacher is KD's teacher at T = 1/γ."""
    s, gamma = _logits(29), 0.2
    t = np.stack([np.roll(_logits(30, (1, C))[0], k) for k in range(B)])
    kl, norm = _np_ttm(s.astype(np.float64), t.astype(np.float64), gamma)
    assert np.ptp(norm) < 1e-9
    assert float(wttm_loss(s, t, gamma)) == pytest.approx(norm[0] * float(ttm_loss(s, t, gamma)), rel=1e-5)
    assert float(ttm_loss(s, t, gamma)) == pytest.approx(np.mean(kl), rel=1e-4)
    target = _softmax(t.astype(np.float64)) ** gamma
    np.testing.assert_allclose(target / target.sum(-1, keepdims=True), _softmax(gamma * t.astype(np.float64)), rtol=1e-9)


def test_wttm_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        s, t = _logits(31, (4, 3)).astype(np.float64), jnp.asarray(_logits(32, (4, 3)), jnp.float64)

        def f(z):
            return wttm_loss(z, t, 0.2)

        np.testing.assert_allclose(jax.jit(jax.grad(f))(jnp.asarray(s)), _finite_difference(f, s), rtol=1e-5, atol=1e-8)
