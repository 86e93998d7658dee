"""Teachers per student (config teacher.model mapping) and imported teacher checkpoints (teacher.checkpoint)."""

import dataclasses
import os

import numpy as np
import pytest

from ev3.config import ConfigError, RunSpec, student_run, teacher_models, teacher_run, validate
from ev3.run import run

NOLOG = lambda s: None  # noqa: E731


def _pairs(config):
    config["models"]["mlp32"] = {"type": "mlp", "width": 32, "depth": 1}
    config["students"] = ["mlp64", "mlp32"]
    config["methods"] = {k: m for k, m in config["methods"].items() if "students" not in m}  # those name other students
    config["teacher"]["model"] = {"mlp64": "cnn", "mlp32": "mlp64"}
    return config


def test_each_student_gets_its_teacher(smoke_config):
    config = validate(_pairs(smoke_config))
    assert teacher_models(config) == ["cnn", "mlp64"]
    for student, teacher in [("mlp64", "cnn"), ("mlp32", "mlp64")]:
        r = student_run(config, "mnist1d", student, "kd", 0)
        assert r["teacher"] == teacher and r["teacher_model"] == config["models"][teacher]
        assert r["teacher_dir"].endswith(os.path.join("teacher", "mnist1d", teacher, "seed0"))


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda c: c["teacher"]["model"].pop("mlp32"), "teacher/model/mlp32"),
        (lambda c: c["teacher"]["model"].update(mlp8="cnn"), "teacher/model/mlp8"),
        (lambda c: c["teacher"]["model"].update(mlp32="resnet"), "teacher/model/mlp32"),
        (lambda c: c["teacher"].update(checkpoint="/x"), "teacher/checkpoint"),
        (lambda c: c["teacher"].update(checkpoint={"mlp8": "/x"}), "teacher/checkpoint/mlp8"),
        (lambda c: c["teacher"].update(checkpoint=3), "teacher/checkpoint"),
    ],
)
def test_bad_teacher_configs_name_the_key(smoke_config, edit, key):
    config = _pairs(smoke_config)
    edit(config)
    with pytest.raises(ConfigError, match=f"^{key}"):
        validate(config)


def test_an_imported_teacher_checkpoint_reproduces_the_trained_teacher(smoke_config, data_dir, tmp_path):
    config = validate(smoke_config)
    config["teacher"]["train"].update(steps=30, eval_every=30)
    trained = RunSpec.from_dict({**teacher_run(config, "mnist1d", "cnn"), "data_dir": data_dir})
    a = run(trained, str(tmp_path / "trained"), log=NOLOG)

    config["teacher"]["checkpoint"] = str(tmp_path / "trained" / "checkpoint")
    imported = RunSpec.from_dict({**teacher_run(validate(config), "mnist1d", "cnn"), "data_dir": data_dir})
    assert imported.options == {"checkpoint": config["teacher"]["checkpoint"]}
    b = run(imported, str(tmp_path / "imported"), log=NOLOG)
    assert b["test_accuracy"] == a["test_accuracy"] and b["val_accuracy"] == a["val_accuracy"]
    assert b["compute"]["student_steps"] == 0 and b["compute"]["flops_student"] == 0
    pa, pb = np.load(tmp_path / "trained" / "predictions.npz"), np.load(tmp_path / "imported" / "predictions.npz")
    np.testing.assert_array_equal(pa["prob"], pb["prob"])
    assert os.path.isdir(tmp_path / "imported" / "checkpoint")  # students read the copy as usual

    wrong = dataclasses.replace(imported, model={"type": "mlp", "width": 8, "depth": 1})  # not this model's checkpoint
    with pytest.raises(ValueError, match="teacher checkpoint at .* is unreadable"):
        run(wrong, str(tmp_path / "wrong"), log=NOLOG)
    assert not (tmp_path / "wrong" / "metrics.json").exists()
