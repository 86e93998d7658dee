"""The training core on a bare GPU stack: with tensorflow_datasets, snakemake, pandas, matplotlib and jsonschema
made unimportable, build a run spec, resnet20 and resnet56, train resnet20 with KD from a live resnet56 teacher
on synthetic CIFAR-100-shaped data (64 train images 32×32×3, 100 classes) and evaluate on the test split.
Prints one JSON line (timings in seconds). Used by tests/test_bare_stack.py; runs as is on a GPU box.

``python tests/scripts/bare_stack.py [--steps N]`` (from the repository root, ``PYTHONPATH=.``);
``--import-only MODULE`` imports one module under the same block and exits.
"""

import argparse
import importlib
import importlib.abc
import json
import sys
import time

BLOCKED = ("tensorflow_datasets", "snakemake", "pandas", "matplotlib", "jsonschema")
attempts: list[str] = []


class Block(importlib.abc.MetaPathFinder):
    """Any import of a ``BLOCKED`` package (or a submodule) raises ImportError, as if it were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            attempts.append(name)
            raise ImportError(f"{name} is blocked (not installed on a bare GPU stack)")
        return None


sys.meta_path.insert(0, Block())
already = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)  # must be empty: nothing imported them yet
blocker_works = []
for name in BLOCKED:
    try:
        importlib.import_module(name)
    except ImportError:
        blocker_works.append(name)
attempts.clear()

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=4, help="KD steps of the resnet20 student")
parser.add_argument("--import-only", metavar="MODULE", help="only import MODULE under the block and exit")
args = parser.parse_args()
if args.import_only:
    importlib.import_module(args.import_only)
    print(json.dumps({"imported": args.import_only}))
    sys.exit(0)

t0 = time.perf_counter()
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ev3 import devices, losses, methods, models, run  # noqa: E402, F401  (run: the CLI's train path)
from ev3.config import RunSpec  # noqa: E402
from ev3.data import Dataset  # noqa: E402
from ev3.methods.common import Frozen  # noqa: E402
from ev3.train import Counter, fit, frozen_logits, predict, test_report  # noqa: E402

method_modules = [methods.get(t).__name__ for t in methods.METHOD_TYPES]
t_import = time.perf_counter() - t0

resnet20, resnet56 = {"type": "resnet", "depth": 20}, {"type": "resnet", "depth": 56}
optimizer = {"name": "sgd", "learning_rate": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
spec = RunSpec.from_dict({
    "benchmark": "bare", "dataset": "synthetic", "data_dir": "", "split": {"seed": 0, "val": 0.2, "meta": 0.2},
    "role": "student", "method": "kd", "method_type": "kd", "options": {"temperature": 4.0, "alpha": 0.9},
    "model_name": "resnet20", "model": resnet20,
    "train": {"steps": args.steps, "batch_size": 8, "eval_every": max(1, args.steps // 2),
              "augment": {"crop_padding": 4, "flip": True}, "optimizer": optimizer},
    "seed": 0, "teacher": "resnet56", "teacher_model": resnet56, "teacher_seed": 0, "teacher_dir": None,
})

# Synthetic CIFAR-100-shaped splits, shaped as ev3.data.load returns them: (x float32 (N, 32, 32, 3), y int32 (N,)).
sizes = {"train": 64, "val": 16, "meta": 16, "test": 16}
keys = jax.random.split(jax.random.key(1), 2 * len(sizes))
splits = {
    name: (jax.random.normal(keys[2 * i], (n, 32, 32, 3), jnp.float32),
           jax.random.randint(keys[2 * i + 1], (n,), 0, 100, jnp.int32))
    for i, (name, n) in enumerate(sizes.items())
}
data = Dataset(name="synthetic", num_classes=100, input_shape=(32, 32, 3), splits=splits)

t0 = time.perf_counter()
teacher_net = models.build(resnet56, data.input_shape, data.num_classes, jax.random.key(7))
student_init = models.build(resnet20, data.input_shape, data.num_classes, jax.random.key(0))
jax.block_until_ready((teacher_net.params, student_init.params))
t_build = time.perf_counter() - t0
teacher = Frozen(teacher_net.graphdef, teacher_net.params, teacher_net.rest)

t0 = time.perf_counter()
teacher_logits, _ = predict(Counter(), frozen_logits, teacher, data.splits["test"][0])
t_teacher_eval = time.perf_counter() - t0

kd = methods.get("kd")
t0 = time.perf_counter()
result = fit(kd, spec, data, teacher, log=lambda line: None)
t_fit = time.perf_counter() - t0
metrics, predictions = test_report(kd, result, data, teacher_logits)
logits = kd.evaluate(result.final_state, data.splits["test"][0])

# The student the loop started from: the same stream the loop derives for a student's init.
from ev3.rng import seed_key, stream  # noqa: E402

start = kd.init(spec, data, teacher, stream(seed_key(spec.seed), "student_init")).student
moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in
            zip(jax.tree.leaves(result.final_state.student.params), jax.tree.leaves(start.params), strict=True))

print(json.dumps({
    "already_imported": already,
    "blocker_works": blocker_works,
    "blocked_attempts": sorted(set(attempts)),
    "blocked_in_modules": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED),
    "method_modules": method_modules,
    "backend": jax.default_backend(),
    "devices": [d.device_kind for d in jax.devices()],
    "third_party": sorted({m.split(".")[0] for m in sys.modules} - set(sys.stdlib_module_names) - {"ev3", "__main__"}),
    "params": {"resnet20": models.param_count(student_init.params), "resnet56": models.param_count(teacher_net.params)},
    "teacher_test_logits_shape": list(teacher_logits.shape),
    "teacher_test_logits_finite": bool(np.isfinite(np.asarray(teacher_logits)).all()),
    "test_logits_shape": list(logits.shape),
    "test_logits_finite": bool(np.isfinite(np.asarray(logits)).all()),
    "test_accuracy": metrics["test_accuracy"],
    "test_accuracy_recomputed": float(np.mean(np.argmax(np.asarray(
        kd.evaluate(result.selected_state, data.splits["test"][0])), -1) == np.asarray(data.splits["test"][1]))),
    "teacher_agreement": metrics["teacher_agreement"],
    "prob_rows_sum": [float(s) for s in predictions["prob"].sum(-1)],
    "history": [{k: h[k] for k in ("student_steps", "train_loss", "val_accuracy")} for h in result.history],
    "compute": {k: result.compute[k] for k in ("student_steps", "teacher_forwards", "teacher_backwards")},
    "flops": {k: result.compute[k] for k in ("flops_student", "flops_teacher")},
    "compile_s": result.compute.get("compile_s"),
    "param_change": moved,
    "seconds": {"import": t_import, "build": t_build, "teacher_eval": t_teacher_eval, "fit": t_fit},
}))
