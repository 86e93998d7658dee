"""The feature methods on the CIFAR teacher–student pairs of config/cifar100.yaml (and cifar10.yaml's, a subset):
one step of each method compiled and run on CPU on synthetic CIFAR-shaped data for the pair that compiles
fastest (resnet32x4 → resnet8x4: the fewest blocks), and each method's init and step traced
(``jax.eval_shape``: shapes only) for the other pairs, so the connectors fit every pair's features. A CIFAR run needs a GPU and the downloaded data; this
checks the configs' methods apply where they say."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from flax import nnx

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


def test_cifar10_pairs_are_cifar100_pairs():
    """cifar10.yaml's pairs and feature methods are cifar100.yaml's, so the checks below cover both."""
    cifar10 = config_of("cifar10.yaml")
    for student in cifar10["students"]:
        assert teacher_of(cifar10, student) == teacher_of(CIFAR100, student)
        assert cifar10["models"][student] == CIFAR100["models"][student]
        assert cifar10["models"][teacher_of(cifar10, student)] == CIFAR100["models"][teacher_of(CIFAR100, student)]
    for method in FEATURE_METHODS:
        assert cifar10["methods"][method] == CIFAR100["methods"][method]


def abstract_network(model_config: dict, data: Dataset):
    """(graphdef, params, rest) of a model with abstract leaves (nothing initialised)."""
    options = {k: v for k, v in model_config.items() if k != "type"}
    module = nnx.eval_shape(lambda: models.MODEL_TYPES[model_config["type"]](
        data.input_shape, data.num_classes, **options, rngs=nnx.Rngs(params=jax.random.key(0))))
    return nnx.split(module, nnx.Param, ...)


COMPILED = "resnet8x4"


@pytest.mark.parametrize("student", [s for s in CIFAR100["students"] if s != COMPILED])
def test_every_method_traces_on_the_other_pairs(student):
    data = synthetic(100)
    graphdef, params, rest = abstract_network(CIFAR100["models"][teacher_of(CIFAR100, student)], data)
    for method in FEATURE_METHODS:
        module = methods.get(method)
        spec = spec_of(CIFAR100, student, method)
        state = jax.eval_shape(lambda p, r, k: module.init(spec, data, Frozen(graphdef, p, r), k), params, rest,
                               jax.random.key(0))
        new, logs = jax.eval_shape(module.step, state, batch_of(data, method), jax.random.key(1))
        assert logs["loss"].shape == () and jax.tree.structure(new) == jax.tree.structure(state), (student, method)


@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_one_cpu_step_of_each_method_on_synthetic_cifar(method):
    """resnet8x4 ← resnet32x4 at batch 4: one compiled step, finite loss, every student parameter moved."""
    data = synthetic(100)
    student = COMPILED
    net = models.build(CIFAR100["models"][teacher_of(CIFAR100, student)], data.input_shape, 100, jax.random.key(1))
    module = methods.get(method)
    state = module.init(spec_of(CIFAR100, student, method), data, Frozen(*net), jax.random.key(0))
    new, logs = jax.jit(module.step)(state, batch_of(data, method), jax.random.key(1))
    assert np.isfinite(float(logs["loss"])) and float(logs["distill_loss"]) >= 0
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new.params["student"]), jax.tree.leaves(state.params["student"]))]
    assert all(moved)
