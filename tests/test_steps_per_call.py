"""``train.steps_per_call``: N steps in one compiled ``lax.scan`` give the run of one step per call (up to float
reassociation), for every step-based method, with and without augmentation, across epoch boundaries inside a
chunk, and through a resume inside what would be a chunk."""

import copy

import jax
import numpy as np
import pytest
from conftest import persistent_compile_cache
import tensorflow_datasets as tfds

from ev3 import methods
from ev3.config import RunSpec, student_run, validate
from ev3.data import load
from ev3.methods.common import Frozen
from ev3.models import build
from ev3.train import fit

STEPS, EVERY, N = 23, 8, 7  # evaluations at 8, 16, 23: chunks 7, 1, 7, 1, 7 (a chunk of one is the single step)
METHODS = {  # name -> (type, options); metadistil's quiz batch fits the mock CIFAR meta split
    "scratch": {"type": "scratch"},
    "kd": {"type": "kd", "temperature": 4.0, "alpha": 0.9},
    "dkd": {"type": "dkd", "temperature": 4.0, "alpha": 1.0, "beta": 8.0, "ce_weight": 1.0, "warmup_steps": 5},
    "tuned": {"type": "tuned", "base": "kd",
              "space": {"temperature": [2.0, 8.0], "alpha": [0.9], "learning_rate": [0.001]}},
    "metadistil": {"type": "metadistil", "temperature": 4.0, "alpha": 0.9, "pilot_lr": 0.1, "teacher_lr": 0.001,
                   "teacher_momentum": 0.9, "teacher_frozen_fraction": 0.5, "pilot": True, "quiz_batch_size": 8},
}
TINY_CNN = {"type": "cnn", "channels": [4, 4], "kernel_size": 5, "stride": 2}
NOLOG = lambda s: None  # noqa: E731


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    """JAX's persistent compilation cache for this module: the N = 1 and N = 7 runs of a method compile the same
    step, evaluation and permutation (the loop's counter still counts them)."""
    with persistent_compile_cache(str(tmp_path_factory.mktemp("compile_cache"))):
        yield



@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    with tfds.testing.mock_data(num_examples=160):
        return load("cifar10", str(tmp_path_factory.mktemp("cifar")), seed=0, val=0.1, meta=0.2)


def _config(smoke_config, data, model, method, steps_per_call, **train):
    """A validated student run config: an epoch of 10 steps (batch size), ``STEPS`` steps, ``EVERY`` steps per
    evaluation; ``model`` joins the models as ``student``."""
    config = copy.deepcopy(smoke_config)
    config["models"]["student"] = model
    config["students"] = ["student"]
    config["teacher"]["model"] = "student"
    config["methods"] = {method: METHODS[method]}
    config["datasets"] = [data.name]
    for train_config in (config["train"], config["teacher"]["train"]):  # views only where a test asks for them
        train_config.pop("augment", None)
    n = data.splits["train"][0].shape[0]
    config["train"].update({"steps": STEPS, "eval_every": EVERY, "batch_size": n // 11 + 1,
                            "steps_per_call": steps_per_call, **train})
    config["data_dir"] = "unused"  # the data are loaded by the fixtures
    return validate(config)


def _spec(config, dataset, method, data_dir="unused"):
    d = student_run(config, dataset, "student", method, 0)
    d["data_dir"] = data_dir
    return RunSpec.from_dict(d)


def _teacher(model, data):
    net = build(model, data.input_shape, data.num_classes, jax.random.key(42))
    return Frozen(net.graphdef, net.params, net.rest)


def _logits(method, result, x):
    logits = np.asarray(method.evaluate(result.final_state, x))
    return logits[0] if logits.ndim == 3 else logits  # a population: the selected member


def assert_equivalent(one, many, method, x_test):
    """N steps per call vs one: parameters allclose (rtol 1e-5), history equal (loss allclose), test predictions
    equal wherever the top-2 logit margin exceeds 1e-4, FLOPs per step equal."""
    la, lb = jax.tree.leaves(one.state), jax.tree.leaves(many.state)
    assert len(la) == len(lb) > 0
    for a, b in zip(la, lb):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)
    assert [h["student_steps"] for h in many.history] == [h["student_steps"] for h in one.history]
    for ha, hb in zip(one.history, many.history):
        assert (hb["val_accuracy"], hb["test_accuracy"]) == (ha["val_accuracy"], ha["test_accuracy"])
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=1e-5)
    pa, pb = _logits(method, one, x_test), _logits(method, many, x_test)
    top2 = np.sort(pa, -1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(pb.argmax(-1)[clear], pa.argmax(-1)[clear])
    assert many.compute["flops_student"] == pytest.approx(one.compute["flops_student"], rel=1e-6)
    assert many.compute["flops_teacher"] == pytest.approx(one.compute["flops_teacher"], rel=1e-6)
    assert many.compute["student_steps"] == one.compute["student_steps"]


def _pair(smoke_config, data, dataset, model, name, **train):
    method = methods.get(METHODS[name]["type"])
    teacher = None if name == "scratch" else _teacher(model, data)
    runs = []
    for n in (1, N):
        spec = _spec(_config(smoke_config, data, model, name, n, **train), dataset, name)
        assert spec.train["steps_per_call"] == n
        runs.append(fit(method, spec, data, teacher, log=NOLOG))
    return method, runs


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_steps_per_call_equals_one_step_per_call(smoke_config, mnist1d, name, model):
    model = smoke_config["models"]["mlp64"] if model == "mlp" else TINY_CNN
    method, (one, many) = _pair(smoke_config, mnist1d, "mnist1d", model, name)
    assert_equivalent(one, many, method, mnist1d.splits["test"][0])
    assert many.compute["compiles"] == one.compute["compiles"] + 1  # the scan of 7 steps


@pytest.mark.parametrize("name", list(METHODS))
def test_steps_per_call_equals_one_step_per_call_with_augmentation(smoke_config, cifar, name):
    model = smoke_config["models"]["mlp64"]
    method, (one, many) = _pair(smoke_config, cifar, "cifar10", model, name, augment={"crop_padding": 4, "flip": True})
    assert_equivalent(one, many, method, cifar.splits["test"][0])


@pytest.mark.parametrize("name", ["scratch", "kd"])
def test_steps_per_call_equals_one_step_per_call_with_signal_augmentation_and_mixup(smoke_config, mnist1d, name):
    model = smoke_config["models"]["mlp64"]
    method, (one, many) = _pair(smoke_config, mnist1d, "mnist1d", model, name,
                                augment={"scale": 0.4, "translate": 4, "corr_noise": 0.25, "iid_noise": 0.05,
                                         "shear": 0.75}, mixup={"alpha": 1.0, "per": "sample"})
    assert_equivalent(one, many, method, mnist1d.splits["test"][0])


def test_a_remainder_chunk_compiles_once_and_equals_single_steps(smoke_config, mnist1d):
    """25 steps, evaluations every 9: chunks 7, 2, 7, 2, 7 (scans of 7 and of 2 steps)."""
    model = smoke_config["models"]["mlp64"]
    method, (one, many) = _pair(smoke_config, mnist1d, "mnist1d", model, "scratch", steps=25, eval_every=9)
    assert [h["student_steps"] for h in many.history] == [9, 18, 25]
    assert_equivalent(one, many, method, mnist1d.splits["test"][0])
    assert many.compute["compiles"] == one.compute["compiles"] + 2


@pytest.mark.parametrize("name", ["scratch", "metadistil"])
def test_resume_inside_a_chunk_gives_the_uninterrupted_result(smoke_config, mnist1d, tmp_path, name):
    """Checkpoints every 16 steps: the run stops after its evaluation at step 23, before that checkpoint, and
    resumes from step 16, inside the chunk of steps 14–20 that N = 7 without evaluations would run."""
    model = smoke_config["models"]["mlp64"]
    method = methods.get(METHODS[name]["type"])
    teacher = None if name == "scratch" else _teacher(model, mnist1d)
    spec = _spec(_config(smoke_config, mnist1d, model, name, N, checkpoint_every=2 * EVERY), "mnist1d", name)
    reference = fit(method, spec, mnist1d, teacher, log=NOLOG)

    def interrupt(line):
        if f"step {STEPS}/" in line:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(method, spec, mnist1d, teacher, log=interrupt, state_dir=str(tmp_path))
    logs = []
    resumed = fit(method, spec, mnist1d, teacher, log=logs.append, state_dir=str(tmp_path))
    assert any(f"resumed from step {2 * EVERY}" in line for line in logs)
    for a, b in zip(jax.tree.leaves(reference.state), jax.tree.leaves(resumed.state), strict=True):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    strip = lambda h: [{k: v for k, v in e.items() if k != "wall_s"} for e in h]  # noqa: E731
    assert strip(resumed.history) == strip(reference.history)
    assert resumed.compute["flops_student"] == reference.compute["flops_student"]


def test_steps_per_call_defaults_to_the_device(smoke_config):
    config = validate(copy.deepcopy(smoke_config))
    assert student_run(config, "mnist1d", "mlp64", "scratch", 0)["train"]["steps_per_call"] == 1
    config["device"] = "gpu"
    assert student_run(config, "mnist1d", "mlp64", "scratch", 0)["train"]["steps_per_call"] == 100
    config["train"]["steps_per_call"] = 3
    assert student_run(config, "mnist1d", "mlp64", "scratch", 0)["train"]["steps_per_call"] == 3
