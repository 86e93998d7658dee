"""CIFAR ShuffleNetV1 as RepDistiller / mdistiller define it (``models/ShuffleNetv1.py``, ``ShuffleV1``),
channels-last (``type: shufflenetv1``).

Stem conv 1×1 to 24 channels → BN → ReLU (no stride, no max pool), then three stages of 4, 8 and 4 bottlenecks
with 240, 480 and 960 output channels and 3 groups, global average pool, Linear(960, classes). A bottleneck with
``mid = out / 4`` channels is ``relu(bn1(gconv1×1(x)))`` (1 group where the input is the 24-channel stem) →
channel shuffle → ``relu(bn2(dwconv3×3(·)))`` (stride 2 in a stage's first block) → ``bn3(gconv1×1(·))``
(3 groups), then ``relu`` of the sum with ``x``, or, in a stage's first block, of the concatenation with
``avgpool3×3/2(x)`` (padding 1, zeros counted); that block's branch has ``out − in`` channels, so the
concatenation has ``out``. Convolutions have no bias. Initialisation: PyTorch's defaults, as the suites (no init
of their own): kernels and biases U(±1/√fan_in), BatchNorm 1, 0.

The suites pool with ``avg_pool2d(·, 4)``, the whole 4×4 map of a 32×32 input; here the pool is global for any
input size (the same on CIFAR).

Features (``ev3.models.features``), the suites' ``feats[1:4]`` / ``preact_feats[1:4]`` / ``pooled_feat`` (``f4``
in RepDistiller); on 32×32 inputs:

- ``stages``: the output of each stage (its last block after the ReLU), (B, 16, 16, 240), (B, 8, 8, 480),
  (B, 4, 4, 960); the stem (their ``f0``) is not returned.
- ``preact``: the last block's sum before that ReLU (``stages[s] = relu(preact[s])``).
- ``embedding``: the global average pool of ``stages[-1]``, (B, 960).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ev3.models.layers import PreactStages, batch_norm, channel_shuffle, conv, image_shape, init_weights, linear

OUT_PLANES, NUM_BLOCKS, GROUPS = (240, 480, 960), (4, 8, 4), 3  # the suites' ShuffleV1 cfg
STEM = 24


class Bottleneck(nnx.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int, *, dtype, rngs: nnx.Rngs):
        mid = out_ch // 4
        self.shuffle_groups = 1 if in_ch == STEM else groups  # the suites' `g = 1 if in_planes == 24`
        self.conv1 = conv(in_ch, mid, 1, groups=self.shuffle_groups, dtype=dtype, rngs=rngs)
        self.bn1 = batch_norm(mid, dtype, rngs)
        self.conv2 = conv(mid, mid, 3, stride, groups=mid, dtype=dtype, rngs=rngs)
        self.bn2 = batch_norm(mid, dtype, rngs)
        self.conv3 = conv(mid, out_ch, 1, groups=groups, dtype=dtype, rngs=rngs)
        self.bn3 = batch_norm(out_ch, dtype, rngs)
        self.stride = stride

    def preact(self, x: jax.Array) -> jax.Array:
        """The sum (stride 1) or concatenation (stride 2) before the block's final ReLU."""
        h = channel_shuffle(nnx.relu(self.bn1(self.conv1(x))), self.shuffle_groups)
        h = nnx.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        if self.stride == 2:
            pooled = nnx.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), count_include_pad=True)
            return jnp.concatenate([h, pooled], axis=-1)
        return h + x


class ShuffleNetV1(PreactStages):
    """The suites' ShuffleV1 (groups 3)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, *, dtype: str = "float32", rngs: nnx.Rngs):
        dtype = jnp.dtype(dtype)
        self.image_shape = image_shape(input_shape, "ShuffleNetV1")
        self.conv1 = conv(self.image_shape[-1], STEM, 1, dtype=dtype, rngs=rngs)
        self.bn1 = batch_norm(STEM, dtype, rngs)
        layers, in_ch = [], STEM
        for out_ch, n in zip(OUT_PLANES, NUM_BLOCKS):
            blocks = []
            for i in range(n):
                blocks.append(Bottleneck(in_ch, out_ch - (in_ch if i == 0 else 0), 2 if i == 0 else 1, GROUPS,
                                         dtype=dtype, rngs=rngs))
                in_ch = out_ch
            layers.append(nnx.List(blocks))
        self.layers = nnx.List(layers)  # the suites' layer1 … layer3
        self.head = linear(in_ch, num_classes, dtype, rngs)
        init_weights(self, rngs.params(), conv_init="torch", linear_init="torch")
