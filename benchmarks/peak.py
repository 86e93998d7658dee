"""The machine's float32 matmul FLOP/s: the denominator of model FLOP utilization (MFU).

    python benchmarks/peak.py [--sizes 2048 4096] [--setting flags|core|default]

Times a jitted ``n × n @ n × n`` float32 matmul (2·n³ FLOPs per call / median seconds per call) for each
size, in three settings:

- ``flags``: XLA_FLAGS ``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`` (``ev3.cli
  limit_threads(1)``), how the DAG runs its jobs;
- ``core``: the same flags and the process pinned to one CPU (``sched_setaffinity``): one core, for certain;
- ``default``: XLA's default thread pools on every CPU.

Each line also has ``cpu_per_wall``, process CPU seconds / wall seconds over the timed calls: the number of
cores the call really kept busy (the flags alone do not keep XLA's matmuls on one core in jax 0.10). XLA's
flags and thread pools are fixed when JAX starts, so without ``--setting`` the script runs itself once per
setting in a child process. One JSON line per size and setting; ``peak_flops_per_s`` (the best size) of the
``core`` setting is the single-core peak that ``benchmarks/train_step.py`` divides by.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SETTINGS = ("flags", "core", "default")


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    p.add_argument("--setting", choices=SETTINGS, default=None, help="all three (in child processes) when omitted")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args()


def measure(sizes: list[int], setting: str, repeats: int) -> None:
    from ev3.cli import limit_threads

    if setting in ("flags", "core"):
        limit_threads(1)  # before JAX is imported
    if setting == "core":
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import jax
    import jax.numpy as jnp

    from benchmarks.common import cpu_seconds, record, steady_time

    matmul = jax.jit(jnp.matmul)
    rows = []
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        seconds = steady_time(matmul, a, b, warmup=2, repeats=repeats)
        cpu_per_wall = (cpu_seconds() - cpu0) / (time.perf_counter() - wall0)
        rows.append((n, seconds, 2 * n**3 / seconds, cpu_per_wall))
    best = max(r[2] for r in rows)
    for n, seconds, flops, cpu_per_wall in rows:
        record("peak", setting=setting, size=n, seconds=seconds, flops_per_s=flops, peak_flops_per_s=best,
               cpu_per_wall=cpu_per_wall, cpus=len(os.sched_getaffinity(0)))
        print(f"{setting:>8} | {n:>5} | {seconds * 1e3:9.1f} ms | {flops / 1e9:7.1f} GFLOP/s | {cpu_per_wall:12.2f}")


def main() -> None:
    args = _args()
    if not args.child:
        print(f"{'setting':>8} | {'n':>5} | {'per matmul':>12} | {'float32':>15} | {'cores busy':>12}", flush=True)
    if args.setting is not None:
        measure(args.sizes, args.setting, args.repeats)
        return
    for setting in SETTINGS:
        subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--setting", setting, "--repeats",
                        str(args.repeats), "--sizes", *map(str, args.sizes)], check=True)


if __name__ == "__main__":
    main()
