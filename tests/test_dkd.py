"""The ``dkd`` method: its step optimizes CE + warm-up · (α·TCKD + β·NCKD) with the live teacher."""

import jax
import numpy as np

from ev3 import methods
from ev3.config import RunSpec, student_run, validate
from ev3.losses import cross_entropy, dkd_loss
from ev3.methods.common import Frozen
from ev3.models import build

DKD = methods.get("dkd")



def test_dkd_step_loss_follows_the_warm_up(smoke_config, data_dir, mnist1d):
    smoke_config["methods"] = {"dkd": {"type": "dkd", "temperature": 4.0, "alpha": 1.0, "beta": 8.0, "warmup_steps": 2}}
    spec = RunSpec.from_dict({**student_run(validate(smoke_config), "mnist1d", "mlp64", "dkd", 0), "data_dir": data_dir})
    net = build({"type": "mlp", "width": 32, "depth": 1}, mnist1d.input_shape, 10, jax.random.key(3))
    teacher = Frozen(net.graphdef, net.params, net.rest)
    state = DKD.init(spec, mnist1d, teacher, jax.random.key(0))
    x, y = (a[:64] for a in mnist1d.splits["train"])
    step = jax.jit(DKD.step)
    for k, ramp in enumerate([0.0, 0.5, 1.0, 1.0]):
        logits, t = DKD.evaluate(state, x), teacher(x)
        expected = cross_entropy(logits, y) + ramp * dkd_loss(logits, t, y, temperature=4.0, alpha=1.0, beta=8.0)
        state, logs = step(state, (x, y), jax.random.key(k))
        np.testing.assert_allclose(float(logs["loss"]), float(expected), rtol=1e-5)
