"""The methods with connectors (fitnet's regressor, crd's embedding heads, reviewkd's fusion) step by step: the
distillation gradient reaches the connectors (and only through the distillation weight), the connectors'
BatchNorm statistics run in train mode, the teacher's parameters and BatchNorm statistics stay bitwise
unchanged, and evaluation sees the student network alone. (at and rkd, without connectors, get the same teacher
and evaluation checks in tests/test_feature_cifar.py.)"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ev3 import methods, models
from ev3.config import RunSpec, student_run, validate
from ev3.data import load
from ev3.methods.common import Frozen

FEATURE_METHODS = ("fitnet", "at", "rkd", "crd", "reviewkd")
WEIGHT = {"fitnet": "beta", "at": "beta", "rkd": "beta", "crd": "beta", "reviewkd": "weight"}
WITH_CONNECTOR = ("fitnet", "crd", "reviewkd")


def feature_config(config: dict, student: str, teacher: str, models_: dict, dataset: str) -> dict:
    """``config`` (smoke) with one student and teacher, the feature methods on every student."""
    config = copy.deepcopy(config)
    config["models"].update(models_)
    config.update(students=[student], datasets=[dataset])
    if dataset != "mnist1d":  # the smoke config's views are mnist1d's signal transforms
        for train in (config["train"], config["teacher"]["train"]):
            train.pop("augment", None)
    config["teacher"]["model"] = teacher
    config["methods"] = {m: {k: v for k, v in config["methods"][m].items() if k != "students"} for m in FEATURE_METHODS}
    config["methods"]["reviewkd"]["warmup_steps"] = 0  # the distillation term from the first step
    return validate(config)


def spec_of(config, dataset, student, method, data_dir):
    return RunSpec.from_dict({**student_run(config, dataset, student, method, 0), "data_dir": data_dir})


def batch_of(data, method, n=16, start=0):
    x, y = (a[start : start + n] for a in data.splits["train"])
    return (x, y, jnp.arange(start, start + n, dtype=jnp.int32)) if method == "crd" else (x, y)


@pytest.fixture(scope="module")
def digits(data_dir):
    return load("digits", data_dir, seed=0, val=0.1, meta=0.1)


@pytest.fixture(scope="module")
def resnets(smoke_config_module, data_dir, digits):
    """A ResNet-8 teacher (BatchNorm) and a 3-stage 2-D CNN student on 8×8 digits (stages 4×4, 2×2, 1×1 against
    the teacher's 8×8, 4×4, 2×2: AT pools the teacher's maps, FitNet's regressor upsamples); the teacher need not
    be trained: its BatchNorm variances are scaled away from the initial ones (1.5), so a re-initialisation
    would show."""
    config = feature_config(smoke_config_module, "c3", "r8t", {
        "c3": {"type": "cnn", "channels": [8, 8, 8], "kernel_size": 3, "stride": 2},
        "r8t": {"type": "resnet", "depth": 8}}, "digits")
    net = models.build(config["models"]["r8t"], digits.input_shape, digits.num_classes, jax.random.key(7))
    rest = jax.tree.map(lambda a: a * 1.5 if jnp.issubdtype(a.dtype, jnp.floating) else a, net.rest)
    return config, Frozen(net.graphdef, net.params, rest)


@pytest.fixture(scope="module")
def smoke_config_module():
    import os

    import yaml

    with open(os.path.join(os.path.dirname(__file__), "..", "config", "smoke.yaml")) as f:
        return yaml.safe_load(f)


def leaves(tree):
    return [np.asarray(a) for a in jax.tree.leaves(tree)]


def same(a, b) -> list[bool]:
    """Per leaf: bitwise equal."""
    return [np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b), strict=True)]


@pytest.mark.parametrize("method", WITH_CONNECTOR)
def test_steps_train_student_and_connectors_and_leave_the_teacher_bitwise_unchanged(method, resnets, digits, data_dir):
    config, teacher = resnets
    module = methods.get(method)
    spec = spec_of(config, "digits", "c3", method, data_dir)
    initial = module.init(spec, digits, teacher, jax.random.key(0))
    teacher_before = (leaves(teacher.params), leaves(teacher.rest))
    step = jax.jit(module.step)
    state = initial
    for k in range(2):
        state, logs = step(state, batch_of(digits, method, start=16 * k), jax.random.key(k))
        assert np.isfinite(float(logs["loss"])) and float(logs["distill_loss"]) > 0
    # The teacher: the same parameters and BatchNorm statistics, bit for bit, inside the state and outside.
    for tree, before in ((state.teacher.params, teacher_before[0]), (state.teacher.rest, teacher_before[1])):
        assert all(np.array_equal(a, b) for a, b in zip(leaves(tree), before, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(leaves(teacher.rest), teacher_before[1]))
    # The student trained: every parameter moved.
    assert not any(same(state.params["student"], initial.params["student"]))
    # Connectors: every parameter moved; with the distillation weight 0 none does (Adam's update of a zero
    # gradient is exactly 0), so what moved them is the distillation term's gradient.
    assert not any(same(state.params["connector"], initial.params["connector"]))
    if method != "crd":  # the regressor's and the fusion modules' BatchNorm statistics run in train mode
        assert not any(same(state.rest["connector"], initial.rest["connector"]))
    weight = WEIGHT[method]
    off = initial.replace(hparams={**initial.hparams, weight: jnp.float32(0.0)})
    stepped, logs = step(off, batch_of(digits, method), jax.random.key(0))
    assert float(logs["distill_loss"]) == 0.0
    assert all(same(stepped.params["connector"], initial.params["connector"]))
    assert not any(same(stepped.params["student"], initial.params["student"]))  # CE still trains the student
    # Evaluation drops the connector: the model is the student network alone.
    model = module.model(state)
    assert model.student.graphdef is state.graphdef
    student_leaves = jax.tree.leaves((state.params["student"], state.rest["student"]))
    assert all(a is b for a, b in zip(jax.tree.leaves(model), student_leaves, strict=True))
