"""Multi-layer perceptron: flatten → ``depth`` × (Linear(width) → ReLU) → Linear(num_classes)."""

from __future__ import annotations

import math

import jax
from flax import nnx


class MLP(nnx.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, *, width: int, depth: int, rngs: nnx.Rngs):
        sizes = [math.prod(input_shape)] + [width] * depth
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.head = nnx.Linear(sizes[-1], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x``: (B, *input_shape) → logits (B, num_classes)."""
        h = x.reshape(x.shape[0], -1)
        for layer in self.hidden:
            h = nnx.relu(layer(h))
        return self.head(h)
