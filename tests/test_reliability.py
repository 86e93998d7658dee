"""Reliability, proven by injected faults: kill -9 and resume (CLI and Snakemake), corrupt or incomplete
checkpoints, determinism, bad input, NaN/Inf, a full disk, two writers of one run, SIGTERM (a scheduler's time
limit or preemption), and the network guard the whole suite runs under."""

import copy
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pandas as pd
import pytest
import yaml
from conftest import fill, small_filesystem

from ev3 import io, lock, methods
from ev3.checkpoint import ResumeStore
from ev3.config import MAP_METHODS, RunSpec, student_run, teacher_run, validate
from ev3.run import run
from ev3.train import fit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNAKEFILE = os.path.join(ROOT, "workflow", "Snakefile")
TIMING = ("wall_s", "compile_s", "steps_per_s")


def without_timing(metrics: dict) -> dict:
    """metrics.json minus the fields that measure time (compute wall/compile/steps per s, history wall)."""
    m = json.loads(json.dumps(metrics))
    for k in TIMING:
        m["compute"].pop(k)
    for h in m["history"]:
        h.pop("wall_s")
    return m


def committed_steps(state_dir) -> list[int]:
    """Steps with a committed checkpoint (orbax renames its temporary directory on commit)."""
    names = os.listdir(state_dir) if os.path.isdir(state_dir) else []
    return sorted(int(n) for n in names if n.isdigit())


def assert_same_arrays(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def assert_same_trees(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def teacher_spec_dict(config, data_dir, **train):
    """A teacher run of the small MLP (fast to compile and step) with ``train`` overrides (the methods that need
    a teacher with feature maps are left out of ``config``)."""
    config["teacher"]["model"] = "mlp64"
    config["methods"] = {k: m for k, m in config["methods"].items() if m["type"] not in MAP_METHODS}
    config["teacher"]["train"].update(train)
    d = teacher_run(validate(config), "mnist1d", config["teacher"]["model"])
    d["data_dir"] = data_dir
    return d


def train_command(run_json, out, state, *options) -> list[str]:
    return [sys.executable, "-m", "ev3", "train", str(run_json), "--out", str(out), "--state-dir", str(state),
            "--threads", "1", *map(str, options)]


def cli_train(run_json, out, state, *options, **popen):
    return subprocess.Popen(train_command(run_json, out, state, *options), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


# --- 1. kill -9 of `python -m ev3 train`, rerun of the same command ------------------------------------------------


def test_killed_training_resumes_to_the_uninterrupted_result(tmp_path, smoke_config, data_dir):
    steps, every = 1400, 280  # 3200 training examples / batch 128 = 25 steps per epoch: resumes mid-epoch
    run_json = tmp_path / "run.json"
    run_json.write_text(json.dumps(teacher_spec_dict(smoke_config, data_dir, steps=steps, eval_every=70, checkpoint_every=every)))
    ref_out, ref_state = tmp_path / "ref", tmp_path / "state_ref"
    out, state = tmp_path / "out", tmp_path / "state"

    reference = cli_train(run_json, ref_out, ref_state)  # uninterrupted, side by side
    victim = cli_train(run_json, out, state, start_new_session=True)
    deadline = time.monotonic() + 180
    while not [s for s in committed_steps(state) if s >= 2 * every]:  # a second checkpoint, mid-run
        assert victim.poll() is None, f"finished before a checkpoint existed:\n{victim.stdout.read()}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    assert not (out / "metrics.json").exists()
    at_kill = committed_steps(state)
    assert at_kill and at_kill[-1] < steps

    rerun = cli_train(run_json, out, state)
    log, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, log
    resumed = [int(line.split("resumed from step ")[1].split()[0]) for line in log.splitlines() if "resumed from step " in line]
    assert len(resumed) == 1 and resumed[0] >= at_kill[-1] and 0 < resumed[0] < steps and resumed[0] % every == 0, log
    ref_log, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, ref_log
    assert "resumed" not in ref_log

    a, b = json.loads((ref_out / "metrics.json").read_text()), json.loads((out / "metrics.json").read_text())
    assert [h["student_steps"] for h in b["history"]] == list(range(70, steps + 1, 70))
    assert without_timing(a) == without_timing(b)
    assert_same_arrays(dict(np.load(ref_out / "predictions.npz")), dict(np.load(out / "predictions.npz")))
    with ocp.StandardCheckpointer() as ckptr:
        assert_same_trees(ckptr.restore(str(ref_out / "checkpoint")), ckptr.restore(str(out / "checkpoint")))
    assert not state.exists() and not ref_state.exists()  # removed once the outputs are complete


# --- 2. kill -9 of a Snakemake DAG, `--rerun-incomplete` ---------------------------------------------------------------


def snakemake(workdir, log, *args, **popen):
    """Snakemake on ``workdir/config.yaml`` in the background, its output to ``workdir/log``."""
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    cmd = [sys.executable, "-m", "snakemake", "-s", SNAKEFILE, "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), *args]
    with open(workdir / log, "w") as f:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env, **popen)


@pytest.mark.slow
def test_killed_dag_completes_with_rerun_incomplete(tmp_path, smoke_config):
    config = smoke_config
    config["benchmark"] = "resume"
    config.pop("seeds_per_job", None)  # one job per run: kills land between and inside runs
    config["seeds"] = [0, 1]
    config["methods"] = {"scratch": {"type": "scratch"}, "kd": {"type": "kd", "temperature": 4.0, "alpha": 0.9}}
    config["students"] = ["mlp64"]
    config["teacher"]["model"] = "mlp64"
    config["teacher"]["train"].update(steps=200, eval_every=100)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    root = tmp_path / "results" / "resume"
    runs = [f"mnist1d/mlp64/{m}/seed{s}" for m in ("scratch", "kd") for s in config["seeds"]]

    def finished():
        return [r for r in runs if (root / "runs" / r / "metrics.json").exists()]

    def checkpointed():  # runs mid-way: a committed checkpoint in their resume folder and no metrics yet
        return [r for r in runs if committed_steps(root / "state" / "runs" / r / "resume") and r not in finished()]

    first = snakemake(tmp_path, "first.log", "--cores", "1", start_new_session=True)
    deadline = time.monotonic() + 600
    while not (finished() and checkpointed()):
        assert first.poll() is None, "the DAG ended before it could be interrupted:\n" + (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the DAG made no progress"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # Snakemake and its running job
    first.wait()
    interrupted = checkpointed()
    assert interrupted and 0 < len(finished()) < len(runs)

    unlock = snakemake(tmp_path, "unlock.log", "--unlock")  # a SIGKILLed Snakemake leaves its lock; --unlock is its remedy
    assert unlock.wait(timeout=120) == 0, (tmp_path / "unlock.log").read_text()
    second = snakemake(tmp_path, "second.log", "--cores", "1", "--rerun-incomplete")
    assert second.wait(timeout=900) == 0, (tmp_path / "second.log").read_text()[-5000:]

    for r in interrupted:
        job_log = (root / "logs" / "runs" / f"{r}.log").read_text()
        assert "resumed from step" in job_log, job_log[-3000:]
    summary = pd.read_csv(root / "tables" / "summary.csv")
    assert sorted(zip(summary["dataset"], summary["student"], summary["method"])) == [
        ("mnist1d", "mlp64", "kd"),
        ("mnist1d", "mlp64", "scratch"),
    ]
    assert (summary["n_seeds"] == len(config["seeds"])).all()
    assert sorted(finished()) == sorted(runs)
    for path in glob.glob(str(root / "runs" / "*" / "*" / "*" / "seed*" / "metrics.json")):
        assert len(json.load(open(path))["history"]) == 4
    assert not [d for d in glob.glob(str(root / "state" / "**" / "*"), recursive=True) if os.path.basename(d).isdigit()]


# --- 3. corrupt, truncated or incomplete checkpoints -----------------------------------------------------------------


class Interrupt(Exception):
    pass


TEACHER = methods.get("teacher")



EVERY = 70  # evaluation (and checkpoint) cadence of the resume scenario
PER_EPOCH = 25  # 3200 training examples / batch 128


def resume_scenario(history: list[dict]) -> tuple[int, int, int]:
    """(steps, previous, latest) of the shortest run, ending at an evaluation of ``history`` (a longer run's
    history at ``EVERY``), whose val-selected step (earliest best) comes before both of its last two
    checkpoints ``previous`` < ``latest`` (= steps − 2·EVERY, steps − EVERY), each of them mid-epoch. Read off
    the run itself, so the scenario holds on any CPU's float trajectory."""
    evals = [(h["student_steps"], h["val_accuracy"]) for h in history]
    for k in range(3, len(evals)):
        steps = evals[k][0]
        best = max(v for _, v in evals[: k + 1])
        selected = min(s for s, v in evals[: k + 1] if v == best)
        previous, latest = steps - 2 * EVERY, steps - EVERY
        if selected < previous and previous % PER_EPOCH and latest % PER_EPOCH:
            return steps, previous, latest
    pytest.fail(f"val accuracy never peaked three evaluations before the end: {evals}")


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory, data_dir, mnist1d):
    """An uninterrupted run of the MLP (adam, lr 0.01, no schedule, no augmentation: val accuracy peaks, then it
    overfits) and
    the state directory of the same run interrupted at its last step, after the evaluation and before its
    last checkpoint. Its length comes from a longer run's history (``resume_scenario``): the two checkpoints
    left, ``previous`` and ``latest``, are mid-epoch and after the selected step, so a resume must restore
    the selected state from the checkpoint rather than keep the current one.
    Returns (spec, reference, state_dir, previous, latest)."""
    with open(os.path.join(ROOT, "config", "smoke.yaml")) as f:
        config = yaml.safe_load(f)
    config["teacher"]["train"].pop("augment", None)  # clean points: the MLP overfits, so val accuracy peaks
    long = RunSpec.from_dict(teacher_spec_dict(copy.deepcopy(config), data_dir, steps=20 * EVERY, eval_every=EVERY))
    steps, previous, latest = resume_scenario(fit(TEACHER, long, mnist1d, None, log=lambda s: None).history)
    spec = RunSpec.from_dict(teacher_spec_dict(config, data_dir, steps=steps, eval_every=EVERY))
    reference = fit(TEACHER, spec, mnist1d, None, log=lambda s: None)

    def interrupt(line):
        if f"step {steps}/" in line:
            raise Interrupt  # after the evaluation, before its checkpoint: like a kill at the last step

    state = tmp_path_factory.mktemp("interrupted") / "state"
    with pytest.raises(Interrupt):
        fit(TEACHER, spec, mnist1d, None, log=interrupt, state_dir=str(state))
    assert committed_steps(state) == [previous, latest]
    return spec, reference, state, previous, latest


def assert_same_fit(result, reference):
    assert_same_trees(result.final_state, reference.final_state)
    assert_same_trees(result.selected_state, reference.selected_state)
    strip = lambda h: [{k: v for k, v in e.items() if k != "wall_s"} for e in h]  # noqa: E731
    assert strip(result.history) == strip(reference.history)
    drop = lambda c: {k: v for k, v in c.items() if k not in TIMING}  # noqa: E731
    assert drop(result.compute) == drop(reference.compute)  # compiles included: a resume counts both processes'


def largest_file(step_dir):
    files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
    return max(files, key=os.path.getsize)


def truncate(step_dir):
    path = largest_file(step_dir)
    os.truncate(path, os.path.getsize(path) // 2)


def flip_bytes(step_dir):
    path = largest_file(step_dir)
    data = bytearray(open(path, "rb").read())
    for i in range(len(data) // 3, len(data) // 3 + 16):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


FAULTS = {
    # fault: (damage(state_dir, previous, latest), checkpoint resumed from or None for a fresh start,
    #         whether the log names the latest checkpoint as unusable, or a log fragment)
    "none": (lambda s, p, l: None, "latest", None),
    "truncated-data-file": (lambda s, p, l: truncate(s / str(l)), "previous", "latest"),
    "deleted-metadata-file": (lambda s, p, l: os.remove(s / str(l) / "meta" / "metadata"), "previous", "latest"),
    "uncommitted-step-dir": (lambda s, p, l: os.rename(s / str(l), s / f"{l}.orbax-checkpoint-tmp"), "previous", None),
    "both-corrupt": (lambda s, p, l: (flip_bytes(s / str(l)), truncate(s / str(p))), None, "starting from scratch"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_resume_falls_back_from_unusable_checkpoints_and_the_result_is_unchanged(fault, interrupted_run, mnist1d, tmp_path):
    spec, reference, interrupted, previous, latest = interrupted_run
    damage, resumed_from, message = FAULTS[fault]
    selected = min(h["student_steps"] for h in reference.history if h["val_accuracy"] == reference.val_accuracy)
    assert selected < previous, "the scenario must select a state before the resume points"
    state = tmp_path / "state"
    shutil.copytree(interrupted, state)
    damage(state, previous, latest)
    logs = []
    result = fit(TEACHER, spec, mnist1d, None, log=logs.append, state_dir=str(state))
    text = "\n".join(logs)
    if message == "latest":
        assert f"checkpoint at step {latest}" in text, text
    elif message:
        assert message in text, text
    if resumed_from is None:
        assert "resumed" not in text, text
    else:
        assert f"resumed from step {previous if resumed_from == 'previous' else latest} " in text, text
    assert_same_fit(result, reference)
    assert committed_steps(state) == [latest, spec.train["steps"]]  # the bad ones were replaced


def test_a_run_killed_after_its_last_checkpoint_resumes_at_the_end(interrupted_run, mnist1d, tmp_path):
    """Killed while writing its outputs: the rerun restores the final checkpoint, trains nothing, reports the same."""
    spec, reference, interrupted, _, _ = interrupted_run
    state = tmp_path / "state"
    shutil.copytree(interrupted, state)
    fit(TEACHER, spec, mnist1d, None, log=lambda s: None, state_dir=str(state))
    logs = []
    result = fit(TEACHER, spec, mnist1d, None, log=logs.append, state_dir=str(state))
    assert logs == [f"[teacher seed0] resumed from step {spec.train['steps']} ({state})"]
    assert_same_fit(result, reference)


def test_a_checkpoint_of_another_config_is_not_resumed(interrupted_run, mnist1d, tmp_path):
    spec, _, interrupted, _, _ = interrupted_run
    state = tmp_path / "state"
    shutil.copytree(interrupted, state)
    other = RunSpec.from_dict({**vars(spec), "train": {**spec.train, "steps": 140}})
    logs = []
    fit(TEACHER, other, mnist1d, None, log=logs.append, state_dir=str(state))
    text = "\n".join(logs)
    assert "different run config" in text and "starting from scratch" in text and "resumed" not in text, text


# --- determinism -------------------------------------------------------------------------------------------------------


def test_same_config_and_seed_give_identical_outputs_with_or_without_checkpoints(tmp_path, smoke_config, data_dir):
    spec = RunSpec.from_dict(teacher_spec_dict(smoke_config, data_dir, steps=120, eval_every=40))
    run(spec, str(tmp_path / "a"), log=lambda s: None)
    run(spec, str(tmp_path / "b"), log=lambda s: None, state_dir=str(tmp_path / "state"))
    a, b = (json.loads((tmp_path / x / "metrics.json").read_text()) for x in "ab")
    assert without_timing(a) == without_timing(b)
    assert_same_arrays(dict(np.load(tmp_path / "a" / "predictions.npz")), dict(np.load(tmp_path / "b" / "predictions.npz")))
    assert not (tmp_path / "state").exists()


def test_the_compile_cache_is_shared_across_seeds_and_changes_no_result(tmp_path, smoke_config, data_dir):
    """Seed 1 after seed 0 adds no cache entry (every kernel is loaded, none compiled again), and its outputs
    equal those of seed 1 run without the cache."""
    cache = tmp_path / "cache"
    entries = lambda: sorted(p.name for p in cache.iterdir())  # noqa: E731
    outs = {}
    for name, seed, use_cache in (("s0", 0, True), ("s1", 1, True), ("s1-uncached", 1, False)):
        d = teacher_spec_dict(copy.deepcopy(smoke_config), data_dir, steps=60, eval_every=30)
        d["seed"] = seed
        (tmp_path / f"{name}.json").write_text(json.dumps(d))
        cmd = [sys.executable, "-m", "ev3", "train", str(tmp_path / f"{name}.json"), "--out", str(tmp_path / name), "--threads", "1"]
        proc = subprocess.run(cmd + (["--compile-cache", str(cache)] if use_cache else []), cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        outs[name] = json.loads((tmp_path / name / "metrics.json").read_text())
        if name == "s0":
            after_seed0 = entries()
            assert len(after_seed0) >= outs["s0"]["compute"]["compiles"]  # every compiled call, however fast
    assert entries() == after_seed0
    assert without_timing(outs["s1"]) == without_timing(outs["s1-uncached"]) != without_timing(outs["s0"])
    assert_same_arrays(dict(np.load(tmp_path / "s1" / "predictions.npz")), dict(np.load(tmp_path / "s1-uncached" / "predictions.npz")))


# --- 4. NaN/Inf ----------------------------------------------------------------------------------------------------


def test_divergence_fails_cleanly_and_never_checkpoints_non_finite_values(tmp_path, smoke_config, data_dir):
    """sgd with lr 1e30: step 1 is still finite (and checkpointed), step 2 overflows."""
    d = teacher_spec_dict(smoke_config, data_dir, steps=50, eval_every=1, optimizer={"name": "sgd", "learning_rate": 1e30})
    run_json, state = tmp_path / "run.json", tmp_path / "state"
    run_json.write_text(json.dumps(d))
    proc = cli_train(run_json, tmp_path / "out", state)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "teacher" in errors[0] and "non-finite" in errors[0], out
    failed_at = int(errors[0].split("at step ")[1].split()[0])
    assert not (tmp_path / "out" / "metrics.json").exists()
    steps = committed_steps(state)
    assert steps and max(steps) < failed_at  # the good state before the blow-up survives; the bad one is not written
    with ocp.CheckpointManager(str(state)) as manager:
        for step in steps:
            arrays = manager.restore(step, args=ocp.args.Composite(arrays=ocp.args.StandardRestore()))["arrays"]
            leaves = [np.asarray(x) for x in jax.tree.leaves(arrays)]
            assert len(leaves) > 10 and sum(x.size for x in leaves) > 10_000  # the whole state, twice
            assert all(np.all(np.isfinite(x)) for x in leaves if np.issubdtype(x.dtype, np.inexact))


def test_checkpoint_refuses_non_finite_values(tmp_path):
    store = ResumeStore(str(tmp_path / "s"), "fp", log=lambda s: None)
    with pytest.raises(FloatingPointError, match="non-finite"):
        store.save(1, {"state": {"w": np.array([1.0, np.nan], np.float32)}}, {})
    assert committed_steps(tmp_path / "s") == []


# --- bad input -----------------------------------------------------------------------------------------------------------


def test_missing_teacher_or_dataset_is_one_error_line(tmp_path, smoke_config, data_dir):
    config = validate(smoke_config)
    cases = {}
    d = student_run(config, "mnist1d", "mlp64", "kd", 0)
    cases["teacher"] = {**d, "data_dir": data_dir, "teacher_dir": str(tmp_path / "no_teacher")}
    cases["dataset"] = {**d, "data_dir": str(tmp_path / "no_data")}
    os.makedirs(tmp_path / "empty_teacher" / "checkpoint")
    cases["empty teacher checkpoint"] = {**d, "data_dir": data_dir, "teacher_dir": str(tmp_path / "empty_teacher")}
    procs = {}
    for name, spec in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(spec))
        procs[name] = cli_train(path, tmp_path / f"out_{name}", tmp_path / f"state_{name}")
    expected = {
        "teacher": "teacher checkpoint missing",
        "dataset": "dataset 'mnist1d' is not prepared",
        "empty teacher checkpoint": "is unreadable",
    }
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 1, out
        assert "Traceback" not in out, out
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and expected[name] in errors[0], out
        assert not (tmp_path / f"out_{name}" / "metrics.json").exists()


# --- 5. full disk, two writers of one run, SIGTERM -------------------------------------------------------------------
# One short teacher run through the CLI, its uninterrupted reference started in the background by the fixture (the
# tests' own processes run beside it); every process shares one compile cache.

FAULT_STEPS, FAULT_EVERY, FAULT_CHECKPOINT = 600, 150, 300


class Reference:
    """The uninterrupted CLI run of ``run_json`` (started at once; :meth:`outputs` waits for it)."""

    def __init__(self, run_json, root, cache):
        self.out, self.log = root / "ref", None
        self.proc = cli_train(run_json, self.out, root / "ref_state", "--compile-cache", cache)

    def outputs(self):
        if self.log is None:
            self.log, _ = self.proc.communicate(timeout=300)
        assert self.proc.returncode == 0, self.log
        return outputs_of(self.out)


def outputs_of(out) -> dict:
    """A run directory's outputs: metrics.json minus timing, predictions, the teacher checkpoint's leaves."""
    with ocp.StandardCheckpointer() as ckptr:
        leaves = [np.asarray(x) for x in jax.tree.leaves(ckptr.restore(str(out / "checkpoint")))]
    return {"metrics": without_timing(json.loads((out / "metrics.json").read_text())),
            "predictions": dict(np.load(out / "predictions.npz")), "checkpoint": leaves}


def assert_same_outputs(a: dict, b: dict):
    assert a["metrics"] == b["metrics"]
    assert_same_arrays(a["predictions"], b["predictions"])
    assert len(a["checkpoint"]) == len(b["checkpoint"]) > 0
    for x, y in zip(a["checkpoint"], b["checkpoint"]):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory, data_dir):
    """(run.json, compile cache, :class:`Reference`) of the teacher MLP, FAULT_STEPS steps."""
    root = tmp_path_factory.mktemp("faults")
    with open(os.path.join(ROOT, "config", "smoke.yaml")) as f:
        config = yaml.safe_load(f)
    run_json, cache = root / "run.json", root / "compile_cache"
    run_json.write_text(json.dumps(teacher_spec_dict(config, data_dir, steps=FAULT_STEPS, eval_every=FAULT_EVERY,
                                                     checkpoint_every=FAULT_CHECKPOINT)))
    reference = Reference(run_json, root, cache)
    yield run_json, cache, reference
    if reference.proc.poll() is None:
        reference.proc.kill()
        reference.proc.communicate()


def wait_for(condition, proc, what: str, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the process ended before {what}:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.01)


def error_lines(log: str) -> list[str]:
    assert "Traceback" not in log, log
    return [line for line in log.splitlines() if line.startswith("error:")]


def leftovers(directory) -> list[str]:
    """Temporary files and directories under ``directory`` (``.<name>.*.tmp``, orbax's ``*.orbax-checkpoint-tmp*``)."""
    return [os.path.join(r, n) for r, ds, fs in os.walk(directory) for n in ds + fs if ".tmp" in n or "-tmp" in n]


def snapshot(*directories) -> dict:
    return {os.path.join(r, n): os.stat(os.path.join(r, n)).st_mtime_ns
            for d in directories for r, ds, fs in os.walk(d) for n in ds + fs}


def test_a_second_process_on_a_run_being_trained_exits_at_once_naming_the_holder(fault_run, tmp_path):
    """Two real `python -m ev3 train` of one run directory: the second exits 1 at once (before JAX is imported),
    naming the first (pid, host, start time), and writes nothing; once the first is killed, its lock file is a
    stale lock, taken over by the next holder (with a log line naming the dead one)."""
    run_json, cache, _ = fault_run
    out, state = tmp_path / "out", tmp_path / "state"
    holder = cli_train(run_json, out, state, "--compile-cache", cache)
    lock_file = out / lock.LOCK_NAME
    wait_for(lambda: lock_file.exists() and f"pid {holder.pid} " in lock_file.read_text(), holder, "the holder's lock")
    os.kill(holder.pid, signal.SIGSTOP)  # stands still while the second one tries: any change would be the second's
    try:
        before = snapshot(out, state)
        t0 = time.monotonic()
        second = subprocess.run(train_command(run_json, out, state, "--compile-cache", cache), cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        took = time.monotonic() - t0
        assert snapshot(out, state) == before
    finally:
        holder.kill()
        holder.communicate()
    assert second.returncode == 1, second.stdout + second.stderr
    errors = error_lines(second.stdout + second.stderr)
    assert len(errors) == 1, errors
    assert f"{out} is being written by another process (pid {holder.pid} on host {socket.gethostname()} since " \
        in errors[0], errors
    assert took < 15, f"the second process took {took:.1f} s to stop"

    assert f"pid {holder.pid} " in lock_file.read_text()  # SIGKILL left the file; the kernel dropped the flock
    logs = []
    with lock.hold([out], log=logs.append):
        assert f"pid {os.getpid()} " in lock_file.read_text()
    assert len(logs) == 1 and f"pid {holder.pid} " in logs[0] and "gone" in logs[0], logs
    assert not lock_file.exists()


def test_a_full_disk_stops_the_run_with_one_line_and_the_rerun_resumes_to_the_same_result(fault_run, tmp_path):
    """`python -m ev3 train` with its outputs and state on a 3 MB file system, filled to the last byte after the
    first checkpoint: one `error: cannot write <path>: No space left on device (<free> free on <mount>)` line, exit
    1, no temporary files, no outputs, the checkpoints before intact; once space is freed, the same command
    resumes from the newest of them and ends as the uninterrupted run."""
    run_json, cache, reference = fault_run
    disk = tmp_path / "disk"
    with small_filesystem(disk):
        out, state = disk / "out", disk / "state"
        victim = cli_train(run_json, out, state, "--compile-cache", cache)
        wait_for(lambda: committed_steps(state), victim, "a first checkpoint")
        os.kill(victim.pid, signal.SIGSTOP)  # the disk fills while the run stands still
        before = committed_steps(state)
        filler = fill(disk)
        os.kill(victim.pid, signal.SIGCONT)
        log, _ = victim.communicate(timeout=300)
        assert victim.returncode == 1, log
        errors = error_lines(log)
        assert len(errors) == 1, log
        where = re.escape(str(disk))
        free = r"\d[\d.]* k?M?B"
        assert re.fullmatch(rf"error: cannot write {where}/\S+: No space left on device \({free} free on {where}\)",
                            errors[0]), errors[0]
        assert leftovers(disk) == []
        assert not [p for p in ("metrics.json", "predictions.npz", "checkpoint") if (out / p).exists()]
        assert before and before[-1] < FAULT_STEPS and committed_steps(state) == before  # no checkpoint lost
        os.remove(filler)
        rerun = cli_train(run_json, out, state, "--compile-cache", cache)
        log, _ = rerun.communicate(timeout=300)
        assert rerun.returncode == 0, log
        assert f"resumed from step {before[-1]} " in log and "unusable" not in log, log
        result = outputs_of(out)
    assert_same_outputs(result, reference.outputs())


def test_sigterm_checkpoints_the_current_step_and_the_rerun_resumes_to_the_same_result(fault_run, tmp_path):
    """SIGTERM (a scheduler's time limit or preemption) to `python -m ev3 train` after its first checkpoint: the
    step it is at is checkpointed, one error line names it, exit 143 (128 + SIGTERM); the same command resumes
    there and ends as the uninterrupted run."""
    run_json, cache, reference = fault_run
    out, state = tmp_path / "out", tmp_path / "state"
    victim = cli_train(run_json, out, state, "--compile-cache", cache)
    wait_for(lambda: committed_steps(state), victim, "a first checkpoint")
    victim.send_signal(signal.SIGTERM)
    log, _ = victim.communicate(timeout=300)
    assert victim.returncode == 128 + signal.SIGTERM, log
    errors = error_lines(log)
    assert len(errors) == 1 and "stopped by SIGTERM at step " in errors[0], log
    stopped_at = int(errors[0].split("stopped by SIGTERM at step ")[1].split("/")[0])
    assert FAULT_CHECKPOINT <= stopped_at < FAULT_STEPS, log
    assert committed_steps(state)[-1] == stopped_at, (log, committed_steps(state))
    assert not (out / "metrics.json").exists() and leftovers(tmp_path) == []
    rerun = cli_train(run_json, out, state, "--compile-cache", cache)
    log, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, log
    assert f"resumed from step {stopped_at} " in log, log
    assert_same_outputs(outputs_of(out), reference.outputs())


def test_writes_on_a_full_disk_fail_with_the_path_and_free_space_and_leave_nothing(tmp_path):
    """Each writer on a full file system: one-line WriteError naming the path and the free space, nothing left
    behind (no temporary file), and what was there before kept."""
    from ev3.checkpoint import save_network
    from ev3.run import _place

    disk = tmp_path / "disk"
    with small_filesystem(disk, size="1m"):
        store = ResumeStore(str(disk / "state"), "fp", log=lambda s: None)
        store.save(1, {"state": {"w": np.ones(100, np.float32)}}, {})
        io.write_json(str(disk / "metrics.json"), {"before": True})
        (tmp_path / "record.txt").write_text("x" * 5000)  # on another file system: placed by a copy
        big = {"w": np.random.default_rng(0).random(300_000).astype(np.float32)}  # 1.2 MB: more than the disk
        fill(disk)
        writes = {
            "metrics.json": lambda p: io.write_json(p, {"after": list(range(2000))}),
            "predictions.npz": lambda p: io.write_npz(p, **big),
            "tables.md": lambda p: io.write_text(p, "x" * 100_000),
            "checkpoint": lambda p: save_network(p, big, {}),
            "state/2": lambda p: store.save(2, {"state": big}, {}),
            "record/record.txt": lambda p: _place(str(tmp_path / "record.txt"), p),
        }
        for name, write in writes.items():
            path = str(disk / name)
            with pytest.raises(io.WriteError) as error:
                write(path)
            assert re.fullmatch(rf"cannot write {re.escape(path)}: No space left on device \(\d[\d.]* k?B free on "
                                rf"{re.escape(str(disk))}\)", str(error.value)), str(error.value)
        assert leftovers(disk) == []
        assert json.loads((disk / "metrics.json").read_text()) == {"before": True}
        assert committed_steps(disk / "state") == [1] and not (disk / "checkpoint").exists()


def test_no_profile_turns_off_snakemakes_lock():
    """Snakemake's own lock (one Snakemake per working directory) stays on: no profile or CI script turns it off."""
    profiles = glob.glob(os.path.join(ROOT, "profiles", "*", "config.y*ml")) + [
        os.path.join(ROOT, "tests", "slurm", "profile", "config.yaml")]
    assert len(profiles) >= 2
    for path in profiles:
        with open(path) as f:
            settings = yaml.safe_load(f) or {}
        assert not [k for k in settings if k.replace("_", "-").lstrip("-") == "nolock"], path
    for path in profiles + [os.path.join(ROOT, p) for p in (".ci/run", "tests/slurm/run_local_slurm.sh")]:
        with open(path) as f:
            assert not re.search(r"--nolock\b|\bnolock:", f.read()), path


# --- 6. network guard ------------------------------------------------------------------------------------------------


def test_network_guard_blocks_remote_connects_in_subprocesses_and_allows_loopback():
    code = (
        "import socket, time\n"
        "t = time.monotonic()\n"
        "try:\n"
        "    socket.create_connection(('10.255.255.1', 9), timeout=20)\n"
        "    print('connected', round(time.monotonic() - t, 3))\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, round(time.monotonic() - t, 3))\n"
    )
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.split()
    assert out[:1] == ["NetworkGuardError"] and float(out[1]) < 1.0, out  # at once, not after the 20 s timeout
    assert time.monotonic() - t0 < 15

    with pytest.raises(RuntimeError, match="network access blocked"):  # and in this process
        socket.create_connection(("10.255.255.1", 9), timeout=20)
    with pytest.raises(RuntimeError, match="network access blocked"):
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("192.0.2.1", 53))
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    with socket.create_connection(server.getsockname(), timeout=5), socket.create_connection(("localhost", server.getsockname()[1]), timeout=5):
        pass
    server.close()
