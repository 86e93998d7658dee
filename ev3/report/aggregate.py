"""Collect every run's ``metrics.json`` (+ ``predictions.npz``) under ``results/<benchmark>/`` into tables and
figures.

Everything is regenerated from those files alone, with deterministic bytes for the same inputs. A metrics file
that fails ``workflow/schemas/metrics.schema.json`` (or predictions that contradict it) is refused with its
path in the message. CSV tables hold accuracies as fractions 0–1, FLOPs and seconds; the ``.md`` tables (and
``tables/report.rst``, the same tables for the HTML report's front page) show percentages.
"""

from __future__ import annotations

import glob
import json
import os

import jsonschema
import numpy as np
import pandas as pd
import yaml

from ev3 import io
from ev3 import paths as run_paths
from ev3.report import compute, fidelity, figures, fmt, significance
from ev3.stats import mean_ci

METRICS_SCHEMA = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "workflow", "schemas", "metrics.schema.json"
)
KEYS = ["dataset", "student", "method"]
BASELINE_ORDER = ["teacher", "scratch", "kd", "dkd"]


def metrics_validator() -> jsonschema.protocols.Validator:
    """The compiled validator of ``workflow/schemas/metrics.schema.json`` (the schema itself checked once)."""
    with open(METRICS_SCHEMA) as f:
        schema = json.load(f)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def load_metrics(path: str, validator: jsonschema.protocols.Validator | None = None) -> dict:
    """Read and schema-check one metrics file with ``validator`` (default: :func:`metrics_validator`, built
    now); a bad file raises ``ValueError`` naming it. The error reported is ``jsonschema.validate``'s
    (the best match among the file's errors)."""
    validator = metrics_validator() if validator is None else validator
    try:
        metrics = io.read_json(path)
        error = jsonschema.exceptions.best_match(validator.iter_errors(metrics))
        if error is not None:
            raise error
    except (json.JSONDecodeError, jsonschema.ValidationError) as e:
        raise ValueError(f"{path}: invalid metrics file: {getattr(e, 'message', e)}") from None
    return metrics


def method_order(methods) -> list[str]:
    """Baselines first, then the rest alphabetically: the order (and color) of a method everywhere."""
    methods = set(methods)
    return [m for m in BASELINE_ORDER if m in methods] + sorted(methods - set(BASELINE_ORDER))


def _flat(metrics: dict, run_dir: str) -> dict:
    """One table row: the scalar fields, ``compute_*`` counters, ``versions_*`` and the run directory."""
    row = {"run_dir": run_dir, **{k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}}
    row.update({f"compute_{k}": v for k, v in metrics["compute"].items()})
    row.update({f"versions_{k}": v for k, v in metrics["versions"].items()})
    row.update({f"teacher_views_{k}": v for k, v in (metrics.get("teacher_views") or {}).items()})
    return row


def collect(root: str) -> tuple[pd.DataFrame, list[dict]]:
    """(one flat row per student run sorted by identity and seed, the runs' full metrics in the same order).

    Teacher metrics are schema-checked too (a broken teacher run is refused) but not tabulated. One validator
    checks every file.
    """
    validator = metrics_validator()
    runs_glob = run_paths.run_dir("*", "*", "*", "*", root=root)
    teachers_glob = run_paths.teacher_dir("*", "*", "*", root=root)
    paths = sorted(glob.glob(os.path.join(runs_glob, "metrics.json")))
    for path in sorted(glob.glob(os.path.join(teachers_glob, "metrics.json"))):
        load_metrics(path, validator)
    if not paths:
        raise ValueError(f"no run metrics under {root}/runs")
    runs = [(os.path.relpath(os.path.dirname(p), root), load_metrics(p, validator)) for p in paths]
    table = pd.DataFrame([_flat(m, d) for d, m in runs]).sort_values(KEYS + ["seed"], kind="stable")
    counters = [c for c in table.columns if c.startswith("compute_")]
    table[counters] = table[counters].apply(pd.to_numeric)  # null counters (e.g. steps_per_s) become NaN
    return table.reset_index(drop=True), [runs[i][1] for i in table.index]


def load_correctness(root: str, runs: pd.DataFrame) -> dict[tuple, np.ndarray]:
    """Per-sample test correctness ``pred == label`` of each run, keyed (dataset, student, method, seed).

    Refuses (``ValueError`` naming the file) predictions whose accuracy differs from the run's
    ``test_accuracy`` or whose labels differ from another run's on the same dataset.
    """
    correct, labels = {}, {}
    for r in runs.itertuples():
        path = os.path.join(root, r.run_dir, "predictions.npz")
        with np.load(path) as npz:
            pred, label = npz["pred"], npz["label"]
        if pred.shape != label.shape or abs(np.mean(pred == label) - r.test_accuracy) > 1e-4:
            raise ValueError(f"{path}: predictions do not match test_accuracy {r.test_accuracy} of metrics.json")
        if not np.array_equal(labels.setdefault(r.dataset, label), label):
            raise ValueError(f"{path}: test labels differ from other runs on {r.dataset}")
        correct[(r.dataset, r.student, r.method, r.seed)] = pred == label
    return correct


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
    return compute.sort_rows(out, method_order(out["method"]))


def add_anchors(summary: pd.DataFrame, anchors: dict) -> pd.DataFrame:
    """Published accuracies (config ``anchors``: student -> {teacher | method: %}) as fractions beside ours:
    ``published_test_acc`` of the method and ``published_teacher_acc``; NaN where none is given."""
    def published(student, name):
        value = anchors.get(student, {}).get(name)
        return np.nan if value is None else value / 100.0

    summary = summary.copy()
    summary["published_test_acc"] = [published(r.student, r.method) for r in summary.itertuples()]
    summary["published_teacher_acc"] = [published(r.student, "teacher") for r in summary.itertuples()]
    return summary


def read_anchors(root: str) -> dict:
    """The ``anchors`` of the benchmark's resolved config (``root/config.yaml``), or {}."""
    path = os.path.join(root, "config.yaml")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return (yaml.safe_load(f) or {}).get("anchors") or {}


def summary_display(summary: pd.DataFrame) -> pd.DataFrame:
    """Human-readable summary table (percentages, GFLOPs, seconds); published anchors when the config has them."""
    anchored = {}
    if "published_test_acc" in summary and summary[["published_test_acc", "published_teacher_acc"]].notna().any().any():
        anchored = {
            "published %": summary["published_test_acc"].map(fmt.pct),
            "published teacher %": summary["published_teacher_acc"].map(fmt.pct),
        }
    return pd.DataFrame(
        {
            "dataset": summary["dataset"],
            "student": summary["student"],
            "method": summary["method"],
            "seeds": summary["n_seeds"],
            "test acc % (95 % CI)": [fmt.pct_ci(r.test_acc_mean, r.test_acc_ci_low, r.test_acc_ci_high) for r in summary.itertuples()],
            "teacher agreement %": summary["teacher_agreement"].map(fmt.pct),
            "teacher acc %": summary["teacher_test_acc"].map(fmt.pct),
            **anchored,
            "GFLOPs": summary["flops"].map(fmt.giga),
            "wall s": summary["wall_s"].map(lambda x: f"{x:.1f}"),
        }
    )


NUMBER_CELL = r"[-+<]?\d|–|∞|−∞"
"""A displayed cell that starts like this is a number (or a missing one)."""

# (file name, heading on the report page) of the tables with a human-readable version, in page order.
DISPLAYED = [
    ("summary", "Test accuracy: mean and 95 % CI over seeds"),
    ("significance", "Paired differences to kd and scratch (Δ = method − baseline)"),
    ("compute", "Compute per run (mean over seeds)"),
    ("matched_compute", "Test accuracy at matched budgets (% (95 % CI) [seeds reaching the budget])"),
    ("fidelity", "Teacher confidence on the training views and student fidelity on test (means over seeds)"),
    ("ev3", "EV3: val-selected θ, final θ (the reference's report) and θ_s, test accuracy % (95 % CI)"),
]


def _markdown(display: pd.DataFrame, tablefmt: str = "pipe") -> str:
    """The cells exactly as formatted (numbers are not re-parsed); columns of numbers are right-aligned."""
    numeric = {c: display[c].astype(str).str.match(NUMBER_CELL).all() for c in display.columns}
    align = ["right" if numeric[c] else "left" for c in display.columns]
    return display.to_markdown(index=False, tablefmt=tablefmt, disable_numparse=True, colalign=align)


def write_tables(tables_dir: str, raw: dict[str, pd.DataFrame], display: dict[str, pd.DataFrame]) -> None:
    """``<name>.csv`` for every raw table, ``<name>.md`` for every displayed one, and ``report.rst``: the
    displayed tables as reStructuredText grid tables under headings, for the HTML report's front page."""
    for name, table in raw.items():
        io.write_text(os.path.join(tables_dir, f"{name}.csv"), table.to_csv(index=False, float_format="%.6g"))
    page = []
    for name, heading in DISPLAYED:
        io.write_text(os.path.join(tables_dir, f"{name}.md"), _markdown(display[name]) + "\n")
        page += [f".. rubric:: {heading}", "", _markdown(display[name], tablefmt="grid"), ""]
    io.write_text(os.path.join(tables_dir, "report.rst"), "\n".join(page))


def aggregate(root: str, sample_runs: int = figures.SAMPLE_RUNS) -> pd.DataFrame:
    """Write every table under ``root/tables`` and every figure under ``root/figures`` (figures that draw runs
    one by one draw at most ``sample_runs`` per method); returns the summary."""
    runs, metrics = collect(root)
    order = method_order(runs["method"])
    summary = add_anchors(summarize(runs), read_anchors(root))
    tests = significance.significance(runs, load_correctness(root, runs), order)
    costs = compute.compute_table(runs, order)
    matched = compute.matched_compute(metrics, order)
    fidelity_ = fidelity.fidelity_table(runs, metrics, order)
    ev3_ = fidelity.ev3_table(runs, metrics, order)
    raw = {"summary": summary, "significance": tests, "compute": costs, "matched_compute": matched,
           "fidelity": fidelity_, "ev3": ev3_, "runs": runs}
    display = {
        "fidelity": fidelity.fidelity_display(fidelity_),
        "ev3": fidelity.ev3_display(ev3_),
        "summary": summary_display(summary),
        "significance": significance.significance_display(tests),
        "compute": compute.compute_display(costs),
        "matched_compute": compute.matched_display(matched),
    }
    write_tables(os.path.join(root, "tables"), raw, display)
    figures.draw_all(runs, summary, metrics, order, os.path.join(root, "figures"), sample_runs)
    for name in ("summary", "significance"):
        print(_markdown(display[name]), end="\n\n")
    return summary
