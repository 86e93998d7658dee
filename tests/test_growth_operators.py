"""The EV3 reference's growth operators: grown configs, and function preservation in eval and train mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ev3 import models
from ev3.models.growth import (
    GROWTH_OPERATORS,
    deepen_cnn,
    deepen_mlp,
    deepen_resnet_stage,
    double_resnet,
    doubled_resnet_config,
    expand_mlp,
    size,
    widen_mlp,
)
from ev3.models.resnet import stage_blocks

CLASSES = 5


def perturbed(config, input_shape, seed=0):
    """A network whose parameters and BatchNorm statistics are all away from their initial values (numpy draws:
    no per-shape compilation)."""
    net = models.build(config, input_shape, CLASSES, jax.random.key(seed))
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda p: p + jnp.asarray(0.2 * rng.standard_normal(p.shape), p.dtype), net.params)

    def stat(path, v):
        if any(getattr(k, "key", None) == "var" for k in path):
            return jnp.asarray(rng.uniform(0.5, 2.0, v.shape), v.dtype)
        return jnp.asarray(0.3 * rng.standard_normal(v.shape), v.dtype)

    return net._replace(params=params, rest=jax.tree_util.tree_map_with_path(stat, net.rest))


_apply = jax.jit(models.apply, static_argnums=0, static_argnames="train")


def logits(net, x, train=False):
    return _apply(net.graphdef, net.params, net.rest, x, train=train)[0]


def max_change(before, after, x):
    """max |Δlogits| over eval mode (running statistics) and train mode (batch statistics)."""
    return max(float(jnp.max(jnp.abs(logits(before, x, t) - logits(after, x, t)))) for t in (False, True))


def assert_preserved(before, after, x):
    assert max_change(before, after, x) < 1e-5
    # the old network's output is not trivially constant
    assert float(jnp.std(logits(before, x))) > 1e-2


MLP = {"type": "mlp", "width": 6, "depth": 2}
MLP_SHAPE = (12,)


@pytest.fixture(scope="module")
def mlp():
    x = jax.random.normal(jax.random.key(9), (16, *MLP_SHAPE))
    return perturbed(MLP, MLP_SHAPE), x


def test_widen_mlp_doubles_plus_one_and_preserves_the_function(mlp):
    net, x = mlp
    config, grown = widen_mlp(MLP, net, MLP_SHAPE, CLASSES, jax.random.key(3))
    assert config == {"type": "mlp", "widths": [13, 13]}
    old, new = nnx.merge(*net), nnx.merge(*grown)
    assert [layer.kernel.value.shape for layer in new.hidden] == [(12, 13), (13, 13)]
    assert new.head.kernel.value.shape == (13, CLASSES)
    # old weights copied; new units' outgoing weights zero, their incoming weights random (non-zero)
    assert jnp.array_equal(new.hidden[1].kernel.value[:6, :6], old.hidden[1].kernel.value)
    assert float(jnp.abs(new.hidden[1].kernel.value[6:, :6]).max()) == 0
    assert float(jnp.abs(new.head.kernel.value[6:]).max()) == 0
    assert float(jnp.abs(new.hidden[0].kernel.value[:, 6:]).min()) > 0
    assert float(jnp.abs(new.hidden[1].kernel.value[:, 6:]).min()) > 0
    assert_preserved(net, grown, x)
    # the new units are active: after a widening, the hidden activations differ from zero there
    h = jax.nn.relu(x.reshape(16, -1) @ new.hidden[0].kernel.value + new.hidden[0].bias.value)
    assert float(jnp.abs(h[:, 6:]).max()) > 0
    config2, grown2 = widen_mlp(config, perturbed(config, MLP_SHAPE, 4), MLP_SHAPE, CLASSES, jax.random.key(5))
    assert config2["widths"] == [27, 27]
    assert_preserved(perturbed(config, MLP_SHAPE, 4), grown2, x)


@pytest.mark.parametrize("layer", [0, 1])
def test_deepen_mlp_inserts_an_identity_layer(mlp, layer):
    net, x = mlp
    config, grown = deepen_mlp(MLP, net, MLP_SHAPE, CLASSES, jax.random.key(3), layer=layer)
    assert config == {"type": "mlp", "widths": [6, 6, 6]} and size(config) == size(MLP) + 1
    assert jnp.array_equal(nnx.merge(*grown).hidden[layer + 1].kernel.value, jnp.eye(6))
    assert_preserved(net, grown, x)


def test_deepen_mlp_after_a_layer_of_another_width():
    config = {"type": "mlp", "widths": [7, 3, 5]}
    net = perturbed(config, MLP_SHAPE)
    x = jax.random.normal(jax.random.key(9), (16, *MLP_SHAPE))
    new_config, grown = deepen_mlp(config, net, MLP_SHAPE, CLASSES, jax.random.key(0), layer=1)
    assert new_config["widths"] == [7, 3, 3, 5]
    assert_preserved(net, grown, x)


def drawn(op, config, input_shape, outcome, wanted, seeds=24):
    """The outcomes ``outcome(grown config)`` of ``op`` over keys 0, 1, … until all of ``wanted`` were seen."""
    net, seen = perturbed(config, input_shape), set()
    for seed in range(seeds):
        seen.add(outcome(op(config, net, input_shape, CLASSES, jax.random.key(seed), morphism=False)[0]))
        if seen >= wanted:
            break
    return seen


def test_deepen_mlp_draws_the_layer_from_the_key():
    config = {"type": "mlp", "widths": [7, 3, 5]}
    layer = lambda c: next(i for i in range(3) if c["widths"][i + 1] == c["widths"][i])  # noqa: E731
    assert drawn(deepen_mlp, config, MLP_SHAPE, layer, {0, 1, 2}) == {0, 1, 2}
    net = perturbed(config, MLP_SHAPE)
    a = deepen_mlp(config, net, MLP_SHAPE, CLASSES, jax.random.key(5))[0]
    assert deepen_mlp(config, net, MLP_SHAPE, CLASSES, jax.random.key(5), morphism=False)[0] == a


def test_expand_mlp_draws_both_operators(mlp):
    net, x = mlp
    kind = lambda c: "widen" if c["widths"] == [13, 13] else "deepen"  # noqa: E731
    assert drawn(expand_mlp, MLP, MLP_SHAPE, kind, {"widen", "deepen"}) == {"widen", "deepen"}
    _, grown = expand_mlp(MLP, net, MLP_SHAPE, CLASSES, jax.random.key(0))
    assert_preserved(net, grown, x)


CNN_CASES = [
    ({"type": "cnn", "channels": [4, 6], "kernel_size": 5, "stride": 2}, (40,)),
    ({"type": "cnn", "channels": [4, 6], "kernel_size": 4, "stride": [2, 1]}, (40,)),  # even kernel
    ({"type": "cnn", "channels": [3], "kernel_size": 3, "stride": 2}, (8, 8, 1)),
]


@pytest.mark.parametrize("config, input_shape", CNN_CASES, ids=["1d", "1d-even-kernel", "2d"])
def test_deepen_cnn_inserts_an_identity_convolution(config, input_shape):
    net = perturbed(config, input_shape)
    x = jax.random.normal(jax.random.key(9), (8, *input_shape))
    for layer in range(len(config["channels"])):
        new_config, grown = deepen_cnn(config, net, input_shape, CLASSES, jax.random.key(3), layer=layer)
        assert new_config["channels"] == [*config["channels"][: layer + 1], config["channels"][layer],
                                          *config["channels"][layer + 1 :]]
        assert new_config["stride"][layer + 1] == 1 and size(new_config) == size(config) + 1
        assert_preserved(net, grown, x)


RESNET8 = {"type": "resnet", "depth": 8}
WRN10 = {"type": "wrn", "depth": 10}
IMAGE = (8, 8, 3)


@pytest.fixture(scope="module")
def images():
    return jax.random.normal(jax.random.key(9), (8, *IMAGE))


@pytest.mark.parametrize("config", [RESNET8, WRN10, {**RESNET8, "extra_blocks": 1}], ids=["resnet8", "wrn10", "extra"])
def test_deepen_resnet_stage_appends_an_identity_block(config, images):
    net = perturbed(config, IMAGE)
    counts = stage_blocks(config)
    for stage in range(3) if config == RESNET8 else [1]:
        new_config, grown = deepen_resnet_stage(config, net, IMAGE, CLASSES, jax.random.key(3), stage=stage)
        expected = [c + (s == stage) for s, c in enumerate(counts)]
        assert new_config["blocks"] == expected and "extra_blocks" not in new_config
        assert new_config["depth"] == config["depth"] + 2 * (1 + config.get("extra_blocks", 0))
        assert size(new_config) == size(config) + 1
        new_block = nnx.merge(*grown).blocks[sum(expected[: stage + 1]) - 1]
        zeroed = new_block.bn2.scale if config["type"] == "resnet" else new_block.conv2.kernel
        assert float(jnp.abs(zeroed.value).max()) == 0
        assert_preserved(net, grown, images)
        # train mode: the copied blocks see the same batches, so their statistics update identically
        end = sum(expected[: stage + 1]) - 1
        old_rest = _apply(net.graphdef, net.params, net.rest, images, train=True)[1]
        new_rest = _apply(grown.graphdef, grown.params, grown.rest, images, train=True)[1]
        for j in range(sum(counts)):
            i = j + (j >= end)
            same = jax.tree.map(lambda a, b: bool(jnp.allclose(a, b, atol=1e-5)), old_rest["blocks"][j],
                                new_rest["blocks"][i])
            assert all(jax.tree.leaves(same)), (stage, j)


def test_deepen_resnet_stage_draws_every_stage():
    stages = drawn(deepen_resnet_stage, RESNET8, IMAGE, lambda c: tuple(c["blocks"]), {(2, 1, 1), (1, 2, 1), (1, 1, 2)})
    assert stages == {(2, 1, 1), (1, 2, 1), (1, 1, 2)}


@pytest.mark.parametrize("config", [RESNET8, WRN10], ids=["resnet8", "wrn10"])
def test_double_resnet_doubles_every_stage_and_preserves_the_function(config, images):
    net = perturbed(config, IMAGE)
    new_config, grown = double_resnet(config, net, IMAGE, CLASSES, jax.random.key(3))
    assert new_config["blocks"] == [2, 2, 2] and size(new_config) == 6
    assert_preserved(net, grown, images)
    # the old blocks keep their place at the start of their stage
    old, new = nnx.merge(*net), nnx.merge(*grown)
    for j, i in enumerate([0, 2, 4]):
        assert jnp.array_equal(new.blocks[i].conv1.kernel.value, old.blocks[j].conv1.kernel.value)
    again, grown_again = double_resnet(new_config, perturbed(new_config, IMAGE), IMAGE, CLASSES, jax.random.key(4))
    assert again["blocks"] == [4, 4, 4]
    assert_preserved(perturbed(new_config, IMAGE), grown_again, images)


def test_doubling_depths_follow_the_reference():
    depths, config = [], RESNET8
    for _ in range(3):
        config = doubled_resnet_config(config)
        depths.append(config["depth"])
    assert depths == [14, 26, 50]
    depths, config = [], {"type": "resnet", "depth": 20}
    for _ in range(2):
        config = doubled_resnet_config(config)
        depths.append(config["depth"])
    assert depths == [38, 74]
    assert doubled_resnet_config(WRN10)["depth"] == 16  # WRN: 2·Σ blocks + 4


@pytest.mark.parametrize("name, config, input_shape", [
    ("widen_mlp", MLP, MLP_SHAPE),
    ("deepen_mlp", MLP, MLP_SHAPE),
    ("deepen_cnn", CNN_CASES[0][0], CNN_CASES[0][1]),
    ("deepen_resnet_stage", RESNET8, IMAGE),
    ("double_resnet", RESNET8, IMAGE),
])
def test_without_morphism_the_grown_architecture_is_freshly_initialised(name, config, input_shape):
    op = GROWTH_OPERATORS[name]
    net = perturbed(config, input_shape)
    x = jax.random.normal(jax.random.key(9), (8, *input_shape))
    kept_config, kept = op(config, net, input_shape, CLASSES, jax.random.key(3))
    fresh_config, fresh = op(config, net, input_shape, CLASSES, jax.random.key(3), morphism=False)
    assert fresh_config == kept_config
    assert jax.tree.structure(fresh.params) == jax.tree.structure(kept.params)
    assert [p.shape for p in jax.tree.leaves(fresh.params)] == [p.shape for p in jax.tree.leaves(kept.params)]
    assert max_change(net, fresh, x) > 1e-3
    # the fresh network is a plain initialisation of the grown config (not a copy of the old weights)
    old_leaves = {np.asarray(p).tobytes() for p in jax.tree.leaves(net.params)}
    assert not any(np.asarray(p).tobytes() in old_leaves for p in jax.tree.leaves(fresh.params) if p.size > CLASSES)


def test_stage_blocks_and_the_blocks_key():
    assert stage_blocks(RESNET8) == [1, 1, 1]
    assert stage_blocks({"type": "resnet", "depth": 20, "extra_blocks": 2}) == [3, 3, 5]
    assert stage_blocks({"type": "resnet", "blocks": [1, 2, 1]}) == [1, 2, 1]
    assert stage_blocks({"type": "wrn", "depth": 12, "blocks": [1, 2, 1]}) == [1, 2, 1]
    with pytest.raises(ValueError, match="does not match"):
        stage_blocks({"type": "resnet", "depth": 8, "blocks": [1, 2, 1]})
    with pytest.raises(ValueError, match="three counts"):
        stage_blocks({"type": "resnet", "blocks": [1, 1]})
    with pytest.raises(ValueError, match="depth or blocks"):
        stage_blocks({"type": "resnet"})
    # blocks [n, n, n] and extra_blocks build the same network as depth (same init order: same parameters)
    for a, b in [(RESNET8, {"type": "resnet", "blocks": [1, 1, 1]}),
                 ({**RESNET8, "extra_blocks": 1}, {"type": "resnet", "blocks": [1, 1, 2]})]:
        na, nb = (models.build(c, IMAGE, CLASSES, jax.random.key(0)) for c in (a, b))
        assert jax.tree.all(jax.tree.map(jnp.array_equal, na.params, nb.params))
