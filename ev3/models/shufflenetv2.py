"""CIFAR ShuffleNetV2 as RepDistiller / mdistiller define it (``models/ShuffleNetv2.py``, ``ShuffleV2`` =
``net_size`` 1), channels-last (``type: shufflenetv2``).

Stem conv 1×1 to 24 channels → BN → ReLU (no stride, no max pool), then three stages, each a down block and
``n`` basic blocks, then conv 1×1 → BN → ReLU, global average pool, Linear. Widths and block counts by
``net_size`` (the suites' ``configs``): 1 → channels (116, 232, 464), final 1024, blocks (3, 7, 3); also 0.2, 0.3,
0.5, 1.5, 2. Channel shuffles have 2 groups; convolutions have no bias.

- Down block (``in → out``, stride 2): left ``relu(bn2(conv1×1(bn1(dwconv3×3/2(x)))))`` and right
  ``relu(bn5(conv1×1(bn4(dwconv3×3/2(relu(bn3(conv1×1(x))))))))``, ``out / 2`` channels each, concatenated and
  shuffled.
- Basic block: ``x`` split in halves ``x1, x2`` along the channels; ``pre = bn3(conv1×1(bn2(dwconv3×3(relu(bn1(
  conv1×1(x2)))))))``; output ``shuffle([x1, relu(pre)])``.

Initialisation: PyTorch's defaults, as the suites (no init of their own): kernels and biases U(±1/√fan_in),
BatchNorm 1, 0. The suites pool with ``avg_pool2d(·, 4)``, the whole 4×4 map of a 32×32 input; here the pool is
global for any input size (the same on CIFAR).

Features (``ev3.models.features``), the suites' ``feats[1:4]`` / ``preact_feats[1:4]`` / ``pooled_feat``; on
32×32 inputs with ``net_size`` 1:

- ``stages``: the output of each stage (its last basic block, shuffled), (B, 16, 16, 116), (B, 8, 8, 232),
  (B, 4, 4, 464); the stem (their ``f0``) is not returned.
- ``preact``: the last basic block's ``[x1, pre]``, concatenated before the ReLU *and before the shuffle*, as the
  suites return it; so ``stages[s] = shuffle(relu(preact[s]))`` (``x1`` is already non-negative).
- ``embedding``: the pooled output of the final conv → BN → ReLU, (B, 1024).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ev3.models.features import Features
from ev3.models.layers import batch_norm, channel_shuffle, conv, global_pool, image_shape, init_weights, linear

SIZES = {
    0.2: ((40, 80, 160, 512), (3, 3, 3)),
    0.3: ((40, 80, 160, 512), (3, 7, 3)),
    0.5: ((48, 96, 192, 1024), (3, 7, 3)),
    1: ((116, 232, 464, 1024), (3, 7, 3)),
    1.5: ((176, 352, 704, 1024), (3, 7, 3)),
    2: ((224, 488, 976, 2048), (3, 7, 3)),
}
"""``net_size`` → (out_channels of the three stages and the final conv, basic blocks per stage)."""
STEM = 24


class DownBlock(nnx.Module):
    def __init__(self, in_ch: int, out_ch: int, *, dtype, rngs: nnx.Rngs):
        mid = out_ch // 2
        self.conv1 = conv(in_ch, in_ch, 3, 2, groups=in_ch, dtype=dtype, rngs=rngs)
        self.bn1 = batch_norm(in_ch, dtype, rngs)
        self.conv2 = conv(in_ch, mid, 1, dtype=dtype, rngs=rngs)
        self.bn2 = batch_norm(mid, dtype, rngs)
        self.conv3 = conv(in_ch, mid, 1, dtype=dtype, rngs=rngs)
        self.bn3 = batch_norm(mid, dtype, rngs)
        self.conv4 = conv(mid, mid, 3, 2, groups=mid, dtype=dtype, rngs=rngs)
        self.bn4 = batch_norm(mid, dtype, rngs)
        self.conv5 = conv(mid, mid, 1, dtype=dtype, rngs=rngs)
        self.bn5 = batch_norm(mid, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        left = nnx.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = nnx.relu(self.bn3(self.conv3(x)))
        right = nnx.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


class BasicBlock(nnx.Module):
    def __init__(self, channels: int, *, dtype, rngs: nnx.Rngs):
        half = channels // 2  # the suites' int(channels · split_ratio 0.5)
        self.split = half
        self.conv1 = conv(half, half, 1, dtype=dtype, rngs=rngs)
        self.bn1 = batch_norm(half, dtype, rngs)
        self.conv2 = conv(half, half, 3, groups=half, dtype=dtype, rngs=rngs)
        self.bn2 = batch_norm(half, dtype, rngs)
        self.conv3 = conv(half, half, 1, dtype=dtype, rngs=rngs)
        self.bn3 = batch_norm(half, dtype, rngs)

    def with_preact(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The block's output and ``[x1, pre]`` (before the ReLU and the shuffle)."""
        x1, x2 = x[..., :self.split], x[..., self.split:]
        h = nnx.relu(self.bn1(self.conv1(x2)))
        pre = self.bn3(self.conv3(self.bn2(self.conv2(h))))
        out = channel_shuffle(jnp.concatenate([x1, nnx.relu(pre)], axis=-1), 2)
        return out, jnp.concatenate([x1, pre], axis=-1)


class ShuffleNetV2(nnx.Module):
    """ShuffleNetV2 of ``net_size`` (default 1: the suites' ShuffleV2)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, *, net_size: float = 1,
                 dtype: str = "float32", rngs: nnx.Rngs):
        if net_size not in SIZES:
            raise ValueError(f"shufflenetv2 net_size must be one of {sorted(SIZES)}, got {net_size}")
        dtype = jnp.dtype(dtype)
        channels, counts = SIZES[net_size]
        self.image_shape = image_shape(input_shape, "ShuffleNetV2")
        self.conv1 = conv(self.image_shape[-1], STEM, 1, dtype=dtype, rngs=rngs)
        self.bn1 = batch_norm(STEM, dtype, rngs)
        layers, in_ch = [], STEM
        for out_ch, n in zip(channels[:3], counts):
            layers.append(nnx.List([DownBlock(in_ch, out_ch, dtype=dtype, rngs=rngs),
                                    *(BasicBlock(out_ch, dtype=dtype, rngs=rngs) for _ in range(n))]))
            in_ch = out_ch
        self.layers = nnx.List(layers)  # the suites' layer1 … layer3
        self.conv2 = conv(in_ch, channels[3], 1, dtype=dtype, rngs=rngs)
        self.bn2 = batch_norm(channels[3], dtype, rngs)
        self.head = linear(channels[3], num_classes, dtype, rngs)
        init_weights(self, rngs.params(), conv_init="torch", linear_init="torch")

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x``: (B, *input_shape) → float32 logits (B, num_classes)."""
        return self.features(x)[0]

    def features(self, x: jax.Array) -> tuple[jax.Array, Features]:
        """Logits as :meth:`__call__` and the stage outputs (module docstring)."""
        h = nnx.relu(self.bn1(self.conv1(x.reshape((x.shape[0], *self.image_shape)))))
        stages, preact = [], []
        for layer in self.layers:
            h = layer[0](h)
            for i in range(1, len(layer)):
                h, pre = layer[i].with_preact(h)
            stages.append(h)
            preact.append(pre)
        embedding = global_pool(nnx.relu(self.bn2(self.conv2(h))))
        return self.head(embedding).astype(jnp.float32), Features(stages, preact, embedding)
