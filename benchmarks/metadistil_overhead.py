"""MetaDistil round time / KD step time, both with a live teacher forward, for a CNN and an MLP teacher.

    python benchmarks/metadistil_overhead.py

Both steps are the methods' own ``step`` as the trainer calls it (``benchmarks.common.trainer_step``) on the
default 256×2 MLP student, batch 128, mnist1d shapes, timed in alternating blocks (medians); theory ≈ 3 (pilot
forward/backward + second-order meta-gradient + the real KD step).
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import interleaved_times, record, trainer_step  # noqa: E402
from ev3 import models  # noqa: E402
from ev3.methods import kd, metadistil  # noqa: E402
from ev3.methods.common import Frozen  # noqa: E402

STUDENT = {"type": "mlp", "width": 256, "depth": 2}
TEACHERS = {
    "cnn": {"type": "cnn", "channels": [25, 25, 25], "kernel_size": 5, "stride": 2},
    "mlp": {"type": "mlp", "width": 512, "depth": 2},
}
OPTIONS = {"temperature": 4.0, "alpha": 0.9, "pilot_lr": 0.1, "teacher_lr": 1e-4, "teacher_momentum": 0.9,
           "teacher_frozen_fraction": 0.0, "pilot": True, "quiz_batch_size": 128}


def main() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(128, 40)).astype(np.float32), rng.integers(0, 10, 128).astype(np.int32)
    meta = (rng.normal(size=(400, 40)).astype(np.float32), rng.integers(0, 10, 400).astype(np.int32))
    data = SimpleNamespace(input_shape=(40,), num_classes=10, splits={"meta": meta})
    train = {"steps": 1000, "optimizer": {"name": "adam", "learning_rate": 1e-3}}
    for name, cfg in TEACHERS.items():
        net = models.build(cfg, (40,), 10, jax.random.key(1))
        teacher = Frozen(net.graphdef, net.params, net.rest)
        spec = SimpleNamespace(model=STUDENT, train=train, options=OPTIONS)
        steps = {
            method.__name__.split(".")[-1]: trainer_step(
                method.step, method.init(spec, data, teacher, jax.random.key(0)), (x, y), jax.random.key(2)
            )
            for method in (kd, metadistil)
        }
        times = interleaved_times(steps, rounds=10, repeats=20)
        ratio = times["metadistil"] / times["kd"]
        record("metadistil_overhead", teacher=name, kd_s=times["kd"], metadistil_s=times["metadistil"], ratio=ratio)
        print(f"{name} teacher: KD step {times['kd'] * 1e3:.2f} ms, MetaDistil round {times['metadistil'] * 1e3:.2f} ms,"
              f" ratio {ratio:.2f} (target ≤ 3.5)")


if __name__ == "__main__":
    main()
