"""Multi-layer perceptron: flatten → ``depth`` × (Linear(width) → ReLU) → Linear(num_classes).

``dtype``: compute dtype, "float32" (default) or "bfloat16"; parameters stay float32, logits are float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from ev3.models.features import Features


class MLP(nnx.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, *, width: int, depth: int,
                 dtype: str = "float32", rngs: nnx.Rngs):
        sizes = [math.prod(input_shape)] + [width] * depth
        kw = dict(dtype=jnp.dtype(dtype), param_dtype=jnp.float32, rngs=rngs)
        self.hidden = nnx.List([nnx.Linear(a, b, **kw) for a, b in zip(sizes[:-1], sizes[1:])])
        self.head = nnx.Linear(sizes[-1], num_classes, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x``: (B, *input_shape) → logits (B, num_classes)."""
        h = x.reshape(x.shape[0], -1)
        for layer in self.hidden:
            h = nnx.relu(layer(h))
        return self.head(h).astype(jnp.float32)

    def features(self, x: jax.Array) -> tuple[jax.Array, Features]:
        """Logits as :meth:`__call__` and the hidden layers (``ev3.models.features``: stages (B, width) each)."""
        h = x.reshape(x.shape[0], -1)
        stages, preact = [], []
        for layer in self.hidden:
            preact.append(layer(h))
            h = nnx.relu(preact[-1])
            stages.append(h)
        return self.head(h).astype(jnp.float32), Features(stages, preact, h)
