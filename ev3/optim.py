"""Optimizers from config: ``{name: adam|adamw|sgd, learning_rate, momentum, weight_decay, schedule}``.

``schedule`` is ``constant``, ``cosine`` (decay to 0 over the run's steps) or ``step`` (multiply by
``decay_factor``, default 0.1, at each fraction ``decay_at`` of the run's steps, e.g. CIFAR's 150/180/210 of
240 epochs = ``[0.625, 0.75, 0.875]``). Hyperparameters are injected
(``optax.inject_hyperparams``) so they live in the optimizer state as arrays.
"""

from __future__ import annotations

import optax


def make_optimizer(config: dict, total_steps: int) -> optax.GradientTransformation:
    lr = config["learning_rate"]
    if config.get("schedule", "constant") == "cosine":
        lr = optax.cosine_decay_schedule(lr, max(total_steps, 1))
    elif config.get("schedule") == "step":
        factor = config.get("decay_factor", 0.1)
        lr = optax.piecewise_constant_schedule(lr, {round(f * total_steps): factor for f in config.get("decay_at", [])})
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
