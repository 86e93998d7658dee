"""Train resnet8 (kd, live resnet8 teacher, augmentation) on mock cifar10 for a few steps, once on every
local device (data parallel) and once on the first device only; print both results as JSON.

Run with ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` (tests/test_parallel.py)."""

import json
import sys

import jax
import numpy as np
import tensorflow_datasets as tfds

from ev3 import methods
from ev3.config import RunSpec
from ev3.data import load
from ev3.methods.common import Frozen
from ev3.models import build
from ev3.train import fit

data_dir = sys.argv[1]
with tfds.testing.mock_data(num_examples=160):
    data = load("cifar10", data_dir, seed=0, val=0.1, meta=0.1)
resnet8 = {"type": "resnet", "depth": 8}
net = build(resnet8, data.input_shape, data.num_classes, jax.random.key(7))
teacher = Frozen(net.graphdef, net.params, net.rest)
spec = RunSpec(
    benchmark="t", dataset="cifar10", data_dir=data_dir, split={"seed": 0, "val": 0.1, "meta": 0.1}, role="student",
    method="kd", method_type="kd", options={"temperature": 4.0, "alpha": 0.9}, model_name="resnet8", model=resnet8,
    train={"steps": 6, "batch_size": 16, "eval_every": 3, "augment": {"crop_padding": 4, "flip": True},
           "optimizer": {"name": "sgd", "learning_rate": 0.05, "momentum": 0.9, "weight_decay": 5e-4}},
    seed=0, teacher="resnet8", teacher_model=resnet8, teacher_seed=0, teacher_dir=None,
)
out = {"devices": len(jax.devices())}
for name, devices in (("sharded", jax.devices()), ("single", jax.devices()[:1])):
    result = fit(methods.get("kd"), spec, data, teacher, log=lambda s: None, devices=devices)
    student = result.final_state.student
    leaves = jax.tree.leaves((student.params, student.rest))
    out[name] = {
        "losses": [h["train_loss"] for h in result.history],
        "leaves": [np.asarray(x, np.float64).ravel().tolist() for x in leaves],
        "param_devices": len(leaves[0].sharding.device_set),
    }
print(json.dumps(out))
