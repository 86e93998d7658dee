"""One run end to end: ``run.json`` → data → teacher → :func:`ev3.train.fit` → ``metrics.json`` + predictions.

Outputs in ``out_dir`` (all written atomically, ``metrics.json`` last, so its presence means a complete run):
``predictions.npz`` (test split of the selected model), ``checkpoint/`` (teacher runs: orbax), ``metrics.json``.
A write that fails (``ev3.io.WriteError``, e.g. a full disk) removes the outputs written before it, so a run
directory holds all of them or none; the resume state stays, and a rerun resumes from it.
With ``state_dir``, training checkpoints there and resumes from it (see ``ev3.train``); it is removed once the
outputs are complete.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import time
from dataclasses import dataclass

import jax

from ev3 import checkpoint, data as data_lib, diagnostics, io, methods, models, paths
from ev3.config import RunSpec
from ev3.methods.common import Frozen
from ev3.train import Counter, FitResult, NonFiniteError, Selection, accuracy, compute_counters, fit, frozen_logits, predict, test_report


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


@dataclass
class Loaded:
    """What the runs of one job share, loaded once: the dataset, the method module, the frozen teacher, the
    teacher's test logits and its confidence on the students' training views (the last three None for teacher
    runs; ``ev3.diagnostics``)."""

    dataset: object
    method: object
    teacher: Frozen | None
    teacher_test_logits: object
    teacher_views: dict | None = None


def load(spec: RunSpec) -> Loaded:
    """The dataset, method and teacher of ``spec`` (the runs of a seed group share them)."""
    dataset = data_lib.load(spec.dataset, spec.data_dir, **spec.split)
    teacher = load_teacher(spec, dataset) if spec.role == "student" else None
    teacher_test_logits = teacher_views = None
    if teacher is not None:
        counter = Counter()
        teacher_test_logits, _ = predict(counter, frozen_logits, teacher, dataset.splits["test"][0])
        views = diagnostics.training_views(spec.train, dataset)
        view_logits, _ = predict(counter, frozen_logits, teacher, views)
        teacher_views = {"samples": int(views.shape[0]), "augmented": bool(spec.train.get("augment")),
                         "mixup": bool(spec.train.get("mixup")), **diagnostics.confidence(view_logits)}
    return Loaded(dataset, methods.get(spec.method_type), teacher, teacher_test_logits, teacher_views)


def write_outputs(spec: RunSpec, loaded: Loaded, result: FitResult, out_dir: str, *, log=print) -> dict:
    """``predictions.npz`` (and a teacher's ``checkpoint/``), then ``metrics.json`` of a finished ``result``."""
    dataset, method, teacher_test_logits = loaded.dataset, loaded.method, loaded.teacher_test_logits
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
        "teacher_views": loaded.teacher_views,
        "student_params": models.param_count(student.params),
        "history": result.history,
        "compute": result.compute if result.shared is None else {**result.compute, "shared": result.shared},
        "versions": versions(),
    }
    summary = method.summary(result)
    if summary is not None:
        metrics[spec.method_type] = summary
    written = [os.path.join(out_dir, "predictions.npz")]
    try:
        io.write_npz(written[0], **predictions)
        if spec.role == "teacher":
            written.append(os.path.join(out_dir, "checkpoint"))
            shutil.rmtree(written[-1], ignore_errors=True)
            checkpoint.save_network(written[-1], student.params, student.rest)
        io.write_json(os.path.join(out_dir, "metrics.json"), metrics)
    except io.WriteError:  # e.g. a full disk: no outputs at all rather than some (the resume state is kept)
        for path in written:
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                _remove(path)
        raise
    log(f"[{spec.method} seed{spec.seed}] test accuracy {metrics['test_accuracy']:.4f} -> {out_dir}")
    return metrics


def run(spec: RunSpec, out_dir: str, *, log=print, state_dir: str | None = None, loaded: Loaded | None = None) -> dict:
    """Train one run and write its outputs; returns the metrics dict. ``state_dir``: resume state (removed at the
    end); ``loaded``: the shared :func:`load` of a job's runs (loaded here when None)."""
    loaded = loaded or load(spec)
    if spec.role == "teacher" and spec.options.get("checkpoint"):
        result = imported_teacher(loaded.method, spec, loaded.dataset)
        log(f"[teacher] imported {spec.options['checkpoint']}")
    else:
        result = fit(loaded.method, spec, loaded.dataset, loaded.teacher, log=log, state_dir=state_dir)
    metrics = write_outputs(spec, loaded, result, out_dir, log=log)
    if state_dir is not None:
        shutil.rmtree(state_dir, ignore_errors=True)  # the outputs are complete: nothing left to resume
    return metrics


# A seed group's job (``python -m ev3 train-group``): every run keeps today's outputs in its run directory and its
# own state folder ``state/<run>/``: ``resume/`` (checkpoints while it trains) and ``record/`` (its finished
# outputs, hard links where the file system allows). Snakemake removes a job's outputs before rerunning it, so
# a rerun (interrupted job, or a group extended by a new seed) restores every finished run from its record
# instead of training it again; a record is used only when its run.json equals the run's resolved config.
RECORD_FILES = ("run.json", "predictions.npz", "metrics.json")  # metrics.json last: it marks a complete run


def group_dirs(spec: RunSpec) -> tuple[str, str, str]:
    """(run directory, resume folder, record folder) of a student run, under ``results/<benchmark>/``."""
    root = paths.results_root(spec.benchmark)
    out_dir = paths.run_dir(spec.dataset, spec.model_name, spec.method, spec.seed, root=root)
    state = paths.state_dir(out_dir, root=root)
    return out_dir, os.path.join(state, "resume"), os.path.join(state, "record")


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _place(src: str, dst: str) -> None:
    """``dst`` becomes ``src``'s content atomically: a hard link (no copy) or, across file systems, a copy. A
    failure (e.g. a full disk) leaves no temporary file and raises :class:`ev3.io.WriteError`."""
    tmp = f"{dst}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except OSError as error:
        _remove(tmp)
        raise io.write_failure(dst, error) from error


def keep_record(out_dir: str, record: str) -> None:
    for name in RECORD_FILES:
        _place(os.path.join(out_dir, name), os.path.join(record, name))


def restore_record(spec: RunSpec, out_dir: str, record: str) -> dict | None:
    """The finished run's metrics with its outputs put back in ``out_dir`` from ``record``; None when there is no
    complete record of this very run config."""
    try:
        if io.read_json(os.path.join(record, "run.json")) != dataclasses.asdict(spec):
            return None
        metrics = io.read_json(os.path.join(record, "metrics.json"))
    except (OSError, ValueError):
        return None
    for name in RECORD_FILES:
        _place(os.path.join(record, name), os.path.join(out_dir, name))
    return metrics


def run_group(specs: list[RunSpec], *, mode: str = "sequential", log=print) -> list[dict]:
    """Train a seed group's student runs in this process and write each run's outputs; returns their metrics.

    ``specs``: runs that differ only in ``seed`` (one dataset, student, method). Finished runs are restored from
    their records; the others train with the data, teacher and method loaded once. ``mode`` sequential: one after
    another (``ev3.train.fit``, each with its own resume folder, counters, wall and compile time); vmap: together
    in one vmapped step (``ev3.seedgroup.fit_vmapped``). A non-finite run does not stop the others: the job then
    fails naming every such run, and the finished runs' records stay for the rerun."""
    metrics: dict[int, dict] = {}
    pending = []
    for spec in specs:
        out_dir, resume, record = group_dirs(spec)
        restored = restore_record(spec, out_dir, record)
        if restored is not None:
            metrics[spec.seed] = restored
            log(f"[{spec.method} seed{spec.seed}] finished before: outputs restored from {record}")
        else:
            pending.append(spec)
    if pending:
        loaded = load(pending[0])
        if mode == "vmap":
            from ev3.seedgroup import fit_vmapped

            method_state = os.path.dirname(os.path.dirname(group_dirs(pending[0])[1]))  # state/runs/<d>/<s>/<m>
            group_state = os.path.join(method_state, "group-" + "-".join(str(s.seed) for s in pending))
            results = fit_vmapped(loaded.method, pending, loaded.dataset, loaded.teacher, log=log, state_dir=group_state)
            for spec, result in zip(pending, results):
                metrics[spec.seed] = _finish(spec, loaded, result, log)
        else:
            failed = []
            for spec in pending:
                out_dir, resume, _ = group_dirs(spec)
                try:
                    result = fit(loaded.method, spec, loaded.dataset, loaded.teacher, log=log, state_dir=resume)
                except NonFiniteError as e:
                    failed.append(f"{out_dir}: {e}")
                    log(f"[{spec.method} seed{spec.seed}] failed: {e}")
                    continue
                metrics[spec.seed] = _finish(spec, loaded, result, log)
            if failed:
                raise NonFiniteError(f"{len(failed)} of {len(specs)} runs diverged: " + "; ".join(failed))
    return [metrics[spec.seed] for spec in specs]


def _finish(spec: RunSpec, loaded: Loaded, result: FitResult, log) -> dict:
    """A group run's outputs (with its run.json), its record, and its resume folder removed."""
    out_dir, resume, record = group_dirs(spec)
    os.makedirs(out_dir, exist_ok=True)
    io.write_json(os.path.join(out_dir, "run.json"), dataclasses.asdict(spec))
    metrics = write_outputs(spec, loaded, result, out_dir, log=log)
    keep_record(out_dir, record)
    shutil.rmtree(resume, ignore_errors=True)
    return metrics
