"""Seed groups on the CPU: student steps per second per seed, one vmapped group of S seeds vs single runs.

    python benchmarks/seed_groups.py [--groups 1 4 16] [--students mlp256 cnn-small] [--steps 40] [--rounds 3]

KD (T = 4, α = 0.9) from the default benchmark's live 3×25-channel 1-D CNN teacher, on mnist1d shapes (3,200
synthetic training signals of length 40, 10 classes), batch 128, Adam 1e-3, one XLA thread (as the DAG runs
its jobs). For each student (``mlp256``: the default 256×2 MLP; ``cnn-small``: config/smoke.yaml's 2×8-channel
1-D CNN): ``single`` is the training loop's own step (``ev3.train.StepWork``, one seed, as ``ev3.train.fit``
runs it) and ``group S`` is ``ev3.seedgroup.SeedGroup`` (S seeds in one vmapped step, the teacher kept once);
one step per call. Each is timed in blocks of ``steps`` steps, alternating between the settings for
``rounds`` rounds (``benchmarks.common.interleaved_times``); per-seed steps/s = S × steps / median block
seconds. One JSON line per (student, setting) in benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ev3.cli import limit_threads  # noqa: E402

limit_threads(1)  # before JAX is imported

import jax  # noqa: E402

from benchmarks.common import interleaved_times, record  # noqa: E402
from ev3 import methods, models  # noqa: E402
from ev3.config import RunSpec  # noqa: E402
from ev3.data import Dataset  # noqa: E402
from ev3.methods.common import Frozen  # noqa: E402
from ev3.rng import seed_key, stream  # noqa: E402
from ev3.seedgroup import SeedGroup  # noqa: E402
from ev3.train import Counter, RunContext, StepWork  # noqa: E402

STUDENTS = {"mlp256": {"type": "mlp", "width": 256, "depth": 2},
            "cnn-small": {"type": "cnn", "channels": [8, 8], "kernel_size": 5, "stride": 2}}
TEACHER = {"type": "cnn", "channels": [25, 25, 25], "kernel_size": 5, "stride": 2}
BATCH, TRAIN, LENGTH, CLASSES = 128, 3200, 40, 10


def data() -> Dataset:
    keys = jax.random.split(jax.random.key(0), 8)
    splits = {name: (jax.random.normal(keys[2 * i], (n, LENGTH)), jax.random.randint(keys[2 * i + 1], (n,), 0, CLASSES))
              for i, (name, n) in enumerate({"train": TRAIN, "val": 400, "meta": 400, "test": 1000}.items())}
    return Dataset("synthetic-mnist1d", CLASSES, (LENGTH,), splits)


def spec(student: str) -> RunSpec:
    return RunSpec.from_dict({
        "benchmark": "seed_groups", "dataset": "synthetic-mnist1d", "data_dir": "", "split": {"seed": 0, "val": 0.1, "meta": 0.1},
        "role": "student", "method": "kd", "method_type": "kd", "options": {"temperature": 4.0, "alpha": 0.9},
        "model_name": student, "model": STUDENTS[student],
        "train": {"steps": 6000, "batch_size": BATCH, "eval_every": 6000, "steps_per_call": 1,
                  "optimizer": {"name": "adam", "learning_rate": 0.001}},
        "seed": 0, "teacher": "cnn", "teacher_model": TEACHER, "teacher_seed": 0, "teacher_dir": None,
    })


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--groups", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--students", nargs="+", choices=sorted(STUDENTS), default=["mlp256", "cnn-small"])
    p.add_argument("--steps", type=int, default=40, help="steps per timed block")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    kd, dataset = methods.get("kd"), data()
    net = models.build(TEACHER, dataset.input_shape, dataset.num_classes, jax.random.key(7))
    teacher = Frozen(net.graphdef, net.params, net.rest)
    print(f"{'student':>10} | {'setting':>8} | {'seeds':>5} | {'ms/step':>8} | {'steps/s/seed':>12} | {'vs single':>9}")
    for student in args.students:
        s0 = spec(student)
        works = {"single": StepWork(RunContext(kd, s0, dataset, teacher, Counter(), None, print))}
        works["single"].load(kd.init(s0, dataset, teacher, stream(seed_key(0), "student_init")), 0)
        seeds = {"single": 1}
        for n in args.groups:
            specs = [dataclasses.replace(s0, seed=s) for s in range(n)]
            works[f"group{n}"], seeds[f"group{n}"] = SeedGroup(kd, specs, dataset, teacher, Counter(), print), n
        index = {name: 0 for name in works}

        def block(name):
            work = works[name]

            def run():
                for _ in range(args.steps):
                    work.advance(index[name], 1)
                    index[name] += 1
                return work.leaves if name == "single" else work.member

            return run

        seconds = interleaved_times({name: block(name) for name in works}, rounds=args.rounds, repeats=1, warmup=1)
        single = args.steps / seconds["single"]
        for name, s in seconds.items():
            per_seed = seeds[name] * args.steps / s
            record("seed_groups", student=student, model=STUDENTS[student], teacher=TEACHER, method="kd", batch=BATCH,
                   setting=name, seeds=seeds[name], steps_per_block=args.steps, rounds=args.rounds,
                   step_s=s / args.steps, steps_per_s_per_seed=per_seed, vs_single=per_seed / single)
            print(f"{student:>10} | {name:>8} | {seeds[name]:5d} | {s / args.steps * 1e3:8.2f} | {per_seed:12.0f} |"
                  f" {per_seed / single:9.2f}")


if __name__ == "__main__":
    main()
