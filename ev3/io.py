"""Atomic file outputs: write to a temporary file in the same directory, fsync, then rename."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager

import numpy as np


@contextmanager
def _atomic(path: str, mode: str):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str, obj) -> None:
    with _atomic(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, allow_nan=False)
        f.write("\n")


def write_text(path: str, text: str) -> None:
    with _atomic(path, "w") as f:
        f.write(text)


def write_npz(path: str, **arrays) -> None:
    with _atomic(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def read_json(path: str):
    with open(path) as f:
        return json.load(f)
