"""One GPU per training job on a multi-GPU machine, claimed with an exclusive lock file per device.

``snakemake --cores N --resources gpu=G`` bounds how many GPU jobs run at once, but not which GPU each one uses:
left alone, every JAX process would see (and allocate on) all of them. So before JAX starts, a training job
claims one device: it takes an exclusive ``flock`` on ``<lock_dir>/<host>/<device>.lock`` for the first device
whose lock is free and sets ``CUDA_VISIBLE_DEVICES`` to that device alone (and
``XLA_PYTHON_CLIENT_PREALLOCATE=false`` unless set). The lock is held by an open file descriptor, so the kernel
releases it when the process ends, however it ends (SIGKILL included); a stale lock file is just a free device.
The per-host folder keeps claims apart when the lock folder is on a file system several machines share.

Devices: the entries of ``CUDA_VISIBLE_DEVICES`` when it is set (indices or UUIDs; the job gets one of them),
else ``0 … gpus − 1`` from the config's ``gpus``. Claiming is off (nothing locked, the environment untouched)
when the device is ``cpu``, when a scheduler assigned the devices (``SLURM_JOB_ID`` and
``CUDA_VISIBLE_DEVICES`` both set: SLURM sets the latter per job), or when neither ``CUDA_VISIBLE_DEVICES`` nor
``gpus`` gives a count. If every device is held (more concurrent jobs than devices), the job logs it once and
waits, polling, up to ``timeout_s`` before it fails with :class:`NoFreeDeviceError`.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass


class NoFreeDeviceError(RuntimeError):
    """Every device stayed claimed by other jobs for the whole wait."""


@dataclass
class Claim:
    """A held device: ``device`` is the ``CUDA_VISIBLE_DEVICES`` entry, ``fd`` the open, flocked ``path``."""

    device: str
    path: str
    fd: int

    def release(self) -> None:
        """Give the device back (process exit does the same)."""
        if self.fd >= 0:
            os.close(self.fd)  # closing the only descriptor of the open file drops its flock
            self.fd = -1


def candidate_devices(gpus: int | None, env: Mapping[str, str] = os.environ) -> list[str] | None:
    """The devices a job may claim: ``CUDA_VISIBLE_DEVICES``'s entries when set (empty or ``-1``: none), else
    ``"0"`` … ``str(gpus − 1)``; None when neither gives a count."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = [e.strip() for e in visible.split(",") if e.strip()]
        return [] if entries[:1] == ["-1"] else entries
    return [str(i) for i in range(gpus)] if gpus else None


def scheduler_assigned(env: Mapping[str, str] = os.environ) -> bool:
    """True when a cluster scheduler chose this job's devices: SLURM sets ``CUDA_VISIBLE_DEVICES`` per job."""
    return bool(env.get("SLURM_JOB_ID")) and env.get("CUDA_VISIBLE_DEVICES") is not None


def try_claim(lock_dir: str, devices: list[str]) -> Claim | None:
    """Lock the first free device of ``devices`` (non-blocking) and return its claim; None if all are held."""
    os.makedirs(lock_dir, exist_ok=True)
    for device in devices:
        path = os.path.join(lock_dir, f"{device}.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by exec'd children
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)  # who holds it, for a person looking at the folder; the lock itself is the flock
        since = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        os.write(fd, f"pid {os.getpid()} host {socket.gethostname()} since {since}\n".encode())
        return Claim(device, path, fd)
    return None


def claim(lock_dir: str, devices: list[str], *, timeout_s: float = 3600.0, poll_s: float = 1.0,
          log: Callable[[str], None] = print) -> Claim:
    """Claim one of ``devices``, waiting (one log line, then polling every ``poll_s`` s) while all are held;
    raise :class:`NoFreeDeviceError` after ``timeout_s`` s."""
    if not devices:
        raise ValueError("no devices to claim")
    deadline = time.monotonic() + timeout_s
    got = try_claim(lock_dir, devices)
    if got is None:
        log(f"[gpu] all {len(devices)} GPUs ({','.join(devices)}) are held by other jobs (locks in {lock_dir}); "
            f"waiting up to {timeout_s:g} s for one to be released. Run snakemake with --resources gpu={len(devices)} "
            "so that no more GPU jobs start than there are GPUs.")
    while got is None:
        if time.monotonic() >= deadline:
            raise NoFreeDeviceError(f"no GPU of {','.join(devices)} was released within {timeout_s:g} s "
                                    f"(locks in {lock_dir}); run snakemake with --resources gpu={len(devices)}")
        time.sleep(poll_s)
        got = try_claim(lock_dir, devices)
    return got


def claim_for_job(device: str | None, gpus: int | None, lock_root: str, *, timeout_s: float = 3600.0,
                  env: MutableMapping[str, str] = os.environ, log: Callable[[str], None] = print) -> Claim | None:
    """Before JAX starts: claim one GPU for this job and make it the only visible one (``env`` is updated).

    ``device``/``gpus``: the config's ``device`` and ``gpus``; ``lock_root``: the benchmark's lock folder
    (``results/<benchmark>/state/gpu-locks``; this host's locks go in a subfolder named after it). Returns the
    claim (keep it for the job's lifetime), or None where claiming is off (see the module docstring)."""
    if device != "gpu" or scheduler_assigned(env):
        return None
    devices = candidate_devices(gpus, env)
    if not devices:
        return None
    got = claim(os.path.join(lock_root, socket.gethostname()), devices, timeout_s=timeout_s, log=log)
    env["CUDA_VISIBLE_DEVICES"] = got.device
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    log(f"[gpu] claimed GPU {got.device} of {len(devices)} (lock {got.path})")
    return got
