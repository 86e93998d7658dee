"""Model registry and the functional view of a flax NNX model.

A model is built once from ``(model_config, input_shape, num_classes, key)`` and split into a static
``graphdef``, trainable ``params`` (``nnx.Param``) and ``rest`` (everything else, e.g. BatchNorm
statistics of the ResNets; empty for the MLP and CNN). Training code only sees these pytrees and :func:`apply`.
``apply(..., features=True)`` also returns the intermediate features (:class:`Features`; names, shapes and which
are pre-activation in ``ev3.models.features``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
from flax import nnx

from ev3.models.cnn import CNN
from ev3.models.features import Features
from ev3.models.mlp import MLP
from ev3.models.resnet import ResNet, WideResNet

MODEL_TYPES = {"mlp": MLP, "cnn": CNN, "resnet": ResNet, "wrn": WideResNet}


class Network(NamedTuple):
    """A model in functional form: ``graphdef`` is static, ``params`` and ``rest`` are pytrees of arrays."""

    graphdef: Any
    params: Any
    rest: Any


def build(model_config: dict, input_shape: tuple[int, ...], num_classes: int, key: jax.Array) -> Network:
    """Initialize the model named by ``model_config["type"]`` (other keys are its constructor options).

    The initialization runs as one compiled function (eager flax init would compile every op separately)."""
    options = {k: v for k, v in model_config.items() if k != "type"}

    def module(key):
        return MODEL_TYPES[model_config["type"]](tuple(input_shape), num_classes, **options, rngs=nnx.Rngs(params=key))

    graphdef = nnx.split(nnx.eval_shape(lambda: module(key)), nnx.Param, ...)[0]
    params, rest = jax.jit(lambda k: nnx.split(module(k), nnx.Param, ...)[1:])(key)
    return Network(graphdef, params, rest)


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
