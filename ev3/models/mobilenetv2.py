"""CIFAR MobileNetV2 as RepDistiller / mdistiller define it (``models/mobilenetv2.py``, from "Knowledge
Distillation via Route Constrained Optimization"), channels-last (``type: mobilenetv2``). The defaults give the
suites' student ``mobile_half``: width multiplier ``width`` 0.5, expansion ``expansion`` (their T) 6.

Stem conv 3×3 stride 2 (``int(32·width)`` channels) → BN → ReLU, then seven groups of inverted residual blocks
(t, c, n, s) = (1, 16, 1, 1), (T, 24, 2, 1), (T, 32, 3, 2), (T, 64, 4, 2), (T, 96, 3, 1), (T, 160, 3, 2),
(T, 320, 1, 1) with ``int(c·width)`` output channels (the second group has stride 1 where ImageNet's has 2),
then conv 1×1 to 1280 channels (``int(1280·width)`` for ``width`` > 1) → BN → ReLU → average pool → Linear.
A block is 1×1 expansion (``in·t`` channels, also for t = 1) → BN → ReLU → depthwise 3×3 (stride s) → BN →
ReLU → 1×1 projection → BN, plus the input where the stride is 1 and the channels match; no ReLU after it (the
linear bottleneck). Convolutions have no bias. Initialisation as the suites: convolutions N(0, 2 / (9·out)) (the
depthwise ones too), BatchNorm 1, 0, the head N(0, 0.01²), bias 0.

The suites pool with ``AvgPool2d(input_size // 16, ceil_mode=True)`` for their fixed ``input_size`` 32, i.e. over
the whole 2×2 map of a 32×32 input; here the pool is global for any input size (the same on CIFAR).

Features (``ev3.models.features``), the suites' ``feats[1:5]`` and ``pooled_feat``; on 32×32 inputs with the
defaults:

- ``stages``: the outputs of block groups 2, 3, 5 and 7 (their ``blocks[1]``, ``blocks[2]``, ``blocks[4]``,
  ``blocks[6]``): (B, 16, 16, 12), (B, 8, 8, 16), (B, 4, 4, 48), (B, 2, 2, 160). The stem (their ``f0``) is not
  returned.
- ``preact``: the same arrays: a linear bottleneck has no activation after it (the suites' MobileNetV2 has no
  ``preact_feats``; RepDistiller returns its ``feats`` when asked for pre-activations).
- ``embedding``: the pooled output of the final 1×1 conv → BN → ReLU, (B, 1280).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ev3.models.features import Features
from ev3.models.layers import batch_norm, conv, global_pool, image_shape, init_weights, linear

SETTING = [(1, 16, 1, 1), ("T", 24, 2, 1), ("T", 32, 3, 2), ("T", 64, 4, 2), ("T", 96, 3, 1), ("T", 160, 3, 2),
           ("T", 320, 1, 1)]
"""(expansion, channels, blocks, stride) per group; "T" is the ``expansion`` option."""
STAGE_GROUPS = (1, 2, 4, 6)
"""The groups whose outputs are the stages (the suites' ``f1`` … ``f4``)."""


class InvertedResidual(nnx.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int, *, dtype, rngs: nnx.Rngs):
        mid = in_ch * expansion
        self.expand = conv(in_ch, mid, 1, dtype=dtype, rngs=rngs)
        self.bn1 = batch_norm(mid, dtype, rngs)
        self.depthwise = conv(mid, mid, 3, stride, groups=mid, dtype=dtype, rngs=rngs)
        self.bn2 = batch_norm(mid, dtype, rngs)
        self.project = conv(mid, out_ch, 1, dtype=dtype, rngs=rngs)
        self.bn3 = batch_norm(out_ch, dtype, rngs)
        self.residual = stride == 1 and in_ch == out_ch

    def __call__(self, x: jax.Array) -> jax.Array:
        h = nnx.relu(self.bn1(self.expand(x)))
        h = nnx.relu(self.bn2(self.depthwise(h)))
        h = self.bn3(self.project(h))
        return x + h if self.residual else h


class MobileNetV2(nnx.Module):
    """MobileNetV2 with width multiplier ``width`` and expansion ``expansion``; defaults: ``mobile_half``."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, *, width: float = 0.5, expansion: int = 6,
                 dtype: str = "float32", rngs: nnx.Rngs):
        dtype = jnp.dtype(dtype)
        self.image_shape = image_shape(input_shape, "MobileNetV2")
        in_ch = int(32 * width)
        self.conv1 = conv(self.image_shape[-1], in_ch, 3, 2, dtype=dtype, rngs=rngs)
        self.bn1 = batch_norm(in_ch, dtype, rngs)
        groups = []
        for t, c, n, s in SETTING:
            out_ch, blocks = int(c * width), []
            for i in range(n):
                blocks.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, expansion if t == "T" else t,
                                               dtype=dtype, rngs=rngs))
                in_ch = out_ch
            groups.append(nnx.List(blocks))
        self.groups = nnx.List(groups)
        last = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = conv(in_ch, last, 1, dtype=dtype, rngs=rngs)
        self.bn2 = batch_norm(last, dtype, rngs)
        self.head = linear(last, num_classes, dtype, rngs)
        init_weights(self, rngs.params(), conv_init="fan_out", linear_init="normal_0.01")

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x``: (B, *input_shape) → float32 logits (B, num_classes)."""
        return self.features(x)[0]

    def features(self, x: jax.Array) -> tuple[jax.Array, Features]:
        """Logits as :meth:`__call__` and the stage outputs (module docstring)."""
        h = nnx.relu(self.bn1(self.conv1(x.reshape((x.shape[0], *self.image_shape)))))
        stages = []
        for g, group in enumerate(self.groups):
            for block in group:
                h = block(h)
            if g in STAGE_GROUPS:
                stages.append(h)
        embedding = global_pool(nnx.relu(self.bn2(self.conv2(h))))
        return self.head(embedding).astype(jnp.float32), Features(stages, list(stages), embedding)
