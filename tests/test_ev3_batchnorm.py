"""EV3 with BatchNorm students (ResNets): explore carries the running statistics, the loop grows a ResNet."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ev3 import methods, models
from ev3.config import RunSpec
from ev3.data import load
from ev3.methods.common import Frozen
from ev3.methods.ev3 import _Arch, _variables
from ev3.protocol.explore import SGD, explore, hparams, init_family
from ev3.train import fit

RESNET8 = {"type": "resnet", "depth": 8}


def test_explore_updates_batchnorm_statistics_as_a_training_forward_does():
    """SGD with lr 0: parameters stay, and the statistics after one step are exactly what
    ``models.apply(train=True)`` computes on that batch (momentum 0.9 running averages)."""
    net = models.build(RESNET8, (8, 8, 3), 10, jax.random.key(0))
    arch = _Arch(RESNET8, net.graphdef)
    v = _variables(net)
    x = jax.random.normal(jax.random.key(1), (1, 16, 8, 8, 3))  # L = 1 step of batch 16
    y = jnp.zeros((1, 16), jnp.int32)
    t = jax.random.normal(jax.random.key(2), (1, 16, 10))
    opt_hp = hparams(learning_rate=[0.0], momentum=[0.9])
    loss_hp = hparams(w=[0.5], t_kd=[4.0], t_ce=[1.0])
    params, _, _ = explore(arch.train_apply, SGD, v, init_family(SGD, v, opt_hp), loss_hp, opt_hp, (x, y), t)
    _, expected_rest = models.apply(net.graphdef, net.params, net.rest, x[0], train=True)
    got = jax.tree.map(lambda a: a[0], params)
    for a, b in zip(jax.tree.leaves(got["params"]), jax.tree.leaves(net.params)):
        np.testing.assert_array_equal(a, b)
    moved = 0
    for a, b, init in zip(jax.tree.leaves(got["rest"]), jax.tree.leaves(expected_rest), jax.tree.leaves(net.rest)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        moved += not np.allclose(a, init)
    assert moved > 0


@pytest.mark.slow
def test_ev3_trains_and_grows_a_resnet_student(tmp_path):
    with tfds.testing.mock_data(num_examples=160):
        data = load("cifar10", str(tmp_path), seed=0, val=0.1, meta=0.2)
    net = models.build(RESNET8, data.input_shape, data.num_classes, jax.random.key(7))
    teacher = Frozen(net.graphdef, net.params, net.rest)
    options = {
        "iterations": 3, "steps_per_candidate": 2,
        "losses": [{"w": 0.9, "t_kd": 4.0, "t_ce": 1.0}], "optimizers": [{"name": "sgd", "learning_rate": 0.05, "momentum": 0.9}],
        "stages": {"assess_samples": 8, "decide_samples": 8}, "objectives": [{"metric": "accuracy"}],
        "decide": {"rule": "always"}, "growth": {"patience": 1, "max_size": 4},
    }
    spec = RunSpec(
        benchmark="t", dataset="cifar10", data_dir=str(tmp_path), split={"seed": 0, "val": 0.1, "meta": 0.2},
        role="student", method="ev3", method_type="ev3", options=options, model_name="resnet8", model=RESNET8,
        train={"steps": 1, "batch_size": 8, "eval_every": 2, "augment": {"crop_padding": 4, "flip": True},
               "optimizer": {"name": "sgd", "learning_rate": 0.05}},
        seed=0, teacher="resnet8", teacher_model=RESNET8, teacher_seed=0, teacher_dir=None,
    )
    result = fit(methods.get("ev3"), spec, data, teacher, log=lambda s: None)
    ev = methods.get("ev3").summary(result)
    assert ev["growth_events"] and sum(ev["current_arch"]["blocks"]) >= 4  # resnet8 (3 blocks) → + one block
    final = result.final_state.student
    init_rest = models.build(ev["final_arch"], data.input_shape, 10, jax.random.key(0)).rest
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(final.rest), jax.tree.leaves(init_rest)))
    assert result.compute["student_steps"] == 3 * 2 and all(np.isfinite(h["val_accuracy"]) for h in result.history)
