"""Whole runs of the feature methods on the smoke benchmark's CNN student: each writes a schema-valid metrics.json
(``python -m ev3 train``'s ``ev3.run.run``) reporting the student network alone."""

import json
import os

import jsonschema
import pytest
import yaml

from ev3.config import RunSpec, student_run, teacher_run, validate
from ev3.report.aggregate import METRICS_SCHEMA
from ev3.run import run

ROOT = os.path.join(os.path.dirname(__file__), "..")
FEATURE_METHODS = ("fitnet", "at", "rkd", "crd", "reviewkd")
STEPS, EVERY = 6, 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory, data_dir):
    """The smoke config with short runs, and its cnn teacher trained for a few steps (a checkpoint on disk)."""
    with open(os.path.join(ROOT, "config", "smoke.yaml")) as f:
        config = yaml.safe_load(f)
    config["train"].update(steps=STEPS, eval_every=EVERY)
    config["teacher"]["train"].update(steps=20, eval_every=20)
    config = validate(config)
    teacher_dir = str(tmp_path_factory.mktemp("teacher"))
    spec = RunSpec.from_dict({**teacher_run(config, "mnist1d", "cnn"), "data_dir": data_dir})
    run(spec, teacher_dir, log=lambda s: None)
    return config, teacher_dir


def student_spec(config, teacher_dir, data_dir, method):
    return RunSpec.from_dict({**student_run(config, "mnist1d", "cnn-small", method, 0), "data_dir": data_dir,
                              "teacher_dir": teacher_dir})


@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_each_feature_method_trains_and_writes_schema_valid_metrics(method, setup, data_dir, tmp_path):
    config, teacher_dir = setup
    metrics = run(student_spec(config, teacher_dir, data_dir, method), str(tmp_path), log=lambda s: None)
    with open(METRICS_SCHEMA) as f:
        schema = json.load(f)
    with open(tmp_path / "metrics.json") as f:
        written = json.load(f)
    jsonschema.validate(written, schema)
    assert written["method_type"] == method and written["student"] == "cnn-small"
    assert [h["student_steps"] for h in written["history"]] == [EVERY, STEPS]
    assert written["compute"]["student_steps"] == STEPS and written["compute"]["teacher_forwards"] == STEPS
    # The student network alone is reported (no connector parameters), and its FLOPs include the connector's.
    cnn = config["models"]["cnn-small"]
    assert metrics["student_params"] == student_param_count(cnn, 40, 10)
    assert written["compute"]["flops_student"] > 0
    if method == "crd":
        assert written["crd"]["nce_k"] < written["crd"]["n_data"]
        assert all(z > 0 for z in written["crd"]["normalizers"])


def student_param_count(cnn: dict, length: int, classes: int) -> int:
    """Parameters of the 1-D CNN (SAME padding, stride s): convolutions, then the head on the flattened map."""
    total, c_in = 0, 1
    for c in cnn["channels"]:
        total += cnn["kernel_size"] * c_in * c + c
        length, c_in = -(-length // cnn["stride"]), c
    return total + length * c_in * classes + classes
