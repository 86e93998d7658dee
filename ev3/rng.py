"""Named RNG streams: ``stream(key, "batch_order")`` = ``fold_in(key, crc32(name))``.

Each purpose gets its own stream derived from the run's seed key, so adding a purpose never shifts another.
Students use ``student_init`` and ``batch_order``: the same seed gives the same init and batch order in every
method, which makes runs pair across methods.
"""

from __future__ import annotations

import zlib

import jax


def stream(key: jax.Array, purpose: str) -> jax.Array:
    return jax.random.fold_in(key, zlib.crc32(purpose.encode()) & 0x7FFFFFFF)


def seed_key(seed: int) -> jax.Array:
    return jax.random.key(seed)
