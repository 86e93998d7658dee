"""The shared training loop: learning, compute accounting, pairing across methods, NaN guard."""

import os

import jax
import numpy as np
import pytest

from ev3 import methods
from ev3.config import RunSpec, student_run, teacher_run, validate
from ev3.methods.common import Frozen
from ev3.models import build
from ev3.run import run
from ev3.train import NonFiniteError, fit


def _spec(config, data_dir, method="scratch", *, steps=None, eval_every=None, teacher=False, **train):
    config = validate(config)
    if steps is not None:
        config["train"]["steps"] = config["teacher"]["train"]["steps"] = steps
    if eval_every is not None:
        config["train"]["eval_every"] = config["teacher"]["train"]["eval_every"] = eval_every
    config["train"]["optimizer"].update(train)
    d = teacher_run(config, "mnist1d", config["teacher"]["model"]) if teacher else student_run(config, "mnist1d", config["students"][0], method, 0)
    d["data_dir"] = data_dir
    return RunSpec.from_dict(d)



@pytest.fixture
def random_teacher(smoke_config, mnist1d):
    net = build(smoke_config["models"]["cnn"], mnist1d.input_shape, 10, jax.random.key(42))
    return Frozen(net.graphdef, net.params, net.rest)


def test_short_training_lowers_loss_and_beats_chance(smoke_config, data_dir, mnist1d):
    spec = _spec(smoke_config, data_dir, steps=150, eval_every=25)
    result = fit(methods.get("scratch"), spec, mnist1d, None, log=lambda s: None)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.8 * losses[0]
    assert result.val_accuracy > 0.3  # chance is 0.1
    assert result.val_accuracy == max(h["val_accuracy"] for h in result.history)


def test_flops_of_two_steps_are_twice_one_step(smoke_config, data_dir, mnist1d, random_teacher):
    def compute(steps):
        spec = _spec(smoke_config, data_dir, "kd", steps=steps, eval_every=1000)
        return fit(methods.get("kd"), spec, mnist1d, random_teacher, log=lambda s: None).compute

    one, two = compute(1), compute(2)
    assert one["flops_student"] > 0 and one["flops_teacher"] > 0
    assert two["flops_student"] == pytest.approx(2 * one["flops_student"], rel=1e-9)
    assert two["flops_teacher"] == pytest.approx(2 * one["flops_teacher"], rel=1e-9)
    assert two["flops_selection"] == pytest.approx(one["flops_selection"], rel=1e-9)  # one val eval each
    assert two["flops"] == pytest.approx(two["flops_student"] + two["flops_teacher"] + two["flops_selection"])
    assert (one["teacher_forwards"], two["teacher_forwards"]) == (1, 2)
    assert two["compiles"] == one["compiles"]  # the step compiles once whatever the budget


def test_scratch_counts_no_teacher_compute(smoke_config, data_dir, mnist1d):
    c = fit(methods.get("scratch"), _spec(smoke_config, data_dir, steps=2, eval_every=1000), mnist1d, None, log=lambda s: None).compute
    assert c["flops_teacher"] == 0 and c["teacher_forwards"] == 0 and c["flops_student"] > 0


def test_kd_with_alpha_zero_equals_scratch_so_seeds_pair_runs(smoke_config, data_dir, mnist1d, random_teacher):
    """Same seed ⇒ same init and batch order across methods: KD with α=0 reduces to scratch exactly."""
    smoke_config["methods"]["kd0"] = {"type": "kd", "temperature": 4.0, "alpha": 0.0}
    spec_kd = _spec(smoke_config, data_dir, "kd0", steps=30, eval_every=10)
    spec_ce = _spec(smoke_config, data_dir, "scratch", steps=30, eval_every=10)
    kd = fit(methods.get("kd"), spec_kd, mnist1d, random_teacher, log=lambda s: None)
    ce = fit(methods.get("scratch"), spec_ce, mnist1d, None, log=lambda s: None)
    for a, b in zip(jax.tree.leaves(kd.final_state.student.params), jax.tree.leaves(ce.final_state.student.params)):
        np.testing.assert_array_equal(a, b)
    spec_kd9 = _spec(smoke_config, data_dir, "kd", steps=30, eval_every=10)
    kd9 = fit(methods.get("kd"), spec_kd9, mnist1d, random_teacher, log=lambda s: None)
    assert not np.array_equal(jax.tree.leaves(kd9.final_state.student.params)[0], jax.tree.leaves(ce.final_state.student.params)[0])


def test_same_seed_gives_identical_history(smoke_config, data_dir, mnist1d):
    spec = _spec(smoke_config, data_dir, steps=40, eval_every=20)
    a = fit(methods.get("scratch"), spec, mnist1d, None, log=lambda s: None).history
    b = fit(methods.get("scratch"), spec, mnist1d, None, log=lambda s: None).history
    strip = lambda h: [{k: v for k, v in e.items() if k != "wall_s"} for e in h]  # noqa: E731
    assert strip(a) == strip(b)


def test_non_finite_loss_stops_the_run_and_writes_no_metrics(smoke_config, data_dir, tmp_path):
    spec = _spec(smoke_config, data_dir, steps=20, eval_every=10, teacher=True, name="sgd", learning_rate=1e30)
    spec = RunSpec.from_dict({**spec.__dict__, "train": {**spec.train, "optimizer": {"name": "sgd", "learning_rate": 1e30}}})
    with pytest.raises(NonFiniteError, match=r"teacher: non-finite .* at step 10"):
        run(spec, str(tmp_path), log=lambda s: None)
    assert not os.path.exists(tmp_path / "metrics.json")
