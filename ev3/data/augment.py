"""On-device image augmentation, run inside the jitted training step (the dataset stays on the device).

``crop_flip(key, x, padding, flip)``: ``x`` (B, H, W, C), already normalized. Each image is zero-padded by
``padding`` pixels on every side (zero = the per-channel mean colour after normalization) and a random
H × W window is cut out (offsets uniform in ``[0, 2·padding]`` per axis, independently per image); with
``flip``, each image is mirrored left–right (the W axis) with probability 1/2. The standard CIFAR recipe is
``padding=4, flip=True``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def crop_flip(key: jax.Array, x: jax.Array, *, padding: int = 4, flip: bool = True, mode: str = "constant") -> jax.Array:
    """``mode``: ``jnp.pad``'s padding mode (``"constant"``: zeros, as above; ``"reflect"``: mirrored borders, what
    EV3's reference assesses with)."""
    b, h, w, c = x.shape
    k_crop, k_flip = jax.random.split(key)
    if padding:
        padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), mode=mode)
        offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * padding + 1)
        x = jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c)))(padded, offsets)
    if flip:
        mirrored = jax.random.bernoulli(k_flip, 0.5, (b,))
        x = jnp.where(mirrored[:, None, None, None], x[:, :, ::-1, :], x)
    return x


def augment_fn(config: dict | None):
    """``(key, x) -> x`` for a ``train.augment`` config (``{crop_padding, flip}``), or None without one."""
    if not config:
        return None
    padding, flip = config.get("crop_padding", 0), config.get("flip", False)
    return lambda key, x: crop_flip(key, x, padding=padding, flip=flip)
