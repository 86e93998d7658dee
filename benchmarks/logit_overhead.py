"""Step time of each logit method / KD's step time, all with a live teacher forward, in one run.

    python benchmarks/logit_overhead.py [--rounds 10] [--repeats 20]

Every step is the method's own ``step`` as the trainer calls it (``benchmarks.common.trainer_step``) on the default
256×2 MLP student and the default 3×25-channel 1-D CNN teacher, batch 128, mnist1d shapes (40 values, 10 classes),
with XLA's single-thread flags as the DAG runs its jobs; the instances are config/cifar100.yaml's (the authors'
CIFAR-100 settings), plus ``mlkd`` with a strong view (two student and two teacher forwards a step). Timed in
alternating blocks (``benchmarks.common.interleaved_times``, medians), so a slow spell of a shared machine hits every
method alike; each line goes to benchmarks/results.jsonl.

Measured 2026-12-06 with the defaults (``--rounds 40 --repeats 5``), two runs back to back, on a 2-core AMD EPYC
(``lscpu``: family 25, model 17; AVX-512; jax 0.10.2, CPU) shared with other work: load average 8–10 on its 2 cores
during both runs, so single steps are noisy (kd itself 1.73 and 2.04 ms); each run took about 85 s of wall time, 30 s
of CPU.

| method | run 1: ms / step | / kd | run 2: ms / step | / kd |
|:--|--:|--:|--:|--:|
| kd | 1.73 | 1.00 | 2.04 | 1.00 |
| kd-ls | 1.75 | 1.01 | 1.84 | 0.90 |
| dkd-ls | 1.86 | 1.08 | 1.75 | 0.86 |
| dist | 1.75 | 1.01 | 1.95 | 0.96 |
| mlkd (one view) | 2.32 | 1.34 | 3.05 | 1.49 |
| mlkd-ls (one view) | 2.53 | 1.47 | 3.43 | 1.68 |
| ctkd | 1.83 | 1.06 | 1.95 | 0.96 |
| wttm | 1.67 | 0.97 | 1.80 | 0.88 |
| mlkd-2view (strong view) | 3.89 | 2.25 | 4.69 | 2.30 |

Read: LS, DIST, CTKD and WTTM cost what KD costs within this machine's noise (±10 %); MLKD's twenty alignment terms
add about 0.3–0.5 of a KD step; its strong view doubles the student and teacher forwards (≈ 2.3 KD steps).
"""

from __future__ import annotations

import argparse
import os
import sys
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ev3.cli import limit_threads  # noqa: E402

limit_threads(1)  # before JAX is imported

import jax  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from benchmarks.common import interleaved_times, record, trainer_step  # noqa: E402
from ev3 import methods, models  # noqa: E402
from ev3.methods.common import Frozen  # noqa: E402

STUDENT = {"type": "mlp", "width": 256, "depth": 2}
TEACHER = {"type": "cnn", "channels": [25, 25, 25], "kernel_size": 5, "stride": 2}
INSTANCES = ("kd", "kd-ls", "dkd-ls", "dist", "mlkd", "mlkd-ls", "ctkd", "wttm")
BATCH = 128


def instances() -> dict:
    """name -> (method type, options): config/cifar100.yaml's instances, and ``mlkd-2view`` (mlkd, strong view)."""
    with open(os.path.join(ROOT, "config", "cifar100.yaml")) as f:
        configured = yaml.safe_load(f)["methods"]
    chosen = {name: dict(configured[name]) for name in INSTANCES}
    chosen["mlkd-2view"] = {**chosen["mlkd"], "strong_view": {"scale": 0.8, "translate": 8}}
    return {name: (o.pop("type"), o) for name, o in chosen.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x, x_strong = (rng.normal(size=(BATCH, 40)).astype(np.float32) for _ in range(2))
    y = rng.integers(0, 10, BATCH).astype(np.int32)
    data = SimpleNamespace(input_shape=(40,), num_classes=10, splits={"train": (np.zeros((3202, 40), np.float32), None)})
    train = {"steps": 6000, "batch_size": BATCH, "optimizer": {"name": "adam", "learning_rate": 1e-2}}
    net = models.build(TEACHER, (40,), 10, jax.random.key(1))
    teacher = Frozen(net.graphdef, net.params, net.rest)
    steps = {}
    for name, (method_type, options) in instances().items():
        method = methods.get(method_type)
        spec = SimpleNamespace(model=STUDENT, train=train, options=options)
        batch = (x, y, x_strong if options.get("strong_view") else None) if method_type == "mlkd" else (x, y)
        steps[name] = trainer_step(method.step, method.init(spec, data, teacher, jax.random.key(0)), batch,
                                   jax.random.key(2))
    times = interleaved_times(steps, rounds=args.rounds, repeats=args.repeats)
    for name, seconds in times.items():
        ratio = seconds / times["kd"]
        record("logit_overhead", method=name, step_s=seconds, kd_s=times["kd"], ratio=ratio, rounds=args.rounds,
               repeats=args.repeats)
        print(f"| {name} | {seconds * 1e3:.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
