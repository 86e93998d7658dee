"""The training core imports and trains without the data, config and workflow stack (a bare GPU stack: jax,
flax, optax, orbax, numpy, scipy, yaml): tensorflow_datasets, snakemake, pandas, matplotlib and jsonschema are
blocked in a subprocess (``tests/scripts/bare_stack.py``), which then builds resnet20 and resnet56, trains KD
steps and evaluates."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ev3.methods import REGISTRY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "scripts", "bare_stack.py")
BLOCKED = ["tensorflow_datasets", "snakemake", "pandas", "matplotlib", "jsonschema"]


def bare(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=timeout)


@pytest.mark.parametrize("module, culprit", [("ev3.report.aggregate", "jsonschema"),
                                             ("ev3.data.embedded", "tensorflow_datasets")])
def test_the_block_catches_a_module_level_import(module, culprit):
    r = bare("--import-only", module, timeout=120)
    assert r.returncode != 0 and "ImportError" in r.stderr and f"{culprit} is blocked" in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize("module", ["ev3.config", "ev3.run", "ev3.cli", "ev3.devices"])
def test_the_run_path_imports_without_the_blocked_packages(module):
    r = bare("--import-only", module, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.slow
def test_resnet_kd_trains_and_evaluates_without_the_blocked_packages():
    """resnet56 teacher (live) → resnet20 student, 4 KD steps at batch 8 on 64 synthetic 32×32×3 images with
    100 classes; about 35 s of CPU time, most of it compiling the step."""
    r = bare("--steps", "4")
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["already_imported"] == [] and out["blocked_in_modules"] == []
    assert out["blocker_works"] == BLOCKED  # each blocked package really fails to import there
    assert set(out["method_modules"]) == {f"ev3.methods.{m}" for m in REGISTRY.values()}  # every method module
    # The published CIFAR-100 parameter counts (RepDistiller/CRD tables): 0.28 M and 0.86 M.
    assert abs(out["params"]["resnet20"] / 1e6 - 0.28) < 0.005 and abs(out["params"]["resnet56"] / 1e6 - 0.86) < 0.005
    assert out["compute"] == {"student_steps": 4, "teacher_forwards": 4, "teacher_backwards": 0}
    assert out["flops"]["flops_student"] > 0 and out["flops"]["flops_teacher"] > 0
    assert [h["student_steps"] for h in out["history"]] == [2, 4]
    assert all(np.isfinite(h["train_loss"]) and 0.0 <= h["val_accuracy"] <= 1.0 for h in out["history"])
    assert out["param_change"] > 0  # the steps moved the student
    assert out["teacher_test_logits_shape"] == [16, 100] and out["teacher_test_logits_finite"]
    assert out["test_logits_shape"] == [16, 100] and out["test_logits_finite"]
    assert out["test_accuracy"] == out["test_accuracy_recomputed"]
    np.testing.assert_allclose(out["prob_rows_sum"], 1.0, rtol=1e-5)
