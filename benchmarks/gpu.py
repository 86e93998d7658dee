"""One command, side by side on one GPU: our KD training step (JAX) in several settings and the same step in PyTorch.

    PYTHONPATH=. python benchmarks/gpu.py --out gpu.jsonl [--record] [--cap 40]
    PYTHONPATH=. python benchmarks/gpu.py --smoke --out smoke.jsonl     # CPU, tiny sizes, well under a minute

Needs only the bare stack (jax, flax, optax, numpy; torch optional): no installs, no network. It prints the
versions and the device first, then one table row per setting as soon as it finishes, and appends that row
to ``--out`` (JSON lines, with device, versions and date) at once, so a run cut short still leaves results;
``--record`` also appends the measured rows to ``benchmarks/results.jsonl``.

Workload (``config/cifar100.yaml``'s recipe): CIFAR-100 shapes (32×32×3, 100 classes), 45,000 synthetic
images resident on the device, the project's crop+flip augmentation (padding 4) and epoch permutations on
device; a resnet20 student and a live resnet56 teacher (``ev3/models/resnet.py``), Hinton KD (T = 4,
α = 0.9), SGD lr 0.05, momentum 0.9, weight decay 5e-4. Ours is the training loop's own unit of work:
``ev3.train.StepWork.advance`` (one seed) or ``ev3.seedgroup.SeedGroup.advance`` (a vmapped seed group).

Settings, one factor varied at a time from ``base`` (batch 64, float32, steps_per_call 1, one seed):
``batch512``, ``bf16`` (student and teacher compute in bfloat16), ``spc100`` (100 steps per compiled call),
``seeds8`` and ``seeds32`` (seed groups), and PyTorch on the same device with the same architectures
(``torch-eager-64``, ``torch-eager-512``, ``torch-compile-64``: ``torch.compile`` of the forward passes and
loss; backward and the optimizer step eager; the script checks that each PyTorch model has our model's
parameter count). The PyTorch step samples, crops and flips the batch on the
device as ours does, and is not made to sync with the host at each step (which the PyTorch KD suites do, for
their loss logging and DataLoader), so it is timed at its best.

Timing, the same for both: compile (ours: ahead of time; torch.compile: its first calls), then one warm-up
block and timed blocks of whole calls with a device sync at the end of each block, sized so that a setting
ends near ``--cap`` seconds, compile included (default 40, ``--smoke`` 2); the median of 3 to 8 blocks. Reported:
ms per step (a step of the group: all its seeds), images/s (batch × seeds per second), and the projected wall
time of the recipe's 240 epochs (45,000 // batch steps per epoch) for the job and per seed.

``--smoke``: the same code on the CPU at tiny sizes (a 32-wide MLP student, a 64-wide MLP teacher, 512
images, batch 8 and 32, groups of 2 and 4, 4 steps per call); PyTorch rows run only where torch is installed (otherwise the script
says that they are skipped).
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import datetime
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # PyTorch shares the device in this process

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

TEMPERATURE, ALPHA, LR, MOMENTUM, WEIGHT_DECAY, PADDING, EPOCHS = 4.0, 0.9, 0.05, 0.9, 5e-4, 4, 240
FULL = {"images": 45_000, "student": {"type": "resnet", "depth": 20}, "teacher": {"type": "resnet", "depth": 56},
        "batch": 64, "big_batch": 512, "groups": (8, 32), "steps_per_call": 100, "cap": 40.0}
SMOKE = {"images": 512, "student": {"type": "mlp", "width": 32, "depth": 1}, "teacher": {"type": "mlp", "width": 64, "depth": 1},
         "batch": 8, "big_batch": 32, "groups": (2, 4), "steps_per_call": 4, "cap": 2.0}
BLOCKS, MAX_BLOCKS = 3, 8  # timed blocks: at least, at most (plus one warm-up block)


def settings(size: dict) -> list[dict]:
    """The settings, one factor varied at a time from the base."""
    base = {"framework": "jax", "batch": size["batch"], "dtype": "float32", "steps_per_call": 1, "seeds": 1}
    s1, s2 = size["groups"]
    return [
        {"setting": "base", **base},
        {"setting": f"batch{size['big_batch']}", **base, "batch": size["big_batch"]},
        {"setting": "bf16", **base, "dtype": "bfloat16"},
        {"setting": f"spc{size['steps_per_call']}", **base, "steps_per_call": size["steps_per_call"]},
        {"setting": f"seeds{s1}", **base, "seeds": s1},
        {"setting": f"seeds{s2}", **base, "seeds": s2},
        {"setting": f"torch-eager-{size['batch']}", **base, "framework": "torch"},
        {"setting": f"torch-eager-{size['big_batch']}", **base, "framework": "torch", "batch": size["big_batch"]},
        {"setting": f"torch-compile-{size['batch']}", **base, "framework": "torch-compile"},
    ]


def versions() -> dict:
    import flax
    import jaxlib
    import optax

    out = {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
           "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__}
    try:
        import orbax.checkpoint

        out["orbax"] = getattr(orbax.checkpoint, "__version__", "?")
    except ImportError:
        out["orbax"] = None
    try:
        import torch

        out["torch"] = torch.__version__
    except ImportError:
        out["torch"] = None
    return out


def device_name() -> str:
    d = jax.devices()[0]
    return f"{d.platform}: {d.device_kind}"


# --- timing ------------------------------------------------------------------------------------------------------


def time_blocks(call, sync, steps_per_call: int, started: float, cap: float) -> tuple[list[float], int]:
    """Seconds of each timed block and steps per block. ``call()`` runs ``steps_per_call`` steps (asynchronously);
    ``sync()`` waits for the device. Three warm-up calls, then one call sizes the blocks: the time left before
    ``cap`` (``started``: the setting's start, compile included) split into a warm-up block and ``MAX_BLOCKS``
    blocks, at least one call each; then the warm-up and blocks until ``MAX_BLOCKS`` or the cap, but always
    ``BLOCKS``."""
    for _ in range(3):  # warm-up before the sizing call (cuDNN autotuning, allocators, thread pools)
        call()
    sync()
    t0 = time.perf_counter()
    call()
    sync()
    per_call = max(time.perf_counter() - t0, 1e-6)
    left = cap - (time.perf_counter() - started)
    calls = max(1, int(left / (MAX_BLOCKS + 1) / per_call))
    blocks = []  # the first is the warm-up
    while len(blocks) <= BLOCKS or (len(blocks) <= MAX_BLOCKS and time.perf_counter() - started < cap):
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        sync()
        blocks.append(time.perf_counter() - t0)
    return blocks[1:], calls * steps_per_call


# --- ours ---------------------------------------------------------------------------------------------------------


def synthetic_data(n: int):
    """CIFAR-100-shaped splits on the device: train (n images), small val/meta/test (x float32 (N, 32, 32, 3),
    y int32 (N,))."""
    from ev3.data import Dataset

    sizes = {"train": n, "val": 256, "meta": 256, "test": 256}
    keys = jax.random.split(jax.random.key(1), 2 * len(sizes))
    splits = {name: (jax.random.normal(keys[2 * i], (m, 32, 32, 3), jnp.float32),
                     jax.random.randint(keys[2 * i + 1], (m,), 0, 100, jnp.int32))
              for i, (name, m) in enumerate(sizes.items())}
    return Dataset(name="synthetic-cifar100", num_classes=100, input_shape=(32, 32, 3), splits=splits)


def kd_spec(size: dict, setting: dict, steps: int):
    from ev3.config import RunSpec

    dtype = {"dtype": setting["dtype"]} if setting["dtype"] != "float32" else {}
    return RunSpec.from_dict({
        "benchmark": "gpu", "dataset": "synthetic-cifar100", "data_dir": "", "split": {"seed": 0, "val": 0.05, "meta": 0.05},
        "role": "student", "method": "kd", "method_type": "kd", "options": {"temperature": TEMPERATURE, "alpha": ALPHA},
        "model_name": "student", "model": {**size["student"], **dtype},
        "train": {"steps": steps, "batch_size": setting["batch"], "eval_every": steps, "steps_per_call": setting["steps_per_call"],
                  "augment": {"crop_padding": PADDING, "flip": True},
                  "optimizer": {"name": "sgd", "learning_rate": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY}},
        "seed": 0, "teacher": "teacher", "teacher_model": {**size["teacher"], **dtype}, "teacher_seed": 0, "teacher_dir": None,
    })


def run_jax(size: dict, setting: dict, data, cap: float) -> dict:
    from ev3 import methods, models
    from ev3.methods.common import Frozen
    from ev3.rng import seed_key, stream
    from ev3.seedgroup import SeedGroup
    from ev3.train import Counter, RunContext, StepWork

    started = time.perf_counter()
    kd = methods.get("kd")
    steps = EPOCHS * (size["images"] // setting["batch"])
    spec = kd_spec(size, setting, steps)
    net = models.build(spec.teacher_model, data.input_shape, data.num_classes, jax.random.key(7))
    teacher = Frozen(net.graphdef, net.params, net.rest)
    counter = Counter()
    spc = setting["steps_per_call"]
    if setting["seeds"] == 1:
        work = StepWork(RunContext(kd, spec, data, teacher, counter, None, lambda line: None))
        work.load(kd.init(spec, data, teacher, stream(seed_key(spec.seed), "student_init")), 0)

        def leaves():
            return work.leaves
    else:
        specs = [dataclasses.replace(spec, seed=s) for s in range(setting["seeds"])]
        work = SeedGroup(kd, specs, data, teacher, counter, lambda line: None)

        def leaves():
            return work.member
    compile_s = counter.compile_s
    index = [0]

    def call():
        work.advance(index[0] % steps, spc)
        index[0] += spc

    blocks, block_steps = time_blocks(call, lambda: jax.block_until_ready(leaves()), spc, started, cap)
    loss = float(np.mean(np.asarray(work.loss_sum))) / max(work.since, 1)
    return {"compile_s": compile_s, "blocks_s": blocks, "block_steps": block_steps, "mean_loss": loss}


# --- PyTorch ------------------------------------------------------------------------------------------------------


def torch_resnet(depth: int, num_classes: int):
    """PyTorch mirror of ``ev3.models.resnet.ResNet`` (width 1): conv3×3(16) → BN → ReLU → 3 stages of n
    BasicBlocks (16/32/64, strides 1/2/2; 1×1 conv + BN shortcut where the shape changes) → pool → Linear."""
    import torch.nn.functional as F
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, in_ch, out_ch, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(out_ch)
            self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(out_ch)
            self.shortcut = (nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
                             if stride != 1 or in_ch != out_ch else nn.Identity())

        def forward(self, x):
            out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            return F.relu(out + self.shortcut(x))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            n = (depth - 2) // 6
            self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn = nn.BatchNorm2d(16)
            blocks, in_ch = [], 16
            for stage, width in enumerate((16, 32, 64)):
                for i in range(n):
                    blocks.append(BasicBlock(in_ch, width, 2 if stage > 0 and i == 0 else 1))
                    in_ch = width
            self.blocks = nn.Sequential(*blocks)
            self.head = nn.Linear(64, num_classes)

        def forward(self, x):
            h = self.blocks(F.relu(self.bn(self.conv(x))))
            return self.head(h.mean(dim=(2, 3)))

    return ResNet()


def torch_model(config: dict, num_classes: int):
    """The PyTorch mirror of a ``resnet`` (width 1) or ``mlp`` model config."""
    from torch import nn

    if config["type"] == "resnet":
        return torch_resnet(config["depth"], num_classes)
    sizes = [32 * 32 * 3] + [config["width"]] * config["depth"]
    layers = [m for a, b in zip(sizes[:-1], sizes[1:]) for m in (nn.Linear(a, b), nn.ReLU())]
    return nn.Sequential(nn.Flatten(), *layers, nn.Linear(sizes[-1], num_classes))


def run_torch(size: dict, setting: dict, cap: float) -> dict:
    import torch
    import torch.nn.functional as F

    from ev3 import models

    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    n, batch = size["images"], setting["batch"]
    gen = torch.Generator(device=device).manual_seed(0)
    x_all = torch.randn(n, 32, 32, 3, device=device, generator=gen)  # NHWC, as ours; cropped, then NCHW
    y_all = torch.randint(0, 100, (n,), device=device, generator=gen)
    student = torch_model(size["student"], 100).to(device).train()
    teacher = torch_model(size["teacher"], 100).to(device).eval()
    for config, net in ((size["student"], student), (size["teacher"], teacher)):  # the same architectures as ours
        ours = models.param_count(models.build(config, (32, 32, 3), 100, jax.random.key(0)).params)
        theirs = sum(p.numel() for p in net.parameters())
        if ours != theirs:
            raise RuntimeError(f"PyTorch mirror of {config} has {theirs} parameters, ours {ours}")
    for p in teacher.parameters():
        p.requires_grad_(False)
    opt = torch.optim.SGD(student.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    rows = torch.arange(32, device=device)
    per_epoch = n // batch

    def augment(x):
        b = x.shape[0]
        padded = F.pad(x, (0, 0, PADDING, PADDING, PADDING, PADDING))
        off = torch.randint(0, 2 * PADDING + 1, (b, 2), device=device, generator=gen)
        r, c = off[:, :1] + rows, off[:, 1:] + rows
        x = padded[torch.arange(b, device=device)[:, None, None], r[:, :, None], c[:, None, :]]
        flip = torch.rand(b, device=device, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(2), x)
        return x.permute(0, 3, 1, 2).contiguous()

    def loss_fn(x, y):
        with torch.no_grad():
            t = teacher(x)
        s = student(x)
        kl = F.kl_div(F.log_softmax(s / TEMPERATURE, -1), F.log_softmax(t / TEMPERATURE, -1), log_target=True,
                      reduction="batchmean")
        return ALPHA * TEMPERATURE**2 * kl + (1 - ALPHA) * F.cross_entropy(s, y)

    compiled_loss = torch.compile(loss_fn) if setting["framework"] == "torch-compile" else loss_fn
    state = {"step": 0, "perm": None, "loss": torch.zeros((), device=device)}

    def call():
        j = state["step"] % per_epoch
        if j == 0 or state["perm"] is None:
            state["perm"] = torch.randperm(n, device=device, generator=gen)
        idx = state["perm"][j * batch:(j + 1) * batch]
        loss = compiled_loss(augment(x_all[idx]), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state["loss"] = state["loss"] + loss.detach()
        state["step"] += 1

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    call()  # torch.compile compiles here (eager: the first step's allocations)
    sync()
    compile_s = time.perf_counter() - t0
    blocks, block_steps = time_blocks(call, sync, 1, started, cap)
    loss = float(state["loss"]) / state["step"]
    return {"compile_s": compile_s, "blocks_s": blocks, "block_steps": block_steps, "mean_loss": loss,
            "torch_device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}


# --- main ---------------------------------------------------------------------------------------------------------


def summarize(size: dict, setting: dict, timing: dict) -> dict:
    """A result row: ms per step (median block / its steps), images/s, projected 240-epoch wall (minutes)."""
    blocks = timing["blocks_s"]
    step_s = float(np.median(blocks)) / timing["block_steps"] if blocks else None
    recipe_steps = EPOCHS * (size["images"] // setting["batch"])
    images = setting["batch"] * setting["seeds"]
    return {
        **{k: v for k, v in setting.items()},
        "step_ms": None if step_s is None else step_s * 1e3,
        "images_per_s": None if step_s is None else images / step_s,
        "projected_240_epochs_min": None if step_s is None else recipe_steps * step_s / 60,
        "projected_240_epochs_per_seed_min": None if step_s is None else recipe_steps * step_s / 60 / setting["seeds"],
        "recipe_steps": recipe_steps,
        **timing,
    }


def print_row(row: dict) -> None:
    if row.get("skipped"):
        print(f"{row['setting']:>16} | skipped: {row['skipped']}", flush=True)
        return
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    print(f"{row['setting']:>16} | {row['framework']:>13} | {row['batch']:5d} | {row['dtype']:>8} | {row['steps_per_call']:4d} |"
          f" {row['seeds']:5d} | {fmt(row['compile_s'], '8.1f')} | {fmt(row['step_ms'], '8.2f')} |"
          f" {fmt(row['images_per_s'], '9.0f')} | {fmt(row['projected_240_epochs_min'], '9.1f')} |"
          f" {fmt(row['projected_240_epochs_per_seed_min'], '9.1f')} | {len(row['blocks_s'])}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="JSON lines file the rows are appended to as they finish")
    p.add_argument("--record", action="store_true", help="also append the rows to benchmarks/results.jsonl")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (CPU, CI)")
    p.add_argument("--cap", type=float, default=None, help="seconds per setting, compile included (default 40; smoke 2)")
    p.add_argument("--only", nargs="+", help="run only these settings (names as in the table)")
    args = p.parse_args(argv)
    size = SMOKE if args.smoke else FULL
    cap = args.cap if args.cap is not None else size["cap"]
    info = {"versions": versions(), "device": device_name(), "devices": len(jax.devices()),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "smoke": args.smoke}
    print("versions: " + " ".join(f"{k} {v}" for k, v in info["versions"].items()), flush=True)
    print(f"device: {info['device']} ({info['devices']} visible)", flush=True)
    chosen = [s for s in settings(size) if not args.only or s["setting"] in args.only]
    has_torch = info["versions"]["torch"] is not None
    if not has_torch and any(s["framework"] != "jax" for s in chosen):
        print("PyTorch rows skipped: torch is not installed", flush=True)
    print(f"{'setting':>16} | {'framework':>13} | {'batch':>5} | {'dtype':>8} | {'spc':>4} | {'seeds':>5} | {'compile s':>8} |"
          f" {'ms/step':>8} | {'images/s':>9} | {'240ep min':>9} | {'/seed min':>9} | blocks", flush=True)
    # A persistent compilation cache for this run only: a seed group's single-seed step (its per-seed FLOPs) is
    # the base setting's step, compiled once.
    cache = tempfile.mkdtemp(prefix="ev3-gpu-bench-")
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    data = synthetic_data(size["images"]) if any(s["framework"] == "jax" for s in chosen) else None
    from benchmarks.common import record

    for setting in chosen:
        if setting["framework"] != "jax" and not has_torch:
            row = {**setting, "skipped": "torch is not installed"}
        else:
            try:
                timing = run_jax(size, setting, data, cap) if setting["framework"] == "jax" else run_torch(size, setting, cap)
                row = summarize(size, setting, timing)
            except Exception as e:  # one setting failing (e.g. out of memory) must not lose the others
                traceback.print_exc()
                row = {**setting, "skipped": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"}
        row = {"benchmark": "gpu", **row, "workload": {k: v for k, v in size.items() if k != "cap"}, "cap_s": cap, **info}
        print_row(row)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        if args.record and not row.get("skipped"):
            record("gpu", **{k: v for k, v in row.items() if k not in ("benchmark", "date", "versions")},
                   all_versions=info["versions"])
        gc.collect()  # the setting's arrays (compiled kernels stay cached: small, and shared by later settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
