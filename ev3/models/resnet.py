"""CIFAR ResNets and Wide ResNets as defined in RepDistiller / mdistiller, channels-last.

- ``ResNet`` (``type: resnet``): depth = 6n + 2. Conv3×3(stem) → BN → ReLU → 3 stages of n BasicBlocks
  (widths 16/32/64 × ``width``, strides 1/2/2) → global average pool → Linear. A BasicBlock is
  ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; the shortcut is a 1×1 conv + BN where the shape
  changes (option B), the identity otherwise. The stem has 16 channels for ``width`` 1 and 32 otherwise, so
  ``width: 4`` gives RepDistiller's resnet8x4 / resnet32x4 (num_filters [32, 64, 128, 256]).
- ``WideResNet`` (``type: wrn``): WRN-depth-widen, depth = 6n + 4. Conv3×3(16) → 3 stages of n pre-activation
  blocks (widths 16/32/64 × ``widen``, strides 1/2/2) → BN → ReLU → global average pool → Linear. A block is
  ``conv2(relu(bn2(conv1(h)))) + (x or conv1×1(h))`` with ``h = relu(bn1(x))``; the 1×1 shortcut (no BN)
  where the shape changes, taking ``h`` as in RepDistiller's wrn.py. No dropout (RepDistiller's drop rate 0).

Convolutions have no bias and PyTorch's padding (1 for 3×3, 0 for 1×1), so a stride-2 3×3 conv and its 1×1
shortcut sample the same pixels. Kernels are He-normal with fan-out for the convolutions (RepDistiller's
``kaiming_normal_(mode="fan_out")``) and LeCun-normal for the head (bias 0), see :func:`init_kernels`.
BatchNorm: momentum 0.9 (PyTorch's 0.1), epsilon 1e-5, scale 1, bias 0; its statistics are ``nnx.BatchStat``
(the ``rest`` of :func:`ev3.models.build`).

``extra_blocks`` (default 0) appends that many stride-1 blocks of the last width to the last stage: the
architectures that growth (``ev3.models.growth``) produces.

``blocks`` (optional, ``[n1, n2, n3]``) sets the number of blocks of each stage, e.g. ``[1, 2, 1]`` after one
block was appended to the second stage of a resnet8; without it every stage has the ``n`` of ``depth``. With
``blocks``, ``depth`` may be left out; if given it must be the layer count ``2·Σ blocks + 2`` (ResNet) or
``2·Σ blocks + 4`` (WRN). ``extra_blocks`` still adds to the last stage (see :func:`stage_blocks`).

``dtype`` is the compute dtype, ``"float32"`` or ``"bfloat16"``: parameters and BatchNorm statistics stay
float32 (BatchNorm computes its batch statistics in float32), and the logits are returned as float32 for the
losses.

``features(x)`` returns the logits and the stage outputs (convention in ``ev3.models.features``).

Input: (B, H, W, C) images (CIFAR 32×32×3, MNIST 28×28×1; (H, W) gets one channel); any H, W ≥ 1 works
because the pool is global.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ev3.models.features import Features

RESNET_DEPTHS = (8, 14, 20, 32, 44, 56, 110)  # RepDistiller's named variants (any 6n + 2 is accepted)
WRN_DEPTHS = (10, 16, 22, 28, 40)  # common WRN depths (any 6n + 4 is accepted)

_zeros = nnx.initializers.zeros_init()  # placeholder: init_kernels draws every kernel at the end of __init__


def init_kernels(module: nnx.Module, key: jax.Array) -> None:
    """Draw every Conv kernel He-normal with fan-out (std √(2 / (k·k·out))) and every Linear kernel LeCun-normal
    (std √(1 / in)), all from one flat normal vector. One random op for the whole model, because XLA:CPU
    compiles each random op separately and slowly (about a second per kernel: minutes for resnet110)."""
    layers = [m for _, m in nnx.iter_modules(module) if isinstance(m, (nnx.Conv, nnx.Linear))]
    sizes = [layer.kernel.value.size for layer in layers]
    z = jax.random.normal(key, (sum(sizes),), jnp.float32)
    for layer, chunk in zip(layers, jnp.split(z, np.cumsum(sizes)[:-1])):
        shape = layer.kernel.value.shape
        fan = math.prod(shape[:-2]) * shape[-1] if isinstance(layer, nnx.Conv) else shape[0]
        gain = 2.0 if isinstance(layer, nnx.Conv) else 1.0
        layer.kernel.value = (chunk * math.sqrt(gain / fan)).reshape(shape)


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int, dtype, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(in_ch, out_ch, (kernel, kernel), strides=(stride, stride), padding=kernel // 2, use_bias=False,
                    kernel_init=_zeros, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def _linear(in_features: int, num_classes: int, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(in_features, num_classes, kernel_init=_zeros, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def _bn(channels: int, dtype, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def _image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) == 2:
        return (*input_shape, 1)
    if len(input_shape) == 3:
        return tuple(input_shape)
    raise ValueError(f"ResNets take (H, W, C) or (H, W) images, got input shape {input_shape}")


DEPTH_OFFSET = {"resnet": 2, "wrn": 4}  # depth = 6n + offset, n blocks per stage


def blocks_per_stage(model_type: str, depth: int) -> int:
    """``n`` of a ``resnet`` (depth 6n + 2) or ``wrn`` (depth 6n + 4); raises ValueError for other depths."""
    offset = DEPTH_OFFSET[model_type]
    if depth < 6 + offset or (depth - offset) % 6:
        raise ValueError(f"{model_type} depth must be 6n + {offset} with n ≥ 1, got {depth}")
    return (depth - offset) // 6


def stage_blocks(config: dict) -> list[int]:
    """Blocks per stage ``[n1, n2, n3]`` of a ``resnet`` / ``wrn`` config (``type``, ``depth`` and/or ``blocks``,
    optional ``extra_blocks``): ``blocks`` or ``[n, n, n]`` from ``depth``, ``extra_blocks`` added to the last."""
    model_type, depth, blocks = config["type"], config.get("depth"), config.get("blocks")
    if blocks is None:
        if depth is None:
            raise ValueError(f"{model_type} needs depth or blocks")
        counts = [blocks_per_stage(model_type, depth)] * 3
    else:
        counts = [int(b) for b in blocks]
        if len(counts) != 3 or min(counts) < 1:
            raise ValueError(f"{model_type} blocks must be three counts ≥ 1, got {blocks}")
        implied = 2 * sum(counts) + DEPTH_OFFSET[model_type]
        if depth is not None and depth != implied:
            raise ValueError(f"{model_type} depth {depth} does not match blocks {blocks} "
                             f"(2·Σ blocks + {DEPTH_OFFSET[model_type]} = {implied})")
    extra = config.get("extra_blocks", 0)
    if extra < 0:
        raise ValueError(f"extra_blocks must be ≥ 0, got {extra}")
    return [*counts[:-1], counts[-1] + extra]


class BasicBlock(nnx.Module):
    """Post-activation residual block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, *, dtype, rngs: nnx.Rngs):
        self.conv1 = _conv(in_ch, out_ch, 3, stride, dtype, rngs)
        self.bn1 = _bn(out_ch, dtype, rngs)
        self.conv2 = _conv(out_ch, out_ch, 3, 1, dtype, rngs)
        self.bn2 = _bn(out_ch, dtype, rngs)
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nnx.Sequential(_conv(in_ch, out_ch, 1, stride, dtype, rngs), _bn(out_ch, dtype, rngs))
        else:
            self.shortcut = None

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.preact(x))

    def preact(self, x: jax.Array) -> jax.Array:
        """The residual sum before the final ReLU."""
        out = self.bn2(self.conv2(nnx.relu(self.bn1(self.conv1(x)))))
        return out + (x if self.shortcut is None else self.shortcut(x))


class PreActBlock(nnx.Module):
    """Wide-ResNet block: ``h = relu(bn1(x))``, ``conv2(relu(bn2(conv1(h)))) + (x or shortcut(h))``."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, *, dtype, rngs: nnx.Rngs):
        self.bn1 = _bn(in_ch, dtype, rngs)
        self.conv1 = _conv(in_ch, out_ch, 3, stride, dtype, rngs)
        self.bn2 = _bn(out_ch, dtype, rngs)
        self.conv2 = _conv(out_ch, out_ch, 3, 1, dtype, rngs)
        self.shortcut = _conv(in_ch, out_ch, 1, stride, dtype, rngs) if stride != 1 or in_ch != out_ch else None

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.with_input_preact(x)[0]

    def with_input_preact(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The block's output and ``bn1(x)``, the pre-activation of its input."""
        pre = self.bn1(x)
        h = nnx.relu(pre)
        out = self.conv2(nnx.relu(self.bn2(self.conv1(h))))
        return out + (x if self.shortcut is None else self.shortcut(h)), pre


def _starts_stage(block) -> bool:
    """Whether a block opens a new stage: stages 2 and 3 start with a stride-2 block (``_stages``)."""
    return block.conv1.strides != (1, 1)


def _stages(block, stem: int, widths: list[int], counts: list[int], dtype, rngs: nnx.Rngs) -> nnx.List:
    """One flat list of blocks, ``counts[s]`` in stage ``s`` (the first of stages 2 and 3 with stride 2)."""
    blocks, in_ch = [], stem
    for stage, (width, count) in enumerate(zip(widths, counts, strict=True)):
        for i in range(count):
            blocks.append(block(in_ch, width, 2 if stage > 0 and i == 0 else 1, dtype=dtype, rngs=rngs))
            in_ch = width
    return nnx.List(blocks)


class ResNet(nnx.Module):
    """CIFAR ResNet-``depth`` (× ``width``), e.g. depth 20 → resnet20, depth 8 and width 4 → resnet8x4."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, *, depth: int | None = None, width: int = 1,
                 extra_blocks: int = 0, blocks: list[int] | None = None, dtype: str = "float32", rngs: nnx.Rngs):
        counts = stage_blocks({"type": "resnet", "depth": depth, "blocks": blocks, "extra_blocks": extra_blocks})
        dtype = jnp.dtype(dtype)
        self.image_shape = _image_shape(input_shape)
        stem = 16 if width == 1 else 32
        widths = [16 * width, 32 * width, 64 * width]
        self.conv = _conv(self.image_shape[-1], stem, 3, 1, dtype, rngs)
        self.bn = _bn(stem, dtype, rngs)
        self.blocks = _stages(BasicBlock, stem, widths, counts, dtype, rngs)
        self.head = _linear(widths[-1], num_classes, dtype, rngs)
        init_kernels(self, rngs.params())

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x``: (B, *input_shape) → float32 logits (B, num_classes)."""
        h = nnx.relu(self.bn(self.conv(x.reshape((x.shape[0], *self.image_shape)))))
        for block in self.blocks:
            h = block(h)
        return self.head(h.mean(axis=(1, 2))).astype(jnp.float32)

    def features(self, x: jax.Array) -> tuple[jax.Array, Features]:
        """Logits as :meth:`__call__` and the stage outputs (``ev3.models.features``)."""
        h = nnx.relu(self.bn(self.conv(x.reshape((x.shape[0], *self.image_shape)))))
        stages, preact = [], []
        for i, block in enumerate(self.blocks):
            if i > 0 and _starts_stage(block):
                stages.append(h)
            pre = block.preact(h)
            h = nnx.relu(pre)
            if i + 1 == len(self.blocks) or _starts_stage(self.blocks[i + 1]):
                preact.append(pre)
        stages.append(h)
        embedding = h.mean(axis=(1, 2))
        return self.head(embedding).astype(jnp.float32), Features(stages, preact, embedding)


class WideResNet(nnx.Module):
    """WRN-``depth``-``widen``, e.g. depth 40 and widen 2 → wrn40-2."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, *, depth: int | None = None, widen: int = 1,
                 extra_blocks: int = 0, blocks: list[int] | None = None, dtype: str = "float32", rngs: nnx.Rngs):
        counts = stage_blocks({"type": "wrn", "depth": depth, "blocks": blocks, "extra_blocks": extra_blocks})
        dtype = jnp.dtype(dtype)
        self.image_shape = _image_shape(input_shape)
        widths = [16 * widen, 32 * widen, 64 * widen]
        self.conv = _conv(self.image_shape[-1], 16, 3, 1, dtype, rngs)
        self.blocks = _stages(PreActBlock, 16, widths, counts, dtype, rngs)
        self.bn = _bn(widths[-1], dtype, rngs)
        self.head = _linear(widths[-1], num_classes, dtype, rngs)
        init_kernels(self, rngs.params())

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x``: (B, *input_shape) → float32 logits (B, num_classes)."""
        h = self.conv(x.reshape((x.shape[0], *self.image_shape)))
        for block in self.blocks:
            h = block(h)
        h = nnx.relu(self.bn(h))
        return self.head(h.mean(axis=(1, 2))).astype(jnp.float32)

    def features(self, x: jax.Array) -> tuple[jax.Array, Features]:
        """Logits as :meth:`__call__` and the stage outputs (``ev3.models.features``)."""
        h = self.conv(x.reshape((x.shape[0], *self.image_shape)))
        stages, preact = [], []
        for i, block in enumerate(self.blocks):
            if i > 0 and _starts_stage(block):
                stages.append(h)
                h, pre = block.with_input_preact(h)
                preact.append(pre)
            else:
                h = block(h)
        stages.append(h)
        preact.append(self.bn(h))
        embedding = nnx.relu(preact[-1]).mean(axis=(1, 2))
        return self.head(embedding).astype(jnp.float32), Features(stages, preact, embedding)
