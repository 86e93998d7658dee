"""Layers and initialisation shared by the CIFAR model zoo of the KD suites (``vgg``, ``mobilenetv2``,
``shufflenetv1``, ``shufflenetv2``, ``resnetv2``), channels-last, with PyTorch's conventions:

- :func:`conv`: ``nn.Conv2d`` — explicit padding (``kernel // 2`` unless given), ``groups`` (depthwise:
  ``groups = channels``), optional bias; kernel ``(k, k, in / groups, out)``.
- :func:`batch_norm`: ``nn.BatchNorm2d`` — momentum 0.9 (PyTorch's 0.1), epsilon 1e-5, scale 1, bias 0; statistics
  are ``nnx.BatchStat`` (the ``rest`` of :func:`ev3.models.build`).
- :func:`channel_shuffle`: ShuffleNet's ``ShuffleBlock`` on the last axis.
- :func:`init_weights`: the suites' initialisations, drawn with one normal and one uniform draw for the whole
  model (XLA:CPU compiles each random op separately and slowly; see ``ev3.models.resnet.init_kernels``).

Parameters and BatchNorm statistics are float32; ``dtype`` is the compute dtype.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ev3.models.features import Features

_zeros = nnx.initializers.zeros_init()  # placeholder: init_weights draws every kernel at the end of __init__


def image_shape(input_shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    """(H, W, C) of an image input; (H, W) gets one channel."""
    if len(input_shape) == 2:
        return (*input_shape, 1)
    if len(input_shape) == 3:
        return tuple(input_shape)
    raise ValueError(f"{name} takes (H, W, C) or (H, W) images, got input shape {input_shape}")


def conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, *, groups: int = 1, bias: bool = False,
         padding: int | None = None, dtype, rngs: nnx.Rngs) -> nnx.Conv:
    """``nn.Conv2d(in_ch, out_ch, kernel, stride, padding, groups=groups, bias=bias)``; padding ``kernel // 2``
    unless given."""
    pad = kernel // 2 if padding is None else padding
    return nnx.Conv(in_ch, out_ch, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                    feature_group_count=groups, use_bias=bias, kernel_init=_zeros, dtype=dtype,
                    param_dtype=jnp.float32, rngs=rngs)


def batch_norm(channels: int, dtype, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def linear(in_features: int, out_features: int, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(in_features, out_features, kernel_init=_zeros, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
    """ShuffleNet's channel shuffle on channels-last ``x`` (…, C): output channel ``i·g + j`` is input channel
    ``j·(C/g) + i``, as PyTorch's ``view(N, g, C/g, H, W).permute(0, 2, 1, 3, 4)`` on (N, C, H, W)."""
    *lead, c = x.shape
    return x.reshape(*lead, groups, c // groups).swapaxes(-1, -2).reshape(*lead, c)


def global_pool(x: jax.Array) -> jax.Array:
    """(B, H, W, C) → (B, C): the mean over the spatial axes."""
    return x.mean(axis=(1, 2))


class PreactStages(nnx.Module):
    """The forward of a network made of a stem ``conv1`` → ``bn1`` → ReLU on the image, ``layers`` (stages, each a
    list of blocks with ``preact(h)``: the block's output before its final ReLU), a global average pool and a
    linear ``head``; a subclass's ``__init__`` builds those attributes (and ``image_shape``). Feature taps: each
    stage's output and its last block's pre-activation (the suites' ``feats`` and ``preact_feats``), the pooled
    embedding."""

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x``: (B, *input_shape) → float32 logits (B, num_classes)."""
        return self.features(x)[0]

    def features(self, x: jax.Array) -> tuple[jax.Array, Features]:
        """Logits as :meth:`__call__` and the stage outputs (:class:`ev3.models.features.Features`)."""
        h = nnx.relu(self.bn1(self.conv1(x.reshape((x.shape[0], *self.image_shape)))))
        stages, preact = [], []
        for layer in self.layers:
            for block in layer:
                pre = block.preact(h)
                h = nnx.relu(pre)
            stages.append(h)
            preact.append(pre)
        embedding = global_pool(h)
        return self.head(embedding).astype(jnp.float32), Features(stages, preact, embedding)


def _conv_fan_in(layer: nnx.Conv) -> int:
    return math.prod(layer.kernel.value.shape[:-1])  # k·k·in / groups, PyTorch's fan-in of a grouped conv


# Initialisation rules: layer → ((kernel distribution, scale), (bias distribution, scale)); "normal" draws
# N(0, scale²), "uniform" U(−scale, scale), "zeros" 0.
CONV_INIT = {
    # RepDistiller / mdistiller vgg.py, mobilenetv2.py: weight ~ N(0, 2 / (k·k·out_channels)), bias 0 (also
    # kaiming_normal_(mode="fan_out") of resnetv2.py: PyTorch's fan-out k·k·out for any groups).
    "fan_out": lambda layer: (("normal", math.sqrt(2.0 / (math.prod(layer.kernel.value.shape[:-2])
                                                         * layer.kernel.value.shape[-1]))), ("zeros", 0.0)),
    # PyTorch's default nn.Conv2d init (kaiming_uniform_(a=√5)): weight and bias ~ U(±1/√fan_in).
    "torch": lambda layer: (("uniform", 1.0 / math.sqrt(_conv_fan_in(layer))),
                            ("uniform", 1.0 / math.sqrt(_conv_fan_in(layer)))),
}
LINEAR_INIT = {
    # vgg.py, mobilenetv2.py: weight ~ N(0, 0.01²), bias 0.
    "normal_0.01": lambda layer: (("normal", 0.01), ("zeros", 0.0)),
    # PyTorch's default nn.Linear init: weight and bias ~ U(±1/√in).
    "torch": lambda layer: (("uniform", 1.0 / math.sqrt(layer.kernel.value.shape[0])),
                            ("uniform", 1.0 / math.sqrt(layer.kernel.value.shape[0]))),
}


def init_weights(module: nnx.Module, key: jax.Array, *, conv_init: str, linear_init: str) -> None:
    """Draw every Conv and Linear kernel (and bias) of ``module`` by the rules ``CONV_INIT[conv_init]`` and
    ``LINEAR_INIT[linear_init]``, from one flat normal and one flat uniform vector. BatchNorm keeps scale 1, bias 0."""
    targets = {"normal": [], "uniform": []}
    for _, layer in nnx.iter_modules(module):
        if isinstance(layer, nnx.Conv):
            rule = CONV_INIT[conv_init](layer)
        elif isinstance(layer, nnx.Linear):
            rule = LINEAR_INIT[linear_init](layer)
        else:
            continue
        for variable, (kind, scale) in zip((layer.kernel, layer.bias), rule):
            if variable is not None and kind != "zeros":
                targets[kind].append((variable, scale))
    normal_key, uniform_key = jax.random.split(key)
    for kind, draws in targets.items():
        sizes = [v.value.size for v, _ in draws]
        if not sizes:
            continue
        z = (jax.random.normal(normal_key, (sum(sizes),), jnp.float32) if kind == "normal"
             else jax.random.uniform(uniform_key, (sum(sizes),), jnp.float32, -1.0, 1.0))
        for (variable, scale), chunk in zip(draws, jnp.split(z, np.cumsum(sizes)[:-1])):
            variable.value = (chunk * scale).reshape(variable.value.shape)
