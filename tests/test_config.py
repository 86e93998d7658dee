"""Bad configs fail before any job, naming the offending key."""

import copy
import os
import subprocess
import sys

import pytest
import yaml

from ev3.config import ConfigError, RunSpec, seed_groups, student_run, student_runs, teacher_run, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _set(config, path, value):
    *head, last = path
    node = config
    for k in head:
        node = node[k]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return config


DELETE = object()
BAD = [
    (("epochs",), 10, "epochs"),
    (("methods", "kd", "tempreature"), 4.0, "methods/kd/tempreature"),
    (("methods", "scratch", "alpha"), 0.5, "methods/scratch/alpha"),
    (("methods", "fancy"), {"type": "fancy"}, "methods/fancy/type"),
    (("methods", "kd", "temperature"), "hot", "methods/kd/temperature"),
    (("methods", "kd", "alpha"), DELETE, "methods/kd/alpha"),
    (("train", "steps"), "many", "train/steps"),
    (("train", "steps"), 0, "train/steps"),
    (("train", "optimizer", "learning_rate"), -1.0, "train/optimizer/learning_rate"),
    (("train", "optimizer", "name"), "lion", "train/optimizer/name"),
    (("seeds",), [0, 1.5], "seeds/1"),
    (("datasets",), ["imagenet"], "datasets/0"),
    (("models", "mlp64", "widht"), 3, "models/mlp64/widht"),
    (("models", "mlp64", "type"), "transformer", "models/mlp64/type"),
    (("students",), ["resnet999"], "students/0"),
    (("teacher", "model"), "nope", "teacher/model"),
    (("split", "val"), 1.5, "split/val"),
    (("teacher", "train", "batch_size"), 0, "teacher/train/batch_size"),
    (("benchmark",), DELETE, "benchmark"),
    (("train", "checkpoint_every"), 30, "train/checkpoint_every"),  # not a multiple of eval_every (50)
    (("train", "checkpoint_every"), 0, "train/checkpoint_every"),
    (("train", "checkpoint_every"), "often", "train/checkpoint_every"),
    (("teacher", "train", "checkpoint_every"), 300, "teacher/train/checkpoint_every"),  # eval_every is 200
    (("seeds_per_job",), {"count": 0}, "seeds_per_job/count"),
    (("seeds_per_job",), {"count": 2, "mode": "parallel"}, "seeds_per_job/mode"),
    (("seeds_per_job",), {"size": 2}, "seeds_per_job/size"),
    (("train", "augment"), {"crop_padding": 4}, "train/augment/crop_padding"),  # an image transform on mnist1d
    (("teacher", "train", "augment"), {"translate": -1}, "teacher/train/augment/translate"),
    (("train", "augment"), {"shift": 2}, "train/augment/shift"),
    (("train", "mixup"), {"alpha": 0}, "train/mixup/alpha"),
    (("train", "mixup"), {"alpha": 1.0, "per": "pair"}, "train/mixup/per"),
    (("train", "mixup"), {"alpha": 1.0}, "train/mixup"),  # the smoke config has crd, whose loss needs hard labels
]


def test_the_shipped_configs_are_valid():
    for name in ("config.yaml", "smoke.yaml", "cifar10.yaml", "cifar100.yaml", "methods.yaml", "ev3-ablations.yaml",
                 "ev3-multipass.yaml", "logit-kd.yaml"):
        with open(os.path.join(ROOT, "config", name)) as f:
            validate(yaml.safe_load(f))


@pytest.mark.parametrize("path, value, key", BAD, ids=[b[2] for b in BAD])
def test_bad_config_names_the_key(smoke_config, path, value, key):
    bad = _set(copy.deepcopy(smoke_config), path, value)
    with pytest.raises(ConfigError) as e:
        validate(bad)
    assert str(e.value).startswith(f"{key}:"), str(e.value)


def test_checkpoint_every_is_optional_and_a_multiple_of_eval_every(smoke_config):
    smoke_config["train"]["checkpoint_every"] = 100
    smoke_config["teacher"]["train"]["checkpoint_every"] = 200
    assert validate(smoke_config)["train"]["checkpoint_every"] == 100
    with pytest.raises(ConfigError, match=r"^train/checkpoint_every: 30 is not a multiple of train/eval_every \(50\)"):
        validate(_set(smoke_config, ("train", "checkpoint_every"), 30))


def test_validate_does_not_modify_its_input(smoke_config):
    before = copy.deepcopy(smoke_config)
    validate(smoke_config)
    assert smoke_config == before


def test_run_configs_round_trip_and_pair_across_methods(smoke_config):
    config = validate(smoke_config)
    runs = student_runs(config)
    per_seed = sum(len(m.get("students", config["students"])) for m in config["methods"].values())
    assert len(runs) == per_seed * len(config["seeds"])
    kd = RunSpec.from_dict(student_run(config, "mnist1d", "mlp64", "kd", 1))
    scratch = RunSpec.from_dict(student_run(config, "mnist1d", "mlp64", "scratch", 1))
    assert kd.method_type == "kd" and kd.options == {"temperature": 4.0, "alpha": 0.9}
    assert (kd.seed, kd.split, kd.train, kd.model) == (scratch.seed, scratch.split, scratch.train, scratch.model)
    assert kd.teacher_dir == scratch.teacher_dir
    t = RunSpec.from_dict(teacher_run(config, "mnist1d", config["teacher"]["model"]))
    assert t.role == "teacher" and t.seed == config["teacher"]["seed"] and t.teacher_dir is None
    with pytest.raises(ConfigError, match="unknown keys"):
        RunSpec.from_dict({**student_run(config, "mnist1d", "mlp64", "kd", 1), "extra": 1})


def test_snakemake_refuses_a_bad_config_before_any_job(tmp_path, smoke_config):
    smoke_config["methods"]["kd"]["tempreature"] = 2.0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(smoke_config))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(path), "--directory", str(tmp_path),
         "-s", os.path.join(ROOT, "workflow", "Snakefile")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "methods/kd/tempreature" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_cross_references_of_the_scale_out_keys_name_the_key(smoke_config):
    c = copy.deepcopy(smoke_config)
    c["datasets"] = ["cifar10"]
    with pytest.raises(ConfigError, match="^data_dir: required"):
        validate(c)
    c = copy.deepcopy(smoke_config)
    c["anchors"] = {"mlp64": {"kd": 70.0, "dkd": 71.0}}
    with pytest.raises(ConfigError, match="^anchors/mlp64/dkd"):
        validate(c)
    c["anchors"] = {"mlp8": {"kd": 70.0}}
    with pytest.raises(ConfigError, match="^anchors/mlp8"):
        validate(c)


def test_a_configfile_replaces_the_default_benchmark_instead_of_merging_into_it(tmp_path, smoke_config):
    """Run where config/config.yaml exists (as from the repository root): --configfile smoke.yaml must give
    exactly the smoke config, not the default's budget, models and methods merged in."""
    import shutil

    shutil.copytree(os.path.join(ROOT, "config"), tmp_path / "config")
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", "config/smoke.yaml", "--directory", str(tmp_path),
         "-s", os.path.join(ROOT, "workflow", "Snakefile"), "results/smoke/config.yaml"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(tmp_path / "results" / "smoke" / "config.yaml") as f:
        assert yaml.safe_load(f) == validate(smoke_config)


def test_the_schema_method_types_are_the_registered_ones():
    """The config schema's ``methods/*/type`` enum, and the types it gives options for, are the registry's."""
    from ev3 import methods
    from ev3.config import _schema

    method = _schema()["properties"]["methods"]["additionalProperties"]
    assert sorted(method["properties"]["type"]["enum"]) == sorted(methods.CONFIG_METHOD_TYPES)
    with_options = {rule["if"]["properties"]["type"]["const"] for rule in method["allOf"]}
    assert with_options == set(methods.CONFIG_METHOD_TYPES)


def test_every_registered_method_declares_the_whole_contract():
    """Each registered module has every member of the Method protocol (no hook is optional at the call site)."""
    from ev3 import methods
    from ev3.methods.contract import Method

    members = {n for n in vars(Method) if not n.startswith("_")} - {"__protocol_attrs__"}
    assert {"init", "work", "evaluate", "model", "teacher_passes", "budget_share", "summary"} <= members
    for method_type in methods.METHOD_TYPES:
        module = methods.get(method_type)
        assert isinstance(module, Method), method_type
        assert all(callable(getattr(module, n)) for n in members), method_type
    with pytest.raises(ValueError, match="unknown method type"):
        methods.get("no-such-method")


def test_budget_units_per_method_come_from_the_method_modules(smoke_config):
    """``budget.student_steps`` gives each method floor(budget / its unit) units: steps, rounds or grid steps."""
    smoke_config["budget"] = {"student_steps": 1000}
    config = validate(smoke_config)
    runs = {m: student_run(config, "mnist1d", "mlp64", m, 0) for m in config["methods"]}
    ev3 = config["methods"]["ev3"]
    k_times_l = len(ev3["losses"]) * len(ev3["optimizers"]) * ev3["steps_per_candidate"]
    assert runs["ev3"]["options"]["iterations"] == 1000 // k_times_l
    assert runs["ev3"]["train"]["steps"] == config["train"]["steps"]  # EV3's unit is a round, not a step
    space = config["methods"]["kd-tuned"]["space"]
    members = len(space["temperature"]) * len(space["alpha"]) * len(space["learning_rate"])
    assert runs["kd-tuned"]["train"]["steps"] == 1000 // members
    assert runs["kd"]["train"]["steps"] == 1000 and "iterations" not in runs["kd"]["options"]
    from ev3 import methods
    from ev3.methods import options

    for method_type in methods.METHOD_TYPES:  # the modules' hooks are the functions planning resolves runs with
        module = methods.get(method_type)
        assert module.budget_share is options.SHARES.get(method_type, options.step_share), method_type
        assert module.with_units is options.UNITS.get(method_type, options.step_units), method_type


def test_planning_imports_no_training_stack():
    """Validating the default config and resolving every training job's run config (what the workflow does while
    planning) imports neither JAX nor the report's libraries."""
    code = (
        "import sys, yaml\n"
        "from ev3.config import group_run, student_runs, validate\n"
        "config = validate(yaml.safe_load(open('config/config.yaml')))\n"
        "[group_run(config, r['dataset'], r['student'], r['method']) for r in student_runs(config)]\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'flax', 'optax', 'scipy', 'pandas', 'matplotlib'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_path_templates_are_spelled_once():
    """The run layout comes from ev3.paths: the config helpers agree with it and no rule spells it."""
    from ev3 import paths
    from ev3.config import run_dir, teacher_dir

    config = {"benchmark": "b", "teacher": {"seed": 3}}
    assert run_dir(config, "d", "s", "m", 2) == os.path.join("results", "b", "runs", "d", "s", "m", "seed2")
    assert teacher_dir(config, "d", "t") == os.path.join("results", "b", "teacher", "d", "t", "seed3")
    root = paths.results_root("b")
    assert paths.state_dir(run_dir(config, "d", "s", "m", 2), root=root) == os.path.join(root, "state", "runs", "d", "s", "m", "seed2")
    workflow = os.path.join(ROOT, "workflow")
    sources = [os.path.join(workflow, "Snakefile")] + [
        os.path.join(workflow, "rules", f) for f in os.listdir(os.path.join(workflow, "rules")) if f.endswith(".smk")
    ]
    for source in sources:
        with open(source) as f:
            text = f.read()
        for literal in ("/runs/", "seed{", '"state"', "/data/", '"results'):
            assert literal not in text, (source, literal)


def test_vmap_seed_groups_refuse_ev3_tuned_and_other_units_of_work_by_name(smoke_config):
    smoke_config["seeds_per_job"] = {"count": 4, "mode": "vmap"}
    with pytest.raises(ConfigError, match=r"^seeds_per_job/mode: vmap cannot train methods/kd-tuned \(type tuned"):
        validate(smoke_config)
    del smoke_config["methods"]["kd-tuned"]
    with pytest.raises(ConfigError, match=r"^seeds_per_job/mode: vmap cannot train methods/ev3 \(type ev3"):
        validate(smoke_config)
    smoke_config["methods"] = {k: v for k, v in smoke_config["methods"].items() if v["type"] != "ev3"}
    for method_type, work in (("crd", "IndexedStepWork"), ("mlkd", "TwoViewStepWork")):  # batches with more than (x, y)
        name = next(k for k, v in smoke_config["methods"].items() if v["type"] == method_type)
        with pytest.raises(ConfigError, match=rf"^seeds_per_job/mode: vmap cannot train methods/{name} \(type {method_type}: its unit of work is {work}"):
            validate(smoke_config)
        smoke_config["methods"] = {k: v for k, v in smoke_config["methods"].items() if v["type"] != method_type}
    validate(smoke_config)
    smoke_config["seeds_per_job"]["mode"] = "sequential"  # sequential groups train every method
    validate({**smoke_config, "methods": {"ev3": {"type": "ev3", **_ev3_options(smoke_config)}}})


def _ev3_options(config):
    with open(os.path.join(ROOT, "config", "smoke.yaml")) as f:
        return {k: v for k, v in yaml.safe_load(f)["methods"]["ev3"].items() if k != "type"}


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_seed_groups_are_seed_floor_division_and_adding_seeds_never_moves_one(smoke_config, count):
    seeds = [5, 0, 3, 1, 2, 4, 9, -1, 8]
    smoke_config["seeds"], smoke_config["seeds_per_job"] = seeds, {"count": count}
    groups = seed_groups(validate(smoke_config))
    assert sorted(s for g in groups for s in g) == sorted(seeds)  # a partition of the seeds
    assert all(len({s // count for s in g}) == 1 and len(g) <= count for g in groups)
    assert len(groups) == len({s // count for s in seeds})
    for more in ([10], [6, 7], [11, 12, 13, 14, 15]):  # every old group stays whole, extended only by new seeds
        smoke_config["seeds"] = seeds + more
        new = seed_groups(validate(smoke_config))
        for old in groups:
            (home,) = [h for h in new if set(old) & set(h)]
            assert set(old) <= set(home) and set(home) - set(old) <= set(more)
    ungrouped = {k: v for k, v in smoke_config.items() if k != "seeds_per_job"}  # default: one seed per job
    assert seed_groups(validate(ungrouped)) == [[s] for s in sorted(ungrouped["seeds"])]


FEATURE_BAD = [
    (lambda c: c["methods"]["fitnet"].pop("beta"), "methods/fitnet/beta"),
    (lambda c: c["methods"]["crd"].update(nce_k=0), "methods/crd/nce_k"),
    (lambda c: c["methods"]["rkd"].update(angle=50.0), "methods/rkd/angle"),
    (lambda c: c["methods"]["at"].update(students=["resnet20"]), "methods/at/students/0"),
    (lambda c: c["methods"]["at"].pop("students"), "methods/at"),  # then it runs on the MLP student too
    (lambda c: c["methods"]["reviewkd"].update(students=["mlp64"]), "methods/reviewkd"),
    (lambda c: c["models"]["cnn-small"].update(channels=[8, 8, 8]), "methods/at"),  # 3 stages vs the teacher's 2
]


@pytest.mark.parametrize("edit, key", FEATURE_BAD, ids=[b[1] + f"-{i}" for i, b in enumerate(FEATURE_BAD)])
def test_feature_method_options_and_where_they_apply_are_validated(smoke_config, edit, key):
    edit(smoke_config)
    with pytest.raises(ConfigError) as e:
        validate(smoke_config)
    assert str(e.value).startswith(f"{key}:"), str(e.value)


def test_a_method_instance_runs_on_its_students_only(smoke_config):
    config = validate(smoke_config)
    runs = {(r["student"], r["method"]) for r in student_runs(config)}
    for name, method in config["methods"].items():
        on = set(method.get("students", config["students"]))
        assert {s for s, m in runs if m == name} == on, name
    assert {s for s, m in runs if m == "fitnet"} == {"cnn-small"} and {s for s, m in runs if m == "ev3"} == {"mlp64"}
    run = student_run(config, "mnist1d", "cnn-small", "fitnet", 0)
    assert run["options"] == {"beta": 100.0} and run["method_type"] == "fitnet"  # `students` is not a run option
