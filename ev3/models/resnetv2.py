"""The ImageNet ResNets adapted to CIFAR as RepDistiller / mdistiller define them (``models/resnetv2.py``:
``ResNet18`` … ``ResNet152``; ``ResNet50`` is the suites' teacher of MobileNetV2 and VGG8), channels-last
(``type: resnetv2``).

Stem conv 3×3 (stride 1, 64 channels) → BN → ReLU (no max pool), four stages of blocks with 64, 128, 256 and
512 planes (strides 1, 2, 2, 2), global average pool, Linear(512 · expansion, classes). Blocks by ``depth``:
18 → BasicBlock [2, 2, 2, 2], 34 → BasicBlock [3, 4, 6, 3], 50 → Bottleneck [3, 4, 6, 3], 101 → Bottleneck
[3, 4, 23, 3], 152 → Bottleneck [3, 8, 36, 3]. The BasicBlock (expansion 1) is ``ev3.models.resnet.BasicBlock``;
the Bottleneck (expansion 4) is ``relu(bn3(conv1×1(relu(bn2(conv3×3(relu(bn1(conv1×1(x))))))) + shortcut(x))``,
stride on the 3×3, the shortcut a 1×1 conv + BN where the shape changes. Convolutions have no bias.
Initialisation as the suites: convolutions ``kaiming_normal_(mode="fan_out")``, BatchNorm 1, 0 (no zero-init of
the last BN), the head PyTorch's default U(±1/√in) for weight and bias.

Features (``ev3.models.features``), the suites' ``feats[1:5]`` / ``preact_feats[1:5]`` / ``pooled_feat``; on
32×32 inputs, ResNet50:

- ``stages``: the output of each stage (its last block after the ReLU), (B, 32, 32, 256), (B, 16, 16, 512),
  (B, 8, 8, 1024), (B, 4, 4, 2048); the stem (their ``f0``) is not returned.
- ``preact``: the last block's residual sum before that ReLU (``stages[s] = relu(preact[s])``).
- ``embedding``: the global average pool of ``stages[-1]``, (B, 512 · expansion).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ev3.models.layers import PreactStages, batch_norm, conv, image_shape, init_weights, linear
from ev3.models.resnet import BasicBlock


class Bottleneck(nnx.Module):
    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int, *, dtype, rngs: nnx.Rngs):
        out_ch = planes * self.expansion
        self.conv1 = conv(in_ch, planes, 1, dtype=dtype, rngs=rngs)
        self.bn1 = batch_norm(planes, dtype, rngs)
        self.conv2 = conv(planes, planes, 3, stride, dtype=dtype, rngs=rngs)
        self.bn2 = batch_norm(planes, dtype, rngs)
        self.conv3 = conv(planes, out_ch, 1, dtype=dtype, rngs=rngs)
        self.bn3 = batch_norm(out_ch, dtype, rngs)
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nnx.Sequential(conv(in_ch, out_ch, 1, stride, dtype=dtype, rngs=rngs),
                                           batch_norm(out_ch, dtype, rngs))
        else:
            self.shortcut = None

    def preact(self, x: jax.Array) -> jax.Array:
        """The residual sum before the final ReLU."""
        h = nnx.relu(self.bn1(self.conv1(x)))
        h = nnx.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return h + (x if self.shortcut is None else self.shortcut(x))


DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
          101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 8, 36, 3))}
"""``depth`` → (block, blocks per stage), the suites' ``ResNet18`` … ``ResNet152``."""
PLANES = (64, 128, 256, 512)


class ResNetV2(PreactStages):
    """The suites' CIFAR ``ResNet{depth}`` (resnetv2.py), e.g. depth 50 → ResNet50."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, *, depth: int, dtype: str = "float32",
                 rngs: nnx.Rngs):
        if depth not in DEPTHS:
            raise ValueError(f"resnetv2 depth must be one of {sorted(DEPTHS)}, got {depth}")
        kind, counts = DEPTHS[depth]
        expansion = Bottleneck.expansion if kind == "bottleneck" else 1
        dtype = jnp.dtype(dtype)
        self.image_shape = image_shape(input_shape, "ResNetV2")
        self.conv1 = conv(self.image_shape[-1], 64, 3, dtype=dtype, rngs=rngs)
        self.bn1 = batch_norm(64, dtype, rngs)
        layers, in_ch = [], 64
        for stage, (planes, n) in enumerate(zip(PLANES, counts)):
            blocks = []
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                if kind == "bottleneck":
                    blocks.append(Bottleneck(in_ch, planes, stride, dtype=dtype, rngs=rngs))
                else:
                    blocks.append(BasicBlock(in_ch, planes, stride, dtype=dtype, rngs=rngs))
                in_ch = planes * expansion
            layers.append(nnx.List(blocks))
        self.layers = nnx.List(layers)  # the suites' layer1 … layer4
        self.head = linear(in_ch, num_classes, dtype, rngs)
        init_weights(self, rngs.params(), conv_init="fan_out", linear_init="torch")
