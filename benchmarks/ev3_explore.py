"""EV3 explore: one vmapped call with K candidates vs K single-candidate calls (default student).

    python benchmarks/ev3_explore.py [--k 8] [--steps 50]

Prints the steady-state ratio time(K vmapped) / (K × time(1 candidate)) — lower is better, 1.0 means vmap
gains nothing — and the achieved FLOP/s of the vmapped and the single-candidate call (XLA cost analysis of the
scanned step × L × candidates). A ratio r needs the vmapped call to reach single FLOP/s / r; that is compared
with this machine's matmul peak at XLA's default threads (``benchmarks/peak.py``, setting ``default``, as
this benchmark runs; recorded with this machine's fingerprint, else measured in the same run).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import machine_peak, record, steady_time  # noqa: E402
from ev3 import models  # noqa: E402
from ev3.protocol.explore import ADAM, explore, hparams, init_family  # noqa: E402
from ev3.train import flops_of  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--steps", type=int, default=50, help="L: steps per candidate")
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    K, L, B = args.k, args.steps, args.batch
    net = models.build({"type": "mlp", "width": 256, "depth": 2}, (40,), 10, jax.random.key(0))
    apply = models.logits_fn(net)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(L, B, 40)).astype(np.float32)
    y = rng.integers(0, 10, size=(L, B)).astype(np.int32)
    t = rng.normal(size=(L, B, 10)).astype(np.float32)

    def setup(k):
        loss_hp = hparams(w=np.linspace(0, 0.9, k), t_kd=np.full(k, 4.0), t_ce=np.linspace(0.5, 2, k))
        opt_hp = hparams(learning_rate=np.geomspace(1e-4, 1e-2, k))
        return loss_hp, opt_hp, init_family(ADAM, net.params, opt_hp)

    def call(k):
        loss_hp, opt_hp, opt_states = setup(k)
        return lambda: explore(apply, ADAM, net.params, opt_states, loss_hp, opt_hp, (x, y), t)

    t_k, t_1 = steady_time(call(K)), steady_time(call(1))
    ratio = t_k / (K * t_1)

    def flops(k):  # XLA's count of the scanned step, × L steps
        loss_hp, opt_hp, opt_states = setup(k)
        return flops_of(explore.lower(apply, ADAM, net.params, opt_states, loss_hp, opt_hp, (x, y), t).compile()) * L

    flops_per_s, single_flops_per_s, peak = flops(K) / t_k, flops(1) / t_1, machine_peak("default")
    needed = single_flops_per_s / 0.5
    line = record("ev3_explore", k=K, steps=L, batch=B, seconds_k=t_k, seconds_1=t_1, ratio=ratio,
                  student_steps_per_s=K * L / t_k, flops_per_s=flops_per_s, single_flops_per_s=single_flops_per_s,
                  flops_per_s_needed_for_target=needed, peak_flops_per_s=peak)
    print(f"K={K} L={L} B={B}: vmapped {t_k * 1e3:.1f} ms, single {t_1 * 1e3:.1f} ms")
    print(f"ratio K-vmapped / (K × single) = {ratio:.3f}   (target ≤ 0.5)")
    print(f"student steps/s {line['student_steps_per_s']:.0f}; achieved {flops_per_s / 1e9:.1f} GFLOP/s vmapped,"
          f" {single_flops_per_s / 1e9:.1f} single; ratio 0.5 needs {needed / 1e9:.1f} GFLOP/s vmapped"
          + f" (matmul peak {peak / 1e9:.1f}, benchmarks/peak.py)")


if __name__ == "__main__":
    main()
