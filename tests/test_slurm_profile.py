"""profiles/slurm plans the DAG with the SLURM executor and gives each rule the resources it names; settings
that only the local test cluster needs (tests/slurm/profile) stay out of it. No cluster needed."""

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from ev3.config import method_students, student_runs, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROFILE = os.path.join(ROOT, "profiles", "slurm")
SNAKEFILE = os.path.join(ROOT, "workflow", "Snakefile")
# Settings for a cluster without an accounting database, or for speed on a tiny one: tests/slurm/profile only.
TEST_ONLY_KEYS = {"slurm-status-command", "slurm-init-seconds-before-status-checks", "slurm-status-attempts"}


def load(profile_dir):
    with open(os.path.join(profile_dir, "config.yaml")) as f:
        return yaml.safe_load(f)


def snakemake(workdir, *args):
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", SNAKEFILE, "--directory", str(workdir), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def planned_resources(dry_run_output: str) -> dict[str, list[dict[str, str]]]:
    """rule name -> the resources of each of its planned jobs, from ``snakemake -n`` output."""
    planned, rule = {}, None
    for line in dry_run_output.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            rule = m.group(1)
        elif rule and (m := re.match(r"^\s+resources: (.*)$", line)):
            planned.setdefault(rule, []).append(dict(kv.split("=", 1) for kv in m.group(1).split(", ")))
            rule = None
    return planned


def expected(expression, threads):
    """A profile resource value as Snakemake evaluates it for a first attempt."""
    try:
        return str(eval(str(expression), {"attempt": 1, "threads": threads}))
    except (NameError, SyntaxError):
        return str(expression)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm-dry-run")
    return snakemake(workdir, "-n", "--profile", PROFILE, "--configfile", os.path.join(ROOT, "config", "smoke.yaml"),
                     "--config", "benchmark=slurm_profile_dry_run")


def test_cluster_profile_uses_the_slurm_executor_and_names_only_existing_rules(tmp_path):
    profile = load(PROFILE)
    assert profile["executor"] == "slurm"
    assert {"mem_mb", "runtime", "cpus_per_task"} <= set(profile["default-resources"])
    rules = set(snakemake(tmp_path, "--list-rules", "--configfile", os.path.join(ROOT, "config", "smoke.yaml")).split())
    if any(re.fullmatch(r"train_student_g\d+", rule) for rule in rules):  # seed groups take train_student's
        rules.add("train_student")  # resources (workflow/rules/common.smk)
    assert {"train_teacher", "train_student", "prepare_data", "aggregate"} <= set(profile["set-resources"])
    assert set(profile["set-resources"]) <= rules, set(profile["set-resources"]) - rules


def test_dry_run_plans_every_job_with_the_profile_resources(dry_run):
    profile = load(PROFILE)
    with open(os.path.join(ROOT, "config", "smoke.yaml")) as f:
        threads = yaml.safe_load(f)["threads"]
    planned = planned_resources(dry_run)
    # smoke.yaml has seed groups: their rules (train_student_g<k>) take train_student's resources
    groups = [rule for rule in planned if re.fullmatch(r"train_student_g\d+", rule)]
    planned["train_student"] = planned.get("train_student", []) + [job for g in groups for job in planned.pop(g)]
    assert {"prepare_data", "train_teacher", "train_student", "aggregate"} <= set(planned)
    assert len(planned["train_student"]) > 1
    for rule, jobs in planned.items():
        want = {**profile["default-resources"], **profile["set-resources"].get(rule, {})}
        for resources in jobs:
            for name, value in want.items():
                assert resources.get(name) == expected(value, threads), (rule, name, resources)
            assert "gpu" not in resources  # smoke.yaml runs on CPU
    for rule in ("train_teacher", "train_student"):  # training gets more than the default job
        for name in ("mem_mb", "runtime"):
            assert int(planned[rule][0][name]) > int(expected(profile["default-resources"][name], threads)), (rule, name)


def test_seed_group_rules_get_the_train_student_resources_of_the_profile(tmp_path):
    """With seeds_per_job count S > 1 each seed group has its own rule (train_student_g<k>): the profile's
    train_student resources apply to every one of them."""
    with open(os.path.join(ROOT, "config", "smoke.yaml")) as f:
        config = yaml.safe_load(f)
    config.update(benchmark="slurm_groups", seeds=[0, 1, 2, 3, 4], seeds_per_job={"count": 2})
    (tmp_path / "groups.yaml").write_text(yaml.safe_dump(config))
    planned = planned_resources(snakemake(tmp_path, "-n", "--profile", PROFILE, "--configfile", str(tmp_path / "groups.yaml")))
    profile = load(PROFILE)
    assert "train_student" not in planned
    pairs = sum(len(method_students(validate(config), method)) for method in config["methods"])
    assert {rule: len(jobs) for rule, jobs in planned.items() if rule.startswith("train_student")} == {
        f"train_student_g{k}": pairs * len(config["datasets"]) for k in range(3)}
    for k in range(3):
        for resources in planned[f"train_student_g{k}"]:
            for name, value in profile["set-resources"]["train_student"].items():
                assert resources.get(name) == expected(value, config["threads"]), (k, name, resources)


def test_cluster_profile_has_no_test_cluster_settings():
    profile = load(PROFILE)
    assert not TEST_ONLY_KEYS & set(profile), TEST_ONLY_KEYS & set(profile)
    assert {"slurm-status-command", "slurm-init-seconds-before-status-checks"} <= set(load(
        os.path.join(ROOT, "tests", "slurm", "profile")))
    for name in ("slurm_partition", "slurm_account"):  # site settings: documented, never set in the repository
        assert name not in profile["default-resources"]
    default = os.path.join(ROOT, "profiles", "default")
    if os.path.exists(os.path.join(default, "config.yaml")):  # a default profile applies to local runs too
        assert not {"executor", "default-resources", "set-resources"} & set(load(default))


def test_the_cifar100_recipe_plans_its_full_dag_with_gpus(tmp_path):
    """The standard recipe through the cluster profile: 3 teachers (one per student), every (student, method)
    pair × 3 seeds, every training job with the profile's resources and one GPU, the data job only checking."""
    config_path = os.path.join(ROOT, "config", "cifar100.yaml")
    # A dry run caps rule threads at --cores (1 unless given); a SLURM run leaves --cores unset and does not.
    out = snakemake(tmp_path, "-n", "--cores", "64", "--profile", PROFILE, "--configfile", config_path,
                    "--config", "benchmark=slurm_cifar100_dry_run")
    with open(config_path) as f:
        config = yaml.safe_load(f)
    profile, planned = load(PROFILE), planned_resources(out)
    pairs = sum(len(method_students(validate(config), method)) for method in config["methods"])
    assert len(planned["train_student"]) == pairs * len(config["seeds"]) and len(planned["train_teacher"]) == 3
    assert "check_data" in out and "prepare_data" not in planned  # TFDS data is prepared beforehand, only checked
    for rule in ("train_teacher", "train_student"):
        want = {**profile["default-resources"], **profile["set-resources"][rule]}
        for resources in planned[rule]:
            assert resources.get("gpu") == "1", (rule, resources)
            for name, value in want.items():
                assert resources.get(name) == expected(value, config["threads"]), (rule, name, resources)
    for teacher in ("resnet56", "resnet32x4", "wrn40_2"):
        assert f"teacher/cifar100/{teacher}/seed0/checkpoint" in out



LOCAL_RULES = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings
snakefile, configfile, workdir, config = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
    workflow = api.workflow(resource_settings=ResourceSettings(), storage_settings=StorageSettings(),
                            config_settings=ConfigSettings(configfiles=[Path(configfile)], config=config),
                            workdir=Path(workdir), snakefile=Path(snakefile))._workflow
    print(json.dumps(sorted(workflow._localrules)))
"""


def local_rules(workdir, **config) -> list[str]:
    """The rules Snakemake runs on the submitting host for smoke.yaml with ``config`` on top."""
    proc = subprocess.run(
        [sys.executable, "-c", LOCAL_RULES, SNAKEFILE, os.path.join(ROOT, "config", "smoke.yaml"), str(workdir),
         json.dumps({"benchmark": "slurm_local_rules", **config})],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_aggregate_is_local_up_to_report_local_max_runs_and_a_cluster_job_beyond(tmp_path):
    with open(os.path.join(ROOT, "config", "smoke.yaml")) as f:
        n_runs = len(student_runs(validate(yaml.safe_load(f))))  # smoke.yaml's student runs
    assert "aggregate" in local_rules(tmp_path / "a")  # the default limit (500) keeps it on the submitting host
    assert "aggregate" in local_rules(tmp_path / "b", report={"local_max_runs": n_runs})
    beyond = local_rules(tmp_path / "c", report={"local_max_runs": n_runs - 1})
    assert "aggregate" not in beyond and "resolved_config" in beyond
