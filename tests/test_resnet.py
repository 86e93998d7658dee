"""CIFAR ResNet / WRN zoo: published parameter counts, BatchNorm in train and eval mode, training with the
statistics threaded through ``rest``, bfloat16 compute, and function-preserving growth."""

import math

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

from ev3 import models
from ev3.config import ConfigError, validate
from ev3.losses import cross_entropy
from ev3.models.growth import deepen_resnet_stage, deepened_resnet_config, size

# Trainable parameters (nnx.Param) with 100 classes, in millions, as tabulated for CIFAR-100 by RepDistiller
# (CRD) and mdistiller. resnet8/14/44 are not in those tables: their values follow from the definition
# (resnet14 = 181,108 = resnet20's 278,324 minus one block per stage). resnet110 has 1,736,564 (1.74 M);
# the 1.73 M some tables print is its 10-class count (1,730,714).
COUNTS = [
    ("resnet8", {"type": "resnet", "depth": 8}, 0.08),
    ("resnet14", {"type": "resnet", "depth": 14}, 0.18),
    ("resnet20", {"type": "resnet", "depth": 20}, 0.28),
    ("resnet32", {"type": "resnet", "depth": 32}, 0.47),
    ("resnet44", {"type": "resnet", "depth": 44}, 0.67),
    ("resnet56", {"type": "resnet", "depth": 56}, 0.86),
    ("resnet110", {"type": "resnet", "depth": 110}, 1.74),
    ("resnet8x4", {"type": "resnet", "depth": 8, "width": 4}, 1.23),
    ("resnet32x4", {"type": "resnet", "depth": 32, "width": 4}, 7.43),
    ("wrn16-2", {"type": "wrn", "depth": 16, "widen": 2}, 0.70),
    ("wrn40-1", {"type": "wrn", "depth": 40, "widen": 1}, 0.57),
    ("wrn40-2", {"type": "wrn", "depth": 40, "widen": 2}, 2.26),
]


def abstract_model(config: dict, input_shape=(32, 32, 3), num_classes=100):
    """The module with shapes only (nnx.eval_shape: nothing is allocated or initialized)."""
    options = {k: v for k, v in config.items() if k != "type"}
    return nnx.eval_shape(lambda: models.MODEL_TYPES[config["type"]](input_shape, num_classes, **options, rngs=nnx.Rngs(0)))


def graphdef_of(config: dict, input_shape, num_classes: int):
    """The static graphdef of a model without building it (e.g. to apply other params with a new dtype)."""
    return nnx.split(abstract_model(config, input_shape, num_classes), nnx.Param, ...)[0]


apply = jax.jit(models.apply, static_argnums=0, static_argnames="train")  # one compile per graphdef and mode


@pytest.mark.parametrize("config, millions", [c[1:] for c in COUNTS], ids=[c[0] for c in COUNTS])
def test_parameter_counts_match_the_published_tables(config, millions):
    params = nnx.state(abstract_model(config), nnx.Param)
    count = sum(math.prod(p.shape) for p in jax.tree.leaves(params))
    assert abs(count / 1e6 - millions) < 0.005, count


def test_x4_variants_have_repdistillers_filters():
    model = abstract_model({"type": "resnet", "depth": 8, "width": 4})  # num_filters [32, 64, 128, 256]
    assert model.conv.out_features == 32
    assert [b.conv2.out_features for b in model.blocks] == [64, 128, 256]
    assert model.blocks[0].shortcut is not None  # 32 → 64 at stride 1 still needs the 1×1 projection


def test_invalid_depths_are_refused():
    with pytest.raises(ValueError, match="6n \\+ 2"):
        abstract_model({"type": "resnet", "depth": 18})
    with pytest.raises(ValueError, match="6n \\+ 4"):
        abstract_model({"type": "wrn", "depth": 20})


SCHEMA_CASES = [
    ({"type": "resnet", "depth": 20}, True),
    ({"type": "resnet", "depth": 8, "width": 4, "dtype": "bfloat16"}, True),
    ({"type": "wrn", "depth": 40, "widen": 2, "extra_blocks": 1}, True),
    ({"type": "mlp", "width": 8, "depth": 1, "dtype": "bfloat16"}, True),
    ({"type": "cnn", "channels": [4], "kernel_size": 3, "stride": 1, "dtype": "float32"}, True),
    ({"type": "resnet", "depth": 18}, False),
    ({"type": "wrn", "depth": 20}, False),
    ({"type": "resnet", "depth": 20, "widen": 2}, False),
    ({"type": "wrn", "depth": 16, "extra_blocks": -1}, False),
    ({"type": "cnn", "channels": [4], "kernel_size": 3, "stride": 1, "dtype": "float16"}, False),
    # per-layer MLP widths and per-stage ResNet/WRN blocks (growth operators)
    ({"type": "mlp", "widths": [13, 7]}, True),
    ({"type": "mlp", "widths": [13], "width": 6}, False),
    ({"type": "mlp", "widths": [13], "depth": 1}, False),
    ({"type": "mlp", "widths": []}, False),
    ({"type": "mlp", "width": 6}, False),
    ({"type": "resnet", "blocks": [1, 2, 1]}, True),
    ({"type": "resnet", "depth": 14, "blocks": [2, 2, 2], "extra_blocks": 1}, True),
    ({"type": "wrn", "blocks": [2, 1, 1], "widen": 2}, True),
    ({"type": "resnet", "blocks": [1, 2]}, False),
    ({"type": "resnet", "blocks": [0, 1, 1]}, False),
    ({"type": "resnet", "width": 4}, False),
]


@pytest.mark.parametrize("model, valid", SCHEMA_CASES)
def test_the_schema_accepts_the_zoo_and_the_dtype_switch(smoke_config, model, valid):
    smoke_config["models"]["extra"] = model
    if valid:
        validate(smoke_config)
    else:
        with pytest.raises(ConfigError, match="models/extra"):
            validate(smoke_config)


def sgd_steps(network: models.Network, x, y, steps: int, lr: float = 0.05):
    """``steps`` SGD-momentum steps in train mode (batch statistics, ``rest`` threaded); (network, losses)."""
    tx = optax.sgd(lr, momentum=0.9)

    @jax.jit
    def step(params, rest, opt_state):
        def loss_fn(p):
            logits, new_rest = models.apply(network.graphdef, p, rest, x, train=True)
            return cross_entropy(logits, y), new_rest

        (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), rest, opt_state, loss

    params, rest, opt_state, losses = network.params, network.rest, tx.init(network.params), []
    for _ in range(steps):
        params, rest, opt_state, loss = step(params, rest, opt_state)
        losses.append(float(loss))
    return network._replace(params=params, rest=rest), losses


RESNET8 = {"type": "resnet", "depth": 8}


@pytest.fixture(scope="module")
def trained_resnet8():
    """resnet8 after 8 SGD steps on a fixed batch of 32 random 32×32×3 images with 10 classes."""
    x = jax.random.normal(jax.random.key(1), (32, 32, 32, 3))
    y = jax.random.randint(jax.random.key(2), (32,), 0, 10)
    network, losses = sgd_steps(models.build(RESNET8, (32, 32, 3), 10, jax.random.key(0)), x, y, 8)
    return network, x, y, losses


def test_sgd_steps_lower_the_cross_entropy(trained_resnet8):
    _, _, _, losses = trained_resnet8
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0], losses


def test_batchnorm_uses_batch_statistics_in_train_mode_and_running_averages_in_eval(trained_resnet8):
    network, x, _, _ = trained_resnet8
    stem_mean = network.rest["bn"]["mean"].value
    assert stem_mean.dtype == jnp.float32 and float(jnp.abs(stem_mean).max()) > 0  # statistics were updated
    # train mode: running mean ← 0.9 · running mean + 0.1 · batch mean
    model = nnx.merge(*network)
    batch_mean = model.conv(x).mean(axis=(0, 1, 2))
    _, rest = apply(*network, x, train=True)
    assert jnp.allclose(rest["bn"]["mean"].value, 0.9 * stem_mean + 0.1 * batch_mean, atol=1e-5)
    # eval mode: statistics untouched, and each sample's logits do not depend on the rest of the batch
    logits, rest = apply(*network, x)
    assert jax.tree.all(jax.tree.map(jnp.array_equal, rest, network.rest))
    x_half = jnp.concatenate([x[:16], jnp.zeros_like(x[16:])])  # same shape: no new compile
    assert jnp.allclose(apply(*network, x_half)[0][:16], logits[:16], atol=1e-5)
    assert not jnp.allclose(apply(*network, x_half, train=True)[0][:16], logits[:16], atol=1e-3)


@pytest.mark.parametrize("input_shape", [(28, 28, 1), (28, 28)], ids=["hwc", "hw"])
def test_mnist_shaped_inputs(input_shape):
    model = abstract_model({"type": "wrn", "depth": 10, "widen": 1}, input_shape, 10)
    model.train()
    logits = nnx.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct((2, *input_shape), jnp.float32))
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32


def test_bfloat16_compute_keeps_float32_params_statistics_and_logits(trained_resnet8):
    network, x, _, _ = trained_resnet8
    config = {**RESNET8, "dtype": "bfloat16"}
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(abstract_model(config), nnx.Param)))
    graphdef = graphdef_of(config, (32, 32, 3), 10)
    logits_bf16, rest = apply(graphdef, network.params, network.rest, x, train=True)
    assert logits_bf16.dtype == jnp.float32  # cast after the head: the losses work in float32
    assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(rest))
    logits_f32 = apply(*network, x)[0]
    logits_bf16 = apply(graphdef, network.params, network.rest, x)[0]
    assert not jnp.array_equal(logits_f32, logits_bf16)  # it did compute in bfloat16
    agreement = float(jnp.mean(logits_f32.argmax(-1) == logits_bf16.argmax(-1)))
    assert agreement >= 0.9, agreement


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_every_model_has_the_bfloat16_switch(model):
    config = {"mlp": {"type": "mlp", "width": 16, "depth": 1},
              "cnn": {"type": "cnn", "channels": [4], "kernel_size": 3, "stride": 2}}[model]
    config_bf16 = {**config, "dtype": "bfloat16"}
    params = nnx.state(abstract_model(config_bf16, (8, 8, 1), 10), nnx.Param)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    f32 = models.build(config, (8, 8, 1), 10, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
    logits = apply(graphdef_of(config_bf16, (8, 8, 1), 10), f32.params, f32.rest, x)[0]
    logits_f32 = apply(*f32, x)[0]
    assert logits.dtype == jnp.float32 and not jnp.array_equal(logits, logits_f32)
    assert jnp.allclose(logits, logits_f32, atol=0.05)


def assert_growth_preserves_the_function(config, network, x, y, input_shape):
    new_config, grown = deepen_resnet_stage(config, network, input_shape, 10, jax.random.key(5), stage=2)
    assert new_config == deepened_resnet_config(config, 2)
    assert size(new_config) == size(config) + 1
    assert models.param_count(grown.params) > models.param_count(network.params)
    for train in (False, True):  # eval: running averages; train: batch statistics, before their update
        before = apply(*network, x, train=train)[0]
        after = apply(*grown, x, train=train)[0]
        assert float(jnp.max(jnp.abs(before - after))) < 1e-5, train
    # the old statistics were copied (the new block's start at mean 0, variance 1)
    assert jnp.array_equal(grown.rest["blocks"][0]["bn1"]["mean"].value, network.rest["blocks"][0]["bn1"]["mean"].value)
    return new_config, grown


def test_resnet_growth_appends_an_identity_block(trained_resnet8):
    network, x, y, _ = trained_resnet8
    assert size(RESNET8) == 3
    config, grown = assert_growth_preserves_the_function(RESNET8, network, x, y, (32, 32, 3))
    assert float(jnp.abs(grown.params["blocks"][3]["bn2"]["scale"].value).max()) == 0
    config, grown = assert_growth_preserves_the_function(config, grown, x, y, (32, 32, 3))  # and again
    assert size(config) == 5 and len(nnx.merge(*grown).blocks) == 5


def test_wrn_growth_appends_an_identity_block():
    config = {"type": "wrn", "depth": 10, "widen": 1}
    x = jax.random.normal(jax.random.key(1), (8, 16, 16, 3))
    y = jax.random.randint(jax.random.key(2), (8,), 0, 10)
    network, _ = sgd_steps(models.build(config, (16, 16, 3), 10, jax.random.key(0)), x, y, 4)
    assert size(config) == 3
    config, grown = assert_growth_preserves_the_function(config, network, x, y, (16, 16, 3))
    assert float(jnp.abs(grown.params["blocks"][3]["conv2"]["kernel"].value).max()) == 0
