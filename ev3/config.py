"""Benchmark config → validated dict → resolved per-run configs (JSON) → typed :class:`RunSpec`.

Validation is the JSON schema ``workflow/schemas/config.schema.yaml`` (unknown keys rejected everywhere)
plus cross-references the schema cannot express (students/teacher name models). Every error is a
:class:`ConfigError` whose message starts with the offending key's path, e.g. ``methods/kd/tempreature``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

from ev3 import paths
from ev3.data import EMBEDDED

if TYPE_CHECKING:
    import jsonschema

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
    import jsonschema  # here, not at module level: run specs are built where jsonschema is not installed

    config = copy.deepcopy(dict(config))
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(list(e.absolute_path)), str(e.message)))
    if errors:
        error = max(errors, key=lambda e: len(list(e.absolute_path))) if errors[0].validator in ("allOf", "anyOf") else errors[0]
        error = jsonschema.exceptions.best_match([error]) or error
        raise ConfigError(f"{_path(error)}: {error.message}")
    tfds_datasets = [d for d in config["datasets"] if d not in EMBEDDED]
    if tfds_datasets and not config.get("data_dir"):
        raise ConfigError(f"data_dir: required for the TFDS datasets {tfds_datasets} (where they are prepared)")
    for i, name in enumerate(config["students"]):
        if name not in config["models"]:
            raise ConfigError(f"students/{i}: unknown model {name!r}; defined models: {sorted(config['models'])}")
    model = config["teacher"]["model"]
    pairs = model.items() if isinstance(model, dict) else [(None, model)]
    for student, name in pairs:
        key = "teacher/model" + (f"/{student}" if student else "")
        if student is not None and student not in config["students"]:
            raise ConfigError(f"{key}: {student!r} is not one of the students {config['students']}")
        if name not in config["models"]:
            raise ConfigError(f"{key}: unknown model {name!r}; defined models: {sorted(config['models'])}")
    if isinstance(model, dict) and set(model) != set(config["students"]):
        missing = sorted(set(config["students"]) - set(model))
        raise ConfigError(f"teacher/model/{missing[0]}: no teacher for this student (a mapping needs every student)")
    for student in config.get("student_learning_rate") or {}:
        if student not in config["students"]:
            raise ConfigError(f"student_learning_rate/{student}: not one of the students {config['students']}")
    for name, method in config["methods"].items():
        for i, student in enumerate(method.get("students", [])):
            if student not in config["students"]:
                raise ConfigError(f"methods/{name}/students/{i}: {student!r} is not one of the students {config['students']}")
        if method["type"] in MAP_METHODS:
            for student in method_students(config, name):
                check_feature_maps(config, name, method["type"], student)
    for student, published in config.get("anchors", {}).items():
        if student not in config["students"]:
            raise ConfigError(f"anchors/{student}: not one of the students {config['students']}")
        for name in published:
            if name != "teacher" and name not in config["methods"]:
                raise ConfigError(f"anchors/{student}/{name}: neither 'teacher' nor a method of this benchmark")
    checkpoint = config["teacher"].get("checkpoint")
    if isinstance(checkpoint, dict):
        for name in checkpoint:
            if name not in teacher_models(config):
                raise ConfigError(f"teacher/checkpoint/{name}: not a teacher model of this benchmark {teacher_models(config)}")
    elif checkpoint is not None and len(teacher_models(config)) > 1:
        raise ConfigError("teacher/checkpoint: one path for several teacher models; give a mapping model -> path")
    for prefix, train in (("train", config["train"]), ("teacher/train", config["teacher"]["train"])):
        _check_views(prefix, train, config)
        every = train.get("checkpoint_every")
        if every is not None and every % train["eval_every"]:
            raise ConfigError(
                f"{prefix}/checkpoint_every: {every} is not a multiple of {prefix}/eval_every ({train['eval_every']}); "
                "checkpoints are taken at evaluations"
            )
    for name, method in config["methods"].items():
        if method["type"] == "ev3":
            _check_ev3(f"methods/{name}", method, {s: config["models"][s]["type"] for s in method_students(config, name)},
                       flops_budget=bool(config.get("budget")) and "flops" in config["budget"])
    if seeds_per_job(config)["mode"] == "vmap":
        from ev3.seedgroup import unsupported  # the vmapped trainer's own rule

        for name, method in config["methods"].items():
            if (reason := unsupported(method["type"])) is not None:
                raise ConfigError(
                    f"seeds_per_job/mode: vmap cannot train methods/{name} (type {method['type']}: "
                    f"{reason}); use mode sequential or leave the method out"
                )
        if (config.get("budget") or {}).get("flops") is not None:
            raise ConfigError("seeds_per_job/mode: vmap cannot train under budget/flops; use mode sequential")
    if config.get("budget") and "student_steps" in config["budget"]:
        for name, method in config["methods"].items():
            share = budget_share(method)
            if config["budget"]["student_steps"] < share:
                raise ConfigError(
                    f"budget/student_steps: {config['budget']['student_steps']} is less than one unit of "
                    f"methods/{name} ({share} student steps)"
                )
            if method["type"] == "ev3" and method.get("passes", 1) > config["budget"]["student_steps"] // share:
                raise ConfigError(
                    f"methods/{name}/passes: {method['passes']} passes exceed the "
                    f"{config['budget']['student_steps'] // share} rounds of budget/student_steps"
                )
    return config


MIXUP_REFUSED = {"dkd": "its target/non-target split needs each sample's one label",
                 "crd": "its negatives are other-class examples of each sample's one label"}
"""Method types whose loss needs hard labels, so they cannot train on mixed (mixup) targets."""


def _check_augment(key: str, augment: dict, config: dict) -> None:
    """The transforms ``augment`` (at config path ``key``) fit the datasets: image keys need images, signal keys
    1-D signals."""
    from ev3.data import IMAGE_KEYS, SIGNAL_KEYS, SIGNALS

    for kind, keys, fits in (("image", IMAGE_KEYS, lambda d: d not in SIGNALS), ("signal", SIGNAL_KEYS, lambda d: d in SIGNALS)):
        used = [k for k in keys if k in augment]
        wrong = [d for d in config["datasets"] if not fits(d)]
        if used and wrong:
            raise ConfigError(f"{key}/{used[0]}: a {kind} augmentation, and dataset {wrong[0]!r} is not "
                              f"{'an image' if kind == 'image' else 'a 1-D signal'} dataset")


def _check_views(prefix: str, train: dict, config: dict) -> None:
    """``train.augment`` (and the student section's method views, MLKD's ``strong_view``) fit the datasets, and
    ``train.mixup`` is not used with a method whose loss needs hard labels (:data:`MIXUP_REFUSED`)."""
    _check_augment(f"{prefix}/augment", train.get("augment") or {}, config)
    if prefix == "train":
        for name, method in config["methods"].items():
            if method.get("strong_view"):
                _check_augment(f"methods/{name}/strong_view", method["strong_view"], config)
    if train.get("mixup") and prefix == "train":
        for name, method in config["methods"].items():
            if method["type"] in MIXUP_REFUSED:
                raise ConfigError(f"{prefix}/mixup: methods/{name} (type {method['type']}) cannot train on mixed "
                                  f"targets: {MIXUP_REFUSED[method['type']]}")


def _check_ev3(key: str, options: dict, student_types: dict, flops_budget: bool = False) -> None:
    """EV3 options that depend on ``decide.rule``: ``confidence`` and the objectives' ``margin`` are read (and
    required) only by ``paired``, ``decide.alpha`` only by ``reference``; elsewhere each is an error. A
    ``growth.operator`` must fit every student's model type (``student_types``: student → type), and growth needs an
    operator for it (none for the VGG / MobileNetV2 / ShuffleNet / ResNetV2 zoo). ``passes`` > 1
    needs a round budget (``flops_budget``: the config sets ``budget.flops``) and at most ``iterations`` passes."""
    from ev3.methods.options import DEFAULT_OPERATOR, OPERATOR_TYPES

    growth = options.get("growth")
    operator = (growth or {}).get("operator")
    for student, kind in student_types.items():
        if operator and kind not in OPERATOR_TYPES[operator]:
            raise ConfigError(f"{key}/growth/operator: {operator!r} cannot grow student {student!r} of type {kind!r}")
        if growth and not operator and kind not in DEFAULT_OPERATOR:
            raise ConfigError(
                f"{key}/growth: no growth operator for student {student!r} of type {kind!r} (there are operators for "
                f"{sorted(DEFAULT_OPERATOR)}); set growth: null, or list the other students in {key}/students"
            )
    passes = options.get("passes", 1)
    if passes > 1 and flops_budget:
        raise ConfigError(f"{key}/passes: {passes} passes need a round budget (iterations), not budget.flops")
    if passes > options["iterations"]:
        raise ConfigError(f"{key}/passes: {passes} passes exceed iterations ({options['iterations']} rounds)")
    rule = options["decide"]["rule"]
    if rule == "paired":
        if "confidence" not in options:
            raise ConfigError(f"{key}/confidence: required by decide.rule 'paired'")
    elif "confidence" in options:
        raise ConfigError(f"{key}/confidence: read only by decide.rule 'paired' (this rule: {rule!r})")
    for i, objective in enumerate(options["objectives"]):
        if rule == "paired" and "margin" not in objective:
            raise ConfigError(f"{key}/objectives/{i}/margin: required by decide.rule 'paired'")
        if rule != "paired" and "margin" in objective:
            raise ConfigError(f"{key}/objectives/{i}/margin: read only by decide.rule 'paired' (this rule: {rule!r})")
    if rule != "reference" and "alpha" in options["decide"]:
        raise ConfigError(f"{key}/decide/alpha: read only by decide.rule 'reference' (this rule: {rule!r})")


def seeds_per_job(config: dict) -> dict:
    """The config's ``seeds_per_job`` with defaults: ``{"count": S, "mode": "sequential" | "vmap"}`` (1, sequential)."""
    return {"count": 1, "mode": "sequential", **(config.get("seeds_per_job") or {})}


def seed_groups(config: dict) -> list[list[int]]:
    """The student seeds split into the training jobs' groups: seed s is in group s // S (S = seeds_per_job
    count), so adding seeds creates a new group or extends the last one and never moves an existing seed.
    Groups are ordered by s // S, seeds within one in the config's order."""
    count = seeds_per_job(config)["count"]
    groups: dict[int, list[int]] = {}
    for seed in config["seeds"]:
        groups.setdefault(int(seed) // count, []).append(int(seed))
    return [groups[g] for g in sorted(groups)]


def group_rule(config: dict, seeds: list[int]) -> str:
    """The workflow rule training the seed group ``seeds`` when S > 1: ``train_student_g<s // S>`` (m for minus)."""
    return f"train_student_g{seeds[0] // seeds_per_job(config)['count']}".replace("-", "m")


def group_run(config: dict, dataset: str, student: str, method: str) -> str:
    """The resolved student run config of a seed group's runs (they differ only in ``seed``, left out) as
    compact JSON: the training job's param, so a change to it reruns exactly the runs it changes."""
    run = student_run(config, dataset, student, method, 0)
    del run["seed"]
    return json.dumps(run, sort_keys=True, separators=(",", ":"))


MAP_METHODS = ("at", "reviewkd")  # method types that need feature maps (spatial stages) in student and teacher
STAGES = {"resnet": 3, "wrn": 3, "vgg": 4, "mobilenetv2": 4, "shufflenetv1": 3, "shufflenetv2": 3, "resnetv2": 4}
"""Stages of the image models (``len(Features.stages)``, ``ev3.models.features``; checked in the tests)."""


def stage_count(model: dict) -> int:
    """Stages of a model config (``ev3.models.features``): MLP hidden layers, CNN conv blocks, :data:`STAGES` for the
    image models."""
    if model["type"] == "mlp":
        return len(model["widths"]) if "widths" in model else model["depth"]
    return len(model["channels"]) if model["type"] == "cnn" else STAGES[model["type"]]


def check_feature_maps(config: dict, name: str, method_type: str, student: str) -> None:
    """AT and ReviewKD need feature maps in the student and its teacher (an MLP has none); both pair the stages
    one to one (AT their attention maps, ReviewKD each fused student level with the teacher's), so their numbers
    must match, as in every pair of RepDistiller's and mdistiller's CIFAR-100 tables (3 for the CIFAR ResNets, WRNs
    and ShuffleNets, 4 for VGG, MobileNetV2 and ResNet50)."""
    teacher = teacher_of(config, student)
    for who, model in (("student", student), ("teacher", teacher)):
        if config["models"][model]["type"] == "mlp":
            raise ConfigError(
                f"methods/{name}: {method_type} needs feature maps, and the {who} {model!r} is an MLP; restrict it "
                f"with methods/{name}/students to students with conv stages"
            )
    s, t = stage_count(config["models"][student]), stage_count(config["models"][teacher])
    if s != t:
        raise ConfigError(
            f"methods/{name}: {method_type} pairs stages, and student {student!r} has {s} but teacher {teacher!r} {t}; "
            f"restrict it with methods/{name}/students"
        )


def method_students(config: dict, method: str) -> list[str]:
    """The students method instance ``method`` runs on: its ``students`` option, or every student."""
    return config["methods"][method].get("students", config["students"])


def budget_share(method: dict) -> int:
    """Student steps of one unit of a method instance (``methods/<name>``): its module's ``budget_share``, from
    :mod:`ev3.methods.options` (no JAX import while planning)."""
    from ev3.methods import options

    return options.budget_share(method)


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
    device: str = "cpu"  # the config's device, "cpu" | "gpu"
    gpus: int | None = None  # the config's gpus: GPUs of the machine, one claimed per job (ev3.devices)

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
    return paths.results_root(config["benchmark"])


def data_marker(config: dict, dataset: str) -> str:
    """The data job's output: the prepared embedded dataset, or a marker saying where a TFDS one is."""
    return paths.data_dir(dataset, root=results_root(config))


def dataset_dir(config: dict, dataset: str) -> str:
    """The TFDS ``data_dir`` a run reads ``dataset`` from."""
    return data_marker(config, dataset) if dataset in EMBEDDED else os.path.expanduser(config["data_dir"])


def teacher_of(config: dict, student: str) -> str:
    """The teacher model of ``student``: ``teacher.model`` is one name for every student or a mapping."""
    model = config["teacher"]["model"]
    return model[student] if isinstance(model, dict) else model


def teacher_models(config: dict) -> list[str]:
    """The distinct teacher models the benchmark trains (or imports), in the students' order."""
    return list(dict.fromkeys(teacher_of(config, s) for s in config["students"]))


def teacher_checkpoint(config: dict, model: str) -> str | None:
    """The orbax checkpoint to import for teacher ``model`` instead of training it (``teacher.checkpoint``)."""
    checkpoint = config["teacher"].get("checkpoint")
    return checkpoint.get(model) if isinstance(checkpoint, dict) else checkpoint


def teacher_dir(config: dict, dataset: str, model: str) -> str:
    return paths.teacher_dir(dataset, model, config["teacher"]["seed"], root=results_root(config))


def run_dir(config: dict, dataset: str, student: str, method: str, seed: int) -> str:
    return paths.run_dir(dataset, student, method, seed, root=results_root(config))


def _common(config: dict, dataset: str, teacher: str) -> dict:
    return {
        "benchmark": config["benchmark"],
        "dataset": dataset,
        "data_dir": dataset_dir(config, dataset),
        "split": dict(config["split"]),
        "teacher": teacher,
        "teacher_model": dict(config["models"][teacher]),
        "teacher_seed": config["teacher"]["seed"],
        "device": config["device"],
        "gpus": config.get("gpus"),
    }


def teacher_run(config: dict, dataset: str, model: str) -> dict:
    """The teacher run of ``model``; with ``teacher.checkpoint`` its options name the checkpoint to import."""
    t = config["teacher"]
    checkpoint = teacher_checkpoint(config, model)
    return {
        **_common(config, dataset, model),
        "role": "teacher",
        "method": "teacher",
        "method_type": "teacher",
        "options": {"checkpoint": os.path.abspath(checkpoint)} if checkpoint else {},
        "model_name": model,
        "model": dict(config["models"][model]),
        "train": run_train(config, t["train"]),
        "seed": t["seed"],
        "teacher_dir": None,
        "budget": None,
    }


STEPS_PER_CALL = {"cpu": 1, "gpu": 100}  # default train.steps_per_call per config device


def run_train(config: dict, train: dict) -> dict:
    """A run's ``train`` section: a copy of ``train`` with ``steps_per_call`` resolved (default per ``device``:
    1 on CPU, where convolutions inside ``lax.scan`` are much slower; 100 on GPU)."""
    return {"steps_per_call": STEPS_PER_CALL[config["device"]], **copy.deepcopy(train)}


def student_run(config: dict, dataset: str, student: str, method: str, seed: int) -> dict:
    if method not in config["methods"]:
        raise ConfigError(f"methods/{method}: not defined in config")
    options = copy.deepcopy(config["methods"][method])
    options.pop("students", None)  # which runs exist, not how one runs
    train = run_train(config, config["train"])
    if student in (config.get("student_learning_rate") or {}):
        train["optimizer"]["learning_rate"] = config["student_learning_rate"][student]
    if config.get("budget") and "student_steps" in config["budget"]:  # equal student steps for every method
        from ev3.methods.options import with_units

        units = config["budget"]["student_steps"] // budget_share(options)
        options, train = with_units(options, train, units)
    teacher = teacher_of(config, student)
    return {
        **_common(config, dataset, teacher),
        "role": "student",
        "method": method,
        "method_type": options.pop("type"),
        "options": options,
        "model_name": student,
        "model": dict(config["models"][student]),
        "train": train,
        "seed": int(seed),
        "teacher_dir": teacher_dir(config, dataset, teacher),
        "budget": dict(config["budget"]) if config.get("budget") and "flops" in config["budget"] else None,
    }


def student_runs(config: dict) -> list[dict[str, Any]]:
    """Wildcard values of every student run the benchmark defines."""
    return [
        {"dataset": d, "student": s, "method": m, "seed": seed}
        for d in config["datasets"]
        for s in config["students"]
        for m in config["methods"]
        if s in method_students(config, m)
        for seed in config["seeds"]
    ]
