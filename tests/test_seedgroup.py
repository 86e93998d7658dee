"""Seed groups (``ev3.seedgroup.fit_vmapped``): member s of a vmapped group equals the single-seed run of seed s
(``ev3.train.fit``) for every supported method; per-seed compute is the single run's; a NaN names its seed;
a resumed group equals an uninterrupted one; unsupported methods are a clear error."""

import copy

import jax
import numpy as np
import pytest
from conftest import persistent_compile_cache

from ev3 import methods
from ev3.config import RunSpec, student_run, validate
from ev3.methods.common import Frozen
from ev3.models import build
from ev3.seedgroup import _Layout, _forwarded, check_group, fit_vmapped
from ev3.train import NonFiniteError, fit, on_flat_state

SEEDS = [3, 0]
STEPS, EVERY = 50, 20  # evaluations at 20, 40, 50
METHODS = {
    "scratch": {"type": "scratch"},
    "kd": {"type": "kd", "temperature": 4.0, "alpha": 0.9},
    "dkd": {"type": "dkd", "temperature": 4.0, "alpha": 1.0, "beta": 8.0, "ce_weight": 1.0, "warmup_steps": 5},
    "metadistil": {"type": "metadistil", "temperature": 4.0, "alpha": 0.9, "pilot_lr": 0.1, "teacher_lr": 0.01,
                   "teacher_momentum": 0.9, "teacher_frozen_fraction": 0.2, "pilot": True, "quiz_batch_size": 16},
    "tuned": {"type": "tuned", "base": "kd", "space": {"temperature": [2.0, 8.0], "alpha": [0.9], "learning_rate": [0.001]}},
}
TEACHER = {"type": "cnn", "channels": [4, 4], "kernel_size": 5, "stride": 2}
NOLOG = lambda s: None  # noqa: E731


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    """JAX's persistent compilation cache for this module: a group and its single-seed runs compile the same
    single step, evaluation and permutation (the loop's counter still counts them)."""
    with persistent_compile_cache(str(tmp_path_factory.mktemp("compile_cache"))):
        yield



@pytest.fixture(scope="module")
def teacher(mnist1d):
    net = build(TEACHER, mnist1d.input_shape, mnist1d.num_classes, jax.random.key(42))
    return Frozen(net.graphdef, net.params, net.rest)


def _specs(smoke_config, name, seeds=SEEDS, **train):
    config = copy.deepcopy(smoke_config)
    config["methods"] = {name: METHODS[name]}
    config["train"].update({"steps": STEPS, "eval_every": EVERY, "batch_size": 64, **train})
    config["data_dir"] = "unused"
    config = validate(config)
    specs = []
    for seed in seeds:
        d = student_run(config, "mnist1d", "mlp64", name, seed)
        d["data_dir"] = "unused"
        specs.append(RunSpec.from_dict(d))
    return specs


def _leaves(tree):
    return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
            for x in jax.tree.leaves(tree)]


def assert_member_equals_single(member, single, method, x_test):
    """Parameters (and all state) allclose rtol 1e-5; test predictions equal where the top-2 margin > 1e-4;
    evaluations at the same steps with val/test accuracies within one example's worth of rounding; per-seed
    compute equal to the single run's."""
    for a, b in zip(_leaves(single.state), _leaves(member.state), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    pa = np.asarray(method.evaluate(single.final_state, x_test))
    pb = np.asarray(method.evaluate(member.final_state, x_test))
    top2 = np.sort(pa, -1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(pb.argmax(-1)[clear], pa.argmax(-1)[clear])
    assert [h["student_steps"] for h in member.history] == [h["student_steps"] for h in single.history]
    for ha, hb in zip(single.history, member.history):
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=1e-5)
        assert hb["flops"] == pytest.approx(ha["flops"], rel=1e-9)
    for k in ("student_steps", "teacher_forwards", "teacher_backwards", "flops_student", "flops_teacher",
              "flops_selection", "flops"):
        assert member.compute[k] == pytest.approx(single.compute[k], rel=1e-9), k


# scratch runs 20 steps per call (a vmapped scan: chunks of 20, 20, 10, the second crossing the epoch boundary
# at step 25, where the scan redraws each member's permutation); the others one step per call.
TRAIN = {"scratch": {"steps_per_call": 20, "batch_size": 128}}


@pytest.mark.parametrize("name", ["scratch", "kd", "dkd", "metadistil"])
def test_member_equals_the_single_seed_run(smoke_config, mnist1d, teacher, name):
    method = methods.get(METHODS[name]["type"])
    t = None if name == "scratch" else teacher
    specs = _specs(smoke_config, name, **TRAIN.get(name, {}))
    if name == "scratch":
        assert 20 < mnist1d.splits["train"][0].shape[0] // 128 < 40
    group = fit_vmapped(method, specs, mnist1d, t, log=NOLOG)
    assert len(group) == len(SEEDS)
    singles = [fit(method, s, mnist1d, t, log=NOLOG) for s in specs]
    for member, single in zip(group, singles):
        assert_member_equals_single(member, single, method, mnist1d.splits["test"][0])
    # the seeds differ from one another (each member follows its own streams)
    assert not np.allclose(_leaves(singles[0].state.student.params)[0], _leaves(singles[1].state.student.params)[0])
    shared = group[0].shared
    assert shared["seeds"] == SEEDS and all(r.shared is shared for r in group)
    assert group[0].compute["wall_s"] == pytest.approx(shared["wall_s"] / len(SEEDS))


@pytest.mark.parametrize("name", ["kd", "metadistil"])
def test_frozen_teacher_is_shared_and_a_learning_teacher_is_stacked(smoke_config, mnist1d, teacher, name):
    """A leaf is kept once only if every member holds the same array and the step returns it as is: a KD
    teacher's parameters are forwarded by the step, a MetaDistil teacher's are not (it learns); the student's
    never are."""
    method = methods.get(name)
    spec = _specs(smoke_config, name)[0]
    state = method.init(spec, mnist1d, teacher, jax.random.key(0))
    leaves, treedef = jax.tree.flatten(state)
    batch = tuple(a[:64] for a in mnist1d.splits["train"])
    forwarded = _forwarded(on_flat_state(method.step, treedef), leaves, batch, jax.random.key(1))
    teacher_ids = {id(x) for x in jax.tree.leaves(teacher.params)}
    student_ids = {id(x) for x in jax.tree.leaves(state.student.params)}
    on_teacher = [f for x, f in zip(leaves, forwarded) if id(x) in teacher_ids]
    on_student = [f for x, f in zip(leaves, forwarded) if id(x) in student_ids]
    assert len(on_teacher) == len(jax.tree.leaves(teacher.params)) and on_student
    assert all(on_teacher) if name == "kd" else not any(on_teacher)
    assert not any(on_student)
    layout = _Layout([leaves, leaves], forwarded)
    assert layout.merge(*layout.split(leaves)) == leaves


def test_a_nan_names_its_seed(smoke_config, mnist1d):
    """A learning rate that diverges for every seed: the error names the first seed of the group."""
    method = methods.get("scratch")
    specs = _specs(smoke_config, "scratch", seeds=[5, 6], optimizer={"name": "sgd", "learning_rate": 1e30})
    with pytest.raises(NonFiniteError, match=r"scratch seed5: non-finite"):
        fit_vmapped(method, specs, mnist1d, None, log=NOLOG)


def test_resumed_group_equals_the_uninterrupted_one(smoke_config, mnist1d, teacher, tmp_path):
    method = methods.get("kd")
    specs = _specs(smoke_config, "kd", seeds=[0, 1])
    reference = fit_vmapped(method, specs, mnist1d, teacher, log=NOLOG)

    class Interrupt(Exception):
        pass

    def interrupt(line):
        if f"step {2 * EVERY}/" in line:
            raise Interrupt

    with pytest.raises(Interrupt):  # stops after the evaluation at step 40, before its checkpoint
        fit_vmapped(method, specs, mnist1d, teacher, log=interrupt, state_dir=str(tmp_path))
    logs = []
    resumed = fit_vmapped(method, specs, mnist1d, teacher, log=logs.append, state_dir=str(tmp_path))
    assert any(f"resumed from step {EVERY}" in line for line in logs)
    strip = lambda h: [{k: v for k, v in e.items() if k != "wall_s"} for e in h]  # noqa: E731
    for r, m in zip(reference, resumed, strict=True):
        for a, b in zip(_leaves(r.state), _leaves(m.state), strict=True):
            np.testing.assert_array_equal(a, b)
        assert strip(m.history) == strip(r.history)
        assert m.selection.student_steps == r.selection.student_steps


def test_unsupported_groups_are_clear_errors(smoke_config):
    tuned = _specs(smoke_config, "tuned")
    with pytest.raises(ValueError, match=r"mode vmap does not support method type 'tuned'"):
        check_group("tuned", tuned)
    with pytest.raises(ValueError, match=r"mode vmap does not support method type 'ev3'"):
        check_group("ev3", tuned)
    kd = _specs(smoke_config, "kd", seeds=[0, 1])
    other = _specs(smoke_config, "kd", seeds=[2], steps=STEPS + 1)
    with pytest.raises(ValueError, match=r"seed 2 differs in \['train'\]"):
        check_group("kd", kd + other)
    with pytest.raises(ValueError, match="distinct"):
        check_group("kd", kd + kd[:1])
