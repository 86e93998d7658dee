"""Planned compute of a real benchmark config: XLA FLOPs of one training step of every job × its steps.

    python benchmarks/plan_gpu_hours.py [config/cifar100.yaml] [--tflops 10]

For each training job of the DAG (teachers, then student × method; seeds multiply), the method's step on a
batch of random inputs of the dataset's shape is lowered (not run) and XLA's cost analysis gives its FLOPs;
× steps = the job's training FLOPs (evaluations not included). GPU-hours = FLOPs / (``--tflops`` × 10¹² ×
3600): ``--tflops`` is the *effective* (achieved) throughput of one GPU on these models, an assumption until
measured there (e.g. with benchmarks/resnet_throughput.py on the GPU). No dataset is needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import yaml  # noqa: E402

from benchmarks.common import record  # noqa: E402
from ev3 import methods, models  # noqa: E402
from ev3.config import (  # noqa: E402
    RunSpec, budget_share, method_students, student_run, teacher_models, teacher_run, validate,
)
from ev3.data import TFDS_IMAGES, Dataset  # noqa: E402
from ev3.methods.common import Frozen  # noqa: E402
from ev3.train import flops_of, frozen_logits  # noqa: E402

SHAPES = {"mnist": (28, 28, 1), "cifar10": (32, 32, 3), "cifar100": (32, 32, 3)}


def step_flops(spec: RunSpec, data: Dataset, teacher) -> float:
    """XLA FLOPs of one student step. EV3 (host-driven, no single step): a candidate step (a scratch step of
    the student, before any growth) plus its teacher forward (every candidate step draws its own batch); its
    assess/decide evaluations are selection compute and not included."""
    if spec.method_type == "ev3":
        student = step_flops(dataclasses.replace(spec, method_type="scratch", options={}), data, None)
        b = spec.train["batch_size"]
        forward = flops_of(jax.jit(frozen_logits).lower(teacher, jnp.zeros((b, *data.input_shape), jnp.float32)))
        return student + forward
    method = methods.get(spec.method_type)
    state = method.init(spec, data, teacher, jax.random.key(0))
    b = spec.train["batch_size"]
    batch = (jnp.zeros((b, *data.input_shape), jnp.float32), jnp.zeros((b,), jnp.int32))
    if method.work.with_indices:  # CRD: its batches carry the examples' indices
        batch = (*batch, jnp.arange(b, dtype=jnp.int32))
    return flops_of(jax.jit(method.step).lower(state, batch, jax.random.key(0)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", nargs="?", default="config/cifar100.yaml")
    p.add_argument("--tflops", type=float, default=10.0, help="effective TFLOP/s of one GPU (an assumption)")
    args = p.parse_args()
    with open(args.config) as f:
        config = validate(yaml.safe_load(f))
    rows, total = [], 0.0
    for dataset in config["datasets"]:
        shape, classes = SHAPES[dataset], TFDS_IMAGES[dataset]
        x = jnp.zeros((max(config["train"]["batch_size"], 64), *shape), jnp.float32)
        # Labels of the carved train split's size (50,000 images less val and meta): CRD's memory bank and its
        # negatives (capped by the other-class examples) scale with it; only the labels are read at init.
        n_train = 50000 - round(50000 * config["split"]["val"]) - round(50000 * config["split"]["meta"])
        y = jnp.arange(n_train, dtype=jnp.int32) % classes
        data = Dataset(dataset, classes, shape, {k: (x, y) for k in ("train", "val", "meta", "test")})
        teachers = {}
        for name in teacher_models(config):
            spec = RunSpec.from_dict(teacher_run(config, dataset, name))
            net = models.build(spec.model, shape, classes, jax.random.key(0))
            teachers[name] = Frozen(net.graphdef, net.params, net.rest)
            rows.append(("teacher", name, 1, spec.train["steps"], step_flops(spec, data, None)))
        for student in config["students"]:
            for method in config["methods"]:
                if student not in method_students(config, method):
                    continue
                spec = RunSpec.from_dict(student_run(config, dataset, student, method, 0))
                steps = (spec.options["iterations"] * budget_share(config["methods"][method])
                         if spec.method_type == "ev3" else spec.train["steps"])
                rows.append((method, student, len(config["seeds"]), steps, step_flops(spec, data, teachers[spec.teacher])))
    print(f"{'job':12s} {'model':10s} {'runs':>4s} {'steps':>8s} {'GFLOP/step':>11s} {'PFLOP/run':>10s} {'GPU-h/run':>9s}")
    for method, model, runs, steps, f in rows:
        run_flops = f * steps
        total += run_flops * runs
        print(f"{method:12s} {model:10s} {runs:4d} {steps:8d} {f / 1e9:11.2f} {run_flops / 1e15:10.2f} {run_flops / (args.tflops * 1e12 * 3600):9.2f}")
    hours = total / (args.tflops * 1e12 * 3600)
    print(f"total {total / 1e15:.1f} PFLOP = {hours:.1f} GPU-hours at an effective {args.tflops:g} TFLOP/s")
    record("plan_gpu_hours", config=args.config, tflops_assumed=args.tflops, total_flops=total, gpu_hours=hours,
           jobs=[{"job": m, "model": mo, "runs": r, "steps": s, "flops_per_step": f} for m, mo, r, s, f in rows])


if __name__ == "__main__":
    main()
