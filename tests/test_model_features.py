"""Intermediate features (``ev3.models.features``): shapes for every zoo model, the plain forward's logits and
BatchNorm statistics unchanged (bitwise) in train and eval mode, and each feature re-derived from the modules."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ev3 import models

from test_resnet import COUNTS, abstract_model

def expected_shapes(config: dict, batch: int, size: int):
    """(stages, embedding) shapes of a CIFAR-style zoo model on ``size``×``size`` images, from its definition."""
    k = config.get("width", 1) if config["type"] == "resnet" else config.get("widen", 1)
    widths, sizes = [16 * k, 32 * k, 64 * k], [size, size // 2, size // 4]
    return [(batch, s, s, w) for s, w in zip(sizes, widths)], (batch, widths[-1])


ZOO = [*COUNTS, ("wrn16-2+2", {"type": "wrn", "depth": 16, "widen": 2, "extra_blocks": 2}, None)]


@pytest.mark.parametrize("config", [c[1] for c in ZOO], ids=[c[0] for c in ZOO])
def test_feature_shapes_of_every_zoo_model(config):
    """Abstract evaluation only (jax.eval_shape): nothing is compiled or computed."""
    graphdef, params, rest = nnx.split(abstract_model(config), nnx.Param, ...)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    (logits, feats), _ = jax.eval_shape(lambda p, r, x: models.apply(graphdef, p, r, x, features=True), params, rest, x)
    stages, embedding = expected_shapes(config, 2, 32)
    assert logits.shape == (2, 100) and logits.dtype == jnp.float32
    assert [f.shape for f in feats.stages] == stages
    assert [f.shape for f in feats.preact] == stages
    assert feats.embedding.shape == embedding


SMALL = {
    "resnet8x4": ({"type": "resnet", "depth": 8, "width": 4}, (16, 16, 3)),
    "resnet14+1": ({"type": "resnet", "depth": 14, "extra_blocks": 1}, (16, 16, 3)),
    "wrn16-2": ({"type": "wrn", "depth": 16, "widen": 2}, (16, 16, 3)),
    "wrn10-1+1": ({"type": "wrn", "depth": 10, "extra_blocks": 1}, (16, 16, 3)),
    "mlp": ({"type": "mlp", "width": 12, "depth": 2}, (40,)),
    "cnn1d": ({"type": "cnn", "channels": [6, 5, 4], "kernel_size": 5, "stride": [2, 2, 1]}, (40,)),
    "cnn2d": ({"type": "cnn", "channels": [4, 3], "kernel_size": 3, "stride": 2}, (8, 8, 1)),
}


@functools.cache
def network_and_input(name: str):
    """A built model whose BatchNorm statistics moved away from their initial 0 / 1 (one train-mode pass), and a
    batch of 5 inputs."""
    config, input_shape = SMALL[name]
    x = jax.random.normal(jax.random.key(1), (5, *input_shape))
    network = models.build(config, input_shape, 10, jax.random.key(0))
    return network._replace(rest=models.apply(*network, x, train=True)[1]), x


@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize("train", [False, True])
def test_features_leave_logits_and_statistics_bitwise_unchanged(name, train):
    network, x = network_and_input(name)
    with jax.disable_jit():  # op by op: two compiled programs may fuse (and round) differently, the same ops do not
        logits, rest = models.apply(*network, x, train=train)
        (logits_f, feats), rest_f = models.apply(*network, x, train=train, features=True)
    assert logits_f.dtype == jnp.float32 and jnp.array_equal(logits, logits_f)
    for a, b in zip(jax.tree.leaves(rest), jax.tree.leaves(rest_f), strict=True):
        assert jnp.array_equal(a, b)
    if train and jax.tree.leaves(rest):  # the pass did update the statistics
        assert not all(jnp.array_equal(a, b) for a, b in zip(jax.tree.leaves(network.rest), jax.tree.leaves(rest)))
    # logits = head(embedding)
    head = nnx.merge(*network).head
    np.testing.assert_allclose(head(feats.embedding), logits, rtol=1e-5, atol=1e-5)


def eval_features(name: str):
    """(the model in eval mode, its input, its eval-mode features)."""
    network, x = network_and_input(name)
    model = nnx.merge(*network)
    model.eval()
    return model, x, models.apply(*network, x, features=True)[0][1]


@pytest.mark.parametrize("name", ["mlp", "cnn1d", "cnn2d", "resnet14+1"])
def test_post_activation_stages_are_relu_of_preact(name):
    config = SMALL[name][0]
    model, x, feats = eval_features(name)
    n_stages = len(config["channels"]) if name.startswith("cnn") else 2 if name == "mlp" else 3
    assert len(feats.stages) == len(feats.preact) == n_stages
    for s, p in zip(feats.stages, feats.preact):
        assert jnp.array_equal(s, jax.nn.relu(p)) and bool(jnp.any(p < 0))
    last = feats.stages[-1]
    expected = last.reshape(5, -1) if not name.startswith("resnet") else last.mean(axis=(1, 2))
    np.testing.assert_allclose(feats.embedding, expected, rtol=1e-6, atol=1e-6)


def test_mlp_and_cnn_features_rederived_from_the_layers():
    model, x, feats = eval_features("mlp")
    assert [f.shape for f in feats.stages] == [(5, 12), (5, 12)] and feats.embedding.shape == (5, 12)
    h0 = model.hidden[0](x)
    np.testing.assert_allclose(feats.preact[0], h0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(feats.preact[1], model.hidden[1](jax.nn.relu(h0)), rtol=1e-5, atol=1e-5)

    model, x, feats = eval_features("cnn1d")
    assert [f.shape for f in feats.stages] == [(5, 20, 6), (5, 10, 5), (5, 10, 4)]
    np.testing.assert_allclose(feats.preact[0], model.convs[0](x[..., None]), rtol=1e-6, atol=1e-6)


def test_resnet_stages_rederived_from_the_blocks():
    """resnet14 + 1 extra block: stages end after blocks 1, 3 and 6; preact is the last block's residual sum."""
    model, x, feats = eval_features("resnet14+1")
    h = jax.nn.relu(model.bn(model.conv(x)))
    outputs, sums = [], []
    for block in model.blocks:
        out = block.bn2(block.conv2(jax.nn.relu(block.bn1(block.conv1(h)))))
        sums.append(out + (h if block.shortcut is None else block.shortcut(h)))
        h = jax.nn.relu(sums[-1])
        outputs.append(h)
    for got, want in zip(feats.stages, [outputs[1], outputs[3], outputs[6]], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for got, want in zip(feats.preact, [sums[1], sums[3], sums[6]], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_wrn_stages_are_residual_sums_and_preact_the_next_batchnorm():
    """wrn10-1 + 1 extra block (blocks: 1, 1, 2 per stage): stages end after blocks 0, 1 and 3; the
    pre-activations are bn1 of blocks 1 and 2 and the final BN, as mdistiller's wrn.py ``preact_feats``."""
    model, x, feats = eval_features("wrn10-1+1")
    h, outputs = model.conv(x), []
    for block in model.blocks:
        h = block(h)
        outputs.append(h)
    want_stages = [outputs[0], outputs[1], outputs[3]]
    for got, want in zip(feats.stages, want_stages, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for got, want in zip(feats.preact, [model.blocks[1].bn1(outputs[0]), model.blocks[2].bn1(outputs[1]),
                                       model.bn(outputs[3])], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(feats.embedding, jax.nn.relu(model.bn(outputs[3])).mean(axis=(1, 2)), rtol=1e-5,
                               atol=1e-5)
