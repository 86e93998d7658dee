# Path helpers only: which runs exist and where their files live.
import functools
import os

from ev3 import paths
from ev3.config import (
    dataset_dir,
    group_rule,
    group_run,
    seed_groups,
    seeds_per_job,
    student_run,
    student_runs,
    teacher_dir,
    teacher_models,
    teacher_of,
    teacher_run,
)
from ev3.data import EMBEDDED, TFDS_IMAGES


def student_metrics(wildcards=None):
    return [os.path.join(paths.run_dir(**r, root=R), "metrics.json") for r in student_runs(cfg)]


def teacher_checkpoint_of(wildcards):
    """The checkpoint of the student's teacher (config teacher.model: one model or a per-student mapping)."""
    return os.path.join(teacher_dir(cfg, wildcards.dataset, teacher_of(cfg, wildcards.student)), "checkpoint")


# A training job's teacher input: with one teacher model for every student a pattern, so planning calls no input
# function per job (a study plans thousands of them).
TEACHER_CHECKPOINT = (
    os.path.join(teacher_dir(cfg, "{dataset}", cfg["teacher"]["model"]), "checkpoint")
    if isinstance(cfg["teacher"]["model"], str)
    else teacher_checkpoint_of
)


@functools.cache
def group_run_of(dataset, student, method):
    """``ev3.config.group_run``, resolved once per (dataset, student, method) for all its seed groups' jobs."""
    return group_run(cfg, dataset, student, method)


def teacher_metrics(wildcards=None):
    return [os.path.join(teacher_dir(cfg, d, t), "metrics.json") for d in cfg["datasets"] for t in teacher_models(cfg)]


# JAX's persistent compilation cache, shared by the training jobs: seeds and methods with the same shapes and
# code load each other's compiled kernels. Not an output; deleting it only costs compile time.
COMPILE_CACHE = paths.compile_cache(root=R)
# A run's directory with its wildcards (student runs; teacher runs of the config's teacher seed).
RUN = paths.run_dir("{dataset}", "{student}", "{method}", "{seed}", root=R)
TEACHER = paths.teacher_dir("{dataset}", "{teacher}", cfg["teacher"]["seed"], root=R)


def state_dir(run_dir, wildcards):
    """Resume state of the run ``run_dir`` (a template with wildcards): ``ev3.paths.state_dir``."""
    return paths.state_dir(run_dir.format(**wildcards), root=R)


wildcard_constraints:
    dataset="[A-Za-z0-9_]+",
    student="[A-Za-z0-9_.-]+",
    teacher="[A-Za-z0-9_.-]+",
    method="[A-Za-z0-9_-]+",
    seed=r"-?\d+",


# The conda environment of the jobs, only when the user asks for it (--sdm conda): otherwise Snakemake would
# still check the environment file for every job while planning.
# `snakemake --lint` (which alone builds the workflow without checking environment variables) sees it too.
CONDA_ENV = (
    "../../environment.yml"
    if "conda" in {str(m).lower() for m in workflow.deployment_settings.deployment_method} or not workflow.check_envvars
    else None
)
# Threads and resources set for train_student (a profile's set-resources / set-threads) apply to every seed
# group's rule too (train_student_g<k>, see distill.smk).
if seeds_per_job(cfg)["count"] > 1:
    for _settings in (workflow.resource_settings._parsed_overwrite_resources, workflow.resource_settings._parsed_overwrite_threads):
        if "train_student" in _settings:
            for _group in seed_groups(cfg):
                _settings.setdefault(group_rule(cfg, _group), _settings["train_student"])
