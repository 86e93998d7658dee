"""Multi-layer perceptron: flatten → ``depth`` × (Linear(width) → ReLU) → Linear(num_classes).

``widths`` (a list, instead of ``width`` and ``depth``) gives each hidden layer its own width, as growth by
widening produces (``ev3.models.growth.widen_mlp``).

``dtype``: compute dtype, "float32" (default) or "bfloat16"; parameters stay float32, logits are float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from ev3.models.features import Features


def hidden_widths(config: dict) -> list[int]:
    """The hidden layers' widths of an MLP config: ``widths``, or ``[width] * depth``."""
    if config.get("widths") is not None:
        if config.get("width") is not None or config.get("depth") is not None:
            raise ValueError("an MLP takes either widths or width and depth, not both")
        return list(config["widths"])
    if config.get("width") is None or config.get("depth") is None:
        raise ValueError("an MLP needs widths, or width and depth")
    return [config["width"]] * config["depth"]


class MLP(nnx.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, *, width: int | None = None,
                 depth: int | None = None, widths: list[int] | None = None, dtype: str = "float32", rngs: nnx.Rngs):
        sizes = [math.prod(input_shape)] + hidden_widths({"width": width, "depth": depth, "widths": widths})
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
