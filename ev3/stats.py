"""Statistics for the benchmark report: comparing KD methods over seeds.

Conventions used throughout:

* The **seed** is the unit of replication. A seed fixes the student init and the batch order, so two methods
  run with the same seed form a *matched pair*; per-seed inputs of two methods must be aligned by seed.
  Inputs may be 1-D sequences in the same seed order, or mappings ``{seed: value}`` with identical keys
  (aligned by sorted key).
* Differences are always ``a - b`` ("method A minus method B").
* With fewer than :data:`MIN_SEEDS` seeds a p-value may still be computed, but it must not be reported as
  significant: see ``significant_allowed`` and :func:`significance_label`.
* Per-sample correctness is a 0/1 (or bool) vector over the test set, one per seed and method.

Distributions come from :mod:`scipy.stats`; only numpy is used otherwise (no JAX).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
from scipy import stats

MIN_SEEDS = 3
"""Fewest seeds for which a difference between methods may be called significant."""

NOT_TESTED = f"n<{MIN_SEEDS}: not tested"


class CI(NamedTuple):
    """A mean and its two-sided confidence interval over ``n`` values (``low = high = nan`` when ``n < 2``)."""

    mean: float
    low: float
    high: float
    n: int


class PairedSeedTest(NamedTuple):
    """Paired comparison of two methods over ``n`` matched seeds; all differences are ``a - b``."""

    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    t_stat: float
    p_value: float
    cohens_dz: float
    significant_allowed: bool


class McNemar(NamedTuple):
    """Discordant pair counts of one seed and the exact two-sided McNemar p-value.

    ``b01``: samples A got wrong and B got right; ``b10``: A right, B wrong.
    """

    b01: int
    b10: int
    p_value: float


def _vector(values, name: str) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains non-finite values")
    return x


def _align(a, b) -> tuple[list, list]:
    """Align two per-seed collections: mappings by (identical) seed keys, sequences by position."""
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        if not (isinstance(a, Mapping) and isinstance(b, Mapping)):
            raise TypeError("pass both a and b as {seed: value} mappings, or both as sequences")
        if set(a) != set(b):
            raise ValueError(f"seed mismatch: only in a {sorted(set(a) - set(b))}, only in b {sorted(set(b) - set(a))}")
        seeds = sorted(a)
        return [a[s] for s in seeds], [b[s] for s in seeds]
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"a and b must have one entry per seed each, got {len(a)} and {len(b)}")
    return a, b


def mean_ci(values, confidence: float = 0.95, method: str = "t", *, n_resamples: int = 9999, seed: int = 0) -> CI:
    """Mean of ``values`` (shape ``(n,)``, e.g. one accuracy per seed) with a two-sided confidence interval.

    ``method="t"``: ``mean ± t_{(1+confidence)/2, n-1} · s / √n`` with ``s`` the sample SD (ddof=1).
    ``method="bootstrap"``: percentile interval of :func:`scipy.stats.bootstrap` over ``n_resamples``
    resamples drawn from ``numpy.random.default_rng(seed)`` (deterministic for a given ``seed``).
    ``n == 1`` gives ``low = high = nan``; ``n == 0`` raises.
    """
    x = _vector(values, "values")
    n = x.size
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    mean = float(np.mean(x))
    if n == 1:
        return CI(mean, float("nan"), float("nan"), 1)
    if method == "t":
        half = stats.t.ppf(0.5 + confidence / 2.0, df=n - 1) * np.std(x, ddof=1) / np.sqrt(n)
        return CI(mean, float(mean - half), float(mean + half), n)
    if method == "bootstrap":
        res = stats.bootstrap(
            (x,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
            method="percentile", rng=np.random.default_rng(seed),
        )
        return CI(mean, float(res.confidence_interval.low), float(res.confidence_interval.high), n)
    raise ValueError(f"method must be 't' or 'bootstrap', got {method!r}")


def paired_seed_test(a, b, confidence: float = 0.95) -> PairedSeedTest:
    """Paired t-test of per-seed metrics ``a`` vs ``b`` (shape ``(n_seeds,)`` each, or ``{seed: value}``).

    ``mean_diff`` and its t-interval are over ``d = a - b``; ``t_stat``/``p_value`` are
    :func:`scipy.stats.ttest_rel` (two-sided); ``cohens_dz = mean(d) / sd(d)`` (ddof=1; ``±inf`` when every
    seed gains the same nonzero amount, ``nan`` when ``d ≡ 0``). ``n < 2`` gives nan statistics.
    ``significant_allowed`` is ``n >= MIN_SEEDS``.
    """
    a, b = _align(a, b)
    a, b = _vector(a, "a"), _vector(b, "b")
    d = a - b
    n = d.size
    if n == 0:
        raise ValueError("paired_seed_test needs at least one seed")
    ci = mean_ci(d, confidence)
    if n < 2:
        t_stat = p_value = dz = float("nan")
    else:
        res = stats.ttest_rel(a, b)
        t_stat, p_value = float(res.statistic), float(res.pvalue)
        with np.errstate(divide="ignore", invalid="ignore"):
            dz = float(np.float64(np.mean(d)) / np.std(d, ddof=1))
    return PairedSeedTest(n, ci.mean, ci.low, ci.high, t_stat, p_value, dz, n >= MIN_SEEDS)


def _correctness(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D per-sample correctness, got shape {arr.shape}")
    if not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{name} must contain only 0/1 (or bool) values")
    return arr.astype(bool)


def mcnemar_exact(correct_a, correct_b) -> McNemar:
    """Exact McNemar test for one seed from per-sample correctness (0/1 arrays of shape ``(N,)``, same samples).

    Under H0 the discordant pairs split 50/50, so ``p = binomtest(b10, b01 + b10, 0.5)`` (two-sided);
    ``p = 1`` when there are no discordant pairs. Returns ``(b01, b10, p_value)``.
    """
    ca, cb = _correctness(correct_a, "correct_a"), _correctness(correct_b, "correct_b")
    if ca.shape != cb.shape:
        raise ValueError(f"correct_a and correct_b must cover the same samples, got {ca.shape} and {cb.shape}")
    b01 = int(np.sum(~ca & cb))
    b10 = int(np.sum(ca & ~cb))
    p = 1.0 if b01 + b10 == 0 else float(stats.binomtest(b10, b01 + b10, 0.5).pvalue)
    return McNemar(b01, b10, p)


def per_sample_paired_test(correct_a_by_seed, correct_b_by_seed) -> dict:
    """Per-sample paired test of two methods, stratified by seed (seeds are never pooled as independent).

    Inputs: per-seed 0/1 correctness vectors, as a sequence (or ``(n_seeds, N)`` array) in the same seed
    order for both methods, or ``{seed: vector}`` mappings with identical keys; within a seed, A and B must
    cover the same samples in the same order.

    The primary test (``p_value``) is the Cochran–Mantel–Haenszel test for paired binary data stratified
    by seed, i.e. the stratified McNemar ``χ² = (Σ_s (b10_s − b01_s))² / Σ_s (b10_s + b01_s)`` with 1 dof
    (``χ² = 0, p = 1`` without discordant pairs). Its sign follows the total gain of A over B, so strata
    whose differences point in opposite directions cancel. Also returned: the per-seed exact McNemar tests
    and Fisher's combination of their two-sided p-values, an omnibus "some seed differs" test that ignores
    the direction of each seed's difference (it is *not* evidence that A beats B).

    Returns a dict with ``n_seeds``, ``b01``/``b10``/``per_seed_p`` (lists, one per seed),
    ``per_seed_acc_diff`` (``acc_a − acc_b`` per seed), ``mean_acc_diff`` (their mean over seeds, each seed
    weighted equally), ``cmh_stat``, ``p_value`` (CMH), ``fisher_stat``, ``fisher_p`` and
    ``significant_allowed`` (``n_seeds >= MIN_SEEDS``).
    """
    a_list, b_list = _align(correct_a_by_seed, correct_b_by_seed)
    if not a_list:
        raise ValueError("per_sample_paired_test needs at least one seed")
    tests = [mcnemar_exact(ca, cb) for ca, cb in zip(a_list, b_list)]
    acc_diff = [float(np.mean(np.asarray(ca, float)) - np.mean(np.asarray(cb, float))) for ca, cb in zip(a_list, b_list)]
    b01 = np.array([t.b01 for t in tests])
    b10 = np.array([t.b10 for t in tests])
    discordant = int(np.sum(b01 + b10))
    if discordant == 0:
        cmh_stat, cmh_p = 0.0, 1.0
    else:
        cmh_stat = float(np.sum(b10 - b01)) ** 2 / discordant
        cmh_p = float(stats.chi2.sf(cmh_stat, df=1))
    per_seed_p = [t.p_value for t in tests]
    fisher = stats.combine_pvalues(per_seed_p, method="fisher")
    return {
        "n_seeds": len(tests),
        "b01": b01.tolist(),
        "b10": b10.tolist(),
        "per_seed_p": per_seed_p,
        "per_seed_acc_diff": acc_diff,
        "mean_acc_diff": float(np.mean(acc_diff)),
        "cmh_stat": cmh_stat,
        "p_value": cmh_p,
        "fisher_stat": float(fisher.statistic),
        "fisher_p": float(fisher.pvalue),
        "significant_allowed": len(tests) >= MIN_SEEDS,
    }


def holm(p_values) -> np.ndarray:
    """Holm–Bonferroni step-down adjusted p-values, shape ``(m,)``, in the input order.

    With the finite p-values sorted ascending ``p_(1) ≤ … ≤ p_(m)``:
    ``adj_(i) = min(1, max_{j ≤ i} (m − j + 1) · p_(j))``. NaN entries (untested comparisons) stay NaN and
    do not count towards ``m``.
    """
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"p_values must be 1-D, got shape {p.shape}")
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    if np.any((p[idx] < 0) | (p[idx] > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    order = idx[np.argsort(p[idx], kind="stable")]
    m = order.size
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def significance_label(p_adjusted: float, n_seeds: int, alpha: float = 0.05) -> str:
    """Report label for one comparison: ``"n<3: not tested"`` when ``n_seeds < MIN_SEEDS``, else
    ``"significant"`` if ``p_adjusted < alpha`` and ``"n.s."`` otherwise (a NaN p-value is ``"n.s."``)."""
    if n_seeds < MIN_SEEDS:
        return NOT_TESTED
    return "significant" if p_adjusted < alpha else "n.s."
