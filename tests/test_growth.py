"""Growth preserves the function exactly (float32), and the grown model keeps training."""

import jax
import jax.numpy as jnp
import optax
import pytest

from ev3 import models
from ev3.losses import cross_entropy
from ev3.models.growth import grow, size

CASES = [
    ({"type": "mlp", "width": 32, "depth": 2}, (40,)),
    ({"type": "cnn", "channels": [8, 8], "kernel_size": 5, "stride": 2}, (40,)),
    ({"type": "cnn", "channels": [8], "kernel_size": 3, "stride": 2}, (8, 8, 1)),
]


@pytest.mark.parametrize("config, input_shape", CASES, ids=["mlp", "cnn1d", "cnn2d"])
def test_growth_preserves_the_function_and_training_continues(config, input_shape):
    net = models.build(config, input_shape, 10, jax.random.key(0))
    # train a few steps first so that the weights are not at their initialization
    x = jax.random.normal(jax.random.key(1), (64, *input_shape))
    y = jax.random.randint(jax.random.key(2), (64,), 0, 10)

    def train(network, steps):
        tx = optax.adam(1e-2)
        params, opt = network.params, tx.init(network.params)

        @jax.jit
        def step(params, opt):
            loss, g = jax.value_and_grad(lambda p: cross_entropy(models.apply(network.graphdef, p, network.rest, x)[0], y))(params)
            u, opt = tx.update(g, opt, params)
            return optax.apply_updates(params, u), opt, loss

        losses = []
        for _ in range(steps):
            params, opt, loss = step(params, opt)
            losses.append(float(loss))
        return network._replace(params=params), losses

    net, _ = train(net, 5)
    grown_config, grown = grow(config, net, input_shape, 10)
    assert size(grown_config) == size(config) + 1
    assert models.param_count(grown.params) > models.param_count(net.params)
    before = models.apply(*net, x)[0]
    after = models.apply(*grown, x)[0]
    assert float(jnp.max(jnp.abs(before - after))) < 1e-5
    _, losses = train(grown, 20)
    assert losses[-1] < losses[0]


def test_growth_of_an_unknown_type_is_refused():
    with pytest.raises(ValueError, match="no growth rule"):
        grow({"type": "transformer"}, None, (4,), 2)
