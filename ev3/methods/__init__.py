"""Method registry: a method *type* maps to its module; config names method *instances* (name → type + options)."""

from __future__ import annotations

import importlib

METHOD_TYPES = ("teacher", "scratch", "kd", "dkd", "metadistil", "ev3", "tuned")
_MODULES = {"teacher": "scratch", "scratch": "scratch", "kd": "kd", "dkd": "dkd", "metadistil": "metadistil", "ev3": "ev3", "tuned": "tuned"}


def get(method_type: str):
    if method_type not in _MODULES:
        raise ValueError(f"unknown method type {method_type!r}; known: {list(METHOD_TYPES)}")
    return importlib.import_module(f"ev3.methods.{_MODULES[method_type]}")
