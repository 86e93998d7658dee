"""The whole DAG: wall time, and where it goes per job (start-up, compilation, steady training).

    python benchmarks/pipeline.py [--config-file config/smoke.yaml] [--cores 2] [--keep]

Runs ``snakemake -s workflow/Snakefile --cores N --configfile FILE`` into a fresh temporary ``--directory``
(default: the smoke config, a few minutes on 2 CPU cores; ``--config-file config/config.yaml`` is the full
default benchmark, about 12 minutes) and times it. Each job's wall time comes from Snakemake's log (its
timestamps have 1 s resolution); each training job's ``metrics.json`` splits its ``compute.wall_s`` into
``compile_s`` (ahead-of-time compiles of the training loop, loaded from the DAG's persistent compilation cache
when another job already compiled the same kernels) and steady work (``wall_s − compile_s``: training steps
and evaluations). Start-up is the job's wall minus its runs' ``wall_s`` (a seed group's job holds several): the
process, imports, data loading, teacher restore, the test report and writing outputs. The compile fraction divides the summed ``compile_s`` by the
core-seconds the jobs ran (Σ job wall; target ≤ 10 %) and by ``cores × DAG wall``.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.common import record  # noqa: E402

SNAKEFILE = os.path.join(ROOT, "workflow", "Snakefile")
TIMESTAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
RULE = re.compile(r"^(?:local)?rule (\w+):$")
FINISHED = re.compile(r"^Finished jobid: (\d+)")


def job_times(log: str) -> dict[int, dict]:
    """``jobid -> {rule, output, start, end}`` from a Snakemake log (start/end: datetimes)."""
    jobs, stamp, current = {}, None, None
    for line in log.splitlines():
        line = line.rstrip()
        if m := TIMESTAMP.match(line):
            stamp = datetime.datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        elif m := RULE.match(line):
            current = {"rule": m.group(1), "start": stamp, "output": []}
        elif current is not None and line.strip().startswith("output:"):
            current["output"] = [p.strip() for p in line.split(":", 1)[1].split(",")]
        elif current is not None and line.strip().startswith("jobid:"):
            jobs[int(line.split(":", 1)[1])] = current
            current = None
        elif (m := FINISHED.match(line)) and int(m.group(1)) in jobs:
            jobs[int(m.group(1))]["end"] = stamp
    return jobs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config-file", default=os.path.join("config", "smoke.yaml"))
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--keep", action="store_true", help="keep the temporary working directory (printed)")
    args = p.parse_args()
    config_file = os.path.abspath(args.config_file)
    workdir = tempfile.mkdtemp(prefix="ev3-pipeline-")
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    command = [sys.executable, "-m", "snakemake", "-s", SNAKEFILE, "--directory", workdir, "--configfile",
               config_file, "--cores", str(args.cores)]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()
    try:
        if proc.returncode != 0:
            sys.exit(f"snakemake failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        jobs = job_times(proc.stdout + proc.stderr)
        by_output = {os.path.normpath(out): job for job in jobs.values() for out in job["output"]}
        per_method = collections.defaultdict(lambda: collections.Counter())
        pattern = os.path.join(workdir, "results", "*", "**", "metrics.json")
        counted = set()
        for path in sorted(glob.glob(pattern, recursive=True)):
            with open(path) as f:
                metrics = json.load(f)
            job, c = by_output[os.path.normpath(os.path.relpath(path, workdir))], metrics["compute"]
            method = "teacher" if job["rule"] == "train_teacher" else metrics["method"]
            if id(job) not in counted:  # a seed group's job holds several runs: its wall counts once
                counted.add(id(job))
                job_wall = (job["end"] - job["start"]).total_seconds()
                per_method[method].update(jobs=1, job_wall=job_wall, startup=job_wall)
            per_method[method].update(startup=-c["wall_s"], wall_s=c["wall_s"], compile_s=c["compile_s"],
                                      steady=c["wall_s"] - c["compile_s"])
        other = collections.Counter()
        for job in jobs.values():
            if job["rule"] != "train_teacher" and not job["rule"].startswith("train_student") and "end" in job:
                other[job["rule"]] += (job["end"] - job["start"]).total_seconds()
    finally:
        if args.keep:
            print(f"working directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    total = sum(per_method.values(), collections.Counter())
    job_seconds = total["job_wall"] + sum(other.values())
    fraction_jobs = total["compile_s"] / job_seconds
    fraction_cores = total["compile_s"] / (args.cores * wall)
    print(f"{'method':>20} | {'jobs':>4} | {'job wall s':>10} | {'start-up s':>10} | {'compile s':>9} |"
          f" {'steady s':>8} | {'compile %':>9}")
    for method, t in [*per_method.items(), ("all training jobs", total)]:
        print(f"{method:>20} | {t['jobs']:4d} | {t['job_wall']:10.1f} | {t['startup']:10.1f} | {t['compile_s']:9.1f} |"
              f" {t['steady']:8.1f} | {t['compile_s'] / t['job_wall']:9.1%}")
    print(f"other jobs (s): {', '.join(f'{k} {v:.0f}' for k, v in other.items())}")
    print(f"DAG wall {wall:.1f} s on {args.cores} cores ({os.path.relpath(config_file, ROOT)}); Σ job wall {job_seconds:.0f} s;"
          f" compile {total['compile_s']:.1f} s = {fraction_jobs:.1%} of job time, {fraction_cores:.1%} of"
          f" cores × wall (target ≤ 10 %); load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    record("pipeline", config=os.path.relpath(config_file, ROOT), cores=args.cores, wall_s=wall, job_wall_s=job_seconds,
           compile_s=total["compile_s"], compile_fraction_of_job_time=fraction_jobs,
           compile_fraction_of_cores_wall=fraction_cores, other_jobs_s=dict(other),
           per_method={m: dict(t) for m, t in per_method.items()}, loadavg_before=load_before[0],
           loadavg_after=load_after[0])


if __name__ == "__main__":
    main()
