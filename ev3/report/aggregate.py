"""Collect every run's ``metrics.json`` under ``results/<benchmark>/`` into tables and figures.

Everything is regenerated from the metrics files alone (deterministic bytes for the same inputs). A file that
fails ``workflow/schemas/metrics.schema.json`` is refused with its path in the message.
"""

from __future__ import annotations

import glob
import json
import os

import jsonschema
import pandas as pd

from ev3 import io
from ev3.stats import mean_ci

METRICS_SCHEMA = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "workflow", "schemas", "metrics.schema.json"
)
KEYS = ["dataset", "student", "method"]
BASELINE_ORDER = ["teacher", "scratch", "kd"]


def load_metrics(path: str) -> dict:
    """Read and schema-check one metrics file; a bad file raises ``ValueError`` naming it."""
    with open(METRICS_SCHEMA) as f:
        schema = json.load(f)
    try:
        metrics = io.read_json(path)
        jsonschema.validate(metrics, schema)
    except (json.JSONDecodeError, jsonschema.ValidationError) as e:
        raise ValueError(f"{path}: invalid metrics file: {getattr(e, 'message', e)}") from None
    return metrics


def method_order(methods) -> list[str]:
    """Baselines first, then the rest alphabetically: the order (and color) of a method everywhere."""
    methods = set(methods)
    return [m for m in BASELINE_ORDER if m in methods] + sorted(methods - set(BASELINE_ORDER))


def collect(root: str) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """(one row per student run, one row per teacher run, all run metrics) sorted by identity."""
    runs = [load_metrics(p) for p in sorted(glob.glob(os.path.join(root, "runs", "*", "*", "*", "seed*", "metrics.json")))]
    teachers = [load_metrics(p) for p in sorted(glob.glob(os.path.join(root, "teacher", "*", "*", "seed*", "metrics.json")))]
    if not runs:
        raise ValueError(f"no run metrics under {root}/runs")

    def row(m):
        flat = {k: v for k, v in m.items() if not isinstance(v, (dict, list))}
        flat.update({f"compute_{k}": v for k, v in m["compute"].items()})
        return flat

    runs_df = pd.DataFrame([row(m) for m in runs]).sort_values(KEYS + ["seed"], kind="stable").reset_index(drop=True)
    teachers_df = pd.DataFrame([row(m) for m in teachers])
    return runs_df, teachers_df, runs


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Per dataset × student × method: seeds, test accuracy mean and 95 % t-interval, agreement, cost."""
    rows = []
    for (dataset, student, method), g in runs.groupby(KEYS, sort=False):
        ci = mean_ci(g["test_accuracy"].to_numpy())
        rows.append(
            {
                "dataset": dataset,
                "student": student,
                "method": method,
                "n_seeds": len(g),
                "test_acc_mean": ci.mean,
                "test_acc_ci_low": ci.low,
                "test_acc_ci_high": ci.high,
                "teacher_agreement": g["teacher_agreement"].mean(),
                "teacher_test_acc": g["teacher_test_accuracy"].mean(),
                "flops": g["compute_flops"].mean(),
                "wall_s": g["compute_wall_s"].mean(),
                "steps_per_s": g["compute_steps_per_s"].mean(),
            }
        )
    out = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate(method_order(out["method"]))}
    return out.sort_values(["dataset", "student", "method"], key=lambda c: c.map(order) if c.name == "method" else c).reset_index(drop=True)


def summary_markdown(summary: pd.DataFrame) -> str:
    def pct(x):
        return "–" if pd.isna(x) else f"{100 * x:.1f}"

    table = pd.DataFrame(
        {
            "dataset": summary["dataset"],
            "student": summary["student"],
            "method": summary["method"],
            "seeds": summary["n_seeds"],
            "test acc % (95 % CI)": [
                f"{pct(r.test_acc_mean)} ({pct(r.test_acc_ci_low)}–{pct(r.test_acc_ci_high)})" for r in summary.itertuples()
            ],
            "teacher agreement %": summary["teacher_agreement"].map(pct),
            "teacher acc %": summary["teacher_test_acc"].map(pct),
            "GFLOPs": summary["flops"].map(lambda x: f"{x / 1e9:.1f}"),
            "wall s": summary["wall_s"].map(lambda x: f"{x:.1f}"),
        }
    )
    return table.to_markdown(index=False) + "\n"


def aggregate(root: str) -> pd.DataFrame:
    """Write ``tables/summary.csv|md`` and ``figures/accuracy.png|curves.png`` under ``root``."""
    from ev3.report import figures

    runs, teachers, all_metrics = collect(root)
    summary = summarize(runs)
    tables, figs = os.path.join(root, "tables"), os.path.join(root, "figures")
    io.write_text(os.path.join(tables, "summary.csv"), summary.to_csv(index=False, float_format="%.6g"))
    io.write_text(os.path.join(tables, "summary.md"), summary_markdown(summary))
    order = method_order(summary["method"])
    figures.accuracy(runs, summary, order, os.path.join(figs, "accuracy.png"))
    figures.curves(all_metrics, order, os.path.join(figs, "curves.png"))
    print(summary_markdown(summary))
    return summary
