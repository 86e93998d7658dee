"""Steady-state training speed of the pipeline's trainer vs a minimal hand-written jitted loop.

    python benchmarks/train_step.py [--steps 3000] [--repeats 3] [--pin]

For the default 256×2 MLP student and the default 3×25-channel 1-D CNN teacher (mnist1d, batch 128, Adam
1e-3, cross-entropy), both with XLA's single-thread flags as the DAG runs its jobs (``--pin`` also pins the
process to one CPU, which those flags alone do not guarantee):

- trainer: ``ev3.train.fit`` with the ``scratch`` method, ``eval_every`` = steps (one evaluation at the end);
  its ``compute["steps_per_s"]`` excludes compilation and evaluations;
- bare: the same model (``ev3.models``), batch gather and optimizer (``optax.adam``) in one jitted step with
  donated parameters, called ``steps`` times in a Python loop: the first loop after compiling (``bare first``,
  what the trainer's single pass is comparable to) and the median of ``repeats`` more (``bare``, warm), each
  run right after one of the trainer's (alternating).

The ratio trainer / bare (warm) is the trainer's efficiency (1.0: no overhead; target ≥ 0.95); ``first`` is
trainer / bare first. Achieved FLOP/s are XLA cost-analysis FLOPs per step × steps/s; MFU divides the
trainer's by this machine's single-core matmul peak (setting ``core``): the one ``benchmarks/peak.py`` last
recorded in benchmarks/results.jsonl with this machine's fingerprint, else measured in the same run
(``benchmarks.common.machine_peak``). ``cores busy`` is process CPU seconds / wall seconds of the
warm bare loops (1.0: one core).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ev3.cli import limit_threads  # noqa: E402

limit_threads(1)  # before JAX is imported
if "--pin" in sys.argv:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
import yaml  # noqa: E402

from benchmarks.common import cpu_seconds, machine_peak, record, steady_time  # noqa: E402
from ev3 import data as ev3_data  # noqa: E402
from ev3 import methods, models  # noqa: E402
from ev3.config import RunSpec, student_run, teacher_run, validate  # noqa: E402
from ev3.losses import cross_entropy  # noqa: E402
from ev3.train import fit, flops_of  # noqa: E402

MODELS = {
    "mlp256 (student)": {"type": "mlp", "width": 256, "depth": 2},
    "cnn (teacher)": {"type": "cnn", "channels": [25, 25, 25], "kernel_size": 5, "stride": 2},
}
BATCH, LR = 128, 1e-3


def run_spec(config: dict, data_dir: str, model: dict, steps: int, teacher: bool) -> RunSpec:
    d = teacher_run(config, "mnist1d", config["teacher"]["model"]) if teacher else student_run(config, "mnist1d", config["students"][0], "scratch", 0)
    train = {"steps": steps, "batch_size": BATCH, "eval_every": steps, "optimizer": {"name": "adam", "learning_rate": LR}}
    return RunSpec.from_dict({**d, "data_dir": data_dir, "model": model, "train": train})


def bare_loop(model: dict, data, steps: int):
    """``run()`` trains ``steps`` steps from the same initial state; returns (run, FLOPs per step)."""
    net = models.build(model, data.input_shape, data.num_classes, jax.random.key(0))
    tx = optax.adam(LR)
    x_all, y_all = data.splits["train"]
    per_epoch = x_all.shape[0] // BATCH
    perm = jax.random.permutation(jax.random.key(1), x_all.shape[0])

    def step(params, opt_state, x_all, y_all, perm, j):
        idx = jax.lax.dynamic_slice_in_dim(perm, j * BATCH, BATCH)
        x, y = x_all[idx], y_all[idx]

        def loss(p):
            return cross_entropy(models.apply(net.graphdef, p, net.rest, x)[0], y)

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    step_c = jax.jit(step, donate_argnums=(0, 1))
    init = (net.params, tx.init(net.params))
    flops = flops_of(step_c.lower(*init, x_all, y_all, perm, jnp.int32(0)).compile())
    js = [jnp.int32(j) for j in range(per_epoch)]

    def run():
        params, opt_state = jax.tree.map(jnp.copy, init)
        for i in range(steps):
            params, opt_state, _ = step_c(params, opt_state, x_all, y_all, perm, js[i % per_epoch])
        return params

    return run, flops


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--pin", action="store_true", help="pin the process to one CPU")
    args = p.parse_args()
    with open(os.path.join(ROOT, "config", "smoke.yaml")) as f:
        config = validate(yaml.safe_load(f))
    peak = machine_peak("core")
    with tempfile.TemporaryDirectory() as data_dir:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
            ev3_data.prepare("mnist1d", data_dir)  # quiet: TFDS progress bars
        data = ev3_data.load("mnist1d", data_dir, seed=0, val=0.1, meta=0.1)
        print(f"{'model':>16} | {'trainer steps/s':>15} | {'bare steps/s':>12} | {'ratio':>5} | {'bare first':>10} |"
              f" {'first':>5} | {'GFLOP/step':>10} |"
              f" {'trainer GFLOP/s':>15} | {'bare GFLOP/s':>12} | {'MFU':>5} | {'cores busy':>10}")
        for name, model in MODELS.items():
            spec = run_spec(config, data_dir, model, args.steps, teacher=model["type"] == "cnn")
            run, bare_flops = bare_loop(model, data, args.steps)
            bare_first = args.steps / steady_time(run, warmup=0, repeats=1)
            results, bare_runs, bare_cpu, bare_wall = [], [], 0.0, 0.0
            for _ in range(args.repeats):  # alternating, so a slow spell of the machine hits both alike
                results.append(fit(methods.get("scratch"), spec, data, None, log=lambda s: None))
                cpu0, wall0 = cpu_seconds(), time.perf_counter()
                bare_runs.append(args.steps / steady_time(run, warmup=0, repeats=1))
                bare_cpu, bare_wall = bare_cpu + cpu_seconds() - cpu0, bare_wall + time.perf_counter() - wall0
            trainer = statistics.median(r.compute["steps_per_s"] for r in results)
            trainer_flops = results[0].compute["flops_student"] / args.steps
            bare = statistics.median(bare_runs)
            cores_busy = bare_cpu / bare_wall
            ratio = trainer / bare
            achieved = {"trainer": trainer_flops * trainer, "bare": bare_flops * bare}
            mfu = {k: v / peak for k, v in achieved.items()}
            record("train_step", model=name, config=model, steps=args.steps, batch=BATCH, repeats=args.repeats,
                   pinned=args.pin, cores_busy=cores_busy,
                   trainer_steps_per_s=trainer, bare_steps_per_s=bare, ratio=ratio, bare_first_steps_per_s=bare_first,
                   ratio_to_first=trainer / bare_first,
                   trainer_compile_s=statistics.median(r.compute["compile_s"] for r in results),
                   flops_per_step=trainer_flops, bare_flops_per_step=bare_flops,
                   trainer_flops_per_s=achieved["trainer"], bare_flops_per_s=achieved["bare"],
                   peak_flops_per_s=peak, trainer_mfu=mfu["trainer"], bare_mfu=mfu["bare"])
            mfu_text = f"{mfu['trainer']:.1%}"
            print(f"{name:>16} | {trainer:15.0f} | {bare:12.0f} | {ratio:5.3f} | {bare_first:10.0f} |"
                  f" {trainer / bare_first:5.3f} | {trainer_flops / 1e9:10.4f} |"
                  f" {achieved['trainer'] / 1e9:15.2f} | {achieved['bare'] / 1e9:12.2f} | {mfu_text:>5} | {cores_busy:10.2f}")
        print("ratio = trainer / bare steps/s (target ≥ 0.95); MFU = trainer FLOP/s / single-core matmul peak"
              + f" ({peak / 1e9:.1f} GFLOP/s, benchmarks/peak.py)")


if __name__ == "__main__":
    main()
