"""Per-job CPU pinning: a training job with ``--threads N`` runs on N cores no other job is using.

XLA's thread flags do not keep a JAX process on one core (its runtime threads still spread over the machine),
so ``snakemake --cores N`` with one-thread jobs would oversubscribe. Instead each job claims cores of its
allowed set (``os.sched_getaffinity``; SLURM's cgroup, for example) by an exclusive, non-blocking ``flock``
on one lock file per core in the machine's temporary directory, and pins itself to them with
``os.sched_setaffinity`` before JAX starts. The locks are released when the process exits (the kernel drops
them even after ``kill -9``). A job that finds fewer free cores than it needs, or needs every core, is not
pinned.
"""

from __future__ import annotations

import fcntl
import os
import tempfile

LOCK_DIR = os.path.join(tempfile.gettempdir(), "ev3-cores")


def claim(threads: int, lock_dir: str = LOCK_DIR) -> tuple[list[int], list]:
    """Pin this process to ``threads`` free cores; returns (the cores, the open lock files to keep open), or
    ([], []) when it is not pinned."""
    allowed = sorted(os.sched_getaffinity(0))
    if threads >= len(allowed):
        return [], []
    os.makedirs(lock_dir, exist_ok=True)
    cores, locks = [], []
    for core in allowed:
        f = open(os.path.join(lock_dir, f"core{core}.lock"), "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        cores.append(core)
        locks.append(f)
        if len(cores) == threads:
            os.sched_setaffinity(0, cores)
            return cores, locks
    for f in locks:
        f.close()
    return [], []
