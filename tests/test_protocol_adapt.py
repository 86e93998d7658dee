"""EV3 assess/adapt: paired tests, prioritized decisions, picking on non-differentiable metrics, safety."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from test_protocol_explore import FAMILIES, LOSS_HP, D, mlp_apply, mlp_init

from ev3.protocol import (
    METRICS,
    SGD,
    Metric,
    adapt,
    concat,
    explore,
    hparams,
    init_family,
    init_state,
    paired_test,
    pick,
    prioritized_decision,
    register,
    score,
    score_one,
    stack,
)

OBJECTIVES = [("accuracy", True, 0.0), ("nll", False, 0.0)]


def normal(rng, *shape):
    return jnp.asarray(rng.normal(size=shape), jnp.float32)


def teacher_task(seed, n):
    """Inputs labelled by a random teacher MLP of the student's architecture: ``(teacher, x, y, teacher_logits)``."""
    teacher = mlp_init(seed)
    x = normal(np.random.default_rng([seed, 1]), n, D)
    logits = mlp_apply(teacher, x)
    return teacher, x, jnp.argmax(logits, -1), logits


def perturbed(params, seed, scale=0.1):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: p + scale * normal(rng, *p.shape), params)


def train_batches(teacher, seed, steps=3, batch=8):
    x = normal(np.random.default_rng(seed), steps, batch, D)
    logits = mlp_apply(teacher, x)
    return (x, jnp.argmax(logits, -1)), logits


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    assert all(np.array_equal(x, y, equal_nan=True) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_paired_test_detects_gap_that_unpaired_test_misses():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, 200)  # large between-sample spread
    b = a + 0.05 + rng.normal(0.0, 0.05, 200)  # small consistent gain on the same samples
    r = paired_test(b, a, higher_is_better=True)
    ref = stats.ttest_rel(b, a, alternative="greater")
    np.testing.assert_allclose([r.t_stat, r.p_value], [ref.statistic, ref.pvalue], rtol=1e-10)
    assert r.p_value < 1e-6 and r.lower > 0
    assert stats.ttest_ind(b, a, alternative="greater").pvalue > 0.1
    flipped = paired_test(b, a, higher_is_better=False)  # as a loss, b is worse
    assert flipped.mean_diff == pytest.approx(-r.mean_diff) and flipped.upper < 0 and flipped.p_value > 0.99


def test_prioritized_decision_rule_and_margins():
    rng = np.random.default_rng(1)
    n = 2000
    inc = {"accuracy": rng.binomial(1, 0.7, n).astype(float), "nll": rng.gamma(2.0, 0.5, n)}
    up = inc["accuracy"] + (rng.random(n) < 0.1) * (1 - inc["accuracy"])  # fixes ~10% of the errors
    down = inc["accuracy"] * (rng.random(n) > 0.1)  # breaks ~10% of the hits
    better_nll = inc["nll"] - 0.1 + rng.normal(0, 0.05, n)

    d = prioritized_decision({"accuracy": up, "nll": inc["nll"]}, inc, OBJECTIVES)
    assert d.accepted and d.deciding_objective == "accuracy" and d.details["accuracy"]["outcome"] == "better"
    d = prioritized_decision({"accuracy": down, "nll": better_nll}, inc, OBJECTIVES)
    assert not d.accepted and d.deciding_objective == "accuracy" and d.details["nll"]["outcome"] == "better"

    # objective 1: not significantly different, lower bound ~ -0.023; objective 2 significantly better
    noise = rng.normal(0, 0.5, n)
    s1_inc = rng.normal(0, 1, n)
    cand = {"s1": s1_inc + noise - noise.mean() - 0.005, "nll": better_nll}
    incumbent = {"s1": s1_inc, "nll": inc["nll"]}
    lower = paired_test(cand["s1"], s1_inc, higher_is_better=True).lower
    assert -0.03 < lower < 0 < paired_test(cand["s1"], s1_inc, higher_is_better=True).upper
    decide = lambda margin: prioritized_decision(cand, incumbent, [("s1", True, margin), ("nll", False, 0.0)])  # noqa: E731
    within, outside = decide(-lower + 1e-3), decide(-lower - 1e-3)
    assert within.accepted and within.deciding_objective == "nll"
    assert not outside.accepted and outside.deciding_objective == "s1" and outside.details["s1"]["outcome"] == "inferior"
    assert not decide(0.0).accepted
    # significantly worse on a higher-priority objective is a rejection even inside a generous margin
    worse = prioritized_decision({"s1": s1_inc - 0.05 + noise, "nll": better_nll}, incumbent, [("s1", True, 1.0), ("nll", False, 0.0)])
    assert not worse.accepted and worse.details["s1"]["outcome"] == "worse"
    # a diverged candidate (non-finite scores) is rejected, never waved through as a tie
    diverged = prioritized_decision({"accuracy": up, "nll": np.full(n, np.nan)}, inc, [("nll", False, 0.5)] + OBJECTIVES)
    assert not diverged.accepted and diverged.details["nll"]["outcome"] == "invalid"


def test_adapt_accepts_clearly_better_and_rejects_worse():
    teacher, x, y, t = teacher_task(0, 400)
    rand1, rand2 = mlp_init(1), mlp_init(2)

    state = init_state(rand1)
    cands = stack([rand2, teacher, perturbed(teacher, 3)])
    cur = score_one(mlp_apply, rand1, x, y, t)
    state, log = adapt(state, cands, score(mlp_apply, cands, x, y, t), cur, cur, objectives=OBJECTIVES)
    assert log["candidate"] == 1 and log["accepted"] and log["stable_moved"] and state.stall_count == 0
    assert_trees_equal(state.params, teacher)
    assert_trees_equal(state.stable_params, teacher)

    cur = score_one(mlp_apply, teacher, x, y, t)
    worse = stack([rand1, rand2])
    state, log = adapt(state, worse, score(mlp_apply, worse, x, y, t), cur, cur, objectives=OBJECTIVES)
    assert not log["accepted"] and not log["stable_moved"] and log["deciding_objective"] == "accuracy"
    assert (state.iteration, state.stall_count) == (2, 1)
    assert_trees_equal(state.params, teacher)


def test_non_differentiable_metric_drives_pick():
    n, c = 100, 10
    x, y = jnp.eye(n), jnp.arange(n) % c
    apply = lambda p, x: x @ p  # noqa: E731  (row i of p are the logits of sample i)
    onehot = jax.nn.one_hot(y, c)
    unsure_right = 0.1 * onehot  # accuracy 1.0, NLL ~ 2.2
    wrong = jnp.arange(n) < 20
    sure_mostly_right = jnp.where(wrong[:, None], jax.nn.one_hot((y + 1) % c, c), 10.0 * onehot)  # acc 0.8, NLL ~ 0.5
    cands = jnp.stack([unsure_right, sure_mostly_right, jnp.zeros((n, c))])
    brier = Metric("brier", lambda logits, y, t: jnp.sum((jax.nn.softmax(logits) - jax.nn.one_hot(y, c)) ** 2, -1), False, True)
    register(brier)
    try:
        scores = score(apply, cands, x, y, cands[0])
    finally:
        METRICS.pop("brier")
    assert scores["accuracy"].shape == (3, n) and not METRICS["accuracy"].differentiable
    acc, nll = scores["accuracy"].mean(1), scores["nll"].mean(1)
    assert acc[0] > acc[1] and nll[0] > nll[1]  # the two objectives disagree
    assert pick(scores, "accuracy") == 0
    assert pick(scores, "nll") == 1
    assert pick({"nll": scores["nll"].at[1].set(jnp.nan)}, "nll") == 0  # non-finite never wins
    assert pick(scores, brier) == 1
    assert pick(scores, "accuracy", higher_is_better=False) == 2


def test_absurd_learning_rates_are_rejected_and_stable_is_untouched():
    teacher, x, y, t = teacher_task(0, 400)
    current = perturbed(teacher, 4)
    cur = score_one(mlp_apply, current, x, y, t)
    assert 0.6 < cur["accuracy"].mean() < 0.99
    state = init_state(current)
    stable_before = jax.tree.map(np.array, state.stable_params)

    opt_hp = hparams(learning_rate=[1e3, 3e3, 1e4], momentum=[0.9, 0.0, 0.5])
    cands, _, _ = explore(mlp_apply, SGD, current, init_family(SGD, current, opt_hp), LOSS_HP, opt_hp,
                          *train_batches(teacher, 5))
    cand_scores = score(mlp_apply, cands, x, y, t)
    gated, log = adapt(state, cands, cand_scores, cur, cur, objectives=OBJECTIVES)
    assert not log["accepted"] and not log["stable_moved"]
    acc = log["objectives"]["accuracy"]
    assert acc["candidate_mean"] < acc["current_mean"] - 0.1
    assert_trees_equal(gated.params, current)
    assert_trees_equal(gated.stable_params, stable_before)



def run_protocol(seed, iterations=2):
    """Explore (two families) -> assess -> adapt, all from one seed; returns the decision logs."""
    teacher, x, y, t = teacher_task(seed, 400)
    current = perturbed(teacher, [seed, 2])
    state = init_state(current, {f.name: init_family(f, current, hp) for f, hp in FAMILIES})
    logs = []
    for i in range(iterations):
        batch = train_batches(teacher, [seed, 10 + i])
        outs = {f.name: explore(mlp_apply, f, state.params, state.opt_states[f.name], LOSS_HP, hp, *batch) for f, hp in FAMILIES}
        cands = concat([c for c, _, _ in outs.values()])
        state = state._replace(opt_states={name: s for name, (_, s, _) in outs.items()})
        cur = score_one(mlp_apply, state.params, x, y, t)
        stable = score_one(mlp_apply, state.stable_params, x, y, t)
        state, log = adapt(state, cands, score(mlp_apply, cands, x, y, t), cur, stable, objectives=OBJECTIVES)
        logs.append(log)
    return logs


def test_same_seed_gives_identical_decision_logs():
    first, again, other = (json.dumps(run_protocol(s)) for s in (0, 0, 1))
    assert first == again
    assert first != other
    assert [log["iteration"] for log in json.loads(first)] == [0, 1]
