"""The validation-tuned baseline (``tuned``) and the equal-compute budget mode."""

import dataclasses

import jax
import numpy as np
import pytest

from ev3 import methods
from ev3.config import ConfigError, RunSpec, student_run, validate
from ev3.methods.common import Frozen
from ev3.models import build
from ev3.train import fit

NOLOG = lambda s: None  # noqa: E731
TUNED = methods.get("tuned")
SPACE = {"temperature": [2.0, 8.0], "alpha": [0.5, 0.9], "learning_rate": [0.001, 0.01]}



@pytest.fixture(scope="module")
def teacher(mnist1d):
    net = build({"type": "mlp", "width": 32, "depth": 1}, mnist1d.input_shape, 10, jax.random.key(3))
    return Frozen(net.graphdef, net.params, net.rest)


def _spec(config, data_dir, method, *, steps=40, eval_every=20, **options):
    config = validate(config)
    config["methods"].setdefault("kd-grid", {"type": "tuned", "base": "kd", "space": SPACE})
    config["methods"][method].update(options)
    config["train"].update(steps=steps, eval_every=eval_every)
    return RunSpec.from_dict({**student_run(validate(config), "mnist1d", "mlp64", method, 0), "data_dir": data_dir})


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_the_vmapped_population_equals_each_configuration_trained_alone(smoke_config, data_dir, mnist1d, teacher):
    spec = _spec(smoke_config, data_dir, "kd-grid")
    members = TUNED.grid(spec.options)
    assert len(members) == 8
    state = TUNED.init(spec, mnist1d, teacher, jax.random.key(0))
    step = jax.jit(TUNED.step)
    x, y = mnist1d.splits["train"]
    for i in range(5):  # a few steps of the whole population vs each member as plain kd
        state, _ = step(state, (x[i * 128 : (i + 1) * 128], y[i * 128 : (i + 1) * 128]), jax.random.key(i))
    kd = methods.get("kd")
    for k in (0, 3, 5, 6):  # together they take every value of every hyperparameter
        member = members[k]
        alone = _spec(smoke_config, data_dir, "kd", temperature=member["temperature"], alpha=member["alpha"])
        alone = dataclasses.replace(alone, train={**alone.train, "optimizer": {**alone.train["optimizer"], "learning_rate": member["learning_rate"]}})
        s = kd.init(alone, mnist1d, teacher, jax.random.key(0))
        for i in range(5):
            s, _ = jax.jit(kd.step)(s, (x[i * 128 : (i + 1) * 128], y[i * 128 : (i + 1) * 128]), jax.random.key(i))
        for a, b in zip(_leaves(TUNED.select(state, k).student.params), _leaves(s.student.params)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # the lr is applied as a separate scale
    # different members really differ (the hyperparameters reach the step)
    assert not np.allclose(_leaves(TUNED.select(state, 0).student.params)[0], _leaves(TUNED.select(state, 7).student.params)[0])


def test_selection_never_reads_test(smoke_config, data_dir, mnist1d, teacher):
    spec = _spec(smoke_config, data_dir, "kd-grid")
    x_test, y_test = mnist1d.splits["test"]
    rng = np.random.default_rng(0)
    poisoned = dataclasses.replace(mnist1d, splits={**mnist1d.splits, "test": (x_test, rng.permutation(np.asarray(y_test)))})
    a, b = fit(TUNED, spec, mnist1d, teacher, log=NOLOG), fit(TUNED, spec, poisoned, teacher, log=NOLOG)
    sa, sb = TUNED.summary(a), TUNED.summary(b)
    assert sa["selected_member"] == sb["selected_member"] and sa["val_history"] == sb["val_history"]
    assert [h["test_accuracy"] for h in a.history] != [h["test_accuracy"] for h in b.history]  # test did change
    best = max(max(t["val_accuracy_per_member"]) for t in sa["val_history"])
    assert a.val_accuracy == best == sa["best_val_accuracy_per_member"][sa["selected_member"]]


def test_compute_counts_every_member_and_the_shared_teacher_once(smoke_config, data_dir, mnist1d, teacher):
    """Without augmentation: the members share one view of each batch, made once (its FLOPs are not ×8)."""
    smoke_config["train"].pop("augment", None)
    tuned = fit(TUNED, _spec(smoke_config, data_dir, "kd-grid"), mnist1d, teacher, log=NOLOG).compute
    single = fit(methods.get("kd"), _spec(smoke_config, data_dir, "kd"), mnist1d, teacher, log=NOLOG).compute
    assert tuned["student_steps"] == 8 * single["student_steps"] == 8 * 40
    assert tuned["flops_student"] == pytest.approx(8 * single["flops_student"], rel=0.02)
    assert tuned["teacher_forwards"] == single["teacher_forwards"] == 40
    assert tuned["flops_teacher"] == pytest.approx(single["flops_teacher"], rel=1e-9)


def test_tuned_scratch_has_no_teacher_cost_and_rejects_kd_hyperparameters(smoke_config, data_dir, mnist1d):
    smoke_config["methods"]["scratch-tuned"] = {"type": "tuned", "base": "scratch", "space": {"learning_rate": [0.001, 0.003]}}
    result = fit(TUNED, _spec(smoke_config, data_dir, "scratch-tuned"), mnist1d, None, log=NOLOG)
    assert result.compute["teacher_forwards"] == 0 and result.compute["flops_teacher"] == 0
    assert result.compute["student_steps"] == 2 * 40
    smoke_config["methods"]["scratch-tuned"]["space"]["temperature"] = [4.0]
    with pytest.raises(ConfigError, match="^methods/scratch-tuned/space/temperature"):
        validate(smoke_config)


def test_budget_mode_gives_every_method_the_same_student_steps(smoke_config, data_dir):
    """Resolved per run: steps × members (tuned) and rounds × K·L (ev3) equal the budget; the loops count
    student steps that way (test_compute_counts_every_member..., ev3's budget test)."""
    smoke_config["methods"]["kd-grid"] = {"type": "tuned", "base": "kd", "space": SPACE}
    smoke_config["budget"] = {"student_steps": 320}
    config = validate(smoke_config)
    runs = {name: student_run(config, "mnist1d", "mlp64", name, 0) for name in ("scratch", "kd", "metadistil", "kd-grid", "ev3")}
    assert {n: r["train"]["steps"] for n, r in runs.items() if n != "ev3"} == {"scratch": 320, "kd": 320, "metadistil": 320, "kd-grid": 40}
    o = runs["ev3"]["options"]
    K = len(o["losses"]) * len(o["optimizers"])  # candidates per round, each L = steps_per_candidate steps
    assert o["iterations"] == 320 // (K * o["steps_per_candidate"])
    assert TUNED.population_size(RunSpec.from_dict({**runs["kd-grid"], "data_dir": data_dir})) == 8
    smoke_config["budget"] = {"student_steps": 7}
    with pytest.raises(ConfigError, match=r"^budget/student_steps: 7 is less than one unit of methods/\S+ \(\d+ student steps\)"):
        validate(smoke_config)


def test_flops_budget_stops_every_method_at_the_same_training_flops_within_one_step(smoke_config, data_dir, mnist1d, teacher):
    """Training FLOPs (student + teacher) land within one step (EV3: one round) of the budget, below it."""
    smoke_config["methods"]["kd-grid"] = {"type": "tuned", "base": "kd", "space": SPACE}
    smoke_config["budget"] = {"flops": 8e8}
    smoke_config["methods"]["ev3"]["growth"] = None  # rounds of constant cost (a grown student costs more per round)
    smoke_config["methods"] = {k: m for k, m in smoke_config["methods"].items() if not m.get("passes")}  # round budgets only
    config = validate(smoke_config)
    for name in ("scratch", "kd", "kd-grid", "ev3"):  # metadistil resolves its steps like kd
        spec = RunSpec.from_dict({**student_run(config, "mnist1d", "mlp64", name, 0), "data_dir": data_dir})
        result = fit(methods.get(spec.method_type), spec, mnist1d, teacher, log=NOLOG)
        c = result.compute
        trained = c["flops_student"] + c["flops_teacher"]
        units = len(methods.get("ev3").summary(result)["decisions"]) if name == "ev3" else c["student_steps"] // (8 if name == "kd-grid" else 1)
        one = trained / units  # one step's (one round's) training FLOPs
        assert 8e8 - one <= trained <= 8e8, (name, trained, one)
        assert units >= 2, name
    smoke_config["budget"] = {"flops": 10.0}
    spec = RunSpec.from_dict({**student_run(validate(smoke_config), "mnist1d", "mlp64", "kd", 0), "data_dir": data_dir})
    with pytest.raises(ValueError, match="^budget/flops: 10 is less than one step of kd"):
        fit(methods.get("kd"), spec, mnist1d, teacher, log=NOLOG)
