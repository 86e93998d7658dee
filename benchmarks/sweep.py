"""A study of many runs: planning, orchestration, fixed cost per run and aggregation at 1k and 10k runs.

    python benchmarks/sweep.py [--parts plan selection fixed orchestration aggregate] [--plan-runs 1000 10000]
        [--plan-seeds-per-job 3] [--repeats 3] [--selection-runs 1000 10000] [--free-slots 100 10 1]
        [--seeds-per-job 1 10] [--group 8] [--tiny-runs 40] [--aggregate-runs 1000 10000] [--code DIR ...]
        [--no-record]

- plan: ``snakemake -n`` of the default benchmark (config/config.yaml, M methods) with its seeds extended to
  at least N runs (⌈N / M⌉ seeds), per ``seeds_per_job`` count S (``--plan-seeds-per-job``): wall seconds and
  peak RSS of the Snakemake process and its CPU seconds (user + system; less sensitive than wall time to other
  processes on a shared machine), medians of ``--repeats``, jobs, and the size of its listing (lines,
  bytes, longest line); beside it, in the same rounds (workflow, floor, workflow, floor, …), the floor:
  ``snakemake -n`` of the bare Snakefile with the same jobs (``benchmarks/bare_snakefile.py``: same rules,
  outputs and logs, static inputs, no validation), checked to plan the same jobs per rule. The load average
  before and after is in the row.
- selection: Snakemake's job selection alone, greedy (``--scheduler greedy``) against the default ILP: one round
  over the N training jobs of the default benchmark (S = 1, all ready, as after the teacher) with 100, 10 or 1
  free job slots (a cluster run's first round with ``jobs: 100``; later a round whenever jobs end): seconds per
  round, timed in the Snakemake process after planning.
- fixed: the fixed cost per run of a training job, tiny real runs (MLP student, 20 steps, one evaluation, kd):
  a job's process wall minus its runs' own steady time (``compute.wall_s − compute.compile_s``: training steps,
  evaluation, checkpoint), per run; for a 1-run job (median of 3) and a ``--group``-run job (sequential).
- orchestration: the same tiny runs (``--tiny-runs``, at most 200; scratch and kd) through ``snakemake --cores
  1 --scheduler greedy``, training stage only (data and teacher built before): per run, the DAG's wall minus
  the jobs' own process walls (the 1-run job's median from ``fixed`` × jobs), divided by the runs — what
  Snakemake adds per run locally (planning, scheduling, job start, bookkeeping); extrapolated per run, not
  timed at 10k.
- aggregate: ``python -m ev3 aggregate`` on synthetic schema-valid trees (``benchmarks/synthetic_runs.py``):
  wall and peak RSS (``benchmarks/aggregate_scale.py``).

``--code DIR`` also plans with another checkout's workflow and ``ev3`` (e.g. an older commit) in the same rounds
(``code_*`` fields of the plan row; the checkout must know the config's keys). Each measurement appends a row to
benchmarks/results.jsonl (``benchmark: sweep``, ``part``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.aggregate_scale import run_aggregate  # noqa: E402
from benchmarks.synthetic_runs import write_runs  # noqa: E402

MAX_TINY_RUNS = 200


def _run(cmd: list[str], *, cwd: str, code: str = ROOT) -> tuple[float, resource.struct_rusage, str]:
    """(wall seconds, resource usage, stdout + stderr) of ``cmd`` with ``code`` first on PYTHONPATH; raises on
    failure."""
    env = {**os.environ, "PYTHONPATH": code, "JAX_PLATFORMS": "cpu"}
    with tempfile.TemporaryFile("w+") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        out.seek(0)
        text = out.read()
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{' '.join(cmd[:6])} … failed:\n{text[-3000:]}")
    return wall, usage, text


def _timed(cmd: list[str], *, cwd: str, code: str = ROOT) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, stdout + stderr) of ``cmd`` (:func:`_run`)."""
    wall, usage, text = _run(cmd, cwd=cwd, code=code)
    return wall, usage.ru_maxrss / 1024, text


def _write_config(path: str, config: dict) -> str:
    with open(path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return path


def default_config(n_runs: int, seeds_per_job: int) -> dict:
    """config/config.yaml with ``n_runs`` student runs (seeds 0 … n_runs / methods − 1) and the given S."""
    with open(os.path.join(ROOT, "config", "config.yaml")) as f:
        config = yaml.safe_load(f)
    config["seeds"] = list(range(-(-n_runs // len(config["methods"]))))
    config["seeds_per_job"] = {"count": seeds_per_job, "mode": "sequential"}
    return config


def _job_stats(out: str) -> dict[str, int]:
    """Jobs per rule of a dry run's "Job stats" table (with ``total``)."""
    table = out.split("Job stats:", 1)[1].split("\n\n", 1)[0].splitlines()[3:]
    return {rule: int(count) for rule, count in (line.split() for line in table if line.strip())}


def _dry_run(snakefile: str, work: str, code: str, *args: str) -> dict:
    cmd = [sys.executable, "-m", "snakemake", "-n", "-s", snakefile, "--directory", work, "--cores", "2", *args]
    wall, usage, out = _run(cmd, cwd=code, code=code)
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
            "stats": _job_stats(out), "dry_run_lines": out.count("\n"),
            "dry_run_bytes": len(out.encode()), "longest_line": max(map(len, out.splitlines()))}


def _median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2] if len(values) % 2 else (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2


def plan(n_runs: int, seeds_per_job: int, codes: list[str], repeats: int = 3) -> dict:
    """``snakemake -n`` of the workflow (this checkout and each of ``codes``) and of the bare Snakefile with the
    same jobs, ``repeats`` rounds of one each, interleaved: medians of wall seconds, CPU seconds and peak RSS."""
    from benchmarks.bare_snakefile import bare_snakefile

    work = tempfile.mkdtemp(prefix="sweep_plan_")
    try:
        config = default_config(n_runs, seeds_per_job)
        cfg = _write_config(os.path.join(work, "config.yaml"), config)
        bare = os.path.join(work, "Snakefile.bare")
        with open(bare, "w") as f:
            f.write(bare_snakefile(config))
        variants = {"": (os.path.join(ROOT, "workflow", "Snakefile"), ROOT, ["--configfile", cfg]),
                    "floor_": (bare, ROOT, [])}
        for i, code in enumerate(codes):
            name = f"code{i if len(codes) > 1 else ''}_"
            variants[name] = (os.path.join(code, "workflow", "Snakefile"), code, ["--configfile", cfg])
        load_before = os.getloadavg()
        runs = {name: [] for name in variants}
        for _ in range(repeats):
            for name, (snakefile, code, args) in variants.items():
                runs[name].append(_dry_run(snakefile, work, code, *args))
        stats = runs[""][0]["stats"]
        if runs["floor_"][0]["stats"] != stats:
            raise RuntimeError(f"the bare Snakefile plans other jobs: {runs['floor_'][0]['stats']} != {stats}")
        row = {"runs": n_runs, "seeds_per_job": seeds_per_job, "jobs": stats["total"], "repeats": repeats}
        for name, rounds in runs.items():
            row[f"{name}wall_s"] = round(_median([r["wall_s"] for r in rounds]), 2)
            row[f"{name}walls_s"] = [round(r["wall_s"], 2) for r in rounds]
            row[f"{name}cpu_s"] = round(_median([r["cpu_s"] for r in rounds]), 2)
            row[f"{name}cpus_s"] = [round(r["cpu_s"], 2) for r in rounds]
            row[f"{name}peak_rss_mb"] = round(_median([r["peak_rss_mb"] for r in rounds]), 1)
        row.update({k: runs[""][0][k] for k in ("dry_run_lines", "dry_run_bytes", "longest_line")})
        row["load_avg"] = [round(x, 2) for x in load_before + os.getloadavg()]  # 1, 5, 15 min: before, after
        return row
    finally:
        shutil.rmtree(work, ignore_errors=True)


# Plans the DAG (``snakemake -n``), then, instead of the dry run's listing, times one job-selection round of each
# scheduler over every ready-to-be training job with ``free`` free job slots (a cluster run's steady state: a job
# ends, one slot frees, the scheduler scans every ready job again); prints one JSON line per (scheduler, free).
_TIMED_SELECTION = """
import json, sys, time
from snakemake.cli import main
from snakemake.logging import logger
from snakemake.scheduling.job_scheduler import JobScheduler
from snakemake_interface_scheduler_plugins.registry import SchedulerPluginRegistry
from snakemake.scheduling.greedy import SchedulerSettings as Greedy
from snakemake.scheduling.milp import SchedulerSettings as Ilp

def schedule(self):
    dag = self.workflow.dag
    remaining = list(dag.needrun_jobs())
    ready = [job for job in remaining if job.rule.name.startswith("train_student")]
    self.workflow.async_run(self.update_input_sizes(ready))
    for name, settings in (("greedy", Greedy()), ("ilp", Ilp())):
        scheduler = SchedulerPluginRegistry().get_plugin(name).scheduler(dag, settings, logger)
        for free in FREE:
            resources = {"_cores": sys.maxsize, "_nodes": free, "_job_count": sys.maxsize}
            t0 = time.perf_counter()
            chosen = scheduler.select_jobs(ready, remaining, resources, self._input_sizes)
            seconds = time.perf_counter() - t0
            print("SELECTION " + json.dumps({"scheduler": name, "ready": len(ready), "free": free,
                  "selected": None if chosen is None else len(chosen), "round_s": seconds}), flush=True)
    return True

JobScheduler.schedule = schedule
FREE = [int(x) for x in sys.argv.pop(1).split(",")]
sys.argv[0] = "snakemake"
main()
"""


def selection(n_runs: int, free: list[int]) -> list[dict]:
    """One job-selection round of the greedy and the ILP scheduler over the training jobs of the default
    benchmark with ``n_runs`` one-run jobs, all ready at once (as after the teacher), with ``free`` free job
    slots (``jobs`` of the SLURM profile on a first round, 1 whenever a job ends): seconds per round."""
    work = tempfile.mkdtemp(prefix="sweep_selection_")
    try:
        cfg = _write_config(os.path.join(work, "config.yaml"), default_config(n_runs, 1))
        cmd = [sys.executable, "-c", _TIMED_SELECTION, ",".join(map(str, free)), "-n", "-s",
               os.path.join(ROOT, "workflow", "Snakefile"), "--directory", work, "--configfile", cfg, "-j", "100"]
        _, _, out = _timed(cmd, cwd=ROOT)
        rows = [json.loads(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith("SELECTION ")]
        return [{"runs": n_runs, **row, "round_s": round(row["round_s"], 3)} for row in rows]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def tiny_config(seeds: list[int], seeds_per_job: int) -> dict:
    """The smoke benchmark cut to tiny runs: 20-step teacher and MLP students (one evaluation), scratch and kd."""
    with open(os.path.join(ROOT, "config", "smoke.yaml")) as f:
        config = yaml.safe_load(f)
    config["benchmark"] = "tiny"
    config["teacher"]["train"].update(steps=20, eval_every=20)
    config["train"].update(steps=20, eval_every=20)
    config["methods"] = {name: config["methods"][name] for name in ("scratch", "kd")}
    config["seeds"] = seeds
    config["seeds_per_job"] = {"count": seeds_per_job, "mode": "sequential"}
    return config


def _snakemake(work: str, config: dict, *args: str) -> tuple[float, float, str]:
    cfg = _write_config(os.path.join(work, "config.yaml"), config)
    return _timed([sys.executable, "-m", "snakemake", "-s", os.path.join(ROOT, "workflow", "Snakefile"), "--directory",
                   work, "--configfile", cfg, *args], cwd=ROOT)


def _teacher_target(config: dict) -> str:
    return f"results/{config['benchmark']}/teacher/mnist1d/{config['teacher']['model']}/seed0/metrics.json"


def _run_targets(config: dict) -> list[str]:
    return [f"results/{config['benchmark']}/runs/mnist1d/mlp64/{m}/seed{s}/metrics.json"
            for m in config["methods"] for s in config["seeds"]]


def _job(work: str, config: dict, method: str, seeds: list[int]) -> tuple[float, list[dict]]:
    """(process wall, metrics of its runs) of one ``python -m ev3 train-group`` job, as the DAG runs it."""
    from ev3.config import student_run, validate

    run = student_run(validate(config), "mnist1d", "mlp64", method, 0)
    del run["seed"]
    root = os.path.join(work, "results", config["benchmark"])
    cmd = [sys.executable, "-m", "ev3", "train-group", "--run", json.dumps(run), "--seeds", *map(str, seeds),
           "--threads", "1", "--compile-cache", os.path.join(root, "compile_cache")]
    wall, _, _ = _timed(cmd, cwd=work)
    metrics = []
    for seed in seeds:
        with open(os.path.join(root, "runs", "mnist1d", "mlp64", method, f"seed{seed}", "metrics.json")) as f:
            metrics.append(json.load(f))
    return wall, metrics


def _fixed(wall: float, metrics: list[dict]) -> float:
    """Seconds per run of a job that are not its runs' own steady time."""
    own = sum(m["compute"]["wall_s"] - m["compute"]["compile_s"] for m in metrics)
    return (wall - own) / len(metrics)


def fixed_cost(work: str, group: int) -> dict:
    """Fixed cost per run in 1-run jobs (median of 3) and in one ``group``-run job; ``work`` holds the tiny
    benchmark's data and teacher (and its compile cache, warm as in a DAG where an earlier job compiled)."""
    config = tiny_config([1000], 1)
    singles = [_job(work, config, "kd", [1000 + i]) for i in range(3)]
    one = sorted(singles, key=lambda s: s[0])[1]
    seeds = list(range(2000, 2000 + group))
    wall_group, metrics_group = _job(work, tiny_config(seeds, group), "kd", seeds)
    return {"job_wall_s_1": round(one[0], 2), "fixed_s_per_run_1": round(_fixed(*one), 3),
            "group": group, "job_wall_s_group": round(wall_group, 2),
            "fixed_s_per_run_group": round(_fixed(wall_group, metrics_group), 3),
            "compile_s_warm_runs": [round(m["compute"]["compile_s"], 3) for m in metrics_group[1:]]}


def orchestration(work: str, n_runs: int, seeds_per_job: int, job_wall_s: float) -> dict:
    config = tiny_config(list(range(n_runs // 2)), seeds_per_job)
    root = os.path.join(work, "results", config["benchmark"])
    for done in (os.path.join(root, "runs"), os.path.join(root, "state", "runs")):  # no run restored from a record
        shutil.rmtree(done, ignore_errors=True)
    wall, _, out = _snakemake(work, config, "--cores", "1", "--scheduler", "greedy", *_run_targets(config))
    jobs = int([line.split()[-1] for line in out.splitlines() if line.startswith("total")][0])
    return {"runs": n_runs, "seeds_per_job": seeds_per_job, "jobs": jobs, "dag_wall_s": round(wall, 2),
            "job_wall_s": job_wall_s, "orchestration_s_per_run": round((wall - jobs * job_wall_s) / n_runs, 4)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", default=["plan", "selection", "fixed", "orchestration", "aggregate"])
    p.add_argument("--plan-runs", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--selection-runs", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--free-slots", type=int, nargs="+", default=[100, 10, 1],
                   help="free job slots of a timed selection round")
    p.add_argument("--plan-seeds-per-job", type=int, nargs="+", default=[3], help="S of the planned studies")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the plan part")
    p.add_argument("--seeds-per-job", type=int, nargs="+", default=[1, 10], help="S of the orchestration DAGs")
    p.add_argument("--group", type=int, default=8, help="S of the fixed-cost group job")
    p.add_argument("--tiny-runs", type=int, default=40, help=f"real runs of the orchestration DAG (≤ {MAX_TINY_RUNS})")
    p.add_argument("--aggregate-runs", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--code", nargs="+", default=[], help="other checkouts planned in the same rounds (plan part)")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    if args.tiny_runs > MAX_TINY_RUNS:
        p.error(f"--tiny-runs: at most {MAX_TINY_RUNS}")
    from benchmarks.common import record

    codes = [os.path.abspath(c) for c in args.code]
    other = codes or None

    def out(part: str, **row) -> None:
        print(json.dumps({"part": part, **row}), flush=True)
        if not args.no_record:
            record("sweep", part=part, code=other if part == "plan" else None, **row)

    if "plan" in args.parts:
        for n in args.plan_runs:
            for s in args.plan_seeds_per_job:
                out("plan", **plan(n, s, codes, args.repeats))
    if "selection" in args.parts:
        for n in args.selection_runs:
            for row in selection(n, args.free_slots):
                out("selection", **row)
    if {"fixed", "orchestration"} & set(args.parts):
        work = tempfile.mkdtemp(prefix="sweep_tiny_")
        try:
            config = tiny_config([0], 1)
            _snakemake(work, config, "--cores", "2", _teacher_target(config))  # data and teacher, not timed
            fixed = fixed_cost(work, args.group)
            if "fixed" in args.parts:
                out("fixed", **fixed)
            if "orchestration" in args.parts:
                for s in args.seeds_per_job:
                    job_wall = fixed["job_wall_s_1"] if s == 1 else None
                    if job_wall is None:  # an S-run job of the tiny benchmark, measured the same way
                        seeds = list(range(3000, 3000 + s))
                        job_wall = round(_job(work, tiny_config(seeds, s), "kd", seeds)[0], 2)
                    out("orchestration", **orchestration(work, args.tiny_runs, s, job_wall))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if "aggregate" in args.parts:
        base = tempfile.mkdtemp(prefix="sweep_aggregate_")
        try:
            for n in args.aggregate_runs:
                root = os.path.join(base, f"runs{n}")
                write_runs(root, n, seed=0)
                wall, rss = run_aggregate(root, ROOT)
                out("aggregate", runs=n, wall_s=round(wall, 2), peak_rss_mb=round(rss, 1))
                shutil.rmtree(root, ignore_errors=True)
        finally:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
