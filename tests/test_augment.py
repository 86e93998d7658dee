"""1-D signal augmentation and mixup (ev3.data.augment) against their definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d

from ev3.data.augment import augment_fn, gaussian_filter, mix, mixup, mixup_fn, shift, signal_augment

STRENGTHS = {"scale": 0.4, "translate": 4, "corr_noise": 0.25, "iid_noise": 0.05, "shear": 0.75}


def _signals(b=16, length=40, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, length)), jnp.float32)


@pytest.mark.parametrize("name", sorted(STRENGTHS))
def test_each_transform_keeps_shape_dtype_is_deterministic_and_changes_the_signal(name):
    x = _signals()
    one = signal_augment(jax.random.key(3), x, **{name: STRENGTHS[name]})
    again = signal_augment(jax.random.key(3), x, **{name: STRENGTHS[name]})
    other = signal_augment(jax.random.key(4), x, **{name: STRENGTHS[name]})
    assert one.shape == x.shape and one.dtype == x.dtype
    np.testing.assert_array_equal(one, again)
    assert not np.array_equal(one, x) and not np.array_equal(one, other)


@pytest.mark.parametrize("name", sorted(STRENGTHS))
def test_zero_strength_is_the_identity(name):
    x = _signals()
    np.testing.assert_array_equal(signal_augment(jax.random.key(0), x, **{name: 0 * STRENGTHS[name]}), x)
    assert augment_fn({name: 0 * STRENGTHS[name]}) is None


def test_the_transforms_keep_a_channel_axis():
    x = _signals()[..., None].repeat(3, axis=-1)
    y = signal_augment(jax.random.key(1), x, **STRENGTHS)
    assert y.shape == x.shape


def test_translation_by_s_then_minus_s_restores_a_signal_with_zero_padding_inside_the_window():
    m = 5
    x = np.zeros((6, 40), np.float32)
    x[:, m:-m] = np.random.default_rng(1).normal(size=(6, 40 - 2 * m))
    s = jnp.asarray([-5, -3, 0, 1, 4, 5])
    moved = shift(jnp.asarray(x), s, m)
    np.testing.assert_array_equal(shift(moved, -s, m), x)
    np.testing.assert_array_equal(moved[4, 4 + m : 4 + 40 - m], x[4, m:-m])  # out[t] = x[t − s], s = 4
    assert not np.array_equal(moved, x)


def test_shift_fills_zeros_where_the_signal_moved_away():
    x = jnp.ones((2, 10))
    out = np.asarray(shift(x, jnp.asarray([3, -2]), 3))
    np.testing.assert_array_equal(out[0], [0, 0, 0] + [1] * 7)
    np.testing.assert_array_equal(out[1], [1] * 8 + [0, 0])


def test_correlated_noise_is_scipys_gaussian_filter_of_the_noise():
    noise = np.random.default_rng(2).normal(size=(4, 40)).astype(np.float32)
    np.testing.assert_allclose(gaussian_filter(jnp.asarray(noise)), gaussian_filter1d(noise, 2.0, axis=1), atol=1e-5)


def test_scale_and_shear_are_the_generators_formulas():
    """Scale multiplies each signal by a factor in [1 − s/2, 1 + s/2]; shear subtracts a ramp c·linspace(−½, ½)
    with |c| ≤ shear/2: both read back exactly from the output."""
    x = _signals(b=64)
    scaled = signal_augment(jax.random.key(5), x, scale=0.4)
    factor = np.asarray(scaled / x)
    np.testing.assert_allclose(factor, factor[:, :1].repeat(40, axis=1), rtol=1e-5)
    assert np.all(np.abs(factor - 1) <= 0.2 + 1e-6)
    sheared = np.asarray(signal_augment(jax.random.key(6), x, shear=0.75) - x)
    ramp = np.linspace(-0.5, 0.5, 40)
    c = -sheared[:, -1] / ramp[-1]
    np.testing.assert_allclose(sheared, -c[:, None] * ramp[None, :], atol=1e-5)
    assert np.all(np.abs(c) <= 0.375 + 1e-6)


def test_mixup_mixes_targets_by_the_convex_combination_of_the_inputs():
    """Inputs that encode their labels linearly (x = targets @ W) stay consistent after mixup: the mixed inputs
    equal the mixed targets @ W, per batch and per sample."""
    rng = np.random.default_rng(3)
    labels = jnp.asarray(rng.integers(0, 5, 32))
    w = jnp.asarray(rng.normal(size=(5, 7)), jnp.float32)
    targets = jax.nn.one_hot(labels, 5)
    for per in ("batch", "sample"):
        x_mixed, t_mixed = mixup(jax.random.key(7), targets @ w, targets, alpha=0.4, per=per)
        np.testing.assert_allclose(x_mixed, t_mixed @ w, atol=1e-5)
        np.testing.assert_allclose(t_mixed.sum(-1), 1.0, atol=1e-6)
        assert not np.array_equal(t_mixed, targets)
    x_b, t_b = mixup(jax.random.key(8), targets @ w, targets, alpha=0.4, per="batch")
    lam = t_b.max(-1)  # one λ: every mixed pair of distinct labels shows max(λ, 1 − λ)
    distinct = (t_b > 1e-6).sum(-1) == 2
    np.testing.assert_allclose(lam[distinct], lam[distinct][0], atol=1e-6)


def test_mix_with_lambda_one_is_the_identity_and_the_function_is_deterministic():
    x = _signals(b=8)
    t = jax.nn.one_hot(jnp.arange(8) % 3, 3)
    perm = jnp.asarray(np.random.default_rng(0).permutation(8))
    x1, t1 = mix(x, t, jnp.float32(1.0), perm)
    np.testing.assert_array_equal(x1, x)
    np.testing.assert_array_equal(t1, t)
    x1, t1 = mix(x, t, jnp.ones(8), perm)
    np.testing.assert_array_equal(x1, x)
    a = mixup_fn({"alpha": 0.5, "per": "sample"})(jax.random.key(2), x, jnp.arange(8) % 3, 3)
    b = mixup_fn({"alpha": 0.5, "per": "sample"})(jax.random.key(2), x, jnp.arange(8) % 3, 3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
