"""One writer per run directory: ``python -m ev3 train``/``train-group`` hold an exclusive lock on each run
directory they write, so a second process started on a run that is being trained (a rerun by hand, a second
Snakemake in another working directory, a retry while the first job still runs) exits at once with a message
naming the holder instead of writing the same checkpoints and outputs.

The lock is an exclusive ``flock`` on ``<run dir>/.ev3.lock``, held by an open file descriptor, so the kernel
releases it when the process ends, however it ends (SIGKILL included); the file records the holder (pid, host,
start time) for the message. A lock file left by a killed process is free: the next process takes it over (and
logs whose it was). A clean exit removes the file. Like the GPU locks (``ev3.devices``), ``flock`` on a network
file system works where the file system supports it (NFSv4, Lustre and GPFS do; where it does not, this
check is off in effect).
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

LOCK_NAME = ".ev3.lock"


class RunLockedError(RuntimeError):
    """A run directory is held by another live process."""


@dataclass
class Held:
    """Locks held by this process: ``(path, fd)`` of each lock file."""

    locks: list = field(default_factory=list)

    def release(self) -> None:
        """Remove the lock files and drop the locks (process exit drops them too, leaving the files)."""
        for path, fd in reversed(self.locks):
            try:
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    os.unlink(path)  # still held: no other process can have locked this file
            except FileNotFoundError:
                pass
            os.close(fd)
        self.locks = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def holder_line() -> str:
    return f"pid {os.getpid()} on host {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S %z')}"


def _read(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode(errors="replace").strip()


def _lock_one(directory: str, log: Callable[[str], None]) -> tuple[str, int]:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LOCK_NAME)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by exec'd children
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd) or "holder not recorded yet"
            os.close(fd)
            raise RunLockedError(
                f"{directory} is being written by another process ({holder}); this one stops. Wait for that "
                "one to end, or stop it; a lock of a process that is gone is taken over"
            ) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if not same:  # the holder removed this file as we locked it: lock the current one
            os.close(fd)
            continue
        before = _read(fd)
        if before:
            log(f"[lock] {directory}: taking over the lock of a process that is gone ({before})")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (holder_line() + "\n").encode())
        return path, fd


def hold(directories: Iterable[str], *, log: Callable[[str], None] = print) -> Held:
    """Lock every directory of ``directories`` (created if missing) for this process, or none: raise
    :class:`RunLockedError` naming the holder when one of them is held by another live process."""
    held = Held()
    try:
        for directory in sorted({os.path.abspath(d) for d in directories}):
            held.locks.append(_lock_one(directory, log))
    except BaseException:
        held.release()
        raise
    return held
