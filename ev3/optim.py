"""Optimizers from config: ``{name: adam|adamw|sgd, learning_rate, momentum, weight_decay, schedule}``.

``schedule`` is ``constant`` or ``cosine`` (decay to 0 over the run's steps). Hyperparameters are injected
(``optax.inject_hyperparams``) so they live in the optimizer state as arrays.
"""

from __future__ import annotations

import optax


def make_optimizer(config: dict, total_steps: int) -> optax.GradientTransformation:
    lr = config["learning_rate"]
    if config.get("schedule", "constant") == "cosine":
        lr = optax.cosine_decay_schedule(lr, max(total_steps, 1))
    name = config["name"]
    if name == "adam":
        return optax.inject_hyperparams(optax.adam)(learning_rate=lr)
    if name == "adamw":
        return optax.inject_hyperparams(optax.adamw)(learning_rate=lr, weight_decay=config.get("weight_decay", 0.0))
    if name == "sgd":
        tx = optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=config.get("momentum", 0.0) or None)
        wd = config.get("weight_decay", 0.0)
        return optax.chain(optax.add_decayed_weights(wd), tx) if wd else tx
    raise ValueError(f"unknown optimizer {name!r}")
