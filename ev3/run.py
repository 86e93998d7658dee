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
import time

import jax

from ev3 import checkpoint, data as data_lib, io, methods, models
from ev3.config import RunSpec
from ev3.methods.common import Frozen
from ev3.train import Counter, FitResult, Selection, accuracy, compute_counters, fit, frozen_logits, predict, test_report


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
    net = _restore(path, spec.teacher_model, dataset, what="teacher",
                   fix="train the teacher first (snakemake builds it; --forcerun train_teacher rebuilds it)")
    return Frozen(net.graphdef, net.params, net.rest)


def _restore(path: str, model_config: dict, dataset, *, what: str, fix: str):
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} checkpoint missing at {path}; {fix}")
    try:
        return checkpoint.load_network(path, model_config, dataset.input_shape, dataset.num_classes)
    except Exception as e:  # orbax raises many kinds for an empty, truncated or mismatched checkpoint
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"{what} checkpoint at {path} is unreadable ({why}); {fix}") from e


def imported_teacher(method, spec: RunSpec, dataset) -> FitResult:
    """A teacher run that evaluates the checkpoint ``spec.options["checkpoint"]`` instead of training: the
    "selected" state is the imported network; history holds its one evaluation; no training compute."""
    t0 = time.perf_counter()
    net = _restore(spec.options["checkpoint"], spec.model, dataset, what="teacher",
                   fix="config teacher.checkpoint must name an orbax checkpoint of this model (a teacher run's checkpoint/)")
    state = method.init(spec, dataset, None, jax.random.key(0))
    state = state.replace(student=state.student.replace(params=net.params, rest=net.rest))
    counter = Counter()
    val_logits, selection_flops = predict(counter, method.evaluate, state, dataset.splits["val"][0])
    test_logits, _ = predict(counter, method.evaluate, state, dataset.splits["test"][0])
    val_acc = accuracy(val_logits, dataset.splits["val"][1])
    wall = time.perf_counter() - t0
    history = [{"student_steps": 0, "flops": 0.0, "wall_s": wall, "train_loss": None, "val_accuracy": val_acc,
                "test_accuracy": accuracy(test_logits, dataset.splits["test"][1])}]
    compute = compute_counters(counter, student_steps=0, teacher_forwards=0, teacher_backwards=0, flops_student=0.0,
                               flops_teacher=0.0, flops_selection=selection_flops, wall_s=wall, train_s=0.0)
    return FitResult(Selection(val_acc, 0, None, state), state, history, compute, state=state)


def run(spec: RunSpec, out_dir: str, *, log=print, state_dir: str | None = None) -> dict:
    """Train one run and write its outputs; returns the metrics dict. ``state_dir``: resume state (removed at the end)."""
    dataset = data_lib.load(spec.dataset, spec.data_dir, **spec.split)
    method = methods.get(spec.method_type)
    teacher = load_teacher(spec, dataset) if spec.role == "student" else None
    teacher_test_logits = None
    if teacher is not None:
        teacher_test_logits, _ = predict(Counter(), frozen_logits, teacher, dataset.splits["test"][0])
    if spec.role == "teacher" and spec.options.get("checkpoint"):
        result = imported_teacher(method, spec, dataset)
        log(f"[teacher] imported {spec.options['checkpoint']}")
    else:
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
    summary = method.summary(result)
    if summary is not None:
        metrics[spec.method_type] = summary
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
