"""The DAG with seed groups (seeds_per_job count S > 1): one training job per (dataset, student, method, group),
and Snakemake's rerun triggers rerun exactly the runs a config change touches.

One tiny benchmark (20-step teacher and students, methods scratch and kd, seeds 0–2, S = 2) is built for real
once; the edits are then planned with ``snakemake -n`` against its metadata, and one is run.
"""

import copy
import os
import re
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNAKEFILE = os.path.join(ROOT, "workflow", "Snakefile")


def _config(smoke_config):
    config = copy.deepcopy(smoke_config)
    config["benchmark"] = "groups"
    config["teacher"]["train"].update(steps=20, eval_every=10)
    config["train"].update(steps=20, eval_every=10)
    config["methods"] = {name: config["methods"][name] for name in ("scratch", "kd")}
    config["seeds"] = [0, 1, 2]
    config["seeds_per_job"] = {"count": 2, "mode": "sequential"}
    return config


def _targets(config):
    return [f"results/groups/runs/mnist1d/mlp64/{m}/seed{s}/metrics.json" for m in config["methods"] for s in config["seeds"]]


def _snakemake(workdir, config, *args):
    path = os.path.join(workdir, "config.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    cmd = [sys.executable, "-m", "snakemake", "-s", SNAKEFILE, "--directory", str(workdir), "--configfile", path,
           "--cores", "2", *args, *_targets(config)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout + done.stderr


def _planned(workdir, config) -> list[tuple[str, str]]:
    """The training jobs a dry run plans: sorted (rule, method)."""
    out = _snakemake(workdir, config, "-n")
    jobs = re.findall(r"^rule (train_student\w*):\n(?:    .*\n)*?    wildcards: .*method=([\w-]+)", out, re.M)
    return sorted(jobs)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    with open(os.path.join(ROOT, "config", "smoke.yaml")) as f:
        config = _config(yaml.safe_load(f))
    workdir = tmp_path_factory.mktemp("groups")
    planned = _planned(workdir, config)
    _snakemake(workdir, config)
    return workdir, config, planned


def test_one_job_per_seed_group_and_method(built):
    _, config, planned = built
    assert planned == sorted((f"train_student_g{g}", m) for g in (0, 1) for m in ("scratch", "kd"))  # 3 seeds, S = 2
    assert _planned(built[0], config) == []  # everything built: nothing to rerun


def test_a_changed_method_option_reruns_exactly_that_methods_runs(built):
    workdir, config, _ = built
    config = copy.deepcopy(config)
    config["methods"]["kd"]["temperature"] = 2.0
    assert _planned(workdir, config) == [("train_student_g0", "kd"), ("train_student_g1", "kd")]
    config["models"]["mlp64"]["width"] = 32  # the student model: every run of it
    assert len(_planned(workdir, config)) == 4


def test_a_new_seed_makes_a_new_group_or_extends_the_last_and_reruns_nothing_else(built):
    workdir, config, _ = built
    new_group = {**config, "seeds": [0, 1, 2, 4]}  # 4 // 2 = 2: a new group; group 1 stays [2]
    assert _planned(workdir, new_group) == [("train_student_g2", "kd"), ("train_student_g2", "scratch")]
    extended = {**config, "seeds": [0, 1, 2, 3]}  # 3 // 2 = 1: group 1 becomes [2, 3]
    assert _planned(workdir, extended) == [("train_student_g1", "kd"), ("train_student_g1", "scratch")]
    runs = os.path.join(workdir, "results", "groups", "runs", "mnist1d", "mlp64")
    before = {m: open(os.path.join(runs, m, "seed2", "metrics.json")).read() for m in ("scratch", "kd")}
    log = _snakemake(workdir, extended)
    assert log.count("rule train_student_g1:") == 2
    for method in ("scratch", "kd"):  # seed 2 restored from its record (same wall time: not retrained), seed 3 new
        assert open(os.path.join(runs, method, "seed2", "metrics.json")).read() == before[method]
        assert os.path.exists(os.path.join(runs, method, "seed3", "predictions.npz"))
        job_log = open(os.path.join(workdir, "results", "groups", "logs", "runs", "mnist1d", "mlp64", method,
                                    "train_student_g1.log")).read()
        assert f"[{method} seed2] finished before: outputs restored" in job_log and f"[{method} seed3] test accuracy" in job_log
    assert _planned(workdir, extended) == []
