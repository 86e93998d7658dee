"""Function-preserving growth of a student (EV3's "grow when progress stalls").

Every rule adds one layer or block at the end of the network whose initialization makes it the identity, so
the grown network computes exactly the same function (in eval and in train mode):

- MLP: a new ``width × width`` Linear with kernel ``I`` and bias 0 before the head (depth + 1); for post-ReLU
  activations ``h ≥ 0``, ``relu(I·h + 0) = h``.
- CNN: a new stride-1 convolution with the last channel count whose kernel is the identity at the centre tap
  (zero elsewhere) and bias 0, appended after the last convolution.
- ResNet: a new stride-1 BasicBlock of the last width appended to the last stage (``extra_blocks`` + 1), its
  last BatchNorm scale 0: the residual branch is ``0·x̂ + 0 = 0`` whatever the statistics, and the block input
  is a post-ReLU activation ``x ≥ 0``, so ``relu(x + 0) = x``.
- WRN: a new stride-1 pre-activation block appended likewise, its last convolution zero: ``x + 0 = x``.

Parameters and BatchNorm statistics of existing layers are copied; the new layer's are the only new ones.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ev3 import models
from ev3.models.resnet import blocks_per_stage


def grown_config(model_config: dict) -> dict:
    """The architecture after one growth step (as a model config)."""
    c = dict(model_config)
    if c["type"] == "mlp":
        c["depth"] += 1
    elif c["type"] == "cnn":
        strides = c["stride"] if isinstance(c["stride"], list) else [c["stride"]] * len(c["channels"])
        c["channels"], c["stride"] = [*c["channels"], c["channels"][-1]], [*strides, 1]
    elif c["type"] in ("resnet", "wrn"):
        c["extra_blocks"] = c.get("extra_blocks", 0) + 1
    else:
        raise ValueError(f"no growth rule for model type {c['type']!r}")
    return c


def size(model_config: dict) -> int:
    """Number of hidden layers (MLP), convolutions (CNN) or residual blocks (ResNet, WRN): what growth increments."""
    c = model_config
    if c["type"] == "mlp":
        return c["depth"]
    if c["type"] == "cnn":
        return len(c["channels"])
    return 3 * blocks_per_stage(c["type"], c["depth"]) + c.get("extra_blocks", 0)


def grow(model_config: dict, network: models.Network, input_shape, num_classes: int) -> tuple[dict, models.Network]:
    """(grown config, grown network computing the same function as ``network``)."""
    new_config = grown_config(model_config)
    old = nnx.merge(network.graphdef, network.params, network.rest)
    new = nnx.merge(*models.build(new_config, input_shape, num_classes, jax.random.key(0)))
    if model_config["type"] in ("resnet", "wrn"):
        nnx.update(new, nnx.state(old))  # every old path (blocks are appended at the end) keeps its value
        added = new.blocks[-1]
        zeroed = added.bn2.scale if model_config["type"] == "resnet" else added.conv2.kernel
        zeroed.value = jnp.zeros_like(zeroed.value)
        return new_config, models.Network(*nnx.split(new, nnx.Param, ...))
    layers_old, layers_new = (old.hidden, new.hidden) if model_config["type"] == "mlp" else (old.convs, new.convs)
    for a, b in zip(layers_old, layers_new):
        b.kernel.value, b.bias.value = a.kernel.value, a.bias.value
    added = layers_new[len(layers_old)]
    k = added.kernel.value  # (..spatial.., c, c)
    eye = jnp.eye(k.shape[-1], dtype=k.dtype)
    if k.ndim == 2:
        added.kernel.value = eye
    else:
        centre = tuple(s // 2 for s in k.shape[:-2])
        added.kernel.value = jnp.zeros_like(k).at[centre].set(eye)
    added.bias.value = jnp.zeros_like(added.bias.value)
    new.head.kernel.value, new.head.bias.value = old.head.kernel.value, old.head.bias.value
    return new_config, models.Network(*nnx.split(new, nnx.Param, ...))
