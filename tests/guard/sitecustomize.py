"""Installs the tests' network guard (``ev3_test_netguard``) at interpreter start-up.

``tests/conftest.py`` puts this directory on ``PYTHONPATH``, so every Python subprocess a test starts
(``python -m ev3``, ``snakemake`` and its jobs) runs guarded. Another ``sitecustomize`` this one shadows still runs.
"""

import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import ev3_test_netguard  # noqa: E402

ev3_test_netguard.install()

for _entry in sys.path:
    _candidate = os.path.join(os.path.abspath(_entry or os.curdir), "sitecustomize.py")
    if os.path.dirname(_candidate) != _HERE and os.path.isfile(_candidate):
        _spec = importlib.util.spec_from_file_location("_shadowed_sitecustomize", _candidate)
        _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
        break
