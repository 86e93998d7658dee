"""Model registry and the functional view of a flax NNX model.

A model is built once from ``(model_config, input_shape, num_classes, key)`` and split into a static
``graphdef``, trainable ``params`` (``nnx.Param``) and ``rest`` (everything else, e.g. BatchNorm
statistics of the convolutional zoo; empty for the MLP and CNN). Training code only sees these pytrees and :func:`apply`.
``apply(..., features=True)`` also returns the intermediate features (:class:`Features`; names, shapes and which
are pre-activation in ``ev3.models.features``).
"""

from __future__ import annotations

import functools
import json
from typing import Any, NamedTuple

import jax
from flax import nnx

from ev3.models.cnn import CNN
from ev3.models.features import Features
from ev3.models.mlp import MLP
from ev3.models.mobilenetv2 import MobileNetV2
from ev3.models.resnet import ResNet, WideResNet
from ev3.models.resnetv2 import ResNetV2
from ev3.models.shufflenetv1 import ShuffleNetV1
from ev3.models.shufflenetv2 import ShuffleNetV2
from ev3.models.vgg import VGG

MODEL_TYPES = {"mlp": MLP, "cnn": CNN, "resnet": ResNet, "wrn": WideResNet, "vgg": VGG, "mobilenetv2": MobileNetV2,
               "shufflenetv1": ShuffleNetV1, "shufflenetv2": ShuffleNetV2, "resnetv2": ResNetV2}
"""``type`` → model class: ``ev3.models.{mlp, cnn, resnet}`` (resnet, wrn) and the CIFAR zoo of the KD suites
(RepDistiller / mdistiller): ``vgg``, ``mobilenetv2``, ``shufflenetv1``, ``shufflenetv2``, ``resnetv2``."""


class Network(NamedTuple):
    """A model in functional form: ``graphdef`` is static, ``params`` and ``rest`` are pytrees of arrays."""

    graphdef: Any
    params: Any
    rest: Any


def build(model_config: dict, input_shape: tuple[int, ...], num_classes: int, key: jax.Array) -> Network:
    """Initialize the model named by ``model_config["type"]`` (other keys are its constructor options).

    The initialization runs as one compiled function (eager flax init would compile every op separately), one per
    (config, input shape, classes) in a process, so the runs of one job compile it once."""
    init = _initializer(json.dumps(model_config, sort_keys=True), tuple(input_shape), num_classes)
    graphdef = init.graphdef(key)
    params, rest = init(key)
    return Network(graphdef, params, rest)


@functools.lru_cache(maxsize=64)
def _initializer(model_config_json: str, input_shape: tuple[int, ...], num_classes: int):
    """``key -> (params, rest)`` jitted, with ``.graphdef(key)``: the model's static graph."""
    model_config = json.loads(model_config_json)
    options = {k: v for k, v in model_config.items() if k != "type"}

    def module(key):
        return MODEL_TYPES[model_config["type"]](input_shape, num_classes, **options, rngs=nnx.Rngs(params=key))

    init = jax.jit(lambda k: nnx.split(module(k), nnx.Param, ...)[1:])
    init.graphdef = lambda key: nnx.split(nnx.eval_shape(lambda: module(key)), nnx.Param, ...)[0]
    return init


def apply(graphdef, params, rest, x: jax.Array, *, train: bool = False, features: bool = False) -> tuple[Any, Any]:
    """Pure forward pass: logits (B, C) and the updated ``rest`` (BatchNorm statistics in train mode).

    With ``features=True`` the first element is ``(logits, Features)`` instead; the logits and ``rest`` are those
    of the plain forward, which stays the default path (no extra work)."""
    # copy=True: fresh Variables in the current trace, so BatchNorm may update its statistics inside jax.grad
    model = nnx.merge(graphdef, params, rest, copy=True)
    model.train() if train else model.eval()
    out = model.features(x) if features else model(x)
    return out, nnx.state(model, nnx.Not(nnx.Param))


def logits_fn(network: Network):
    """``(params, x) -> logits`` in eval mode, with ``rest`` closed over (for frozen models and tests)."""
    return lambda params, x: apply(network.graphdef, params, network.rest, x)[0]


def param_count(params) -> int:
    return sum(int(p.size) for p in jax.tree.leaves(params))
