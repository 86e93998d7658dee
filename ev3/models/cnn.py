"""Small CNN: ``len(channels)`` × (Conv(kernel, stride, SAME) → ReLU) → flatten → Linear(num_classes).

``stride`` is one int for every layer or a list with one per layer (growth appends stride-1 layers).

The convolution rank follows the input: a (L,) signal (mnist1d) is treated as (L, 1) and gets 1-D
convolutions; an (H, W, C) image (digits) gets 2-D convolutions. Channels-last throughout.

``dtype``: compute dtype, "float32" (default) or "bfloat16"; parameters stay float32, logits are float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from ev3.models.features import Features


def _conv_input_shape(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    return (*input_shape, 1) if len(input_shape) == 1 else tuple(input_shape)


def conv_strides(channels: list[int], stride: int | list[int]) -> list[int]:
    """Each convolution's stride: ``stride`` as a list, or one int for every convolution."""
    return list(stride) if isinstance(stride, list) else [stride] * len(channels)


class CNN(nnx.Module):
    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        *,
        channels: list[int],
        kernel_size: int,
        stride: int | list[int],
        dtype: str = "float32",
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=jnp.dtype(dtype), param_dtype=jnp.float32, rngs=rngs)
        shape = _conv_input_shape(input_shape)
        self.conv_shape = shape
        spatial = len(shape) - 1
        in_ch = shape[-1]
        convs = []
        size = list(shape[:-1])
        for out_ch, st in zip(channels, conv_strides(channels, stride), strict=True):
            convs.append(
                nnx.Conv(in_ch, out_ch, (kernel_size,) * spatial, strides=(st,) * spatial, padding="SAME", **kw)
            )
            size = [math.ceil(s / st) for s in size]
            in_ch = out_ch
        self.convs = nnx.List(convs)
        self.head = nnx.Linear(math.prod(size) * in_ch, num_classes, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x``: (B, *input_shape) → logits (B, num_classes)."""
        h = x.reshape((x.shape[0], *self.conv_shape))
        for conv in self.convs:
            h = nnx.relu(conv(h))
        return self.head(h.reshape(h.shape[0], -1)).astype(jnp.float32)

    def features(self, x: jax.Array) -> tuple[jax.Array, Features]:
        """Logits as :meth:`__call__` and the conv blocks (``ev3.models.features``: stages (B, L_s, C_s) each)."""
        h = x.reshape((x.shape[0], *self.conv_shape))
        stages, preact = [], []
        for conv in self.convs:
            preact.append(conv(h))
            h = nnx.relu(preact[-1])
            stages.append(h)
        embedding = h.reshape(h.shape[0], -1)
        return self.head(embedding).astype(jnp.float32), Features(stages, preact, embedding)
