"""Seed groups (config seeds_per_job, mode sequential): one job trains several seeds in one process.

A group job's per-run outputs equal one-run jobs' (metrics except timing fields, predictions exactly); an
interrupted group job resumes its unfinished runs and restores its finished ones without training them; a
diverged run fails the job by name and keeps the finished runs' records.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import ev3.run
from ev3 import checkpoint
from ev3.config import RunSpec, student_run, validate
from ev3.models import build
from ev3.report.aggregate import metrics_validator
from ev3.train import NonFiniteError

STEPS, EVAL_EVERY = 30, 10
TIMING = ("wall_s", "compile_s", "steps_per_s", "peak_memory_bytes")  # compute fields that measure time/memory


def _config(smoke_config, data_dir):
    config = validate(smoke_config)
    config["train"].update(steps=STEPS, eval_every=EVAL_EVERY)
    config["data_dir"] = data_dir
    return config


def _run_json(config, data_dir, method):
    run = student_run(config, "mnist1d", config["students"][0], method, 0)
    run["data_dir"] = data_dir
    del run["seed"]
    return run


def _bench(root, config):
    """A benchmark folder ``root`` holding a teacher checkpoint (a random network: seeds only pair runs)."""
    net = build(config["models"]["cnn"], (40, 1), 10, jax.random.key(7))
    checkpoint.save_network(str(root / "results" / "smoke" / "teacher" / "mnist1d" / "cnn" / "seed0" / "checkpoint"),
                            net.params, net.rest)
    return root


def _train_group(cwd, run, seeds, mode="sequential"):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "ev3", "train-group", "--run", json.dumps(run), "--seeds", *map(str, seeds), "--mode", mode, "--threads", "1",
           "--compile-cache", str(cwd / "compile_cache")]  # as the DAG runs them
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _outputs(root, method, seed):
    d = root / "results" / "smoke" / "runs" / "mnist1d" / "mlp64" / method / f"seed{seed}"
    with np.load(d / "predictions.npz") as p:
        predictions = {k: p[k] for k in p.files}
    return json.loads((d / "metrics.json").read_text()), predictions, json.loads((d / "run.json").read_text())


def _untimed(metrics):
    m = json.loads(json.dumps(metrics))
    m["compute"] = {k: v for k, v in m["compute"].items() if k not in TIMING}
    m["history"] = [{k: v for k, v in e.items() if k != "wall_s"} for e in m["history"]]
    return m


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    """kd seeds 0–2 trained as one 3-run job (folder ``group``) and as three 1-run jobs (folder ``single``),
    each job its own process, as Snakemake runs them."""
    import yaml

    with open(os.path.join(os.path.dirname(__file__), "..", "config", "smoke.yaml")) as f:
        config = _config(yaml.safe_load(f), data_dir)
    run = _run_json(config, data_dir, "kd")
    group = _bench(tmp_path_factory.mktemp("group"), config)
    single = _bench(tmp_path_factory.mktemp("single"), config)
    _train_group(group, run, [0, 1, 2])
    for seed in (0, 1, 2):
        _train_group(single, run, [seed])
    return config, run, group, single


def test_a_group_job_gives_the_outputs_of_one_run_jobs(reference):
    config, run, group, single = reference
    for seed in (0, 1, 2):
        (mg, pg, rg), (ms, ps, rs) = _outputs(group, "kd", seed), _outputs(single, "kd", seed)
        assert rg == rs == {**run, "seed": seed}
        assert mg["seed"] == seed and mg["compute"]["student_steps"] == STEPS
        assert _untimed(mg) == _untimed(ms)
        assert pg.keys() == ps.keys() and all(np.array_equal(pg[k], ps[k]) for k in pg)
    # the seeds are different runs (so equality above is not that of three copies of one run)
    assert not np.array_equal(_outputs(group, "kd", 0)[1]["prob"], _outputs(group, "kd", 1)[1]["prob"])
    # each run reports its own wall time: a warm run's excludes its predecessors'
    walls = [_outputs(group, "kd", s)[0]["compute"]["wall_s"] for s in (0, 1, 2)]
    assert all(w > 0 for w in walls)


class Interrupt(Exception):
    pass


def test_an_interrupted_group_resumes_unfinished_runs_and_retrains_no_finished_one(reference, tmp_path, monkeypatch):
    """Stopped after seed 1's evaluation at step 20 (its checkpoint at step 10 is saved, seed 0 is finished);
    Snakemake then removes the job's outputs and reruns it: seed 0 comes back from its record untouched (same
    wall time, no training), seed 1 resumes at step 10, seed 2 trains, and all equal the uninterrupted group."""
    config, run, group, _ = reference
    root = _bench(tmp_path, config)
    monkeypatch.chdir(root)
    specs = [RunSpec.from_dict({**run, "seed": s}) for s in (0, 1, 2)]

    def interrupt(line):
        if line.startswith("[kd seed1] step 20/"):
            raise Interrupt

    with pytest.raises(Interrupt):
        ev3.run.run_group(specs, log=interrupt)
    first = _outputs(root, "kd", 0)
    state = root / "results" / "smoke" / "state" / "runs" / "mnist1d" / "mlp64" / "kd"
    assert (state / "seed0" / "record" / "metrics.json").exists() and not (state / "seed0" / "resume").exists()
    assert sorted(n for n in os.listdir(state / "seed1" / "resume") if n.isdigit()) == ["10"]
    for seed in (0, 1, 2):  # what Snakemake does before it reruns a job
        for name in ("run.json", "metrics.json", "predictions.npz"):
            path = root / "results" / "smoke" / "runs" / "mnist1d" / "mlp64" / "kd" / f"seed{seed}" / name
            if path.exists():
                path.unlink()

    trained, real_fit = [], ev3.run.fit

    def counting_fit(method, spec, *args, **kwargs):
        trained.append(spec.seed)
        return real_fit(method, spec, *args, **kwargs)

    monkeypatch.setattr(ev3.run, "fit", counting_fit)
    logs = []
    ev3.run.run_group(specs, log=logs.append)
    assert trained == [1, 2]
    assert any(line.startswith("[kd seed0] finished before: outputs restored") for line in logs)
    assert any(line.startswith("[kd seed1] resumed from step 10") for line in logs)
    restored = _outputs(root, "kd", 0)
    assert restored[0] == first[0] and np.array_equal(restored[1]["prob"], first[1]["prob"])  # wall time included
    for seed in (0, 1, 2):
        (m, p, _), (mr, pr, _) = _outputs(root, "kd", seed), _outputs(group, "kd", seed)
        assert _untimed(m) == _untimed(mr) and all(np.array_equal(p[k], pr[k]) for k in p)


def test_a_record_of_another_run_config_is_not_restored(reference, tmp_path, monkeypatch):
    config, run, _, _ = reference
    root = _bench(tmp_path, config)
    monkeypatch.chdir(root)
    spec = RunSpec.from_dict({**run, "seed": 0})
    ev3.run.run_group([spec], log=lambda s: None)
    changed = RunSpec.from_dict({**run, "seed": 0, "options": {**run["options"], "temperature": 2.0}})
    out_dir, _, record = ev3.run.group_dirs(changed)
    assert ev3.run.restore_record(spec, out_dir, record) is not None
    assert ev3.run.restore_record(changed, out_dir, record) is None


def test_a_diverged_run_fails_the_job_by_name_and_the_finished_runs_stay(reference, tmp_path, monkeypatch):
    config, run, _, _ = reference
    root = _bench(tmp_path, config)
    monkeypatch.chdir(root)
    real_fit = ev3.run.fit

    def diverging_fit(method, spec, *args, **kwargs):
        if spec.seed == 1:
            raise NonFiniteError("kd: non-finite loss at step 10 (mean loss nan)")
        return real_fit(method, spec, *args, **kwargs)

    monkeypatch.setattr(ev3.run, "fit", diverging_fit)
    specs = [RunSpec.from_dict({**run, "seed": s}) for s in (0, 1, 2)]
    with pytest.raises(NonFiniteError, match=r"1 of 3 runs diverged: results/smoke/runs/mnist1d/mlp64/kd/seed1: kd: non-finite"):
        ev3.run.run_group(specs, log=lambda s: None)
    state = root / "results" / "smoke" / "state" / "runs" / "mnist1d" / "mlp64" / "kd"
    assert (state / "seed0" / "record" / "metrics.json").exists() and (state / "seed2" / "record" / "metrics.json").exists()
    assert not (state / "seed1" / "record").exists()


def test_a_vmap_group_job_gives_each_seed_its_own_run(reference, tmp_path):
    """mode vmap through the CLI: every seed's outputs are written in today's paths, and equal the one-run
    jobs' up to float rounding of the vmapped step (same steps, FLOPs, history length; probabilities allclose;
    labels equal wherever the one-run job's top-2 margin exceeds 1e-4)."""
    config, run, _, single = reference
    root = _bench(tmp_path, config)
    log = _train_group(root, run, [0, 1, 2], mode="vmap")
    assert "[kd seeds 0,1,2] step" in log  # one vmapped group trained the three seeds
    for seed in (0, 1, 2):
        (mv, pv, rv), (ms, ps, _) = _outputs(root, "kd", seed), _outputs(single, "kd", seed)
        assert rv == {**run, "seed": seed} and mv["seed"] == seed
        for key in ("student_steps", "teacher_forwards", "flops_student", "flops_teacher"):
            assert mv["compute"][key] == ms["compute"][key], key
        assert len(mv["history"]) == len(ms["history"])
        assert mv["compute"]["shared"]["seeds"] == [0, 1, 2] and "shared" not in ms["compute"]  # the split is marked
        metrics_validator().validate(mv)
        assert mv["compute"]["wall_s"] == pytest.approx(mv["compute"]["shared"]["wall_s"] / 3)
        np.testing.assert_allclose(pv["prob"], ps["prob"], atol=1e-4)
        top2 = np.sort(ps["prob"], axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 1e-4
        assert np.array_equal(pv["prob"].argmax(1)[clear], ps["prob"].argmax(1)[clear])
    assert not np.array_equal(_outputs(root, "kd", 0)[1]["prob"], _outputs(root, "kd", 1)[1]["prob"])
