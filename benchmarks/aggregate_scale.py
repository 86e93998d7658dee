"""``python -m ev3 aggregate`` on synthetic results trees of N runs: wall seconds and peak RSS.

Each N gets a tree from :func:`benchmarks.synthetic_runs.write_runs` (seed 0, 1000 test samples per run); the
aggregate runs in a child process (its own peak RSS, from ``os.wait4``), ``--repeats`` times, the median wall
time kept. Also reported: the bytes of what the HTML report embeds from ``tables/`` and ``figures/`` (every
table but ``runs.csv`` beyond the config default ``report.embed_max_runs`` = 500, every figure). One line per
N goes to benchmarks/results.jsonl.

    python benchmarks/aggregate_scale.py --runs 24 1000 10000 [--repeats 3] [--code DIR] [--keep DIR]

``--code DIR`` runs the ``ev3`` package of another checkout (e.g. an older commit) on the same trees.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.synthetic_runs import write_runs  # noqa: E402

EMBED_MAX_RUNS = 500  # workflow/rules/report.smk default of report.embed_max_runs


def run_aggregate(root: str, code: str) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one ``python -m ev3 aggregate root`` with ``code`` first on the path."""
    env = {**os.environ, "PYTHONPATH": code, "JAX_PLATFORMS": "cpu"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "ev3", "aggregate", root], cwd=code, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if proc.returncode:
        raise RuntimeError(f"aggregate {root} failed:\n{err[-3000:]}")
    return wall, usage.ru_maxrss / 1024  # Linux: KiB


def embedded_bytes(root: str, n_runs: int) -> int:
    """Bytes of the tables and figures the HTML report embeds (runs.csv only up to EMBED_MAX_RUNS runs)."""
    total = 0
    for sub in ("tables", "figures"):
        for name in os.listdir(os.path.join(root, sub)):
            if name.endswith((".csv", ".png")) and not (name == "runs.csv" and n_runs > EMBED_MAX_RUNS):
                total += os.path.getsize(os.path.join(root, sub, name))
    return total


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[24, 1000, 10000])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--code", default=ROOT, help="checkout whose ev3 package runs (default: this one)")
    parser.add_argument("--keep", default=None, help="write the trees under this folder and keep them (reused if present)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    from benchmarks.common import record

    base = args.keep or tempfile.mkdtemp(prefix="aggregate_scale_")
    try:
        for n in args.runs:
            root = os.path.join(base, f"runs{n}")
            if not os.path.exists(os.path.join(root, "runs")):
                write_runs(root, n, seed=0)
            timings = [run_aggregate(root, os.path.abspath(args.code)) for _ in range(args.repeats)]
            walls = sorted(w for w, _ in timings)
            row = {"runs": n, "wall_s": round(walls[len(walls) // 2], 2), "wall_s_all": [round(w, 2) for w in walls],
                   "peak_rss_mb": round(max(r for _, r in timings), 1), "report_embedded_bytes": embedded_bytes(root, n)}
            print(row, flush=True)
            if not args.no_record:
                code = None if os.path.abspath(args.code) == ROOT else os.path.abspath(args.code)
                record("aggregate_scale", code=code, **row)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
