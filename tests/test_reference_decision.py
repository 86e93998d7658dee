"""EV3's reference decide rule: hand-computed cases, tie order, non-finite bounds, bounds from first principles."""

import math
import statistics

import numpy as np
import pytest

from ev3.protocol.adapt import reference_decision


def ones(k: int, n: int = 10) -> np.ndarray:
    """0/1 scores of n samples, the first k correct."""
    return np.array([1.0] * k + [0.0] * (n - k))


# n = 10, α = 1.96. For k ones: mean k/10, std(ddof=1) = √(k(10 − k)/90), stderr = std/√10; e.g.
# LCB(7) = 0.401 > LCB(6) = 0.280 and UCB(6) = 0.920; LCB(10) = UCB(10) = 1 > UCB(3) = 0.599;
# LCB(3) = 0.001 < LCB(5) = 0.173 < LCB(8) = 0.539 < UCB(8) = 1.061.
HAND_CASES = [
    ((7, 6, 6), ("candidate", False)),
    ((10, 3, 3), ("candidate", True)),
    ((3, 5, 8), ("stable", False)),
    ((6, 6, 6), ("candidate", False)),
    ((3, 10, 3), ("current", True)),
]


@pytest.mark.parametrize("counts, expected", HAND_CASES, ids=["7-6-6", "10-3-3", "3-5-8", "6-6-6", "3-10-3"])
def test_hand_computed_cases(counts, expected):
    decision = reference_decision(*(ones(k) for k in counts), alpha=1.96)
    assert tuple(decision) == expected
    assert decision.winner == expected[0] and decision.stable_moved == expected[1]


def test_ties_go_to_the_candidate_then_current_then_stable():
    rng = np.random.default_rng(0)
    a, b = ones(6), rng.permutation(ones(6))  # same counts in another order: the float64 bounds tie exactly
    low = ones(2)
    assert reference_decision(a, b, low).winner == "candidate"
    assert reference_decision(low, a, b).winner == "current"
    assert reference_decision(a, low, b).winner == "candidate"
    assert reference_decision(low, low, a).winner == "stable"


def test_a_non_finite_bound_loses():
    nan_best = ones(10).copy()
    nan_best[0] = np.nan
    assert reference_decision(nan_best, ones(5), ones(4)) == ("current", False)
    inf = ones(9).copy()
    inf[-1] = np.inf  # mean inf, std nan
    assert reference_decision(inf, ones(4), ones(5)).winner == "stable"
    assert reference_decision(ones(3), ones(4), -np.inf * ones(10) - 1).winner == "current"
    # N = 1: no standard error, every bound is NaN, nothing moves
    assert reference_decision([1.0], [0.0], [0.0]) == ("current", False)


def test_alpha_zero_compares_means():
    assert reference_decision(ones(7), ones(6), ones(6), alpha=0.0) == ("candidate", True)
    assert reference_decision(ones(6), ones(6), ones(6), alpha=0.0) == ("candidate", False)
    with pytest.raises(ValueError, match="alpha"):
        reference_decision(ones(6), ones(6), ones(6), alpha=-1.0)


def test_matches_bounds_computed_from_first_principles():
    """Random real-valued scores: the winner has the largest mean − α·stdev/√n (statistics.stdev: ddof 1),
    first in tie order, and the stable model moves iff that bound exceeds the stable model's upper bound."""
    rng = np.random.default_rng(1)
    for trial in range(200):
        n = int(rng.integers(2, 30))
        alpha = float(rng.choice([0.0, 1.0, 1.96]))
        scores = [rng.normal(rng.normal(0, 0.3), rng.uniform(0.1, 1.0), n) for _ in range(3)]
        if trial % 4 == 0:
            scores[1] = scores[0].copy()  # a tie
        bound = lambda s, sign: statistics.fmean(s) + sign * alpha * statistics.stdev(s) / math.sqrt(n)  # noqa: E731
        lcb = [bound(s, -1) for s in scores]
        best = max(range(3), key=lambda i: (lcb[i], -i))
        decision = reference_decision(*scores, alpha=alpha)
        assert decision.winner == ("candidate", "current", "stable")[best]
        assert decision.stable_moved == (lcb[best] > bound(scores[2], +1))
