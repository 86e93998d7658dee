"""CIFAR VGG with BatchNorm as RepDistiller / mdistiller define it (``models/vgg.py``, ``vgg{8,11,13,16,19}_bn``),
channels-last (``type: vgg``).

Five blocks of 3×3 convolutions (padding 1, with bias) each followed by BatchNorm, with ReLU between them; the
last BatchNorm of each block has no ReLU of its own (``_make_layers`` drops it), the forward pass applies it. Block
widths by ``depth`` (the suites' ``cfg``): 8 → 'S' ``[[64], [128], [256], [512], [512]]``, 11 → 'A', 13 → 'B'
``[[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]]``, 16 → 'D', 19 → 'E'. Forward::

    relu(block0) → maxpool → relu(block1) → maxpool → relu(block2) → maxpool → relu(block3)
    [→ maxpool only for 64-pixel-high inputs] → relu(block4) → global average pool → Linear(512, classes)

so on 32×32 inputs blocks 0–4 run at 32, 16, 8, 4 and 4 pixels (no classifier MLP: the suites' CIFAR head is one
linear layer). Initialisation as the suites: convolutions N(0, 2 / (9·out)), bias 0; BatchNorm 1, 0; the head
N(0, 0.01²), bias 0.

Features (``ev3.models.features``), the suites' ``feats[1:5]`` / ``preact_feats[1:5]`` / ``pooled_feat``:

- ``stages``: ``relu`` of blocks 1–4 (before the following max pool), (B, 16, 16, 128), (B, 8, 8, 256),
  (B, 4, 4, 512), (B, 4, 4, 512) on 32×32 inputs; block 0 (the stem, their ``f0``) is not returned.
- ``preact``: the last BatchNorm output of blocks 1–4 (``stages[s] = relu(preact[s])``).
- ``embedding``: the global average pool of ``stages[-1]``, (B, 512).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ev3.models.features import Features
from ev3.models.layers import batch_norm, conv, global_pool, image_shape, init_weights, linear

CFGS = {
    8: [[64], [128], [256], [512], [512]],  # 'S'
    11: [[64], [128], [256, 256], [512, 512], [512, 512]],  # 'A'
    13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],  # 'B'
    16: [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],  # 'D'
    19: [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],  # 'E'
}


class VGGBlock(nnx.Module):
    """(conv 3×3 → BN) per width, ReLU between them; the output is the last BN's (no ReLU)."""

    def __init__(self, in_ch: int, widths: list[int], *, dtype, rngs: nnx.Rngs):
        convs, bns = [], []
        for width in widths:
            convs.append(conv(in_ch, width, 3, bias=True, dtype=dtype, rngs=rngs))
            bns.append(batch_norm(width, dtype, rngs))
            in_ch = width
        self.convs, self.bns = nnx.List(convs), nnx.List(bns)

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, (c, bn) in enumerate(zip(self.convs, self.bns)):
            x = bn(c(x if i == 0 else nnx.relu(x)))
        return x


def _max_pool(x: jax.Array) -> jax.Array:
    return nnx.max_pool(x, (2, 2), strides=(2, 2))


class VGG(nnx.Module):
    """VGG-``depth`` with BatchNorm, e.g. depth 8 → vgg8_bn, 13 → vgg13_bn."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, *, depth: int, dtype: str = "float32",
                 rngs: nnx.Rngs):
        if depth not in CFGS:
            raise ValueError(f"vgg depth must be one of {sorted(CFGS)}, got {depth}")
        dtype = jnp.dtype(dtype)
        self.image_shape = image_shape(input_shape, "VGG")
        blocks, in_ch = [], self.image_shape[-1]
        for widths in CFGS[depth]:
            blocks.append(VGGBlock(in_ch, widths, dtype=dtype, rngs=rngs))
            in_ch = widths[-1]
        self.blocks = nnx.List(blocks)
        self.head = linear(in_ch, num_classes, dtype, rngs)
        init_weights(self, rngs.params(), conv_init="fan_out", linear_init="normal_0.01")

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x``: (B, *input_shape) → float32 logits (B, num_classes)."""
        return self.features(x)[0]

    def features(self, x: jax.Array) -> tuple[jax.Array, Features]:
        """Logits as :meth:`__call__` and the stage outputs (module docstring)."""
        x = x.reshape((x.shape[0], *self.image_shape))
        h = _max_pool(nnx.relu(self.blocks[0](x)))
        stages, preact = [], []
        for i in range(1, len(self.blocks)):
            preact.append(self.blocks[i](h))
            stages.append(nnx.relu(preact[-1]))
            h = stages[-1]
            if i < 3 or (i == 3 and self.image_shape[0] == 64):  # pool1, pool2; pool3 only for 64-pixel inputs
                h = _max_pool(h)
        embedding = global_pool(h)
        return self.head(embedding).astype(jnp.float32), Features(stages, preact, embedding)
