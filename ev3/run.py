"""One run end to end: ``run.json`` → data → teacher → :func:`ev3.train.fit` → ``metrics.json`` + predictions.

Outputs in ``out_dir`` (all written atomically, ``metrics.json`` last, so its presence means a complete run):
``predictions.npz`` (test split of the selected model), ``checkpoint/`` (teacher runs: orbax), ``metrics.json``.
With ``state_dir``, training checkpoints there and resumes from it (see ``ev3.train``); it is removed once the
outputs are complete.
"""

from __future__ import annotations

import os
import platform
import shutil

import jax

from ev3 import checkpoint, data as data_lib, io, methods, models
from ev3.config import RunSpec
from ev3.methods.common import Frozen
from ev3.train import Counter, accuracy, fit, frozen_logits, predict, test_report


def versions() -> dict:
    import flax
    import jaxlib
    import optax

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "device_kind": jax.devices()[0].device_kind,
    }


def load_teacher(spec: RunSpec, dataset) -> Frozen:
    path = os.path.join(spec.teacher_dir, "checkpoint")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"teacher checkpoint missing at {path}; train the teacher first (snakemake builds it)")
    try:
        net = checkpoint.load_network(path, spec.teacher_model, dataset.input_shape, dataset.num_classes)
    except Exception as e:  # orbax raises many kinds for an empty, truncated or mismatched checkpoint
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(
            f"teacher checkpoint at {path} is unreadable ({why}); retrain the teacher (snakemake --forcerun train_teacher)"
        ) from e
    return Frozen(net.graphdef, net.params, net.rest)


def run(spec: RunSpec, out_dir: str, *, log=print, state_dir: str | None = None) -> dict:
    """Train one run and write its outputs; returns the metrics dict. ``state_dir``: resume state (removed at the end)."""
    dataset = data_lib.load(spec.dataset, spec.data_dir, **spec.split)
    method = methods.get(spec.method_type)
    teacher = load_teacher(spec, dataset) if spec.role == "student" else None
    teacher_test_logits = None
    if teacher is not None:
        teacher_test_logits, _ = predict(Counter(), frozen_logits, teacher, dataset.splits["test"][0])
    result = fit(method, spec, dataset, teacher, log=log, state_dir=state_dir)
    results, predictions = test_report(method, result, dataset, teacher_test_logits)
    student = result.selected_state.student
    metrics = {
        "benchmark": spec.benchmark,
        "dataset": spec.dataset,
        "student": spec.model_name,
        "teacher": spec.teacher,
        "method": spec.method,
        "method_type": spec.method_type,
        "seed": spec.seed,
        "teacher_seed": spec.teacher_seed,
        "split_seed": spec.split["seed"],
        **results,
        "teacher_test_accuracy": results["test_accuracy"]
        if teacher_test_logits is None
        else accuracy(teacher_test_logits, dataset.splits["test"][1]),
        "student_params": models.param_count(student.params),
        "history": result.history,
        "compute": result.compute,
        "versions": versions(),
    }
    if hasattr(method, "summary"):
        metrics[spec.method_type] = method.summary(result)
    os.makedirs(out_dir, exist_ok=True)
    io.write_npz(os.path.join(out_dir, "predictions.npz"), **predictions)
    if spec.role == "teacher":
        ckpt = os.path.join(out_dir, "checkpoint")
        shutil.rmtree(ckpt, ignore_errors=True)
        checkpoint.save_network(ckpt, student.params, student.rest)
    io.write_json(os.path.join(out_dir, "metrics.json"), metrics)
    if state_dir is not None:
        shutil.rmtree(state_dir, ignore_errors=True)  # the outputs are complete: nothing left to resume
    log(f"[{spec.method} seed{spec.seed}] test accuracy {metrics['test_accuracy']:.4f} -> {out_dir}")
    return metrics
