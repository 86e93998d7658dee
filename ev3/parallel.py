"""Data parallelism over all local devices in one job (``jax.sharding``), the same code path on one CPU.

A 1-D mesh ``("data",)`` over ``jax.local_devices()``: the training state and the dataset arrays are
replicated on every device; each training batch is split along its first axis (``batch_size`` must be a
multiple of the device count). XLA's SPMD partitioner then computes per-device gradients and all-reduces
them, so a step is numerically the same step as on one device (up to float summation order); BatchNorm
statistics are over the whole batch. With one device, :func:`data_parallel` returns None and nothing changes.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


class DataParallel(NamedTuple):
    replicated: NamedSharding  # state, data, keys: a full copy on every device
    batch: NamedSharding  # a batch's leading axis split over the devices

    def put(self, tree):
        """``tree`` replicated on every device."""
        return jax.device_put(tree, self.replicated)

    def constrain_batch(self, tree):
        return jax.lax.with_sharding_constraint(tree, self.batch)

    def constrain_replicated(self, tree):
        return jax.lax.with_sharding_constraint(tree, self.replicated)


def data_parallel(batch_size: int, devices=None) -> DataParallel | None:
    """The shardings for ``devices`` (default: all local devices), or None for a single device."""
    devices = list(devices if devices is not None else jax.local_devices())
    if len(devices) == 1:
        return None
    if batch_size % len(devices):
        raise ValueError(f"train/batch_size={batch_size} is not a multiple of the {len(devices)} devices (data parallelism)")
    mesh = Mesh(np.asarray(devices), ("data",))
    return DataParallel(NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data")))
