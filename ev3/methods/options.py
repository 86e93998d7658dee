"""What a method instance's options say before anything trains: pure functions of the options, with no JAX, so
the workflow validates a config and resolves its run configs without importing the training stack.

- ``budget_share`` / ``with_units`` per method type: the student steps of one unit of work, and the (options,
  train) of a run of ``units`` units (an equal ``budget.student_steps``). Each method module exposes its pair
  under these names (:class:`ev3.methods.contract.Method`); :func:`budget_share` and :func:`with_units` below
  pick a type's pair from a method instance's options.
- ``OPERATOR_TYPES``, ``DEFAULT_OPERATOR``: EV3's growth operators, the student model types each can grow, and
  the operator used for a model type when none is given.
"""

from __future__ import annotations

import math


def step_share(options: dict) -> int:
    """One student step per unit."""
    return 1


def step_units(options: dict, train: dict, units: int) -> tuple[dict, dict]:
    """``units`` training steps."""
    return options, {**train, "steps": units}


def ev3_share(options: dict) -> int:
    """Student steps of one round: K·L (every candidate's steps)."""
    return len(options["losses"]) * len(options["optimizers"]) * options["steps_per_candidate"]


def ev3_units(options: dict, train: dict, units: int) -> tuple[dict, dict]:
    """``units`` rounds."""
    return {**options, "iterations": units}, train


def tuned_share(options: dict) -> int:
    """Student steps of one step of the population: one per member."""
    return math.prod(len(v) for v in options["space"].values())


SHARES = {"ev3": ev3_share, "tuned": tuned_share}  # every other type: step_share
UNITS = {"ev3": ev3_units}  # every other type: step_units


def budget_share(options: dict) -> int:
    """Student steps of one unit of the method instance ``options`` (with ``type``)."""
    return SHARES.get(options["type"], step_share)(options)


def with_units(options: dict, train: dict, units: int) -> tuple[dict, dict]:
    """(options, train) of a run of ``units`` units of the method instance ``options`` (with ``type``)."""
    return UNITS.get(options["type"], step_units)(options, train, units)


OPERATOR_TYPES = {"widen_mlp": ("mlp",), "deepen_mlp": ("mlp",), "expand_mlp": ("mlp",), "deepen_cnn": ("cnn",),
                  "deepen_resnet_stage": ("resnet", "wrn"), "double_resnet": ("resnet", "wrn")}
"""EV3's ``growth.operator`` values → the student model types each operator can grow."""
DEFAULT_OPERATOR = {"mlp": "expand_mlp", "cnn": "deepen_cnn", "resnet": "deepen_resnet_stage",
                    "wrn": "deepen_resnet_stage"}
"""``growth.operator`` per model type when not given: the reference's (CNNs can only be deepened); the other model
types have no growth operator."""
