"""Where a benchmark's files live: the one place the path templates are spelled (the workflow rules and the
library both use them). Paths are relative to the working directory (Snakemake's ``--directory``).

Templates are ``str.format`` patterns; formatting one with ``"{name}"`` for a field leaves it a Snakemake
wildcard, e.g. ``run_dir("{dataset}", "{student}", "{method}", "{seed}", root=R)``.
"""

from __future__ import annotations

import os

RESULTS = os.path.join("results", "{benchmark}")  # a benchmark's root, R below
DATA = os.path.join("data", "{dataset}")  # R/…: a prepared embedded dataset, or a TFDS dataset's marker
TEACHER = os.path.join("teacher", "{dataset}", "{teacher}", "seed{seed}")  # R/…: a teacher run
RUN = os.path.join("runs", "{dataset}", "{student}", "{method}", "seed{seed}")  # R/…: a student run
STATE = os.path.join("state", "{run}")  # R/…: a run's resume state; {run}: the run's path relative to R
COMPILE_CACHE = "compile_cache"  # R/…: JAX's persistent compilation cache, shared by the training jobs
GPU_LOCKS = os.path.join("state", "gpu-locks")  # R/…: one lock file per GPU of a machine (ev3.devices)


def results_root(benchmark: str) -> str:
    return RESULTS.format(benchmark=benchmark)


def data_dir(dataset: str, *, root: str) -> str:
    return os.path.join(root, DATA.format(dataset=dataset))


def teacher_dir(dataset: str, teacher: str, seed, *, root: str) -> str:
    return os.path.join(root, TEACHER.format(dataset=dataset, teacher=teacher, seed=seed))


def run_dir(dataset: str, student: str, method: str, seed, *, root: str) -> str:
    return os.path.join(root, RUN.format(dataset=dataset, student=student, method=method, seed=seed))


def state_dir(run_dir: str, *, root: str) -> str:
    """The resume state of the run in ``run_dir`` (a path under ``root``). Not a declared output, so it survives
    an interrupted job (the rerun resumes from it); the job removes it once its outputs are complete."""
    return os.path.join(root, STATE.format(run=os.path.relpath(run_dir, root)))


def compile_cache(*, root: str) -> str:
    return os.path.join(root, COMPILE_CACHE)


def gpu_locks(*, root: str) -> str:
    return os.path.join(root, GPU_LOCKS)
