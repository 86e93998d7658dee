"""One KD training step: ours (JAX, ``ev3.methods.kd``) vs PyTorch CPU, eager and ``torch.compile``.

    pip install -e ".[bench]"   # PyTorch, a benchmark-only dependency
    python benchmarks/vs_pytorch.py [--threads 1|2] [--repeats 100]

The step (batch 128, mnist1d shapes, Adam lr 1e-3): a live teacher forward without gradients, then
``α·T²·KL(p_teacher^T ‖ p_student^T) + (1−α)·CE`` with T = 4, α = 0.9, backward, Adam update. Two cases:
the default 256×2 MLP student with the 3×25-channel 1-D CNN teacher (target: ours ≥ 1.9× PyTorch eager) and
that CNN as both student and teacher (target ≥ 3×). The PyTorch models mirror ``ev3/models/mlp.py`` and
``ev3/models/cnn.py`` (layer order, ReLU, SAME padding as flax pads it, channels-last flatten order) and start
from our initial weights; the script checks that logits, loss and the parameters after one step agree before
timing. Ours is the method's own ``step``, jitted with a donated state; each side carries its state from step
to step. Times are medians of ``repeats`` steps after warm-up (``torch.compile``: its compile time is the
warm-up, reported separately; if it cannot compile here, the reason is recorded instead).

Each thread setting runs in its own process (XLA's thread flags are fixed when JAX is imported): 1 thread
each (XLA's single-thread flags as the DAG runs its jobs, ``torch.set_num_threads(1)``, and the process pinned
to one CPU, since XLA's flags alone still let its matmuls use a second core) and 2 threads each (XLA's default
pools, ``torch.set_num_threads(2)``); both when ``--threads`` is omitted.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
import traceback
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

STUDENTS = {
    "mlp256": {"type": "mlp", "width": 256, "depth": 2},
    "cnn": {"type": "cnn", "channels": [25, 25, 25], "kernel_size": 5, "stride": 2},
}
TEACHER = STUDENTS["cnn"]
TARGETS = {"mlp256": 1.9, "cnn": 3.0}  # ours / PyTorch eager
TEMPERATURE, ALPHA, LR, BATCH, INPUT, CLASSES = 4.0, 0.9, 1e-3, 128, (40,), 10


def torch_models():
    """PyTorch mirrors of ev3's MLP and (1-D) CNN."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class MLP(nn.Module):
        """flatten → depth × (Linear(width) → ReLU) → Linear(num_classes)."""

        def __init__(self, in_features: int, num_classes: int, *, width: int, depth: int):
            super().__init__()
            sizes = [in_features] + [width] * depth
            self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
            self.head = nn.Linear(sizes[-1], num_classes)

        def forward(self, x):
            h = x.reshape(x.shape[0], -1)
            for layer in self.hidden:
                h = F.relu(layer(h))
            return self.head(h)

    class CNN(nn.Module):
        """(L,) signal as one channel → len(channels) × (Conv1d(kernel, stride, SAME) → ReLU) → flatten
        in (length, channel) order, as channels-last flax does → Linear(num_classes)."""

        def __init__(self, length: int, num_classes: int, *, channels: list, kernel_size: int, stride: int):
            super().__init__()
            convs, self.pads, in_ch = [], [], 1
            for out_ch in channels:
                out = math.ceil(length / stride)
                total = max((out - 1) * stride + kernel_size - length, 0)  # flax/XLA SAME: the extra pad goes last
                self.pads.append((total // 2, total - total // 2))
                convs.append(nn.Conv1d(in_ch, out_ch, kernel_size, stride=stride))
                in_ch, length = out_ch, out
            self.convs = nn.ModuleList(convs)
            self.head = nn.Linear(length * in_ch, num_classes)

        def forward(self, x):
            h = x.reshape(x.shape[0], 1, -1)  # (B, 1, L), channels-first for Conv1d
            for conv, pad in zip(self.convs, self.pads):
                h = F.relu(conv(F.pad(h, pad)))
            return self.head(h.transpose(1, 2).reshape(h.shape[0], -1))

    def build(config: dict, params):
        """A PyTorch model with ``params`` (a flax ``nnx.State`` of ours) as its weights."""
        import numpy as np

        def tensor(a, perm=None):
            a = np.asarray(a[...])
            return torch.tensor(a.transpose(perm) if perm else a)  # a copy

        options = {k: v for k, v in config.items() if k != "type"}
        if config["type"] == "mlp":
            model = MLP(math.prod(INPUT), CLASSES, **options)
            layers = [(m, params["hidden"][i], (1, 0)) for i, m in enumerate(model.hidden)]
        else:
            model = CNN(INPUT[0], CLASSES, **options)
            layers = [(m, params["convs"][i], (2, 1, 0)) for i, m in enumerate(model.convs)]  # (k, in, out) → (out, in, k)
        layers.append((model.head, params["head"], (1, 0)))
        with torch.no_grad():
            for module, p, perm in layers:
                module.weight.copy_(tensor(p["kernel"], perm))
                module.bias.copy_(tensor(p["bias"]))
        return model

    return build


def torch_kd_loss(student_logits, teacher_logits, labels):
    import torch.nn.functional as F

    T = TEMPERATURE
    kl = F.kl_div(F.log_softmax(student_logits / T, -1), F.log_softmax(teacher_logits / T, -1),
                  reduction="batchmean", log_target=True)
    return ALPHA * T * T * kl + (1 - ALPHA) * F.cross_entropy(student_logits, labels)


def torch_step(student, teacher, compiled: bool):
    """A ``step(x, y) -> loss`` closure (Adam with PyTorch defaults, the same as optax.adam's)."""
    import torch

    opt = torch.optim.Adam(student.parameters(), lr=LR)

    def forward_loss(x, y):
        with torch.no_grad():
            teacher_logits = teacher(x)
        return torch_kd_loss(student(x), teacher_logits, y)

    def update():
        opt.step()

    if compiled:
        forward_loss, update = torch.compile(forward_loss), torch.compile(update)

    def step(x, y):
        loss = forward_loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        update()
        return loss.detach()

    return step


def bare_kd_step(student, teacher):
    """``(init(state) -> (params, opt_state), step(params, opt_state, teacher_params, x, y) -> (params,
    opt_state, loss))``: a minimal jitted KD step (optax.adam, donated) on ``student``'s and ``teacher``'s models."""
    import jax
    import jax.numpy as jnp
    import optax

    from ev3 import models
    from ev3.losses import hinton_loss

    tx = optax.adam(LR)

    def step(params, opt_state, teacher_params, x, y):
        teacher_logits = jax.lax.stop_gradient(models.apply(teacher.graphdef, teacher_params, teacher.rest, x)[0])

        def loss(p):
            logits = models.apply(student.graphdef, p, student.rest, x)[0]
            return hinton_loss(logits, teacher_logits, y, temperature=TEMPERATURE, alpha=ALPHA)

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    def init(state):
        params = jax.tree.map(jnp.copy, state.student.params)
        return [params, tx.init(params)]

    return init, jax.jit(step, donate_argnums=(0, 1))


def measure(threads: int, repeats: int) -> None:
    from ev3.cli import limit_threads

    if threads == 1:
        limit_threads(1)  # before JAX is imported; 2 threads: XLA's default pools on this 2-CPU machine
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core for both libraries
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from benchmarks.common import interleaved_times, record, steady_time, trainer_step
    from ev3 import models
    from ev3.methods import kd
    from ev3.methods.common import Frozen

    torch.set_num_threads(threads)
    build_torch = torch_models()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(BATCH, *INPUT)).astype(np.float32), rng.integers(0, CLASSES, BATCH).astype(np.int32)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    data = SimpleNamespace(input_shape=INPUT, num_classes=CLASSES)
    train = {"steps": 1000, "optimizer": {"name": "adam", "learning_rate": LR}}
    options = {"temperature": TEMPERATURE, "alpha": ALPHA}
    net = models.build(TEACHER, INPUT, CLASSES, jax.random.key(1))
    teacher = Frozen(net.graphdef, net.params, net.rest)

    for name, student_config in STUDENTS.items():
        spec = SimpleNamespace(model=student_config, train=train, options=options)
        state0 = kd.init(spec, data, teacher, jax.random.key(0))
        bare_init, bare_step = bare_kd_step(state0.student, teacher)

        def torch_pair():
            t = build_torch(TEACHER, teacher.params).eval().requires_grad_(False)
            return build_torch(student_config, state0.student.params), t

        # The mirror is exact: same logits, loss and parameters after one step.
        student_t, teacher_t = torch_pair()
        with torch.no_grad():
            for ours_logits, theirs in ((teacher(x), teacher_t(xt)), (state0.student.logits(x), student_t(xt))):
                np.testing.assert_allclose(np.asarray(ours_logits), theirs.numpy(), rtol=1e-4, atol=1e-4)
        state1, logs = jax.jit(kd.step)(state0, (x, y), jax.random.key(2))
        loss_t = torch_step(student_t, teacher_t, compiled=False)(xt, yt)
        np.testing.assert_allclose(float(logs["loss"]), float(loss_t), rtol=1e-5)
        after = build_torch(student_config, state1.student.params)
        with torch.no_grad():
            param_diff = max(float((a - b).abs().max()) for a, b in zip(after.parameters(), student_t.parameters()))
        assert param_diff < 1e-5, f"{name}: parameters after one step differ by {param_diff}"

        # Ours: the method's step as ev3.train.fit calls it (the state is copied once: the teacher stays the
        # caller's); the three sides are timed in alternating blocks.
        batch, key = (jnp.asarray(x), jnp.asarray(y)), jax.random.key(2)
        t0 = time.perf_counter()
        ours = trainer_step(kd.step, state0, batch, key)
        ours_compile = time.perf_counter() - t0
        carried = bare_init(state0)

        def bare():
            params, opt_state, loss = bare_step(*carried, teacher.params, *batch)
            carried[:] = [params, opt_state]
            return loss

        eager = torch_step(*torch_pair(), compiled=False)
        times = interleaved_times({"ours": ours, "bare": bare, "eager": lambda: eager(xt, yt)},
                                  rounds=5, repeats=max(1, repeats // 5), warmup=10)
        compile_error, torch_compile_s = None, None
        try:
            compiled_step = torch_step(*torch_pair(), compiled=True)
            t0 = time.perf_counter()
            for _ in range(3):  # first calls compile (the optimizer state appears after the first step)
                compiled_step(xt, yt)
            torch_compile_s = time.perf_counter() - t0
            times["compile"] = steady_time(compiled_step, xt, yt, warmup=10, repeats=repeats)
        except Exception as e:  # no C++ toolchain, unsupported op, …: recorded, not fatal
            compile_error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            traceback.print_exc(limit=2)
            times["compile"] = None
        speedup = {k: times[k] / times["ours"] if times[k] else None for k in ("eager", "compile", "bare")}
        record("vs_pytorch", student=name, teacher="cnn", threads=threads, cpus=len(os.sched_getaffinity(0)),
               batch=BATCH, repeats=repeats,
               ours_s=times["ours"], bare_jax_s=times["bare"], torch_eager_s=times["eager"], torch_compile_s=times["compile"],
               speedup_vs_eager=speedup["eager"], speedup_vs_compile=speedup["compile"], target_vs_eager=TARGETS[name],
               bare_eager_ratio=times["eager"] / times["bare"], ours_vs_bare=speedup["bare"],
               ours_compile_s=ours_compile, torch_compile_warmup_s=torch_compile_s, torch_compile_error=compile_error,
               max_param_diff_after_one_step=param_diff, torch=torch.__version__)
        compiled_text = f"{times['compile'] * 1e3:8.2f}" if times["compile"] else "  failed"
        ratio_text = f"{speedup['compile']:8.2f}" if speedup["compile"] else "     n/a"
        print(f"{name + ' ← cnn':>13} | {threads:>7} | {times['ours'] * 1e3:7.2f} | {times['bare'] * 1e3:7.2f} |"
              f" {times['eager'] * 1e3:8.2f} | {compiled_text} | {speedup['eager']:11.2f} | {ratio_text} |"
              f" {times['eager'] / times['bare']:10.2f} | ≥ {TARGETS[name]:.1f}", flush=True)
        if compile_error:
            print(f"  torch.compile failed: {compile_error}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, choices=(1, 2), default=None, help="both (in child processes) when omitted")
    p.add_argument("--repeats", type=int, default=100)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if not args.child:
        print(f"{'student':>13} | {'threads':>7} | {'ours ms':>7} | {'bare ms':>7} | {'eager ms':>8} | {'compl ms':>8} |"
              f" {'eager/ours':>11} | {'compl/ours':>8} | eager/bare | target (eager/ours)", flush=True)
    if args.threads is not None:
        measure(args.threads, args.repeats)
        return
    for threads in (1, 2):
        subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--threads", str(threads), "--repeats",
                        str(args.repeats)], check=True)


if __name__ == "__main__":
    main()
