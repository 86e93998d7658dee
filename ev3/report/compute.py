"""Equal-compute views: each method's compute counters, and accuracy at matched FLOP and step budgets.

Budgets of one dataset × student: ``B`` = the smallest final value over all its runs (so every run reaches
``B``) times :data:`FRACTIONS`, on two axes: cumulative FLOPs and student steps. Each run's history (one entry
per evaluation: ``student_steps``, cumulative ``flops``, ``val_accuracy``, ``test_accuracy`` of the state at
that point, not the val-selected one) is interpolated linearly at the budget; a budget outside the run's
evaluated range is NaN (no extrapolation, also not below the first evaluation). Means are over seeds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ev3.report import fmt
from ev3.stats import CI, mean_ci

COUNTERS = ["student_steps", "teacher_forwards", "teacher_backwards", "flops_student", "flops_teacher",
            "flops_selection", "flops", "wall_s", "compile_s", "steps_per_s"]
FRACTIONS = (0.125, 0.25, 0.5, 1.0)
AXES = ("flops", "student_steps")


def compute_table(runs: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Per dataset × student × method (methods in ``order``): seeds and each counter's mean over seeds
    (FLOPs, seconds, steps/s; a counter a run does not report is left out of its mean)."""
    table = runs.groupby(["dataset", "student", "method"], sort=False).agg(
        n_seeds=("seed", "size"), **{c: (f"compute_{c}", "mean") for c in COUNTERS}
    ).reset_index()
    return sort_rows(table, order)


def sort_rows(table: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Rows by dataset, student, then method in ``order`` (the report's method order everywhere)."""
    rank = {m: i for i, m in enumerate(order)}
    return table.sort_values(["dataset", "student", "method"], key=lambda c: c.map(rank) if c.name == "method" else c,
                             kind="stable").reset_index(drop=True)


def compute_display(table: pd.DataFrame) -> pd.DataFrame:
    """Human-readable compute table (GFLOPs, seconds)."""
    return pd.DataFrame(
        {
            "dataset": table["dataset"],
            "student": table["student"],
            "method": table["method"],
            "seeds": table["n_seeds"],
            "student steps": table["student_steps"].map(lambda x: f"{x:.0f}"),
            "teacher fwd / bwd": [f"{r.teacher_forwards:.0f} / {r.teacher_backwards:.0f}" for r in table.itertuples()],
            "GFLOPs student": table["flops_student"].map(fmt.giga),
            "GFLOPs teacher": table["flops_teacher"].map(fmt.giga),
            "GFLOPs selection": table["flops_selection"].map(fmt.giga),
            "GFLOPs total": table["flops"].map(fmt.giga),
            "wall s": table["wall_s"].map(fmt.number),
            "compile s": table["compile_s"].map(fmt.number),
            "steps/s": table["steps_per_s"].map(lambda x: fmt.number(x, 0)),
        }
    )


def interp_within(at, x, y) -> np.ndarray:
    """``y(x)`` linearly interpolated at ``at`` (``x`` increasing); NaN outside ``[x[0], x[-1]]``."""
    at = np.asarray(at, dtype=float)
    x = np.asarray(x, dtype=float)
    out = np.interp(at, x, np.asarray(y, dtype=float))
    out[(at < x[0]) | (at > x[-1])] = np.nan
    return out


def seed_mean_ci(values) -> CI:
    """Mean and 95 % t-interval of the finite ``values`` (one per seed); all NaN when none is finite."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return mean_ci(values) if values.size else CI(np.nan, np.nan, np.nan, 0)


def series(history: list[dict], key: str) -> np.ndarray:
    """One field of every history entry, as floats."""
    return np.array([entry[key] for entry in history], dtype=float)


def matched_compute(metrics: list[dict], order: list[str]) -> pd.DataFrame:
    """Long table: per dataset × student, budget axis (``flops`` | ``student_steps``), budget fraction and
    method: the budget, seeds covering it, and test/val accuracy (fractions) at it, mean (+95 % CI) over seeds."""
    rows = []
    for (dataset, student) in sorted({(m["dataset"], m["student"]) for m in metrics}):
        group = [m for m in metrics if (m["dataset"], m["student"]) == (dataset, student)]
        for axis in AXES:
            smallest_final = min(m["history"][-1][axis] for m in group)
            for fraction in FRACTIONS:
                budget = fraction * smallest_final
                for method in (o for o in order if any(m["method"] == o for m in group)):
                    hs = [m["history"] for m in group if m["method"] == method]
                    test = seed_mean_ci([interp_within([budget], series(h, axis), series(h, "test_accuracy"))[0] for h in hs])
                    val = seed_mean_ci([interp_within([budget], series(h, axis), series(h, "val_accuracy"))[0] for h in hs])
                    rows.append(
                        {"dataset": dataset, "student": student, "axis": axis, "fraction": fraction, "budget": budget,
                         "method": method, "n_seeds": test.n, "test_acc_mean": test.mean, "test_acc_ci_low": test.low,
                         "test_acc_ci_high": test.high, "val_acc_mean": val.mean}
                    )
    return pd.DataFrame(rows)


def matched_display(table: pd.DataFrame) -> pd.DataFrame:
    """One row per budget, one column per method: test accuracy % (95 % CI) [seeds covering the budget]."""
    table = table.assign(cell=[
        fmt.pct_ci(r.test_acc_mean, r.test_acc_ci_low, r.test_acc_ci_high) + f" [{r.n_seeds}]" for r in table.itertuples()
    ])
    budget_cols = ["dataset", "student", "axis", "fraction", "budget"]
    wide = table.pivot(index=budget_cols, columns="method", values="cell")
    wide = wide[list(dict.fromkeys(table["method"]))].reset_index()
    wide.columns.name = None
    wide["budget"] = [fmt.giga(b) + " GFLOPs" if a == "flops" else f"{b:.0f} steps" for a, b in zip(wide["axis"], wide["budget"])]
    wide["fraction"] = wide["fraction"].map(lambda f: f"{f:g}")
    return wide.drop(columns="axis").rename(columns={"fraction": "× smallest final"}).fillna(fmt.MISSING)
