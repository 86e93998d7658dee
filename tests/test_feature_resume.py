"""A feature-method run interrupted after a checkpoint resumes to the uninterrupted result: the trained state
(student and connectors; CRD's memory banks and NCE constants too), the selected model and the history."""

import os

import jax
import numpy as np
import pytest
import yaml

from ev3 import methods, models
from ev3.config import RunSpec, student_run, validate
from ev3.data import load
from ev3.methods.common import Frozen
from ev3.rng import seed_key, stream
from ev3.train import fit

ROOT = os.path.join(os.path.dirname(__file__), "..")
STEPS, EVERY = 6, 3


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("method", ["crd", "fitnet", "at", "rkd", "reviewkd"])
def test_a_run_resumed_after_an_interruption_equals_the_uninterrupted_run(method, data_dir, tmp_path):
    with open(os.path.join(ROOT, "config", "smoke.yaml")) as f:
        config = yaml.safe_load(f)
    config["train"].update(steps=STEPS, eval_every=EVERY)
    config = validate(config)
    spec = RunSpec.from_dict({**student_run(config, "mnist1d", "cnn-small", method, 0), "data_dir": data_dir})
    data = load("mnist1d", data_dir, **spec.split)
    net = models.build(config["models"]["cnn"], data.input_shape, data.num_classes, jax.random.key(5))
    teacher = Frozen(net.graphdef, net.params, net.rest)  # any fixed teacher
    crd = methods.get(method)
    reference = fit(crd, spec, data, teacher, log=lambda s: None)

    def interrupt(line):
        if f"step {STEPS}/" in line:
            raise Interrupt  # after the last evaluation, before its checkpoint: the one at EVERY is left

    state_dir = str(tmp_path / "state")
    with pytest.raises(Interrupt):
        fit(crd, spec, data, teacher, log=interrupt, state_dir=state_dir)
    logs = []
    resumed = fit(crd, spec, data, teacher, log=logs.append, state_dir=state_dir)
    assert any(f"resumed from step {EVERY}" in line for line in logs), logs
    for a, b in ((resumed.state, reference.state), (resumed.selected_state, reference.selected_state)):
        la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
        assert len(la) == len(lb) > 0
        for x, y in zip(la, lb):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # the state moved during the run, so its equality above is not that of two untouched initial states
    initial = crd.init(spec, data, teacher, stream(seed_key(spec.seed), "student_init"))  # fit's init key
    if method == "crd":
        assert not np.array_equal(np.asarray(resumed.state.memory["student_bank"]), np.asarray(initial.memory["student_bank"]))
    moved = [not np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(initial))]
    assert any(moved)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in reference.history]
