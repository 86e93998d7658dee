"""Model checkpoints with orbax: ``params`` and ``rest`` (e.g. BatchNorm statistics) of a network."""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from ev3 import models


def save_network(path: str, params, rest) -> None:
    path = os.path.abspath(path)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, {"params": params, "rest": rest})


def load_network(path: str, model_config: dict, input_shape, num_classes: int) -> models.Network:
    """Restore into the structure of a freshly built model of the same config (the init key is irrelevant)."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    like = models.build(model_config, input_shape, num_classes, jax.random.key(0))
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": like.params, "rest": like.rest})
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(path, target)
    return models.Network(like.graphdef, restored["params"], restored["rest"])
