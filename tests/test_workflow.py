"""End to end: the smoke DAG runs with Snakemake into a temporary directory; outputs are checked."""

import glob
import json
import os
import re
import shutil
import subprocess
import sys

import jsonschema
import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import require_tool
from ev3.config import run_dir, student_runs, teacher_dir, teacher_models, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNAKEFILE = os.path.join(ROOT, "workflow", "Snakefile")
# The smoke DAG here runs two of the smoke config's seeds (every method and rule, a third fewer runs): an overlay
# config file merged over config/smoke.yaml in every Snakemake call of this module.
SEEDS = [0, 1]


def smoke_config_here() -> dict:
    """config/smoke.yaml as this module runs it (validated): its seeds are :data:`SEEDS`."""
    return validate({**yaml.safe_load(open(os.path.join(ROOT, "config", "smoke.yaml"))), "seeds": SEEDS})


def snakemake(workdir, *args, timeout=900):
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    overlay = os.path.join(str(workdir), "seeds.yaml")
    with open(overlay, "w") as f:
        yaml.safe_dump({"seeds": SEEDS}, f)
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", SNAKEFILE, "--directory", str(workdir),
         "--configfile", os.path.join(ROOT, "config", "smoke.yaml"), overlay, *args],
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
    smoke = smoke_config_here()
    assert len(files) == len(student_runs(smoke))  # each method on its students
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
    smoke = smoke_config_here()
    runs = sorted({(r["student"], r["method"]) for r in student_runs(smoke)})  # a method runs on its students
    assert sorted(zip(summary["student"], summary["method"])) == runs
    for _, rows in summary.groupby("student", sort=False):
        assert list(rows["method"][:2]) == ["scratch", "kd"]  # baselines first
    assert (summary["n_seeds"] == len(SEEDS)).all()
    for row in summary.itertuples():
        accs = [json.load(open(p))["test_accuracy"] for p in glob.glob(str(smoke_run / "runs" / "mnist1d" / row.student / row.method / "seed*" / "metrics.json"))]
        assert row.test_acc_mean == pytest.approx(np.mean(accs), rel=1e-5)
        assert row.test_acc_ci_low < row.test_acc_mean < row.test_acc_ci_high
    md = (smoke_run / "tables" / "summary.md").read_text()
    assert "| kd " in md and "| scratch " in md
    for fig in ("accuracy.png", "curves.png"):
        assert (smoke_run / "figures" / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_tables_and_figures_regenerate_to_the_same_bytes(smoke_run, tmp_path):
    copy = tmp_path / "smoke"
    shutil.copytree(smoke_run, copy)
    outputs = [p.relative_to(copy) for d in ("tables", "figures") for p in sorted((copy / d).iterdir())]
    assert {"tables/summary.csv", "tables/significance.csv", "figures/accuracy_vs_flops.png"} <= {str(p) for p in outputs}
    before = {p: (copy / p).read_bytes() for p in outputs}
    shutil.rmtree(copy / "tables")
    shutil.rmtree(copy / "figures")
    subprocess.run([sys.executable, "-m", "ev3", "aggregate", str(copy)], cwd=ROOT, check=True, capture_output=True)
    assert before == {p: (copy / p).read_bytes() for p in outputs}


def report_outputs(config: dict) -> list[str]:
    """Every table and figure the report must show for ``config`` (optional figures by method type)."""
    from ev3.report import OPTIONAL_FIGURES

    types = {m["type"] for m in config["methods"].values()}
    return (
        [f"tables/{t}.csv" for t in ("summary", "significance", "compute", "matched_compute", "fidelity", "ev3", "runs")]
        + [f"tables/{t}.md" for t in ("summary", "significance", "compute", "matched_compute", "fidelity", "ev3")]
        + [f"figures/{f}.png" for f in ("accuracy", "curves", "accuracy_vs_flops", "agreement")]
        + [f"figures/{f}.png" for f, t in OPTIONAL_FIGURES.items() if t in types]
    )


def chromium(*args, timeout=180):
    """Run headless Debian chromium offline (skipped when it is missing, failed with EV3_REQUIRE_TOOLS=1)."""
    exe = require_tool("chromium")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_report_is_a_self_contained_page_with_every_table_and_figure(smoke_run, smoke_config, tmp_path):
    expected = report_outputs(smoke_config)
    for rel in expected:
        assert (smoke_run / rel).stat().st_size > 0, rel
    proc = snakemake(smoke_run.parent.parent, "--report", "results/smoke/report.html")
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (smoke_run / "report.html").read_text()
    for rel in expected + ["config.yaml"]:
        if not rel.endswith(".md"):  # every table, figure and the config embedded as a data URI
            assert re.search(rf"data:[\w/+.-]+(;[^;,\"]+)*;filename={re.escape(os.path.basename(rel))};base64,", html), rel
    external = re.findall(r"""(?:src|href)\s*[=:]\s*["'`]?\s*(https?://[^"'`\s>]+)""", html, flags=re.I)
    assert not external, f"report.html loads external resources: {external[:5]}"

    url = (smoke_run / "report.html").as_uri()
    dom = chromium(f"--user-data-dir={tmp_path / 'profile-dom'}", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = re.sub(r"<script\b.*?</script>", "", dom.stdout, flags=re.S)  # what the page's scripts built
    for heading in ("Test accuracy: mean and 95 % CI over seeds", "Paired differences to kd and scratch",
                    "Compute per run", "Test accuracy at matched budgets"):
        assert heading in rendered, f"rendered report lacks {heading!r}"
    assert rendered.count("<table") >= 4

    png = tmp_path / "report.png"
    shot = chromium(f"--user-data-dir={tmp_path / 'profile-shot'}", f"--screenshot={png}", "--window-size=1400,2000", url)
    assert shot.returncode == 0 and png.exists(), shot.stderr[-2000:]
    assert png.stat().st_size > 50_000
    pixels = matplotlib.image.imread(str(png))
    assert pixels.shape[:2] == (2000, 1400)
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 50  # not a blank or single-color page


def test_the_aggregate_job_waits_for_every_run_exactly(tmp_path):
    """The aggregate job's inputs are every run's metrics.json and predictions.npz, every teacher's metrics and
    the resolved config: in a fresh directory each is produced by another job, so its reason line names exactly
    the inputs."""
    proc = snakemake(tmp_path, "-n")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    at = [i for i, line in enumerate(lines) if re.match(r"^(local)?rule aggregate:$", line)]
    assert len(at) == 1, [line for line in lines if "aggregate" in line]
    block = lines[at[0] + 1:]
    block = block[:next(i for i, line in enumerate(block) if not line.startswith(" "))]
    (reason,) = [line.strip() for line in block if line.strip().startswith("reason: ")]
    updated = re.search(r"Input files updated by another job: (.*?)(?:;|$)", reason).group(1).split(", ")
    config = smoke_config_here()
    runs = student_runs(config)
    want = {os.path.join(run_dir(config, **r), name) for r in runs for name in ("metrics.json", "predictions.npz")}
    want |= {os.path.join(teacher_dir(config, d, t), "metrics.json") for d in config["datasets"]
             for t in teacher_models(config)}
    want.add(f"results/{config['benchmark']}/config.yaml")
    assert len(updated) == len(set(updated)) and set(updated) == want, set(updated) ^ want


def test_optional_figures_are_outputs_only_for_their_method_types(smoke_config, tmp_path):
    def outputs(methods):
        config = {**smoke_config, "methods": methods}
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        proc = subprocess.run(
            [sys.executable, "-m", "snakemake", "-s", SNAKEFILE, "--directory", str(tmp_path), "--configfile", str(path),
             "--detailed-summary"], cwd=ROOT, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    with open(os.path.join(ROOT, "config", "config.yaml")) as f:
        default = yaml.safe_load(f)["methods"]
    metadistil = {name: m for name, m in default.items() if m["type"] == "metadistil"}
    assert metadistil, "config/config.yaml defines no metadistil method to test with"
    baselines = {name: m for name, m in default.items() if m["type"] in ("scratch", "kd")}
    assert "metadistil_teacher.png" not in outputs(baselines)
    with_metadistil = outputs({**baselines, **metadistil})
    assert "results/smoke/figures/metadistil_teacher.png" in with_metadistil
    assert "ev3_trajectory.png" not in with_metadistil


@pytest.mark.slow
def test_rerun_is_a_no_op(smoke_run):
    proc = snakemake(smoke_run.parent.parent, "-n", "--cores", "1")
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr
