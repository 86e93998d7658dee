"""Distillation diagnostics per method (``ev3.diagnostics``), and EV3's final θ beside its val-selected θ.

``fidelity_table``: per dataset × student × method, means over seeds of the teacher's confidence on the
students' training views (top probability, entropy, fraction > 0.99: the same views for every method, so these
describe the benchmark's targets) and of the student's test fidelity to the teacher (top-1 agreement, KL(teacher
‖ student) at T = 1), with EV3's confidently-wrong fraction of θ at the last decide.

``ev3_table``: per EV3 instance, the test accuracy of the val-selected θ (what every method reports), of the
final θ (what the EV3 reference reports) and of the val-selected θ_s, each mean (95 % t-interval) over seeds,
and θ's confidently-wrong fraction at the first and at the last decide (mean over seeds).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ev3.report import fmt
from ev3.report.compute import sort_rows
from ev3.stats import mean_ci

KEYS = ["dataset", "student", "method"]
VIEW_COLUMNS = ["teacher_views_mean_max_prob", "teacher_views_mean_entropy", "teacher_views_confident_fraction"]


def _wrong(metrics: dict, which: int) -> float:
    """θ's confidently-wrong fraction at the first (``which`` 0) or last (−1) decided round; NaN without one."""
    decisions = (metrics.get("ev3") or {}).get("decisions") or []
    values = [d["confidently_wrong"] for d in decisions
              if isinstance(d, dict) and not d.get("grew") and d.get("confidently_wrong") is not None]
    return values[which] if values else np.nan


def _nanmean(values) -> float:
    values = np.asarray(values, float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else np.nan


def fidelity_table(runs: pd.DataFrame, metrics: list[dict], order: list[str]) -> pd.DataFrame:
    """Means over seeds per method (``runs`` and ``metrics`` in the same order, see ``aggregate.collect``)."""
    runs = runs.assign(ev3_confidently_wrong=[_wrong(m, -1) for m in metrics])
    columns = [c for c in VIEW_COLUMNS + ["teacher_agreement", "test_kl_teacher_student", "ev3_confidently_wrong"]
               if c in runs]
    table = runs.groupby(KEYS, sort=False).agg(n_seeds=("seed", "size"), **{c: (c, "mean") for c in columns})
    return sort_rows(table.reset_index(), order)


def fidelity_display(table: pd.DataFrame) -> pd.DataFrame:
    def col(name):
        return table[name] if name in table else pd.Series(np.nan, index=table.index)

    return pd.DataFrame({
        "dataset": table["dataset"], "student": table["student"], "method": table["method"], "seeds": table["n_seeds"],
        "teacher max p on views": col("teacher_views_mean_max_prob").map(lambda x: fmt.number(x, 3)),
        "teacher entropy (nats)": col("teacher_views_mean_entropy").map(lambda x: fmt.number(x, 3)),
        "views p > 0.99 %": col("teacher_views_confident_fraction").map(fmt.pct),
        "test agreement %": col("teacher_agreement").map(fmt.pct),
        "test KL(t ‖ s) nats": col("test_kl_teacher_student").map(lambda x: fmt.number(x, 3)),
        "EV3 θ confidently wrong %": col("ev3_confidently_wrong").map(fmt.pct),
    })


def ev3_table(runs: pd.DataFrame, metrics: list[dict], order: list[str]) -> pd.DataFrame:
    """One row per EV3 instance (empty without EV3 runs)."""
    rows = []
    for key, idx in runs.groupby(KEYS, sort=False).groups.items():
        group = [metrics[i] for i in idx]
        if "ev3" not in group[0]:
            continue
        row = dict(zip(KEYS, key), n_seeds=len(group))
        for name, values in (("selected", [m["test_accuracy"] for m in group]),
                             ("final", [m["ev3"].get("final_current_test_accuracy") for m in group]),
                             ("stable", [m["ev3"].get("selected_stable_test_accuracy") for m in group])):
            values = np.asarray([v for v in values if v is not None], float)
            ci = mean_ci(values) if len(values) else (np.nan, np.nan, np.nan)
            row.update(dict(zip((f"{name}_mean", f"{name}_low", f"{name}_high"), ci[:3])))
        row["confidently_wrong_first"] = _nanmean([_wrong(m, 0) for m in group])
        row["confidently_wrong_last"] = _nanmean([_wrong(m, -1) for m in group])
        row["rounds"] = _nanmean([(m["ev3"].get("rounds") or {}).get("total", np.nan) for m in group])
        rows.append(row)
    columns = KEYS + ["n_seeds"] + [f"{n}_{s}" for n in ("selected", "final", "stable") for s in ("mean", "low", "high")]
    table = pd.DataFrame(rows, columns=columns + ["confidently_wrong_first", "confidently_wrong_last", "rounds"])
    return sort_rows(table, order) if len(table) else table


def ev3_display(table: pd.DataFrame) -> pd.DataFrame:
    def ci(name):
        return [fmt.pct_ci(getattr(r, f"{name}_mean"), getattr(r, f"{name}_low"), getattr(r, f"{name}_high"))
                for r in table.itertuples()]

    return pd.DataFrame({
        "dataset": table["dataset"], "student": table["student"], "method": table["method"], "seeds": table["n_seeds"],
        "val-selected θ test %": ci("selected"), "final θ test % (reference)": ci("final"),
        "val-selected θ_s test %": ci("stable"),
        "θ confidently wrong % (first → last decide)": [
            f"{fmt.pct(r.confidently_wrong_first)} → {fmt.pct(r.confidently_wrong_last)}" for r in table.itertuples()],
        "rounds": table["rounds"].map(lambda x: fmt.number(x, 0)),
    })
