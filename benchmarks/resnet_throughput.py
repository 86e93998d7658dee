"""Training throughput (images/s) of the CIFAR model zoo: one jitted SGD-momentum step with BatchNorm.

    python benchmarks/resnet_throughput.py [--models resnet20 wrn16-2] [--batch 64] [--dtype float32]
                                           [--num-classes 100] [--repeats 20]

For each model (default resnet20): a fixed random batch of ``batch`` 32×32×3 images with ``num-classes``
labels, and one jitted step with donated state: ``models.apply(train=True)`` (batch statistics, updated
BatchNorm statistics threaded through ``rest``), cross-entropy, ``optax.sgd(0.05, momentum=0.9)``. Reported:
compile seconds, median seconds per step after 3 warm-up steps (``benchmarks.common.steady_time``), images/s
= batch / that, XLA cost-analysis FLOPs per step and achieved GFLOP/s, and ``cores busy`` (process CPU
seconds / wall seconds over the warm-up and timed steps). XLA keeps its default thread pools (every CPU; the DAG's jobs
instead get ``--xla_cpu_multi_thread_eigen=false`` and one thread each); on a GPU it runs the same code.
One JSON line per model in benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import optax  # noqa: E402

from benchmarks.common import cpu_seconds, record, steady_time  # noqa: E402
from ev3 import models  # noqa: E402
from ev3.losses import cross_entropy  # noqa: E402
from ev3.train import flops_of  # noqa: E402

ZOO = {
    "resnet8": {"type": "resnet", "depth": 8},
    "resnet20": {"type": "resnet", "depth": 20},
    "resnet56": {"type": "resnet", "depth": 56},
    "resnet8x4": {"type": "resnet", "depth": 8, "width": 4},
    "resnet32x4": {"type": "resnet", "depth": 32, "width": 4},
    "wrn16-2": {"type": "wrn", "depth": 16, "widen": 2},
    "wrn40-2": {"type": "wrn", "depth": 40, "widen": 2},
}
INPUT_SHAPE, LR, MOMENTUM = (32, 32, 3), 0.05, 0.9


def train_step(model: dict, batch: int, num_classes: int):
    """(step, initial state, FLOPs per step, compile seconds); ``step(state) -> state`` on one fixed batch."""
    net = models.build(model, INPUT_SHAPE, num_classes, jax.random.key(0))
    tx = optax.sgd(LR, momentum=MOMENTUM)
    x = jax.random.normal(jax.random.key(1), (batch, *INPUT_SHAPE))
    y = jax.random.randint(jax.random.key(2), (batch,), 0, num_classes)

    def step(state):
        params, rest, opt_state = state

        def loss_fn(p):
            logits, new_rest = models.apply(net.graphdef, p, rest, x, train=True)
            return cross_entropy(logits, y), new_rest

        (_, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), rest, opt_state

    state = (net.params, net.rest, tx.init(net.params))
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(state).compile()
    compile_s = time.perf_counter() - t0
    return compiled, state, flops_of(compiled), compile_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", choices=sorted(ZOO), default=["resnet20"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    print(f"{'model':>10} | {'params':>9} | {'compile s':>9} | {'ms/step':>8} | {'images/s':>8} | {'GFLOP/step':>10} |"
          f" {'GFLOP/s':>7} | {'cores busy':>10}")
    for name in args.models:
        model = {**ZOO[name], "dtype": args.dtype}
        step, state, flops, compile_s = train_step(model, args.batch, args.num_classes)
        n_params = models.param_count(state[0])
        holder = [state]

        def run():
            holder[0] = step(holder[0])  # donated: the new state replaces the old one
            return holder[0]

        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        seconds = steady_time(run, repeats=args.repeats)
        cores_busy = (cpu_seconds() - cpu0) / (time.perf_counter() - wall0)
        images_per_s = args.batch / seconds
        record("resnet_throughput", model=name, config=model, batch=args.batch, num_classes=args.num_classes,
               input_shape=list(INPUT_SHAPE), optimizer={"name": "sgd", "learning_rate": LR, "momentum": MOMENTUM},
               params=n_params, repeats=args.repeats, compile_s=compile_s, step_s=seconds, images_per_s=images_per_s,
               flops_per_step=flops, flops_per_s=flops / seconds, cores_busy=cores_busy)
        print(f"{name:>10} | {n_params:9d} | {compile_s:9.1f} | {seconds * 1e3:8.1f} | {images_per_s:8.0f} |"
              f" {flops / 1e9:10.3f} | {flops / seconds / 1e9:7.1f} | {cores_busy:10.2f}")


if __name__ == "__main__":
    main()
