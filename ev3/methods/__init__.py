"""Method registry: a method *type* maps to its module (a :class:`ev3.methods.contract.Method`); config names
method *instances* (name → type + options). ``teacher`` is the role of teacher runs (cross-entropy, the
``scratch`` module), not a config method type."""

from __future__ import annotations

import importlib

REGISTRY = {"teacher": "scratch", "scratch": "scratch", "kd": "kd", "dkd": "dkd", "metadistil": "metadistil",
            "ev3": "ev3", "tuned": "tuned",
            "fitnet": "fitnet", "at": "at", "rkd": "rkd", "crd": "crd", "reviewkd": "reviewkd",
            "dist": "dist", "mlkd": "mlkd", "ctkd": "ctkd", "wttm": "wttm"}
METHOD_TYPES = tuple(REGISTRY)
CONFIG_METHOD_TYPES = tuple(t for t in REGISTRY if t != "teacher")  # the config schema's methods/*/type


def get(method_type: str):
    if method_type not in REGISTRY:
        raise ValueError(f"unknown method type {method_type!r}; known: {list(METHOD_TYPES)}")
    return importlib.import_module(f"ev3.methods.{REGISTRY[method_type]}")
