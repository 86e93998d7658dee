"""The report at many runs: one validator per aggregate, tables equal to per-file validation, bounded figures,
and the synthetic runs generator (benchmarks/synthetic_runs.py)."""

import glob
import json
import os

import jsonschema
import matplotlib.pyplot as plt
import numpy as np
import pytest

from benchmarks.synthetic_runs import METHODS, write_runs
from ev3 import io
from ev3.report import aggregate as agg
from ev3.report import compute, figures, significance

N_TEST = 200


def _files(root):
    return sorted(glob.glob(os.path.join(root, "**", "*.*"), recursive=True))


def test_synthetic_runs_are_schema_valid_and_deterministic(tmp_path):
    a = write_runs(str(tmp_path / "a"), 20, seed=3, n_test=N_TEST)
    write_runs(str(tmp_path / "b"), 20, seed=3, n_test=N_TEST)
    with open(agg.METRICS_SCHEMA) as f:
        schema = json.load(f)
    for path in _files(tmp_path / "a"):
        if path.endswith("metrics.json"):
            jsonschema.validate(io.read_json(path), schema)
        with open(path, "rb") as f, open(path.replace(os.sep + "a" + os.sep, os.sep + "b" + os.sep), "rb") as g:
            assert f.read() == g.read(), path
    methods = [io.read_json(p)["method"] for p in a]
    assert methods[:8] == list(METHODS) and methods[8:16] == list(METHODS)  # seed-major: 20 = 2 × 8 + 4
    assert [methods.count(m) for m in METHODS] == [3, 3, 3, 3, 2, 2, 2, 2]
    assert all("decisions" in io.read_json(p)["ev3"] for p, m in zip(a, methods) if m.startswith("ev3"))
    assert all(io.read_json(p)["metadistil"]["teacher_history"] for p, m in zip(a, methods) if m.startswith("metadistil"))


class _CountingValidators:
    """``jsonschema.validators.validator_for`` stand-in: validator classes for the metrics schema count their
    instances (as ``jsonschema.validate`` builds one per call, so would the per-file path)."""

    def __init__(self, real):
        self.real, self.built = real, 0

    def __call__(self, schema, *args, **kwargs):
        cls, counter = self.real(schema, *args, **kwargs), self
        if not (isinstance(schema, dict) and schema.get("title") == "ev3 run metrics (metrics.json)"):
            return cls

        class Counting:
            check_schema = staticmethod(cls.check_schema)

            def __new__(_, *a, **k):
                counter.built += 1
                return cls(*a, **k)

        return Counting


def test_one_validator_checks_every_file(tmp_path, monkeypatch):
    write_runs(str(tmp_path), 24, n_test=N_TEST)
    counting = _CountingValidators(jsonschema.validators.validator_for)
    monkeypatch.setattr(jsonschema.validators, "validator_for", counting)
    agg.collect(str(tmp_path))
    assert counting.built == 1
    agg.load_metrics(write_runs(str(tmp_path / "other"), 1, n_test=N_TEST)[0])  # one file alone: its own validator
    assert counting.built == 2


def _reference_tables(root: str) -> dict[str, str]:
    """The tables (csv text) built as before: every file checked by its own ``jsonschema.validate``."""
    with open(agg.METRICS_SCHEMA) as f:
        schema = json.load(f)
    paths = sorted(glob.glob(os.path.join(root, "runs", "*", "*", "*", "*", "metrics.json")))
    runs = []
    for p in paths:
        m = io.read_json(p)
        jsonschema.validate(m, schema)
        runs.append((os.path.relpath(os.path.dirname(p), root), m))
    import pandas as pd

    table = pd.DataFrame([agg._flat(m, d) for d, m in runs]).sort_values(agg.KEYS + ["seed"], kind="stable")
    counters = [c for c in table.columns if c.startswith("compute_")]
    table[counters] = table[counters].apply(pd.to_numeric)
    metrics = [runs[i][1] for i in table.index]
    table = table.reset_index(drop=True)
    order = agg.method_order(table["method"])
    raw = {
        "summary": agg.add_anchors(agg.summarize(table), {}),
        "significance": significance.significance(table, agg.load_correctness(root, table), order),
        "compute": compute.compute_table(table, order),
        "matched_compute": compute.matched_compute(metrics, order),
        "runs": table,
    }
    return {name: t.to_csv(index=False, float_format="%.6g") for name, t in raw.items()}


def test_tables_equal_those_of_per_file_validation(tmp_path):
    write_runs(str(tmp_path), 40, seed=1, n_test=N_TEST)
    agg.aggregate(str(tmp_path), sample_runs=2)
    for name, text in _reference_tables(str(tmp_path)).items():
        with open(tmp_path / "tables" / f"{name}.csv") as f:
            assert f.read() == text, name


def test_an_invalid_file_is_refused_by_name_with_jsonschemas_message(tmp_path):
    paths = write_runs(str(tmp_path), 16, n_test=N_TEST)
    bad = io.read_json(paths[5])
    bad["history"][3]["test_accuracy"] = 1.5
    del bad["compute"]["flops"]
    io.write_json(paths[5], bad)
    with open(agg.METRICS_SCHEMA) as f:
        with pytest.raises(jsonschema.ValidationError) as expected:
            jsonschema.validate(bad, json.load(f))
    with pytest.raises(ValueError) as refused:
        agg.aggregate(str(tmp_path))
    assert str(refused.value) == f"{paths[5]}: invalid metrics file: {expected.value.message}"


def _artists(metrics, k):
    fig_holder = []
    real_save = figures._save
    figures._save = lambda fig, path: fig_holder.append(fig)
    try:
        figures.ev3_trajectory(metrics, agg.method_order({m["method"] for m in metrics}), "unused.png", k)
    finally:
        figures._save = real_save
    ax = fig_holder[0].axes[0]
    n = len(ax.lines) + len(ax.collections) + len(ax.patches)
    plt.close(fig_holder[0])
    return n


def _metrics(root, n):
    return [io.read_json(p) for p in write_runs(str(root), n, n_test=N_TEST)]


def test_trajectory_figure_stops_growing_beyond_k_runs_per_method(tmp_path):
    small, large = _metrics(tmp_path / "s", 24), _metrics(tmp_path / "l", 80)  # 3 and 10 seeds per method
    assert _artists(large, k=2) == _artists(small, k=2)
    assert _artists(large, k=20) > _artists(small, k=20)  # at most k runs per method: every run drawn


def test_sample_takes_the_k_smallest_seeds_of_every_method():
    runs = [{"method": m, "seed": s} for s in (5, 1, 4, 2, 3) for m in ("a", "b")]
    drawn, banded = figures.sample(runs, 2)
    assert [(m["method"], m["seed"]) for m in drawn] == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    assert sorted(banded) == ["a", "b"] and all(len(g) == 5 for g in banded.values())
    assert figures.sample(runs, 5)[1] == {}


def test_band_is_the_median_and_quantiles_over_runs():
    x = np.array([1.0, 2.0, 4.0])
    slopes = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    fig, ax = plt.subplots()
    figures._band(ax, [(x, c * x) for c in slopes], "k", "band", log=False)
    grid, median = ax.lines[0].get_data()
    np.testing.assert_allclose(median, np.median(slopes) * grid)
    lo, hi = np.quantile(slopes, figures.BAND)
    band = ax.collections[0].get_paths()[0].vertices
    np.testing.assert_allclose(band[:, 1].min(), lo * grid[0], rtol=1e-12)
    np.testing.assert_allclose(band[:, 1].max(), hi * grid[-1], rtol=1e-12)
    plt.close(fig)


def test_report_config_keys_are_checked():
    import yaml

    from ev3.config import ConfigError, validate

    with open(os.path.join(os.path.dirname(agg.METRICS_SCHEMA), "..", "..", "config", "smoke.yaml")) as f:
        config = yaml.safe_load(f)
    validate({**config, "report": {"local_max_runs": 0, "sample_runs": 5, "embed_max_runs": 100}})
    for bad in ({"local_max_runs": -1}, {"sample_runs": 0}, {"embed_max_run": 10}):
        with pytest.raises(ConfigError):
            validate({**config, "report": bad})
