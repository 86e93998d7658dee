# Path helpers only: which runs exist and where their files live.
import os

from ev3.config import dataset_dir, student_run, student_runs, teacher_dir, teacher_models, teacher_of, teacher_run
from ev3.data import EMBEDDED, TFDS_IMAGES


def student_metrics(wildcards=None):
    return [
        f"{R}/runs/{r['dataset']}/{r['student']}/{r['method']}/seed{r['seed']}/metrics.json"
        for r in student_runs(cfg)
    ]


def teacher_checkpoint_of(wildcards):
    """The checkpoint of the student's teacher (config teacher.model: one model or a per-student mapping)."""
    return os.path.join(teacher_dir(cfg, wildcards.dataset, teacher_of(cfg, wildcards.student)), "checkpoint")


def teacher_metrics(wildcards=None):
    return [os.path.join(teacher_dir(cfg, d, t), "metrics.json") for d in cfg["datasets"] for t in teacher_models(cfg)]


# JAX's persistent compilation cache, shared by the training jobs: seeds and methods with the same shapes and
# code load each other's compiled kernels. Not an output; deleting it only costs compile time.
COMPILE_CACHE = f"{R}/compile_cache"


def state_dir(run_dir, wildcards):
    """Resume state of a training run: results/<benchmark>/state/<run path relative to results/<benchmark>>.
    Not a declared output, so it survives an interrupted job (the rerun resumes from it); the job removes it
    once its outputs are complete."""
    return os.path.join(R, "state", os.path.relpath(run_dir, R)).format(**wildcards)


wildcard_constraints:
    dataset="[A-Za-z0-9_]+",
    student="[A-Za-z0-9_.-]+",
    teacher="[A-Za-z0-9_.-]+",
    method="[A-Za-z0-9_-]+",
    seed=r"-?\d+",
