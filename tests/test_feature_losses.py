"""Feature, relation and contrastive distillation losses (ev3.losses) and their connectors (ev3.models.connectors)
against float64 closed forms, direct re-derivations, invariances and finite differences."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ev3 import models
from ev3.losses import (adaptive_avg_pool, attention_loss, crd_bank_update, crd_contrast_indices, crd_loss,
                        crd_nce_loss, crd_normalizer, crd_scores, fitnet_loss, hcl_loss, rkd_loss, rkd_parts)
from ev3.models.connectors import ABF, Embed, HintRegressor, ReviewFusion, resize_nearest

rng = np.random.default_rng(0)


def normal(*shape):
    return rng.normal(size=shape)


# --- attention transfer ----------------------------------------------------------------------------------------


def attention_reference(fs_list, ft_list, p=2):
    """The authors' at_loss in float64 numpy: mean((normalize(mean_c f^p) − …)²), summed over pairs."""
    def at(f):
        a = np.mean(f**p, axis=-1).reshape(f.shape[0], -1)
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    return sum(np.mean((at(fs) - at(ft)) ** 2) for fs, ft in zip(fs_list, ft_list))


def test_attention_loss_closed_form():
    """One example, one channel, two positions: a_s = (1, 0), a_t = (1, 1)/√2 → mean of (1 − 1/√2)² and 1/2."""
    with jax.enable_x64(True):
        fs, ft = jnp.array([[[1.0], [0.0]]]), jnp.array([[[1.0], [1.0]]])
        assert float(attention_loss([fs], [ft])) == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-12)


@pytest.mark.parametrize("p", [2, 4])
def test_attention_loss_matches_the_authors_formula(p):
    fs = [normal(3, 4, 4, 5), normal(3, 2, 2, 7), normal(3, 6, 2)]  # channels may differ, 1-D maps too
    ft = [normal(3, 4, 4, 8), normal(3, 2, 2, 3), normal(3, 6, 4)]
    with jax.enable_x64(True):
        got = attention_loss([jnp.asarray(f) for f in fs], [jnp.asarray(f) for f in ft], p=p)
        assert float(got) == pytest.approx(attention_reference(fs, ft, p), rel=1e-10)
    with pytest.raises(ValueError, match="spatial"):
        attention_loss([jnp.ones((2, 4, 4, 3))], [jnp.ones((2, 2, 2, 3))])


def test_attention_loss_is_invariant_to_a_positive_scaling_of_a_map():
    with jax.enable_x64(True):
        fs, ft = jnp.asarray(normal(4, 5, 5, 3)), jnp.asarray(normal(4, 5, 5, 6))
        base = float(attention_loss([fs], [ft]))
        assert base > 1e-3
        assert float(attention_loss([7.5 * fs], [ft])) == pytest.approx(base, rel=1e-10)
        assert float(attention_loss([fs], [0.01 * ft])) == pytest.approx(base, rel=1e-10)
        assert float(attention_loss([fs], [fs * 3.0])) == pytest.approx(0.0, abs=1e-15)


def test_adaptive_avg_pool_matches_pytorchs_windows():
    x = normal(2, 7, 5, 3)
    with jax.enable_x64(True):
        got = np.asarray(adaptive_avg_pool(jnp.asarray(x), (3, 2)))
        # windows floor(i·L/l) … ceil((i+1)·L/l): 7 → 3: [0, 3), [2, 5), [4, 7); 5 → 2: [0, 3), [2, 5)
        rows, cols = [(0, 3), (2, 5), (4, 7)], [(0, 3), (2, 5)]
        want = np.stack([np.stack([x[:, a:b, c:d].mean(axis=(1, 2)) for c, d in cols], 1) for a, b in rows], 1)
        np.testing.assert_allclose(got, want, rtol=1e-12)
        y = normal(2, 8, 4)
        np.testing.assert_allclose(adaptive_avg_pool(jnp.asarray(y), (2,)), y.reshape(2, 2, 4, 4).mean(2), rtol=1e-12)


# --- RKD ---------------------------------------------------------------------------------------------------------

TEACHER = [[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]]  # equilateral: distances 1, angles 60°
STUDENT = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]  # right isosceles: distances 1, 1, √2; angles 90°, 45°, 45°


def test_rkd_closed_form():
    mu = (2 + math.sqrt(2)) / 3  # the student's mean off-diagonal distance; the teacher's is 1
    # distance: 6 off-diagonal entries (each pair twice) of the 9, all differences below 1 (Huber = x² / 2)
    distance = (2 * (1 / mu - 1) ** 2 + (math.sqrt(2) / mu - 1) ** 2) / 9
    # angle: 27 entries; j = k ≠ i gives cos 1 on both sides, j or k = i gives 0; the 6 entries j ≠ k (both ≠ i)
    # differ by cos 90° − cos 60° (twice, vertex 0) and cos 45° − cos 60° (four times)
    angle = (2 * 0.5 * 0.25 + 4 * 0.5 * (1 / math.sqrt(2) - 0.5) ** 2) / 27
    assert distance == pytest.approx(0.0098124, abs=1e-7) and angle == pytest.approx(0.0124365, abs=1e-7)
    with jax.enable_x64(True):
        s, t = jnp.array(STUDENT), jnp.array(TEACHER)
        d, a = rkd_parts(s, t)
        assert float(d) == pytest.approx(distance, rel=1e-10)
        assert float(a) == pytest.approx(angle, rel=1e-10)
        assert float(rkd_loss(s, t)) == pytest.approx(25 * distance + 50 * angle, rel=1e-10)
        assert float(rkd_loss(s, t)) == pytest.approx(0.867137, abs=1e-6)


def rkd_reference(s, t):
    """RKD by loops in float64 numpy: smooth-L1 over normalised distances and triplet cosines."""
    def huber(x):
        return np.where(np.abs(x) < 1, 0.5 * x**2, np.abs(x) - 0.5)

    def distances(e):
        n = len(e)
        d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(n)] for i in range(n)])
        return d / (d.sum() / (n * (n - 1)))

    def cosines(e):
        n = len(e)
        out = np.zeros((n, n, n))
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    if j != i and k != i:
                        u, v = e[j] - e[i], e[k] - e[i]
                        out[i, j, k] = u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
        return out

    return np.mean(huber(distances(s) - distances(t))), np.mean(huber(cosines(s) - cosines(t)))


def test_rkd_matches_a_direct_rederivation():
    s, t = normal(6, 4), 3.0 * normal(6, 9)
    s[2] *= 5.0  # one far point: some normalised-distance differences exceed 1 (the linear branch of smooth-L1)
    with jax.enable_x64(True):
        d, a = rkd_parts(jnp.asarray(s), jnp.asarray(t))
    want_d, want_a = rkd_reference(s, t)
    assert float(d) == pytest.approx(want_d, rel=1e-10) and float(a) == pytest.approx(want_a, rel=1e-10)


def test_rkd_invariances():
    """Distance term: invariant to scaling either side; both terms: invariant to rotations and translations."""
    s, t = normal(5, 3), normal(5, 6)
    q_s = np.linalg.qr(normal(3, 3))[0]
    q_t = np.linalg.qr(normal(6, 6))[0]
    with jax.enable_x64(True):
        base = [float(v) for v in rkd_parts(jnp.asarray(s), jnp.asarray(t))]
        assert min(base) > 1e-4
        scaled = [float(v) for v in rkd_parts(jnp.asarray(4.0 * s), jnp.asarray(0.3 * t))]
        assert scaled[0] == pytest.approx(base[0], rel=1e-10)
        moved = [float(v) for v in rkd_parts(jnp.asarray(s @ q_s.T + 2.0), jnp.asarray(t @ q_t.T - 1.0))]
        assert moved == pytest.approx(base, rel=1e-9)


def test_rkd_gradient_matches_finite_differences_and_skips_the_teacher():
    with jax.enable_x64(True):
        s, t = jnp.asarray(normal(5, 3)), jnp.asarray(normal(5, 4))
        grad_s, grad_t = jax.jit(jax.grad(rkd_loss, argnums=(0, 1)))(s, t)
        loss = jax.jit(rkd_loss)
        assert not jnp.any(grad_t) and jnp.all(jnp.isfinite(grad_s))
        h = 1e-6
        for index in [(0, 0), (2, 1), (4, 2)]:
            e = jnp.zeros_like(s).at[index].set(h)
            numeric = (loss(s + e, t) - loss(s - e, t)) / (2 * h)
            assert float(grad_s[index]) == pytest.approx(float(numeric), rel=1e-5, abs=1e-8)
        # duplicated embeddings (zero differences) keep gradients finite
        dup = s.at[1].set(s[0])
        assert jnp.all(jnp.isfinite(jax.grad(rkd_loss)(dup, t)))


# --- FitNet ------------------------------------------------------------------------------------------------------


def test_fitnet_loss_is_the_mean_squared_error():
    with jax.enable_x64(True):
        a, b = normal(2, 3, 4), normal(2, 3, 4)
        assert float(fitnet_loss(jnp.asarray(a), jnp.asarray(b))) == pytest.approx(np.mean((a - b) ** 2), rel=1e-12)
    with pytest.raises(ValueError):
        fitnet_loss(jnp.ones((2, 3)), jnp.ones((2, 4)))


def test_fitnet_with_an_identity_regressor_is_the_plain_mse():
    s = jnp.abs(jnp.asarray(normal(3, 6, 6, 4), jnp.float32))  # post-ReLU hints: the regressor's ReLU keeps them
    t = jnp.abs(jnp.asarray(normal(3, 6, 6, 4), jnp.float32))
    reg = HintRegressor((6, 6, 4), (6, 6, 4), rngs=nnx.Rngs(0))
    assert reg.conv.kernel.value.shape == (1, 1, 4, 4)
    reg.conv.kernel.value = jnp.eye(4).reshape(1, 1, 4, 4)
    reg.conv.bias.value = jnp.zeros(4)
    reg.bn.epsilon = 0.0  # eval-mode BN with its initial statistics (0, 1): (x − 0) / sqrt(1 + 0) = x
    reg.eval()
    np.testing.assert_array_equal(reg(s), s)
    assert float(fitnet_loss(reg(s), t)) == float(jnp.mean(jnp.square(s - t)))

    flat = HintRegressor((8,), (2, 4), rngs=nnx.Rngs(0))  # MLP → 1-D CNN: flatten + linear, no BN / ReLU
    flat.linear.kernel.value, flat.linear.bias.value = jnp.eye(8), jnp.zeros(8)
    x, y = jnp.asarray(normal(3, 8), jnp.float32), jnp.asarray(normal(3, 2, 4), jnp.float32)
    assert float(fitnet_loss(flat(x), y)) == float(jnp.mean(jnp.square(x.reshape(3, 2, 4) - y)))


@pytest.mark.parametrize("student, teacher, kernel", [
    ((16, 16, 32), (8, 8, 64), (3, 3, 32, 64)),     # s = 2t: 3×3 stride 2
    ((8, 8, 32), (16, 16, 64), (4, 4, 32, 64)),     # 2s = t: 4×4 stride-2 transposed
    ((10, 10, 8), (8, 8, 4), (3, 3, 8, 4)),         # valid conv, kernel 1 + s − t
    ((16, 16, 32), (16, 16, 32), (1, 1, 32, 32)),   # equal sizes: 1×1 (the CIFAR pairs at the middle stage)
    ((20, 8), (20, 16), (1, 8, 16)),                # 1-D CNN → 1-D CNN
    ((64,), (10, 16), (64, 160)),                   # MLP → CNN: linear
    ((10, 16), (64,), (160, 64)),                   # CNN → MLP: linear
])
def test_hint_regressor_shapes(student, teacher, kernel):
    reg = HintRegressor(student, teacher, rngs=nnx.Rngs(0))
    layer = reg.linear if reg.conv is None else reg.conv
    assert layer.kernel.value.shape == kernel
    out = reg(jnp.ones((2, *student)))
    assert out.shape == (2, *teacher)


def test_hint_regressor_refuses_a_much_smaller_student_map():
    with pytest.raises(ValueError, match="no regressor"):
        HintRegressor((4, 4, 8), (16, 16, 8), rngs=nnx.Rngs(0))


def test_a_hint_step_trains_student_and_regressor_and_leaves_the_teacher_frozen():
    """CE + 100 · FitNet on random (40,) signals: a 1-D CNN student and its flatten + linear regressor to a resnet8
    teacher's middle stage (the signal seen as an 8×5 image) take Adam steps; the teacher is read in eval mode."""
    x = jax.random.normal(jax.random.key(0), (16, 40))
    y = jax.random.randint(jax.random.key(1), (16,), 0, 10)
    teacher = models.build({"type": "resnet", "depth": 8}, (8, 5), 10, jax.random.key(2))  # a BN teacher
    student = models.build({"type": "cnn", "channels": [8, 8], "kernel_size": 5, "stride": 2}, (40,), 10,
                           jax.random.key(3))
    xt = x.reshape(16, 8, 5)
    t_feats = models.apply(*teacher, xt, features=True)[0][1]
    hint_t = t_feats.stages[1]  # (16, 4, 3, 32): a 2-D map; the student hint (20, 8) is 1-D → flatten + linear
    reg_graph, reg_params, reg_rest = nnx.split(HintRegressor((20, 8), hint_t.shape[1:], rngs=nnx.Rngs(4)),
                                                nnx.Param, ...)
    tx = optax.adam(1e-3)

    def loss_fn(trainable):
        (logits, feats), _ = models.apply(student.graphdef, trainable["student"], student.rest, x, train=True,
                                          features=True)
        t_out = models.apply(*teacher, xt, features=True)[0][1]
        reg = nnx.merge(reg_graph, trainable["regressor"], reg_rest)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean() + 100.0 * fitnet_loss(
            reg(feats.stages[0]), t_out.stages[1])

    trainable = {"student": student.params, "regressor": reg_params}
    value_and_grad = jax.jit(jax.value_and_grad(loss_fn))
    state, losses = tx.init(trainable), []
    for step in range(3):
        loss, grads = value_and_grad(trainable)
        if step == 0:  # the gradient reaches every student and regressor weight
            assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
        updates, state = tx.update(grads, state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    assert not any(jnp.array_equal(a, b) for a, b in zip(jax.tree.leaves(trainable["regressor"]),
                                                         jax.tree.leaves(reg_params)))
    # the teacher's parameters and BatchNorm statistics are bitwise what they were
    again = models.apply(*teacher, xt, features=True)
    for a, b in zip(jax.tree.leaves(again[1]), jax.tree.leaves(teacher.rest), strict=True):
        assert jnp.array_equal(a, b)
    np.testing.assert_array_equal(again[0][1].stages[1], hint_t)


# --- ReviewKD ----------------------------------------------------------------------------------------------------


def test_hcl_loss_of_constant_maps_is_their_squared_difference():
    """Every pooled level of a constant map is the same constant, so the weighted mean is (a − b)² per pair."""
    with jax.enable_x64(True):
        pairs = [((2, 8, 8, 3), 1.5, -0.5), ((2, 4, 4, 3), 2.0, 2.5), ((2, 1, 1, 6), 0.0, 3.0), ((2, 5), 1.0, 0.0)]
        s = [jnp.full(shape, a) for shape, a, _ in pairs]
        t = [jnp.full(shape, b) for shape, _, b in pairs]
        assert float(hcl_loss(s, t)) == pytest.approx(sum((a - b) ** 2 for _, a, b in pairs), rel=1e-12)


def test_hcl_loss_matches_a_direct_rederivation():
    """8×8: levels 4, 2, 1 with weights 1, 1/2, 1/4, 1/8 (sum 1.875); 4×4: level 4 skipped, 2 and 1 get 1/2 and
    1/4 (sum 1.75); 1×1: the MSE alone; a 1-D map of 8 pools to 4, 2, 1."""
    def mse(a, b):
        return np.mean((a - b) ** 2)

    def pool2(f, l):
        n, h, w, c = f.shape
        return f.reshape(n, l, h // l, l, w // l, c).mean(axis=(2, 4))

    f8s, f8t, f4s, f4t, f1s, f1t = (normal(2, 8, 8, 3), normal(2, 8, 8, 3), normal(2, 4, 4, 5), normal(2, 4, 4, 5),
                                    normal(2, 1, 1, 6), normal(2, 1, 1, 6))
    g8s, g8t = normal(2, 8, 4), normal(2, 8, 4)
    want = ((mse(f8s, f8t) + mse(pool2(f8s, 4), pool2(f8t, 4)) / 2 + mse(pool2(f8s, 2), pool2(f8t, 2)) / 4
             + mse(pool2(f8s, 1), pool2(f8t, 1)) / 8) / 1.875
            + (mse(f4s, f4t) + mse(pool2(f4s, 2), pool2(f4t, 2)) / 2 + mse(pool2(f4s, 1), pool2(f4t, 1)) / 4) / 1.75
            + mse(f1s, f1t))
    pool1 = [g.reshape(2, l, 8 // l, 4).mean(2) for g in (g8s, g8t) for l in (4, 2, 1)]
    want += (mse(g8s, g8t) + mse(pool1[0], pool1[3]) / 2 + mse(pool1[1], pool1[4]) / 4
             + mse(pool1[2], pool1[5]) / 8) / 1.875
    with jax.enable_x64(True):
        got = hcl_loss([jnp.asarray(f) for f in (f8s, f4s, f1s, g8s)], [jnp.asarray(f) for f in (f8t, f4t, f1t, g8t)])
        assert float(got) == pytest.approx(want, rel=1e-10)


def test_resize_nearest_follows_pytorch():
    x = jnp.arange(3.0).reshape(1, 3, 1)
    np.testing.assert_array_equal(resize_nearest(x, (5,))[0, :, 0], [0, 0, 1, 1, 2])  # floor(o · 3 / 5)
    np.testing.assert_array_equal(resize_nearest(x[:, :2], (4,))[0, :, 0], [0, 0, 1, 1])
    np.testing.assert_array_equal(resize_nearest(jnp.ones((1, 1, 1, 2)), (3, 3)), jnp.ones((1, 3, 3, 2)))


def conv_same(x, w):
    """3×3 stride-1 convolution with zero padding 1, by loops: (B, H, W, C) × (3, 3, C, O)."""
    b, h, wd, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((b, h, wd, w.shape[-1]))
    for di in range(3):
        for dj in range(3):
            out += np.einsum("bijc,co->bijo", xp[:, di:di + h, dj:dj + wd], w[di, dj])
    return out


def test_abf_forward_matches_a_direct_rederivation():
    """Fusing a 4×4 level with a 2×2 residual, eval mode with BN statistics (0, 1): BN(x) = x / sqrt(1 + 1e-5)."""
    abf = ABF(5, 6, 7, fuse=True, rngs=nnx.Rngs(0))
    abf.eval()
    x, residual = normal(2, 4, 4, 5), normal(2, 2, 2, 6)
    out, mid = abf(jnp.asarray(x, jnp.float32), jnp.asarray(residual, jnp.float32), (4, 4))
    k = 1 / math.sqrt(1 + 1e-5)
    w1, w2 = np.asarray(abf.conv1.kernel.value, np.float64), np.asarray(abf.conv2.kernel.value, np.float64)
    wa, ba = np.asarray(abf.att_conv.kernel.value, np.float64), np.asarray(abf.att_conv.bias.value, np.float64)
    m = k * np.einsum("bijc,co->bijo", x, w1[0, 0])
    up = residual.repeat(2, axis=1).repeat(2, axis=2)  # nearest ×2
    z = 1 / (1 + np.exp(-(np.einsum("bijc,co->bijo", np.concatenate([m, up], -1), wa[0, 0]) + ba)))
    m = m * z[..., :1] + up * z[..., 1:]
    np.testing.assert_allclose(mid, m, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out, k * conv_same(m, w2), rtol=1e-4, atol=1e-5)
    # PyTorch's kaiming_uniform_(a=1) bound sqrt(3 / fan_in) for conv1 (fan_in 5)
    assert float(jnp.abs(abf.conv1.kernel.value).max()) <= math.sqrt(3 / 5)


@pytest.mark.parametrize("student, teacher", [
    ([(8, 8, 16), (4, 4, 32), (2, 2, 64), (64,)], [(8, 8, 32), (4, 4, 64), (2, 2, 128), (128,)]),
    ([(20, 8), (10, 8), (80,)], [(20, 16), (10, 16), (160,)]),  # 1-D CNNs on mnist1d
])
def test_review_fusion_gives_the_teachers_shapes_and_reviews_top_down(student, teacher):
    fusion = ReviewFusion(student, teacher, rngs=nnx.Rngs(0))
    assert fusion.abfs[-1].att_conv is None and all(a.att_conv is not None for a in fusion.abfs[:-1])
    assert fusion.abfs[0].conv1.out_features == min(512, student[-1][-1])
    feats = [jax.random.normal(jax.random.key(i), (2, *s)) for i, s in enumerate(student)]
    graphdef, state = nnx.split(fusion)

    @jax.jit
    def outputs_and_gradients(feats):
        def out(i, j, f):
            return jnp.sum(nnx.merge(graphdef, state, copy=True)([*feats[:j], f, *feats[j + 1:]])[i])

        n = len(feats) - 1
        return (nnx.merge(graphdef, state, copy=True)(feats), jax.grad(lambda f: out(0, n, f))(feats[n]),
                jax.grad(lambda f: out(n, 0, f))(feats[0]))

    outs, deep_to_shallow, shallow_to_deep = outputs_and_gradients(feats)
    assert [o.shape[1:] for o in outs] == [(*(1,) * (len(student[0]) - 1), *t) if len(t) == 1 else t
                                          for t in teacher]
    # the shallowest output sees the deepest feature (the review path); the deepest does not see the shallowest
    assert float(jnp.abs(deep_to_shallow).max()) > 0
    assert float(jnp.abs(shallow_to_deep).max()) == 0


# --- CRD ---------------------------------------------------------------------------------------------------------


def unit(angles):
    return np.stack([np.cos(angles), np.sin(angles)], axis=-1)


def test_crd_nce_loss_on_a_bank_with_known_similarities():
    """2-D unit vectors: embedding b at angle φ_b, bank row r at angle θ_r, similarity cos(θ_r − φ_b)."""
    n_data, temperature = 6, 0.5
    theta, phi = np.linspace(0, 2.5, n_data), np.array([0.3, 1.9])
    contrast_idx = np.array([[4, 0, 1, 5], [1, 2, 3, 4]])  # column 0 the positive
    cos = np.cos(theta[contrast_idx] - phi[:, None])
    with jax.enable_x64(True):
        scores = crd_scores(jnp.asarray(unit(phi)), jnp.asarray(unit(theta)), jnp.asarray(contrast_idx), temperature)
        np.testing.assert_allclose(scores, np.exp(cos / temperature), rtol=1e-12)
        z = float(crd_normalizer(scores, n_data))
        assert z == pytest.approx(np.exp(cos / temperature).mean() * n_data, rel=1e-12)
        p, noise, eps = np.exp(cos / temperature) / z, 3 / n_data, 1e-7
        want = -(np.log(p[:, 0] / (p[:, 0] + noise + eps)).sum() + np.log(noise / (p[:, 1:] + noise + eps)).sum()) / 2
        assert float(crd_nce_loss(scores, z, n_data)) == pytest.approx(want, rel=1e-10)
        # a more similar positive lowers the loss, a more similar negative raises it
        closer = scores.at[:, 0].multiply(2.0)
        assert float(crd_nce_loss(closer, z, n_data)) < float(crd_nce_loss(scores, z, n_data))
        assert float(crd_nce_loss(scores.at[:, 1].multiply(2.0), z, n_data)) > float(crd_nce_loss(scores, z, n_data))


def test_crd_loss_is_two_sided_and_fixes_the_normalizers_once():
    n_data, t = 8, 0.07
    bank_s = jnp.asarray(unit(np.linspace(0, 3, n_data)))
    bank_t = jnp.asarray(unit(np.linspace(0.5, 4, n_data)))
    emb_s, emb_t = jnp.asarray(unit(np.array([0.1, 2.0, 1.0]))), jnp.asarray(unit(np.array([0.7, 1.5, 2.9])))
    idx = jnp.array([[0, 3, 5], [4, 1, 7], [2, 6, 0]])
    loss, z = crd_loss(emb_s, emb_t, bank_s, bank_t, idx, jnp.array([-1.0, -1.0]), temperature=t)
    scores_s, scores_t = crd_scores(emb_s, bank_t, idx, t), crd_scores(emb_t, bank_s, idx, t)  # cross-scored
    np.testing.assert_allclose(z, [crd_normalizer(scores_s, n_data), crd_normalizer(scores_t, n_data)], rtol=1e-6)
    want = crd_nce_loss(scores_s, z[0], n_data) + crd_nce_loss(scores_t, z[1], n_data)
    assert float(loss) == pytest.approx(float(want), rel=1e-6)
    again, z2 = crd_loss(emb_t, emb_s, bank_s, bank_t, idx, z, temperature=t)  # other scores: Z is kept
    np.testing.assert_array_equal(z2, z)
    _, z3 = crd_loss(emb_s, emb_t, bank_s, bank_t, idx, jnp.array([5.0, -1.0]), temperature=t)
    assert float(z3[0]) == 5.0 and float(z3[1]) == pytest.approx(float(z[1]), rel=1e-6)
    # gradients reach both embeddings (both heads train) but not the banks
    gs, gt, gbs, gbt = jax.grad(lambda *a: crd_loss(*a, idx, z, temperature=t)[0], argnums=(0, 1, 2, 3))(
        emb_s, emb_t, bank_s, bank_t)
    assert float(jnp.abs(gs).max()) > 0 and float(jnp.abs(gt).max()) > 0
    assert not jnp.any(gbs) and not jnp.any(gbt)


def test_crd_bank_update_moves_only_the_batch_rows_by_the_momentum_rule():
    bank = jax.random.uniform(jax.random.key(0), (10, 4), minval=-0.8, maxval=0.8)
    emb = Embed(6, 4, rngs=nnx.Rngs(0))(jax.random.normal(jax.random.key(1), (3, 6)))
    np.testing.assert_allclose(jnp.linalg.norm(emb, axis=1), 1.0, rtol=1e-6)
    indices = jnp.array([7, 2, 5])
    new = crd_bank_update(bank, indices, emb, momentum=0.5)
    rows = 0.5 * np.asarray(bank)[[7, 2, 5]] + 0.5 * np.asarray(emb)
    np.testing.assert_allclose(new[indices], rows / np.linalg.norm(rows, axis=1, keepdims=True), rtol=1e-6)
    others = np.setdiff1d(np.arange(10), indices)
    np.testing.assert_array_equal(new[others], bank[others])
    np.testing.assert_allclose(jnp.linalg.norm(new[indices], axis=1), 1.0, rtol=1e-6)


def test_crd_contrast_indices_draw_other_class_negatives_uniformly_without_replacement():
    all_labels = jnp.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
    indices = jnp.array([0, 4, 9])
    labels = all_labels[indices]
    draw = jax.jit(crd_contrast_indices, static_argnums=4)
    counts = np.zeros((3, 10))
    trials = 400
    for i, key in enumerate(jax.random.split(jax.random.key(0), trials)):
        idx = np.asarray(draw(key, indices, labels, all_labels, 5))
        assert idx.shape == (3, 6) and np.array_equal(idx[:, 0], indices)
        for row, label in zip(idx[:, 1:], np.asarray(labels)):
            assert len(set(row)) == 5 and not np.any(np.asarray(all_labels)[row] == label)
        for b in range(3):
            counts[b, idx[b, 1:]] += 1
    # label 0 has 7 eligible rows (each drawn with probability 5/7), label 2 has 6 (5/6)
    for b, (pool, p) in enumerate([(7, 5 / 7), (7, 5 / 7), (6, 5 / 6)]):
        eligible = np.asarray(all_labels) != int(labels[b])
        assert eligible.sum() == pool
        sd = math.sqrt(trials * p * (1 - p))
        assert np.all(np.abs(counts[b, eligible] - trials * p) < 5 * sd), counts[b]
