"""Atomic file outputs: write to a temporary file in the same directory, fsync, then rename.

A write that fails (a full disk, a quota, a read-only or vanished file system: any ``OSError``) leaves no
temporary file and nothing at the target path beyond what was there before, and raises :class:`WriteError`,
whose message is one line naming the path, the reason and the free space of its file system, e.g.
``cannot write results/x/metrics.json: No space left on device (1.2 MB free on /mnt/x)``. The orbax
checkpoints (``ev3.checkpoint``) report their failures the same way.
"""

from __future__ import annotations

import errno as errno_codes
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager

import numpy as np


class WriteError(Exception):
    """A file or checkpoint could not be written. ``path``: what was being written; ``errno``: the OS error code
    when known (e.g. ``errno.ENOSPC``); the message is one line (:func:`write_failure`)."""

    def __init__(self, path: str, reason: str, errno: int | None = None):
        self.path, self.reason, self.errno = path, reason, errno
        super().__init__(f"cannot write {path}: {reason} ({free_space(path)})")


def _mount_point(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


def _existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path) and path != os.path.dirname(path):
        path = os.path.dirname(path)
    return path


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def free_space(path: str) -> str:
    """``"<free> free on <mount point>"`` for the file system holding ``path`` (or its nearest existing parent)."""
    where = _existing(path)
    try:
        free = human_bytes(shutil.disk_usage(where).free)
    except OSError as e:
        return f"free space unknown: {e.strerror or e}"
    return f"{free} free on {_mount_point(where)}"


def write_failure(path: str, error: BaseException) -> WriteError:
    """``error`` (raised while writing ``path``) as a :class:`WriteError`: an ``OSError``'s ``strerror``, or an
    OS error code named in the text of another error (tensorstore's ``[os_error_code='28']``), else its first
    line."""
    if isinstance(error, WriteError):
        return error
    code = getattr(error, "errno", None) if isinstance(error, OSError) else None
    if code is None:
        found = re.search(r"os_error_code='?(\d+)", str(error))
        code = int(found.group(1)) if found else None
    if code is not None:
        reason = os.strerror(code)
    else:
        lines = str(error).strip().splitlines()
        reason = lines[0][:300] if lines else type(error).__name__
    return WriteError(path, reason, code)


def out_of_space(error: BaseException) -> bool:
    """Whether ``error`` is a full disk or an exhausted quota."""
    return getattr(error, "errno", None) in (errno_codes.ENOSPC, errno_codes.EDQUOT)


@contextmanager
def _atomic(path: str, mode: str):
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(error, OSError):
            raise write_failure(path, error) from error
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
