"""EV3 explore: the vmapped/scanned/jitted candidate training equals a plain Python loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ev3.losses import cross_entropy, kd_loss
from ev3.protocol import ADAM, SGD, candidate_loss, explore, explore_sequential, hparams, init_family

D, H, C = 6, 8, 4


def mlp_init(seed):
    """Tiny tanh MLP ``D -> H -> C``; numpy RNG keeps tests free of threefry compiles."""
    rng = np.random.default_rng(seed)
    f32 = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
    return {"w1": f32(D, H) / np.sqrt(D), "b1": jnp.zeros(H), "w2": f32(H, C) / np.sqrt(H), "b2": jnp.zeros(C)}


def mlp_apply(params, x):
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def batches(seed, steps=3, batch=8):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(steps, batch, D)), jnp.float32)
    teacher = 2.0 * x @ jnp.asarray(rng.normal(size=(D, C)), jnp.float32)
    return (x, jnp.argmax(teacher, -1)), teacher


LOSS_HP = hparams(w=[0.0, 0.5, 0.9], t_kd=[1.0, 4.0, 2.0], t_ce=[1.0, 0.5, 2.0])
FAMILIES = [
    (SGD, hparams(learning_rate=[0.1, 0.3, 0.05], momentum=[0.9, 0.0, 0.5])),
    (ADAM, hparams(learning_rate=[1e-2, 3e-2, 3e-3])),
]


def assert_trees_close(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5)


def test_candidate_loss_reduces_to_ce_and_kd():
    s, t = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, C)), jnp.float32)
    y = jnp.arange(5) % C
    loss = jax.jit(lambda w, t_kd, t_ce: candidate_loss(s, t, y, hparams(w=w, t_kd=t_kd, t_ce=t_ce)))
    np.testing.assert_allclose(loss(0.0, 3.0, 1.0), cross_entropy(s, y), rtol=1e-6)
    np.testing.assert_allclose(loss(0.0, 3.0, 0.5), cross_entropy(2 * s, y), rtol=1e-6)
    np.testing.assert_allclose(loss(1.0, 3.0, 1.0), kd_loss(s, t, 3.0), rtol=1e-6)
    np.testing.assert_allclose(loss(0.25, 3.0, 0.5), 0.25 * kd_loss(s, t, 3.0) + 0.75 * cross_entropy(2 * s, y), rtol=1e-6)


@pytest.mark.parametrize("fam,opt_hp", FAMILIES, ids=lambda v: getattr(v, "name", ""))
def test_vmapped_explore_equals_sequential_over_two_calls(fam, opt_hp):
    params = mlp_init(1)
    data = [batches(i) for i in (2, 3)]
    fast = slow = init_family(fam, params, opt_hp)
    fresh = fast
    for (xy, teacher) in data:
        cand_f, fast, loss_f = explore(mlp_apply, fam, params, fast, LOSS_HP, opt_hp, xy, teacher)
        cand_s, slow, loss_s = explore_sequential(mlp_apply, fam, params, slow, LOSS_HP, opt_hp, xy, teacher)
        assert loss_f.shape == (3,) and cand_f["w1"].shape == (3, D, H)
        assert_trees_close(cand_f, cand_s)
        assert_trees_close(fast, slow)
        np.testing.assert_allclose(loss_f, loss_s, rtol=1e-5, atol=1e-5)
    # the test has teeth: candidates differ, and the carried optimizer state matters
    assert not np.allclose(cand_f["w2"][0], cand_f["w2"][1])
    assert np.all(np.asarray(fast.count) == 6)
    restarted, _, _ = explore(mlp_apply, fam, params, fresh, LOSS_HP, opt_hp, *data[1])
    assert not np.allclose(restarted["w2"], cand_f["w2"], atol=1e-6)


def test_reverse_candidate_loss_is_the_reference_kd_loss():
    """``reverse = 1``: T·KL(p_s^T ‖ p_t^T) whatever w and t_ce (closed form: s = [0, 0], t = [ln 3, 0] gives
    ½ ln(4/3) at T = 1); ``reverse = 0``: the mixture."""
    from ev3.losses import reverse_kd_loss

    s, t = jnp.zeros((1, 2)), jnp.array([[np.log(3.0), 0.0]])
    y = jnp.array([0])
    hp = lambda r, w=0.3, t_ce=0.5: hparams(w=w, t_kd=1.0, t_ce=t_ce, reverse=r)  # noqa: E731
    np.testing.assert_allclose(candidate_loss(s, t, y, hp(1.0)), 0.5 * np.log(4 / 3), rtol=1e-6)
    np.testing.assert_allclose(candidate_loss(s, t, y, hp(1.0, w=0.9, t_ce=2.0)), 0.5 * np.log(4 / 3), rtol=1e-6)
    s2, t2 = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, C)), jnp.float32)
    y2 = jnp.arange(5) % C
    np.testing.assert_allclose(candidate_loss(s2, t2, y2, hparams(w=0.0, t_kd=2.0, t_ce=1.0, reverse=1.0)),
                               reverse_kd_loss(s2, t2, 2.0), rtol=1e-6)
    np.testing.assert_allclose(candidate_loss(s2, t2, y2, hparams(w=0.3, t_kd=2.0, t_ce=0.5, reverse=0.0)),
                               candidate_loss(s2, t2, y2, hparams(w=0.3, t_kd=2.0, t_ce=0.5)), rtol=1e-6)


def test_per_candidate_batches_and_update_scale_equal_sequential():
    """Each candidate trains on its own batches with its own per-step update scale (a schedule), as the Python
    loop does; a scale of 0 leaves the parameters where they were, and candidates on other batches differ."""
    from ev3.protocol import ADAMW

    params = mlp_init(1)
    data = [batches(i) for i in (4, 5, 6)]
    xy = tuple(jnp.stack([d[0][j] for d in data]) for j in range(2))
    teacher = jnp.stack([d[1] for d in data])
    opt_hp = hparams(learning_rate=[1e-2, 1e-2, 1e-2], weight_decay=[1e-4, 1e-2, 0.0])
    scale = jnp.asarray(np.random.default_rng(2).uniform(0.2, 1.0, size=(3, 3)), jnp.float32).at[2].set(0.0)
    states = init_family(ADAMW, params, opt_hp)
    fast = explore(mlp_apply, ADAMW, params, states, LOSS_HP, opt_hp, xy, teacher, scale, per_candidate=True)
    slow = explore_sequential(mlp_apply, ADAMW, params, states, LOSS_HP, opt_hp, xy, teacher, scale, per_candidate=True)
    assert_trees_close(fast, slow)
    np.testing.assert_allclose(fast[0]["w1"][2], params["w1"], rtol=0, atol=0)  # scale 0: no update at all
    shared = explore(mlp_apply, ADAMW, params, states, LOSS_HP, opt_hp, (xy[0][0], xy[1][0]), teacher[0], scale)
    np.testing.assert_allclose(shared[0]["w1"][0], fast[0]["w1"][0], rtol=1e-5, atol=1e-6)  # candidate 0: batches 0
    assert not np.allclose(shared[0]["w1"][1], fast[0]["w1"][1], atol=1e-6)  # candidate 1: its own batches


def test_cosine_scale_decays_to_zero_over_total_steps_and_restarts():
    from ev3.methods.ev3 import cosine_scale

    s = cosine_scale(np.array([True, False]), 0, 9, 8)
    np.testing.assert_allclose(s[0], 0.5 * (1 + np.cos(np.pi * np.minimum(np.arange(9), 8) / 8)), rtol=1e-6)
    assert s[0, 0] == 1.0 and s[0, 4] == pytest.approx(0.5) and s[0, 8] == 0.0 and np.all(s[1] == 1.0)
    np.testing.assert_allclose(cosine_scale(np.array([True]), 4, 2, 8)[0], s[0, 4:6])
