"""Paired comparisons of every method with the baselines ``kd`` and ``scratch``: Δ = method − baseline.

Per (dataset, student, method, baseline), on the seeds both methods ran (a seed pairs two runs):

* seed level: :func:`ev3.stats.paired_seed_test` of the per-seed test accuracies (mean Δ with 95 %
  t-interval, paired t-test, Cohen's d_z);
* sample level: :func:`ev3.stats.per_sample_paired_test` of the per-sample test correctness from each run's
  ``predictions.npz``, stratified by seed (CMH / stratified McNemar), with the matched-pairs odds ratio
  ``Σ b10 / Σ b01`` (test samples only the method gets right ÷ only the baseline gets right) as effect size.

Holm's correction runs over the methods of one family = (dataset, student, baseline), separately for the
two tests; the labels come from :func:`ev3.stats.significance_label` (no verdict below 3 seeds).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ev3 import stats
from ev3.report import fmt

BASELINES = ("kd", "scratch")
FAMILY = ["dataset", "student", "baseline"]


def _compare(a: pd.DataFrame, b: pd.DataFrame, correct: dict, key_a: tuple, key_b: tuple) -> dict:
    """Both tests for runs ``a`` (method) and ``b`` (baseline) of one dataset × student, paired by seed."""
    seeds = sorted(set(a["seed"]) & set(b["seed"]))
    acc_a = a.set_index("seed")["test_accuracy"]
    acc_b = b.set_index("seed")["test_accuracy"]
    seed_test = stats.paired_seed_test({s: acc_a[s] for s in seeds}, {s: acc_b[s] for s in seeds})
    sample_test = stats.per_sample_paired_test(
        {s: correct[(*key_a, s)] for s in seeds}, {s: correct[(*key_b, s)] for s in seeds}
    )
    b01, b10 = sum(sample_test["b01"]), sum(sample_test["b10"])
    with np.errstate(divide="ignore", invalid="ignore"):
        odds = np.float64(b10) / b01
    return {
        "n_seeds": seed_test.n,
        "diff_mean": seed_test.mean_diff,
        "diff_ci_low": seed_test.ci_low,
        "diff_ci_high": seed_test.ci_high,
        "cohens_dz": seed_test.cohens_dz,
        "t_stat": seed_test.t_stat,
        "p_seeds": seed_test.p_value,
        "b01": b01,
        "b10": b10,
        "odds_ratio": float(odds),
        "cmh_stat": sample_test["cmh_stat"],
        "p_samples": sample_test["p_value"],
    }


def _with_holm(table: pd.DataFrame) -> pd.DataFrame:
    """Add Holm-adjusted p-values per family and the significance labels for both tests."""
    table = table.copy()
    for test in ("seeds", "samples"):
        table[f"p_{test}_holm"] = table.groupby(FAMILY, sort=False)[f"p_{test}"].transform(lambda p: stats.holm(p.to_numpy()))
        table[f"label_{test}"] = [
            stats.significance_label(p, n) for p, n in zip(table[f"p_{test}_holm"], table["n_seeds"])
        ]
    return table


def significance(runs: pd.DataFrame, correct: dict, order: list[str], baselines=BASELINES) -> pd.DataFrame:
    """One row per (dataset, student, baseline, method ≠ baseline), methods in ``order``, with both paired
    tests; differences are fractions (0–1). ``correct`` maps (dataset, student, method, seed) to the run's
    per-sample 0/1 test correctness."""
    rows = []
    for (dataset, student), group in runs.groupby(["dataset", "student"], sort=False):
        by_method = dict(list(group.groupby("method", sort=False)))
        for baseline in (b for b in baselines if b in by_method):
            for method in (m for m in order if m in by_method and m != baseline):
                a, b = by_method[method], by_method[baseline]
                if not set(a["seed"]) & set(b["seed"]):
                    continue
                ids = {"dataset": dataset, "student": student, "method": method, "baseline": baseline}
                rows.append({**ids, **_compare(a, b, correct, (dataset, student, method), (dataset, student, baseline))})
    columns = ["dataset", "student", "method", "baseline", "n_seeds", "diff_mean", "diff_ci_low", "diff_ci_high",
               "cohens_dz", "t_stat", "p_seeds", "b01", "b10", "odds_ratio", "cmh_stat", "p_samples"]
    table = _with_holm(pd.DataFrame(rows, columns=columns))
    return table[columns[:11] + ["p_seeds_holm", "label_seeds"] + columns[11:] + ["p_samples_holm", "label_samples"]]


def significance_display(table: pd.DataFrame) -> pd.DataFrame:
    """Human-readable significance table (Δ in percentage points)."""
    return pd.DataFrame(
        {
            "dataset": table["dataset"],
            "student": table["student"],
            "method": table["method"],
            "vs": table["baseline"],
            "seeds": table["n_seeds"],
            "Δ test acc pp (95 % CI)": [
                fmt.pp_ci(r.diff_mean, r.diff_ci_low, r.diff_ci_high) for r in table.itertuples()
            ],
            "d_z": table["cohens_dz"].map(fmt.number),
            "p seeds (Holm)": table["p_seeds_holm"].map(fmt.p_value),
            "seed test": table["label_seeds"],
            "only-right samples (method : baseline)": [f"{r.b10} : {r.b01}" for r in table.itertuples()],
            "p samples (Holm)": table["p_samples_holm"].map(fmt.p_value),
            "sample test": table["label_samples"],
        }
    )
