"""The feature methods on the CIFAR teacher-student pairs of config/cifar100.yaml (cifar10.yaml's pair is one of
them): each method's init and training step traced (``jax.eval_shape``: shapes only, nothing compiled) on
CIFAR-shaped inputs for the same-architecture pairs that tests/test_feature_cifar.py does not compile, so the
connectors fit every pair's features. The heterogeneous pairs (VGG / ResNet teachers, MobileNetV2 / ShuffleNet
students; a full trace takes 10–20 s a pair) are checked on their abstract features in tests/test_zoo.py."""

import jax
import pytest
from flax import nnx

from ev3 import methods, models
from ev3.config import teacher_of
from ev3.data import Dataset
from ev3.methods.common import Frozen

from test_feature_cifar import CIFAR100, COMPILED, FEATURE_METHODS, batch_of, config_of, spec_of, synthetic


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


SAME_ARCHITECTURE = [s for s in CIFAR100["students"]
                     if CIFAR100["models"][s]["type"] == CIFAR100["models"][teacher_of(CIFAR100, s)]["type"]]


@pytest.mark.parametrize("student", [s for s in SAME_ARCHITECTURE if s != COMPILED])
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
