"""The feature methods on the CIFAR teacher–student pairs of config/cifar100.yaml (and cifar10.yaml's, a subset):
one step of each method compiled and run on CPU on synthetic CIFAR-shaped data for the pair that compiles
fastest (resnet32x4 → resnet8x4: the fewest blocks); the other pairs are traced in
tests/test_feature_cifar_pairs.py. A CIFAR run needs a GPU and the downloaded data; this
checks the configs' methods apply where they say."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from ev3 import methods, models
from ev3.config import RunSpec, student_run, teacher_of, validate
from ev3.data import Dataset
from ev3.methods.common import Frozen

ROOT = os.path.join(os.path.dirname(__file__), "..")
FEATURE_METHODS = ("fitnet", "at", "rkd", "crd", "reviewkd")
N, BATCH = 256, 4


def config_of(name):
    with open(os.path.join(ROOT, "config", name)) as f:
        return validate(yaml.safe_load(f))


CIFAR100 = config_of("cifar100.yaml")


def synthetic(num_classes: int) -> Dataset:
    """CIFAR-shaped random images (32×32×3) and labels, every class present."""
    x = jax.random.normal(jax.random.key(0), (N, 32, 32, 3), jnp.float32)
    y = jnp.arange(N, dtype=jnp.int32) % num_classes
    return Dataset("cifar100", num_classes, (32, 32, 3), {k: (x, y) for k in ("train", "val", "meta", "test")})


def spec_of(config, student, method):
    return RunSpec.from_dict({**student_run(config, config["datasets"][0], student, method, 0), "data_dir": "/nonexistent"})


def batch_of(data, method):
    x, y = (a[:BATCH] for a in data.splits["train"])
    return (x, y, jnp.arange(BATCH, dtype=jnp.int32)) if method == "crd" else (x, y)


COMPILED = "resnet8x4"


@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_one_cpu_step_of_each_method_on_synthetic_cifar(method):
    """resnet8x4 ← resnet32x4 at batch 4: one compiled step, finite loss, every student parameter moved and its
    BatchNorm statistics updated (train mode), the teacher's parameters and BatchNorm statistics bitwise
    unchanged (eval mode, no gradient), the evaluated model the student network alone."""
    data = synthetic(100)
    student = COMPILED
    net = models.build(CIFAR100["models"][teacher_of(CIFAR100, student)], data.input_shape, 100, jax.random.key(1))
    module = methods.get(method)
    state = module.init(spec_of(CIFAR100, student, method), data, Frozen(*net), jax.random.key(0))
    new, logs = jax.jit(module.step)(state, batch_of(data, method), jax.random.key(1))
    assert np.isfinite(float(logs["loss"])) and float(logs["distill_loss"]) > 0

    def moved(a, b):
        return [not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)]

    assert all(moved(new.params["student"], state.params["student"]))
    assert all(moved(new.rest["student"], state.rest["student"]))
    assert not any(moved(new.teacher.params, net.params)) and not any(moved(new.teacher.rest, net.rest))
    model_leaves = jax.tree.leaves(module.model(new))
    assert all(a is b for a, b in zip(model_leaves, jax.tree.leaves((new.params["student"], new.rest["student"])), strict=True))
