"""Tests of ev3.stats against closed forms and hand-worked examples."""

import math

import numpy as np
import pytest
from scipy import stats as st

from ev3 import stats


def _pairs(b01, b10, n11, n00, seed=0):
    """Per-sample correctness of A and B with the given 2x2 paired table, in shuffled sample order."""
    a = np.array([0] * b01 + [1] * b10 + [1] * n11 + [0] * n00)
    b = np.array([1] * b01 + [0] * b10 + [1] * n11 + [0] * n00)
    perm = np.random.default_rng(seed).permutation(a.size)
    return a[perm], b[perm]


# ---- mean_ci ---------------------------------------------------------------------------------------------


def test_t_interval_matches_closed_form():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]  # mean 3, s² = 2.5, n = 5
    t_975_4 = 2.7764451051977987  # t_{0.975, 4} from tables
    half = t_975_4 * math.sqrt(2.5) / math.sqrt(5)
    ci = stats.mean_ci(x)
    assert ci.n == 5 and ci.mean == pytest.approx(3.0)
    assert ci.low == pytest.approx(3.0 - half, rel=1e-12)
    assert ci.high == pytest.approx(3.0 + half, rel=1e-12)
    wider = stats.mean_ci(x, confidence=0.99)
    assert wider.low < ci.low and wider.high > ci.high


def test_mean_ci_single_value_has_no_interval():
    ci = stats.mean_ci([0.9])
    assert ci.mean == 0.9 and ci.n == 1 and math.isnan(ci.low) and math.isnan(ci.high)
    boot = stats.mean_ci([0.9], method="bootstrap")
    assert math.isnan(boot.low) and math.isnan(boot.high)
    with pytest.raises(ValueError):
        stats.mean_ci([1.0, 2.0], method="wald")


def test_bootstrap_ci_contains_mean_and_is_deterministic():
    x = np.random.default_rng(0).normal(0.83, 0.03, size=10)
    c1 = stats.mean_ci(x, method="bootstrap", seed=3, n_resamples=400)
    c2 = stats.mean_ci(x, method="bootstrap", seed=3, n_resamples=400)
    assert c1 == c2
    assert stats.mean_ci(x, method="bootstrap", seed=4, n_resamples=400) != c1  # the seed is what fixes it
    assert c1.low < c1.mean < c1.high
    assert c1.mean == pytest.approx(x.mean())
    assert x.min() <= c1.low and c1.high <= x.max()


# ---- paired_seed_test ------------------------------------------------------------------------------------

BASE = np.array([0.70, 0.80, 0.90, 0.75, 0.85])  # seed-to-seed spread much larger than the gain
GAIN = np.array([0.011, 0.009, 0.012, 0.010, 0.008])  # mean 0.01, sd sqrt(2.5e-6)


def test_paired_test_equals_ttest_rel_and_beats_ttest_ind():
    a, b = BASE + GAIN, BASE
    res = stats.paired_seed_test(a, b)
    ref = st.ttest_rel(a, b)
    assert res.n == 5 and res.significant_allowed
    assert res.t_stat == pytest.approx(ref.statistic, rel=1e-12)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    assert res.mean_diff == pytest.approx(0.01)
    assert res.p_value < 0.001 and 0.0 < res.ci_low < 0.01 < res.ci_high
    assert st.ttest_ind(a, b).pvalue > 0.5  # the unpaired test misses the consistent per-seed gain


def test_cohens_dz_formula():
    res = stats.paired_seed_test(BASE + GAIN, BASE)
    # d = GAIN: mean 0.01, sum of squared deviations 1e-5, sd = sqrt(1e-5 / 4) -> d_z = 0.01 / sqrt(2.5e-6)
    assert res.cohens_dz == pytest.approx(2 * math.sqrt(10), rel=1e-6)
    assert res.t_stat == pytest.approx(res.cohens_dz * math.sqrt(5), rel=1e-9)


def test_paired_test_aligns_by_seed_and_flags_few_seeds():
    a = {0: 0.91, 1: 0.88, 2: 0.93}
    b = {2: 0.90, 0: 0.90, 1: 0.86}  # different insertion order
    assert stats.paired_seed_test(a, b) == stats.paired_seed_test([0.91, 0.88, 0.93], [0.90, 0.86, 0.90])
    with pytest.raises(ValueError):
        stats.paired_seed_test({0: 0.9, 1: 0.8}, {0: 0.9, 2: 0.8})
    two = stats.paired_seed_test([0.91, 0.88], [0.90, 0.86])
    assert not two.significant_allowed and np.isfinite(two.p_value)
    one = stats.paired_seed_test([0.91], [0.90])
    assert not one.significant_allowed and math.isnan(one.p_value) and math.isnan(one.cohens_dz)


# ---- McNemar / stratified CMH ----------------------------------------------------------------------------


def test_mcnemar_exact_on_constructed_table():
    a, b = _pairs(b01=2, b10=9, n11=20, n00=5)
    res = stats.mcnemar_exact(a, b)
    assert (res.b01, res.b10) == (2, 9)
    # two-sided exact: 2 * P(X >= 9), X ~ Bin(11, 1/2) = 2 * (C(11,9) + C(11,10) + C(11,11)) / 2^11
    assert res.p_value == pytest.approx(2 * (55 + 11 + 1) / 2**11, rel=1e-12)
    assert res.p_value == pytest.approx(st.binomtest(9, 11, 0.5).pvalue, rel=1e-12)
    assert stats.mcnemar_exact([1, 0, 1], [1, 0, 1]) == (0, 0, 1.0)
    with pytest.raises(ValueError):
        stats.mcnemar_exact([1, 2], [1, 0])


def test_stratified_cmh_matches_closed_form():
    tables = [(3, 10, 50, 7), (5, 12, 40, 13), (4, 9, 55, 2)]  # (b01, b10, n11, n00) per seed
    pairs = [_pairs(*t, seed=i) for i, t in enumerate(tables)]
    res = stats.per_sample_paired_test([p[0] for p in pairs], [p[1] for p in pairs])
    num = (7 + 7 + 5) ** 2
    den = 13 + 17 + 13
    chi2 = num / den
    assert res["b01"] == [3, 5, 4] and res["b10"] == [10, 12, 9]
    assert res["cmh_stat"] == pytest.approx(chi2, rel=1e-12)
    assert res["p_value"] == pytest.approx(math.erfc(math.sqrt(chi2 / 2)), rel=1e-9)  # chi2(1) survival
    assert res["per_seed_p"] == [stats.mcnemar_exact(*p).p_value for p in pairs]
    fisher = -2 * sum(math.log(p) for p in res["per_seed_p"])
    assert res["fisher_stat"] == pytest.approx(fisher, rel=1e-12)
    assert res["fisher_p"] == pytest.approx(st.chi2.sf(fisher, 6), rel=1e-9)
    assert res["mean_acc_diff"] == pytest.approx(np.mean([7 / 70, 7 / 70, 5 / 70]), rel=1e-12)
    assert res["n_seeds"] == 3 and res["significant_allowed"]


def test_pooling_seeds_as_independent_misleads_stratified_is_returned():
    # Each seed: A and B agree on 986/1000 samples; A fixes 12 that B gets wrong, B fixes 2.
    pairs = [_pairs(b01=2, b10=12, n11=700, n00=286, seed=s) for s in range(3)]
    res = stats.per_sample_paired_test({s: p[0] for s, p in enumerate(pairs)}, {s: p[1] for s, p in enumerate(pairs)})
    chi2 = 30**2 / 42
    assert res["p_value"] == pytest.approx(math.erfc(math.sqrt(chi2 / 2)), rel=1e-9)
    assert res["p_value"] < 1e-4
    # Pooling all 3000 per-seed outcomes as independent draws (unpaired 2x2 of correct counts) sees nothing.
    correct_a, correct_b = sum(int(p[0].sum()) for p in pairs), sum(int(p[1].sum()) for p in pairs)
    pooled_p = st.fisher_exact([[correct_a, 3000 - correct_a], [correct_b, 3000 - correct_b]]).pvalue
    assert pooled_p > 0.3


def test_opposite_strata_cancel_in_cmh():
    # Simpson-like strata: seed 0 strongly favours A, seed 1 equally strongly favours B.
    tables = [(0, 15, 80, 5), (15, 0, 80, 5), (1, 1, 90, 8)]
    pairs = [_pairs(*t, seed=i) for i, t in enumerate(tables)]
    res = stats.per_sample_paired_test([p[0] for p in pairs], [p[1] for p in pairs])
    assert res["per_seed_p"][0] < 1e-3 and res["per_seed_p"][1] < 1e-3
    assert res["fisher_p"] < 1e-4  # direction-blind omnibus: "some seed differs"
    assert res["cmh_stat"] == 0.0 and res["p_value"] == pytest.approx(1.0)  # no net A-vs-B effect
    assert res["mean_acc_diff"] == pytest.approx(0.0)


def test_per_sample_test_without_discordant_pairs_and_mismatched_seeds():
    same = [np.array([1, 0, 1, 1])] * 3
    res = stats.per_sample_paired_test(same, same)
    assert res["cmh_stat"] == 0.0 and res["p_value"] == 1.0 and res["fisher_p"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        stats.per_sample_paired_test(same, same[:2])


# ---- multiple comparisons and labels ---------------------------------------------------------------------


def test_holm_hand_worked_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    np.testing.assert_allclose(stats.holm([0.5, 0.6]), [1.0, 1.0])  # capped at 1, monotone
    np.testing.assert_allclose(stats.holm([0.01, np.nan, 0.04]), [0.02, np.nan, 0.04])  # NaN not counted
    assert stats.holm([]).shape == (0,)


def test_significance_label_refuses_with_two_seeds():
    assert stats.MIN_SEEDS == 3
    assert stats.significance_label(1e-9, n_seeds=2) == "n<3: not tested"
    assert stats.significance_label(0.01, n_seeds=3) == "significant"
    assert stats.significance_label(0.05, n_seeds=5) == "n.s."
    assert stats.significance_label(0.2, n_seeds=5, alpha=0.25) == "significant"
