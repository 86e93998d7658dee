"""MetaDistil as a method: round structure, the kd limit, the no-pilot ablation, quiz data from ``meta`` only."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ev3 import methods, models
from ev3.config import RunSpec, student_run, validate
from ev3.data import Dataset
from ev3.methods import kd as kd_method
from ev3.methods import metadistil
from ev3.methods.common import Frozen, SupervisedState
from ev3.train import fit

NOLOG = lambda s: None  # noqa: E731



@pytest.fixture
def teacher(mnist1d):
    """A small MLP teacher: the method logic does not depend on the architecture, and it compiles fast."""
    net = models.build({"type": "mlp", "width": 32, "depth": 1}, mnist1d.input_shape, 10, jax.random.key(7))
    return Frozen(net.graphdef, net.params, net.rest)


def _spec(config, data_dir, method, steps=20, **options):
    config = validate(config)
    config["methods"][method].update(options)
    config["train"]["steps"], config["train"]["eval_every"] = steps, 10
    d = student_run(config, "mnist1d", "mlp64", method, 0)
    return RunSpec.from_dict({**d, "data_dir": data_dir})


def _batch(data, n=128):
    x, y = data.splits["train"]
    return x[:n], y[:n]


def _kd_step(student, teacher_graphdef, teacher_params, teacher_rest, hparams, batch):
    state = SupervisedState(student, Frozen(teacher_graphdef, teacher_params, teacher_rest), hparams)
    return kd_method.step(state, batch, None)[0].student


def _teacher_update(state, student_params, batch, quiz):
    t, s = state.teacher, state.student
    g = metadistil.meta_gradient(
        lambda p, x: models.apply(t.graphdef, p, t.rest, x)[0],
        lambda p, x: models.apply(s.graphdef, p, s.rest, x)[0],
        t.params, student_params, batch, quiz,
        pilot_lr=state.hparams["pilot_lr"], temperature=state.hparams["temperature"], alpha=state.hparams["alpha"],
    )
    updates, _ = t.tx.update(g, t.opt_state, t.params)
    return optax.apply_updates(t.params, updates)


def _assert_trees_close(a, b, **kw):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


@pytest.mark.parametrize("pilot", [True, False])
def test_one_round_is_teacher_meta_step_plus_kd_step(smoke_config, data_dir, mnist1d, teacher, pilot):
    """pilot: teacher steps on the meta-gradient at the current student, then a KD step with the updated
    teacher (the pilot copy is discarded). no pilot: KD step with the old teacher, then the teacher's
    meta-gradient at the updated student."""
    spec = _spec(smoke_config, data_dir, "metadistil", teacher_frozen_fraction=0.0, pilot=pilot)
    state = metadistil.init(spec, mnist1d, teacher, jax.random.key(0))
    batch, key = _batch(mnist1d), jax.random.key(3)
    new_state, _ = jax.jit(metadistil.step)(state, batch, key)

    t = state.teacher

    @jax.jit
    def reference(state, batch, key):
        if pilot:
            teacher_params = _teacher_update(state, state.student.params, batch, metadistil.quiz_batch(state, key))
            student = _kd_step(state.student, t.graphdef, teacher_params, t.rest, state.hparams, batch)
        else:
            student = _kd_step(state.student, t.graphdef, t.params, t.rest, state.hparams, batch)
            teacher_params = _teacher_update(state, student.params, batch, metadistil.quiz_batch(state, key))
        return teacher_params, student

    teacher_params, student = reference(state, batch, key)
    _assert_trees_close(new_state.teacher.params, teacher_params, rtol=1e-5, atol=1e-6)
    _assert_trees_close(new_state.student.params, student.params, rtol=1e-5, atol=1e-6)
    moved = optax.global_norm(jax.tree.map(jnp.subtract, new_state.teacher.params, t.params))
    assert float(moved) > 0  # the teacher really learns


def test_frozen_teacher_gives_exactly_the_kd_student(smoke_config, data_dir, mnist1d, teacher):
    """Bit for bit on clean batches (with on-device views the two programs fuse the view differently into
    their forwards, which changes the last bits)."""
    smoke_config["train"].pop("augment", None)
    spec_md = _spec(smoke_config, data_dir, "metadistil", teacher_lr=0.0)
    spec_kd = _spec(smoke_config, data_dir, "kd")
    md = fit(methods.get("metadistil"), spec_md, mnist1d, teacher, log=NOLOG)
    kd = fit(methods.get("kd"), spec_kd, mnist1d, teacher, log=NOLOG)
    for a, b in zip(jax.tree.leaves(md.final_state.student.params), jax.tree.leaves(kd.final_state.student.params)):
        np.testing.assert_array_equal(a, b)
    assert md.tracked[-1]["teacher_param_drift"] == 0.0
    assert md.tracked[-1]["teacher_agreement_with_initial"] == 1.0
    c = md.compute
    assert (c["teacher_forwards"], c["teacher_backwards"]) == (2 * 20, 20)
    assert c["flops_teacher"] == pytest.approx(kd.compute["flops_teacher"] * 4)  # 2 forwards + 1 backward (= 2)


def test_quiz_batches_come_from_meta_not_test(smoke_config, data_dir, mnist1d, teacher):
    """Poisoning the test split leaves training unchanged; poisoning meta changes it."""
    spec = _spec(smoke_config, data_dir, "metadistil", teacher_frozen_fraction=0.0)
    x_test, y_test = mnist1d.splits["test"]
    x_meta, y_meta = mnist1d.splits["meta"]
    poisoned_test = dataclasses.replace(mnist1d, splits={**mnist1d.splits, "test": (x_test, (y_test + 1) % 10)})
    poisoned_meta = dataclasses.replace(mnist1d, splits={**mnist1d.splits, "meta": (x_meta, (y_meta + 1) % 10)})
    runs = [fit(methods.get("metadistil"), spec, d, teacher, log=NOLOG) for d in (mnist1d, poisoned_test, poisoned_meta)]
    params = [jax.tree.leaves(r.final_state.student.params)[0] for r in runs]
    np.testing.assert_array_equal(params[0], params[1])
    assert not np.array_equal(params[0], params[2])


def test_metadistil_options_are_validated(smoke_config):
    from ev3.config import ConfigError

    smoke_config["methods"]["metadistil"]["pilot_learning_rate"] = 0.1
    with pytest.raises(ConfigError, match="^methods/metadistil/pilot_learning_rate:"):
        validate(smoke_config)


def test_dataset_type_is_the_contract():
    assert {f.name for f in dataclasses.fields(Dataset)} == {"name", "num_classes", "input_shape", "splits"}
