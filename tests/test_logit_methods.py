"""The logit methods (``kd``/``dkd``/``mlkd`` with ``ls``, ``dist``, ``mlkd``, ``ctkd``, ``wttm``) as the loop runs
them: their steps optimize the losses of ``ev3.losses``, MLKD's strong view is built from the clean batch, CTKD's
temperature is method state trained against the student, an interrupted run resumes to the uninterrupted one, the
config names a wrong option's key, and the CIFAR-100 instances trace on a CIFAR pair."""

import copy
import os
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from ev3 import methods, models
from ev3.config import ConfigError, RunSpec, student_run, validate
from ev3.data import augment
from ev3.data.augment import mix
from ev3.losses import cross_entropy, ctkd_temperature, hinton_loss, kd_loss, mlkd_loss, standardize_logits
from ev3.methods.common import Frozen
from ev3.rng import seed_key, stream
from ev3.train import Counter, RunContext, TwoViewStepWork, fit

ROOT = os.path.join(os.path.dirname(__file__), "..")
STEPS, EVERY = 6, 3
NOLOG = lambda s: None  # noqa: E731


def _spec(smoke_config, data_dir, name, **train):
    config = copy.deepcopy(smoke_config)
    config["train"].update(train)
    return RunSpec.from_dict({**student_run(validate(config), "mnist1d", "mlp64", name, 0), "data_dir": data_dir})


@pytest.fixture(scope="module")
def teacher(mnist1d):
    net = models.build({"type": "mlp", "width": 32, "depth": 1}, mnist1d.input_shape, 10, jax.random.key(3))
    return Frozen(net.graphdef, net.params, net.rest)


def _batch(mnist1d, n=64):
    return tuple(a[:n] for a in mnist1d.splits["train"])


def test_kd_ls_step_optimizes_ce_plus_kd_of_standardized_logits(smoke_config, data_dir, mnist1d, teacher):
    kd = methods.get("kd")
    state = kd.init(_spec(smoke_config, data_dir, "kd-ls"), mnist1d, teacher, jax.random.key(0))
    x, y = _batch(mnist1d)

    @jax.jit
    def step_and_expected(state):
        logits, t = kd.evaluate(state, x), teacher(x)
        expected = 0.1 * cross_entropy(logits, y) + 9.0 * kd_loss(standardize_logits(logits), standardize_logits(t), 2.0)
        return kd.step(state, (x, y), jax.random.key(1))[1]["loss"], expected

    loss, expected = step_and_expected(state)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_mlkd_step_optimizes_both_views(smoke_config, data_dir, mnist1d, teacher):
    """CE of each view plus the weighted MLKD term of the weak and strong views' logits."""
    mlkd = methods.get("mlkd")
    state = mlkd.init(_spec(smoke_config, data_dir, "mlkd"), mnist1d, teacher, jax.random.key(0))
    x, y = _batch(mnist1d)
    x_strong = x[::-1] * 1.5

    @jax.jit
    def step_and_expected(state):
        sw, ss, tw, ts = mlkd.evaluate(state, x), mlkd.evaluate(state, x_strong), teacher(x), teacher(x_strong)
        expected = 0.1 * (cross_entropy(sw, y) + cross_entropy(ss, y)) + 0.9 * mlkd_loss(sw, tw, ss, ts, temperature=4.0)
        return mlkd.step(state, (x, y, x_strong), jax.random.key(1))[1]["loss"], expected

    loss, expected = step_and_expected(state)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_ctkd_student_takes_a_kd_step_at_the_current_temperature_and_the_temperature_moves_up_the_loss(
        smoke_config, data_dir, mnist1d, teacher):
    """The student's step is a KD step at T(θ); θ moves along +∂loss/∂θ (ascent: the reversed gradient)."""
    ctkd, kd = methods.get("ctkd"), methods.get("kd")
    state = ctkd.init(_spec(smoke_config, data_dir, "ctkd"), mnist1d, teacher, jax.random.key(0))
    assert float(state.temperature.theta) == 1.0  # as the authors' Global_T
    smoke_config["methods"]["kd-at-t"] = {"type": "kd", "temperature": 4.0, "alpha": 0.9}
    kd_state = kd.init(_spec(smoke_config, data_dir, "kd-at-t"), mnist1d, teacher, jax.random.key(0))
    x, y = _batch(mnist1d)

    @jax.jit
    def steps(state, kd_state):
        temperature = ctkd.temperature(state)
        kd_state = kd_state.replace(hparams={**kd_state.hparams, "temperature": temperature})
        logits, t = ctkd.evaluate(state, x), teacher(x)
        gradient = jax.grad(lambda th: hinton_loss(logits, t, y, temperature=ctkd_temperature(th), alpha=0.9))(
            state.temperature.theta)  # ∂loss/∂θ without the reversal layer
        return ctkd.step(state, (x, y), jax.random.key(1))[0], kd.step(kd_state, (x, y), jax.random.key(1))[0], gradient

    after, kd_after, gradient = steps(state, kd_state)
    for a, b in zip(jax.tree.leaves(after.student.params), jax.tree.leaves(kd_after.student.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    moved = float(after.temperature.theta) - 1.0
    assert moved != 0.0 and float(gradient) != 0.0 and np.sign(moved) == np.sign(float(gradient))
    assert float(after.hparams["step"]) == 1.0


def test_the_strong_view_is_the_clean_batch_through_its_own_transforms_mixed_as_the_training_view(
        smoke_config, data_dir, mnist1d, monkeypatch):
    """:class:`TwoViewStepWork`'s batch ``(x, y, x_strong)``: both views of the same clean examples, each through its
    own transforms (streams ``augment`` and ``strong_view``), mixed with the same partners and λ (so they share
    ``y``); without ``strong_view``, ``x_strong`` is None. The method's step gets exactly that batch. (Mixup's λ is
    drawn uniformly here, and the views are scale + shift only: the wiring is under test, and Beta sampling and the
    correlated noise take seconds to compile.)"""

    def uniform_mixup(key, x, targets, *, alpha, per="batch"):  # augment.mixup's contract, a cheaper λ
        k_lam, k_perm = jax.random.split(key)
        return mix(x, targets, jax.random.uniform(k_lam, (x.shape[0],)), jax.random.permutation(k_perm, x.shape[0]))

    monkeypatch.setattr(augment, "mixup", uniform_mixup)
    smoke_config["methods"] = {k: smoke_config["methods"][k] for k in ("mlkd", "mlkd-ls")}
    smoke_config["methods"]["mlkd"]["strong_view"] = {"scale": 0.8, "translate": 8}
    spec = _spec(smoke_config, data_dir, "mlkd", augment={"scale": 0.4, "translate": 4}, mixup={"alpha": 1.0})
    recorder = SimpleNamespace(step=lambda state, batch, key: (batch, {"loss": jnp.float32(0.0)}),
                               teacher_passes=lambda spec: (0, 0), population_size=lambda spec: None)
    work = TwoViewStepWork(RunContext(recorder, spec, mnist1d, None, Counter()))
    i, b, mixer = 5, spec.train["batch_size"], augment.mixup_fn(spec.train["mixup"])

    @jax.jit
    def batch_and_expected(perm):
        batch = work.loop_step(None, jnp.float32(0.0), jnp.int32(i), work.train, perm, work.step_key)[0]
        idx = perm[i * b:(i + 1) * b]  # step i < an epoch's steps
        clean, labels, key = work.train[0][idx], work.train[1][idx], jax.random.fold_in(work.step_key, i)
        weak = augment.augment_fn(spec.train["augment"])(stream(key, "augment"), clean)
        strong = augment.augment_fn(spec.options["strong_view"])(stream(key, "strong_view"), clean)
        return batch, (*mixer(stream(key, "mixup"), weak, labels, 10), mixer(stream(key, "mixup"), strong, labels, 10)[0])

    batch, expected = batch_and_expected(work.permutation(work.order_key, 0))
    for got, want in zip(batch, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert not np.allclose(batch[0], batch[2])
    one_view = TwoViewStepWork(RunContext(recorder, _spec(smoke_config, data_dir, "mlkd-ls"), mnist1d, None, Counter()))
    shapes = jax.eval_shape(one_view.loop_step, None, jnp.float32(0.0), jnp.int32(i), one_view.train,
                            jnp.arange(one_view.train[0].shape[0]), one_view.step_key)
    assert shapes[0][2] is None


RESUMED = ["kd-ls", "mlkd-ls", "dist", "ctkd", "wttm"]  # mlkd-ls: one view; dkd-ls: kd-ls's ls path


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("name", RESUMED)
def test_a_run_resumed_after_an_interruption_equals_the_uninterrupted_run(smoke_config, data_dir, mnist1d, teacher,
                                                                          tmp_path, name):
    spec = _spec(smoke_config, data_dir, name, steps=STEPS, eval_every=EVERY)
    method = methods.get(spec.method_type)
    reference = fit(method, spec, mnist1d, teacher, log=NOLOG)

    def interrupt(line):
        if f"step {STEPS}/" in line:
            raise Interrupt  # after the last evaluation, before its checkpoint: the one at EVERY is left

    with pytest.raises(Interrupt):
        fit(method, spec, mnist1d, teacher, log=interrupt, state_dir=str(tmp_path))
    logs = []
    resumed = fit(method, spec, mnist1d, teacher, log=logs.append, state_dir=str(tmp_path))
    assert any(f"resumed from step {EVERY}" in line for line in logs), logs
    for a, b in ((resumed.state, reference.state), (resumed.selected_state, reference.selected_state)):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in reference.history]
    initial = method.init(spec, mnist1d, teacher, stream(seed_key(spec.seed), "student_init"))  # fit's init key
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(resumed.state.student), jax.tree.leaves(initial.student)))
    if name == "ctkd":  # the temperature is method state: trained, checkpointed, restored
        assert float(resumed.state.temperature.theta) != float(initial.temperature.theta)
        assert method.summary(resumed) == method.summary(reference)


@pytest.mark.parametrize("name, option", [("kd-ls", "lss"), ("dkd-ls", "standardize"), ("mlkd", "temperatures"),
                                          ("dist", "tau"), ("ctkd", "temperature"), ("wttm", "ttm_l")])
def test_an_unknown_option_is_a_config_error_naming_the_key(smoke_config, name, option):
    smoke_config["methods"][name][option] = 1.0
    with pytest.raises(ConfigError, match=f"^methods/{name}/{option}:"):
        validate(smoke_config)


@pytest.mark.parametrize("change, key", [
    (lambda m: m.update(alpha=0.9), "methods/kd-ls/alpha"),  # alpha, or kd_weight and ce_weight
    (lambda m: m.pop("ce_weight"), "methods/kd-ls/ce_weight"),
    (lambda m: m.update(ls="yes"), "methods/kd-ls/ls"),
])
def test_kd_weights_are_alpha_or_both_weights(smoke_config, change, key):
    change(smoke_config["methods"]["kd-ls"])
    with pytest.raises(ConfigError, match=f"^{key}:"):
        validate(smoke_config)


def test_mlkd_strong_view_must_fit_the_data(smoke_config):
    smoke_config["methods"]["mlkd"]["strong_view"] = {"crop_padding": 4, "flip": True}
    with pytest.raises(ConfigError, match="^methods/mlkd/strong_view/crop_padding: a image augmentation"):
        validate(smoke_config)


def test_the_logit_kd_config_is_the_default_benchmark_with_other_methods():
    """config/logit-kd.yaml pairs its runs with the default's: the same runs of scratch and kd, teacher and recipe."""
    def load(name):
        with open(os.path.join(ROOT, "config", name)) as f:
            return validate(yaml.safe_load(f))

    default, logit = load("config.yaml"), load("logit-kd.yaml")
    assert {k: v for k, v in default.items() if k not in ("benchmark", "methods")} == \
        {k: v for k, v in logit.items() if k not in ("benchmark", "methods")}
    assert {k: default["methods"][k] for k in ("scratch", "kd")} == {k: logit["methods"][k] for k in ("scratch", "kd")}
    assert {m["type"] for m in logit["methods"].values()} >= {"kd", "mlkd", "dist", "ctkd", "wttm"}


LOGIT_INSTANCES = ["kd-ls", "dkd-ls", "dist", "mlkd", "mlkd-ls", "ctkd", "wttm"]


@pytest.mark.parametrize("name", LOGIT_INSTANCES)
def test_the_cifar100_instances_trace_on_a_cifar_pair(name):
    """config/cifar100.yaml's logit instances, init and step traced (``jax.eval_shape``, nothing compiled) on
    resnet8x4 ← resnet32x4 at CIFAR-100 shapes (BatchNorm in train mode; mlkd also with a strong view)."""
    from test_feature_cifar import CIFAR100, spec_of, synthetic
    from test_feature_cifar_pairs import abstract_network

    data, student = synthetic(100), "resnet8x4"
    graphdef, params, rest = abstract_network(CIFAR100["models"]["resnet32x4"], data)
    spec = spec_of(CIFAR100, student, name)
    module = methods.get(spec.method_type)
    state = jax.eval_shape(lambda p, r, k: module.init(spec, data, Frozen(graphdef, p, r), k), params, rest,
                           jax.random.key(0))
    x, y = (a[:4] for a in data.splits["train"])
    for batch in ([(x, y, None), (x, y, x)] if spec.method_type == "mlkd" else [(x, y)]):
        new, logs = jax.eval_shape(module.step, state, batch, jax.random.key(1))
        assert logs["loss"].shape == () and jax.tree.structure(new) == jax.tree.structure(state)
