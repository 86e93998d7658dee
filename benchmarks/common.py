"""Shared helpers for benchmarks: steady-state timing and the results log (benchmarks/results.jsonl)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import time

import jax

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.jsonl")


def steady_time(fn, *args, warmup: int = 3, repeats: int = 20) -> float:
    """Median seconds per call of ``fn(*args)`` after ``warmup`` calls (results blocked on)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all its threads): CPU / wall = cores kept busy."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def record(name: str, **values) -> dict:
    """Append one JSON line with machine, versions and date; returns it."""
    import flax
    import optax

    line = {
        "benchmark": name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "device": jax.devices()[0].device_kind,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "versions": {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__},
        **values,
    }
    with open(RESULTS, "a") as f:
        f.write(json.dumps(line) + "\n")
    return line
