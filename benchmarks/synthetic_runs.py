"""Synthetic, schema-valid results trees for the report: ``metrics.json`` + ``predictions.npz`` of N runs.

Runs are the default benchmark's 8 methods (``config/config.yaml``) × seeds 0, 1, … on one dataset × student,
the first ``n_runs`` in seed-major order (every method gets ⌈N / 8⌉ or ⌊N / 8⌋ seeds), plus the teacher run.
EV3 runs with growth end at run-specific FLOPs (1–1.3 × the others'), so their evaluation FLOPs differ.
EV3 runs carry ``ev3.decisions`` (one per round) and ``ev3.growth_events``; MetaDistil runs carry their tracked
``metadistil.teacher_history``. Every value is drawn from ``numpy.random.default_rng(seed)``: the same
arguments write the same bytes. Predictions hold ``pred`` and ``label`` (int32, ``n_test``) only; a run's
``test_accuracy`` is exactly its fraction of correct predictions.

    python benchmarks/synthetic_runs.py OUT --runs 1000 [--seed 0] [--n-test 1000]
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from ev3 import io
from ev3 import paths as run_paths

METHODS = {  # name -> method type, as in config/config.yaml
    "scratch": "scratch", "kd": "kd", "kd-tuned": "tuned", "metadistil": "metadistil",
    "metadistil-no-pilot": "metadistil", "ev3": "ev3", "ev3-no-gate": "ev3", "ev3-no-growth": "ev3",
}
DATASET, STUDENT, TEACHER = "mnist1d", "mlp256", "cnn"
STEPS, EVAL_EVERY, ROUNDS = 6000, 500, 30  # default budget: 12 evaluations; EV3: 30 rounds of 200 steps
FLOPS_PER_STEP = 2.0e8
VERSIONS = {"python": "3.11", "jax": "0", "jaxlib": "0", "flax": "0", "optax": "0", "device_kind": "cpu"}


def _compute(flops_student: float, flops_teacher: float, rng) -> dict:
    flops_selection = 0.02 * flops_student
    return {
        "student_steps": STEPS, "teacher_forwards": STEPS if flops_teacher else 0, "teacher_backwards": 0,
        "flops_student": flops_student, "flops_teacher": flops_teacher, "flops_selection": flops_selection,
        "flops": flops_student + flops_teacher + flops_selection, "wall_s": float(rng.uniform(20, 60)),
        "compile_s": float(rng.uniform(1, 5)), "compiles": 4, "steps_per_s": float(rng.uniform(200, 400)),
        "peak_memory_bytes": None,
    }


def _history(final: float, total_flops: float, rng) -> list[dict]:
    """12 evaluations rising towards ``final`` (fractions), cumulative FLOPs linear in steps."""
    steps = np.arange(EVAL_EVERY, STEPS + 1, EVAL_EVERY)
    rise = final * (1 - np.exp(-steps / 1500.0)) / (1 - np.exp(-STEPS / 1500.0))
    test = np.clip(rise + rng.normal(0, 0.005, steps.size), 0, 1)
    val = np.clip(test + rng.normal(0, 0.005, steps.size), 0, 1)
    return [
        {"student_steps": int(s), "flops": float(total_flops * s / STEPS), "wall_s": float(0.005 * s),
         "train_loss": float(2.0 * np.exp(-s / 2000.0)), "val_accuracy": float(v), "test_accuracy": float(t)}
        for s, t, v in zip(steps, test, val)
    ]


def _ev3(rng, growth: bool) -> dict:
    decisions = []
    for it in range(ROUNDS):
        accepted = bool(rng.random() < 0.4)
        decisions.append({
            "candidate": int(rng.integers(4)), "accepted": accepted, "stable_moved": accepted,
            "family": int(rng.integers(2)), "student_steps": (it + 1) * STEPS // ROUNDS,
            "train_loss": float(rng.uniform(0.2, 1.5)), "nonfinite_candidates": [],
        })
    events = []
    if growth:
        for it in sorted(rng.choice(np.arange(8, ROUNDS), size=2, replace=False)):
            events.append({"iteration": int(it), "student_steps": (int(it) + 1) * STEPS // ROUNDS, "from_arch": "mlp256",
                           "to_arch": "mlp256+", "params_before": 70000, "params": 136000})
    accepted = sum(d["accepted"] for d in decisions)
    return {"decisions": decisions, "growth_events": events, "accepted": accepted, "rejected": ROUNDS - accepted}


def _metadistil(rng, teacher_acc: float) -> dict:
    steps = np.arange(EVAL_EVERY, STEPS + 1, EVAL_EVERY)
    drift = np.cumsum(rng.uniform(0, 0.002, steps.size))
    history = [
        {"student_steps": int(s), "teacher_test_accuracy": float(np.clip(teacher_acc - 5 * d, 0, 1)),
         "teacher_agreement_with_initial": float(1 - 3 * d), "teacher_param_drift": float(d)}
        for s, d in zip(steps, drift)
    ]
    final = history[-1]
    return {"teacher_test_accuracy": final["teacher_test_accuracy"],
            "teacher_agreement_with_initial": final["teacher_agreement_with_initial"],
            "teacher_param_drift": final["teacher_param_drift"], "pilot": True, "teacher_history": history}


def _write(root: str, run_dir: str, metrics: dict, correct: np.ndarray, labels: np.ndarray) -> None:
    io.write_npz(os.path.join(run_dir, "predictions.npz"), pred=np.where(correct, labels, (labels + 1) % 10).astype(np.int32),
                 label=labels)
    io.write_json(os.path.join(run_dir, "metrics.json"), metrics)


def _base(method: str, seed: int, correct: np.ndarray, history: list[dict], compute: dict, teacher_acc: float, rng) -> dict:
    acc = float(correct.mean())
    return {
        "benchmark": "synthetic", "dataset": DATASET, "student": STUDENT if method != "teacher" else TEACHER,
        "teacher": TEACHER, "method": method, "method_type": METHODS.get(method, "teacher"), "seed": seed,
        "teacher_seed": 0, "split_seed": 0, "test_accuracy": acc, "final_test_accuracy": history[-1]["test_accuracy"],
        "val_accuracy": float(np.clip(acc + rng.normal(0, 0.005), 0, 1)), "test_nll": float(rng.uniform(0.5, 1.5)),
        "teacher_agreement": None if method == "teacher" else float(np.clip(acc + rng.uniform(0, 0.1), 0, 1)),
        "teacher_test_accuracy": teacher_acc, "student_params": 70000, "history": history, "compute": compute,
        "versions": VERSIONS,
        "test_kl_teacher_student": None if method == "teacher" else float(rng.uniform(0.1, 1.0)),
        "teacher_views": None if method == "teacher" else {
            "samples": 1024, "augmented": True, "mixup": False, "mean_max_prob": 0.95, "mean_entropy": 0.2,
            "confident_fraction": 0.7},
    }


def write_runs(root: str, n_runs: int, *, seed: int = 0, n_test: int = 1000) -> list[str]:
    """Write the teacher and ``n_runs`` student runs under ``root`` (``ev3.paths`` layout); returns the student
    runs' metrics paths. Per method a mean accuracy (0.55–0.75) with per-seed noise (sd 0.02)."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n_test) % 10).astype(np.int32)
    teacher_acc = 0.85
    correct = rng.permutation(n_test) < round(teacher_acc * n_test)
    teacher_acc = float(correct.mean())
    t_flops = 6000 * 4.0e8
    _write(root, run_paths.teacher_dir(DATASET, TEACHER, 0, root=root),
           _base("teacher", 0, correct, _history(teacher_acc, t_flops, rng), _compute(t_flops, 0.0, rng), teacher_acc, rng),
           correct, labels)
    level = {m: 0.55 + 0.2 * rng.random() for m in METHODS}
    out = []
    for i in range(n_runs):
        method, s = list(METHODS)[i % len(METHODS)], i // len(METHODS)
        mtype = METHODS[method]
        k = int(np.clip(round((level[method] + rng.normal(0, 0.02)) * n_test), 0, n_test))
        correct = rng.permutation(n_test) < k
        f_student = STEPS * FLOPS_PER_STEP
        if method in ("ev3", "ev3-no-gate"):  # a grown student costs more per step from its growth on
            f_student *= 1 + 0.3 * rng.random()
        f_teacher = 0.0 if mtype == "scratch" else STEPS * FLOPS_PER_STEP * (3.0 if mtype == "metadistil" else 1.0)
        compute = _compute(f_student, f_teacher, rng)
        history = _history(float(correct.mean()), compute["flops"], rng)
        metrics = _base(method, s, correct, history, compute, teacher_acc, rng)
        if mtype == "ev3":
            metrics["ev3"] = _ev3(rng, growth=method != "ev3-no-growth")
        elif mtype == "metadistil":
            metrics["metadistil"] = _metadistil(rng, teacher_acc)
        elif mtype == "tuned":
            metrics["tuned"] = {"selected": int(rng.integers(6))}
        run_dir = run_paths.run_dir(DATASET, STUDENT, method, s, root=root)
        _write(root, run_dir, metrics, correct, labels)
        out.append(os.path.join(run_dir, "metrics.json"))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-test", type=int, default=1000)
    args = parser.parse_args(argv)
    write_runs(args.root, args.runs, seed=args.seed, n_test=args.n_test)


if __name__ == "__main__":
    main()
