"""Benchmark config → validated dict → resolved per-run configs (JSON) → typed :class:`RunSpec`.

Validation is the JSON schema ``workflow/schemas/config.schema.yaml`` (unknown keys rejected everywhere)
plus cross-references the schema cannot express (students/teacher name models). Every error is a
:class:`ConfigError` whose message starts with the offending key's path, e.g. ``methods/kd/tempreature``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "workflow", "schemas", "config.schema.yaml")


class ConfigError(ValueError):
    """An invalid benchmark or run config; the message names the key path."""


def _schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def _path(error: jsonschema.ValidationError) -> str:
    path = "/".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed]
        if extra:
            path = "/".join(filter(None, [path, extra[0]]))
    elif error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        path = "/".join(filter(None, [path, missing[0] if missing else ""]))
    return path or "<root>"


def validate(config: dict) -> dict:
    """Return a deep copy of ``config`` after schema and cross-reference checks; raise :class:`ConfigError`."""
    config = copy.deepcopy(dict(config))
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(list(e.absolute_path)), str(e.message)))
    if errors:
        error = max(errors, key=lambda e: len(list(e.absolute_path))) if errors[0].validator in ("allOf", "anyOf") else errors[0]
        error = jsonschema.exceptions.best_match([error]) or error
        raise ConfigError(f"{_path(error)}: {error.message}")
    for i, name in enumerate(config["students"]):
        if name not in config["models"]:
            raise ConfigError(f"students/{i}: unknown model {name!r}; defined models: {sorted(config['models'])}")
    if config["teacher"]["model"] not in config["models"]:
        raise ConfigError(f"teacher/model: unknown model {config['teacher']['model']!r}; defined models: {sorted(config['models'])}")
    for prefix, train in (("train", config["train"]), ("teacher/train", config["teacher"]["train"])):
        every = train.get("checkpoint_every")
        if every is not None and every % train["eval_every"]:
            raise ConfigError(
                f"{prefix}/checkpoint_every: {every} is not a multiple of {prefix}/eval_every ({train['eval_every']}); "
                "checkpoints are taken at evaluations"
            )
    if config.get("budget") and "student_steps" in config["budget"]:
        for name, method in config["methods"].items():
            share = budget_share(method)
            if config["budget"]["student_steps"] < share:
                raise ConfigError(
                    f"budget/student_steps: {config['budget']['student_steps']} is less than one unit of "
                    f"methods/{name} ({share} student steps)"
                )
    return config


def budget_share(method: dict) -> int:
    """Student steps of one unit of a method's budget: a step of every tuned member, an EV3 iteration (K·L),
    one step otherwise."""
    if method["type"] == "tuned":
        return math.prod(len(v) for v in method["space"].values())
    if method["type"] == "ev3":
        return len(method["losses"]) * len(method["optimizers"]) * method["steps_per_candidate"]
    return 1


@dataclass(frozen=True)
class RunSpec:
    """One training run, fully resolved (what ``run.json`` holds)."""

    benchmark: str
    dataset: str
    data_dir: str
    split: dict
    role: str  # "teacher" | "student"
    method: str  # method instance name ("teacher" for teacher runs)
    method_type: str
    options: dict  # method options without "type"
    model_name: str
    model: dict
    train: dict
    seed: int
    teacher: str  # teacher model name
    teacher_model: dict
    teacher_seed: int
    teacher_dir: str | None  # teacher run directory (holds checkpoint/), None for teacher runs
    budget: dict | None = None  # {"flops": F}: training FLOPs of the run (ev3.train.apply_flops_budget)

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        fields = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - fields)
        required = {n for n, f in cls.__dataclass_fields__.items() if f.default is dataclasses.MISSING}
        missing = sorted(required - set(d))
        if unknown or missing:
            raise ConfigError(f"run config: unknown keys {unknown}, missing keys {missing}")
        return cls(**d)


def results_root(config: dict) -> str:
    return os.path.join("results", config["benchmark"])


def embedded_data_dir(config: dict, dataset: str) -> str:
    return os.path.join(results_root(config), "data", dataset)


def teacher_dir(config: dict, dataset: str) -> str:
    t = config["teacher"]
    return os.path.join(results_root(config), "teacher", dataset, t["model"], f"seed{t['seed']}")


def run_dir(config: dict, dataset: str, student: str, method: str, seed: int) -> str:
    return os.path.join(results_root(config), "runs", dataset, student, method, f"seed{seed}")


def _common(config: dict, dataset: str) -> dict:
    t = config["teacher"]
    return {
        "benchmark": config["benchmark"],
        "dataset": dataset,
        "data_dir": embedded_data_dir(config, dataset),
        "split": dict(config["split"]),
        "teacher": t["model"],
        "teacher_model": dict(config["models"][t["model"]]),
        "teacher_seed": t["seed"],
    }


def teacher_run(config: dict, dataset: str) -> dict:
    t = config["teacher"]
    return {
        **_common(config, dataset),
        "role": "teacher",
        "method": "teacher",
        "method_type": "teacher",
        "options": {},
        "model_name": t["model"],
        "model": dict(config["models"][t["model"]]),
        "train": copy.deepcopy(t["train"]),
        "seed": t["seed"],
        "teacher_dir": None,
        "budget": None,
    }


def student_run(config: dict, dataset: str, student: str, method: str, seed: int) -> dict:
    if method not in config["methods"]:
        raise ConfigError(f"methods/{method}: not defined in config")
    options = copy.deepcopy(config["methods"][method])
    train = copy.deepcopy(config["train"])
    if config.get("budget") and "student_steps" in config["budget"]:  # equal student steps for every method
        units = config["budget"]["student_steps"] // budget_share(options)
        if options["type"] == "ev3":
            options["iterations"] = units
        else:
            train["steps"] = units
    return {
        **_common(config, dataset),
        "role": "student",
        "method": method,
        "method_type": options.pop("type"),
        "options": options,
        "model_name": student,
        "model": dict(config["models"][student]),
        "train": train,
        "seed": int(seed),
        "teacher_dir": teacher_dir(config, dataset),
        "budget": dict(config["budget"]) if config.get("budget") and "flops" in config["budget"] else None,
    }


def student_runs(config: dict) -> list[dict[str, Any]]:
    """Wildcard values of every student run the benchmark defines."""
    return [
        {"dataset": d, "student": s, "method": m, "seed": seed}
        for d in config["datasets"]
        for s in config["students"]
        for m in config["methods"]
        for seed in config["seeds"]
    ]
