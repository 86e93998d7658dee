"""End to end: the smoke DAG runs with Snakemake into a temporary directory; outputs are checked."""

import glob
import json
import os
import shutil
import subprocess
import sys

import jsonschema
import numpy as np
import pandas as pd
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNAKEFILE = os.path.join(ROOT, "workflow", "Snakefile")


def snakemake(workdir, *args, timeout=900):
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", SNAKEFILE, "--directory", str(workdir),
         "--configfile", os.path.join(ROOT, "config", "smoke.yaml"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env,
    )


def test_lint_is_clean(tmp_path):
    proc = snakemake(tmp_path, "--lint")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("smoke")
    proc = snakemake(workdir, "--cores", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return workdir / "results" / "smoke"


@pytest.mark.slow
def test_smoke_dag_outputs_are_complete_and_schema_valid(smoke_run):
    with open(os.path.join(ROOT, "workflow", "schemas", "metrics.schema.json")) as f:
        schema = json.load(f)
    files = sorted(glob.glob(str(smoke_run / "runs" / "*" / "*" / "*" / "seed*" / "metrics.json")))
    assert len(files) == 2 * 3  # methods × seeds
    for path in files + glob.glob(str(smoke_run / "teacher" / "*" / "*" / "seed*" / "metrics.json")):
        metrics = json.load(open(path))
        jsonschema.validate(metrics, schema)
        pred = np.load(os.path.join(os.path.dirname(path), "predictions.npz"))
        assert pred["prob"].shape == (1000, 10) and pred["pred"].shape == pred["label"].shape == (1000,)
        np.testing.assert_allclose(pred["prob"].sum(1), 1.0, atol=1e-5)
        assert np.mean(pred["pred"] == pred["label"]) == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    assert os.path.isdir(smoke_run / "teacher" / "mnist1d" / "cnn" / "seed0" / "checkpoint")
    kd = json.load(open(smoke_run / "runs" / "mnist1d" / "mlp64" / "kd" / "seed0" / "metrics.json"))
    assert kd["compute"]["teacher_forwards"] == kd["compute"]["student_steps"] == 200
    assert [h["student_steps"] for h in kd["history"]] == [50, 100, 150, 200]


@pytest.mark.slow
def test_summary_table_matches_the_runs(smoke_run):
    summary = pd.read_csv(smoke_run / "tables" / "summary.csv")
    assert list(summary["method"]) == ["scratch", "kd"]
    assert (summary["n_seeds"] == 3).all()
    for row in summary.itertuples():
        accs = [json.load(open(p))["test_accuracy"] for p in glob.glob(str(smoke_run / "runs" / "mnist1d" / "mlp64" / row.method / "seed*" / "metrics.json"))]
        assert row.test_acc_mean == pytest.approx(np.mean(accs), rel=1e-5)
        assert row.test_acc_ci_low < row.test_acc_mean < row.test_acc_ci_high
    md = (smoke_run / "tables" / "summary.md").read_text()
    assert "| kd " in md and "| scratch " in md
    for fig in ("accuracy.png", "curves.png"):
        assert (smoke_run / "figures" / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_tables_regenerate_to_the_same_bytes(smoke_run, tmp_path):
    copy = tmp_path / "smoke"
    shutil.copytree(smoke_run, copy)
    before = {p: (copy / "tables" / p).read_bytes() for p in ("summary.csv", "summary.md")}
    shutil.rmtree(copy / "tables")
    subprocess.run([sys.executable, "-m", "ev3", "aggregate", str(copy)], cwd=ROOT, check=True, capture_output=True)
    assert before == {p: (copy / "tables" / p).read_bytes() for p in before}


@pytest.mark.slow
def test_report_is_a_self_contained_page(smoke_run):
    workdir = smoke_run.parent.parent
    proc = snakemake(workdir, "--report", "results/smoke/report.html")
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (smoke_run / "report.html").read_text()
    assert "summary.csv" in html and "accuracy.png" in html


@pytest.mark.slow
def test_rerun_is_a_no_op(smoke_run):
    proc = snakemake(smoke_run.parent.parent, "-n", "--cores", "1")
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr
