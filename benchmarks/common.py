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


def interleaved_times(fns: dict, *, rounds: int = 5, repeats: int = 20, warmup: int = 3) -> dict:
    """Median seconds per call of each ``fns[name]()`` (results blocked on), measured in ``rounds`` alternating
    blocks of ``repeats`` calls each, so a slow spell of the machine hits every function alike."""
    for fn in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    samples = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(fn())
                samples[name].append(time.perf_counter() - t0)
    return {name: sorted(t)[len(t) // 2] for name, t in samples.items()}


def trainer_step(step, state, batch, key):
    """``run() -> loss``: one call of the method ``step(state, batch, key) -> (state, logs)`` as ``ev3.train.fit``
    makes it (jitted over the state's flat leaves with ``ev3.train.on_flat_state``, donated; the state is copied
    once and carried from call to call). The batch and key stay fixed."""
    import jax.numpy as jnp

    from ev3.train import on_flat_state

    def step_loss(state, batch, key):
        state, logs = step(state, batch, key)
        return state, logs["loss"]

    leaves, treedef = jax.tree.flatten(state)
    flat_step = on_flat_state(step_loss, treedef)
    compiled = jax.jit(flat_step, donate_argnums=(0,)).lower(leaves, batch, key).compile()
    carried = [jax.tree.map(jnp.copy, leaves)]

    def run():
        carried[0], loss = compiled(carried[0], batch, key)
        return loss

    return run


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all its threads): CPU / wall = cores kept busy."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")


def machine_fingerprint() -> dict:
    """What a timing depends on besides the code: CPU model (name, family, model, stepping), its number of cores, the ISA extensions
    of ``ISA_FLAGS`` the CPU has (``/proc/cpuinfo``), and the ISA cap XLA was given (``--xla_cpu_max_isa``).
    Ratios and utilizations only combine figures whose fingerprints are equal."""
    info, flags = {"model name": platform.processor() or platform.machine()}, set()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = (part.strip() for part in line.partition(":"))
                if key in ("model name", "cpu family", "model", "stepping") and value:
                    info[key] = value
                elif key == "flags":
                    flags = set(value.split())
                elif not key and len(info) > 1:
                    break  # the first processor's block is enough
    max_isa = [f.split("=", 1)[1] for f in os.environ.get("XLA_FLAGS", "").split() if f.startswith("--xla_cpu_max_isa=")]
    return {
        "cpu": " ".join([info["model name"]] + [f"{k} {info[k]}" for k in ("cpu family", "model", "stepping") if k in info]),
        "cores": os.cpu_count(),
        "isa": [f for f in ISA_FLAGS if f in flags],
        "xla_max_isa": max_isa[-1] if max_isa else None,
    }


def record(name: str, **values) -> dict:
    """Append one JSON line with machine (and its fingerprint), versions and date; returns it."""
    import flax
    import optax

    line = {
        "benchmark": name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "fingerprint": machine_fingerprint(),
        "device": jax.devices()[0].device_kind,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "versions": {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__},
        **values,
    }
    with open(RESULTS, "a") as f:
        f.write(json.dumps(line) + "\n")
    return line


def latest_peak(setting: str) -> float | None:
    """The newest ``peak_flops_per_s`` that ``benchmarks/peak.py`` recorded for ``setting`` ("core": one pinned
    core; "flags": XLA's single-thread flags; "default": XLA's default threads) on this machine (equal
    ``machine_fingerprint()``), or None if it never ran here."""
    here, peak = machine_fingerprint(), None
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            for line in f:
                row = json.loads(line)
                if row.get("benchmark") == "peak" and row.get("setting") == setting and row.get("fingerprint") == here:
                    peak = row["peak_flops_per_s"]
    return peak


def machine_peak(setting: str) -> float:
    """This machine's matmul peak for ``setting`` (see ``latest_peak``): the recorded one, else measured now by
    ``benchmarks/peak.py`` in a child process (XLA's threads are fixed when JAX starts), which records it."""
    import subprocess
    import sys

    peak = latest_peak(setting)
    if peak is None:
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peak.py")
        subprocess.run([sys.executable, script, "--setting", setting], check=True)
        peak = latest_peak(setting)
    if peak is None:
        raise RuntimeError(f"benchmarks/peak.py recorded no {setting!r} peak for this machine ({machine_fingerprint()})")
    return peak
