"""EV3 multi-pass (``passes``): the archive, the per-pass loss family, archived students as targets, resume."""

import os
import re

import jax
import numpy as np
import pytest

from ev3 import methods, models
from ev3.config import ConfigError, RunSpec, student_run, validate
from ev3.methods import ev3 as ev3_method
from ev3.methods.common import Frozen
from ev3.train import fit

NOLOG = lambda s: None  # noqa: E731
PASSES, ITERATIONS = 2, 5



@pytest.fixture(scope="module")
def teacher(mnist1d):
    net = models.build({"type": "mlp", "width": 32, "depth": 1}, mnist1d.input_shape, 10, jax.random.key(3))
    return Frozen(net.graphdef, net.params, net.rest)


def _spec(config, data_dir, **options):
    """The smoke ``ev3`` instance (K₁ = 1: reverse KL, AdamW; L = 10) with every round evaluated."""
    config = validate(config)
    config["methods"]["ev3"].update(options)
    o = config["methods"]["ev3"]
    config["train"]["eval_every"] = len(o["losses"]) * len(o["optimizers"]) * o["steps_per_candidate"]
    return RunSpec.from_dict({**student_run(config, "mnist1d", "mlp64", "ev3", 0), "data_dir": data_dir})


@pytest.fixture(scope="module")
def multipass(data_dir, mnist1d, teacher, tmp_path_factory):
    """A 2-pass run checkpointing every round, with every call of ``Round._targets`` recorded: (archived
    students, xb, base logits, targets); returns (spec, result, summary, calls, state dir)."""
    import yaml

    with open(os.path.join(os.path.dirname(__file__), "..", "config", "smoke.yaml")) as f:
        config = yaml.safe_load(f)
    spec = _spec(config, data_dir, passes=PASSES, iterations=ITERATIONS)
    calls, original = [], ev3_method.Round._targets

    def recording(self, xb, logits, K):
        out = original(self, xb, logits, K)
        calls.append((list(self.run.multipass.teachers), xb, logits, out))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ev3_method.Round, "_targets", recording)
        state = tmp_path_factory.mktemp("multipass") / "state"
        result = fit(methods.get("ev3"), spec, mnist1d, teacher, log=NOLOG, state_dir=str(state))
    return spec, result, methods.get("ev3").summary(result), calls, state


def _levels_archived(decisions, index):
    return {d["archived"] for d in decisions if d.get("pass") == index and "archived" in d}


def test_pass_two_adds_one_reverse_kl_loss_per_archived_student(multipass):
    """Pass 2's family is the configured losses + one reverse-KL loss toward each student archived in pass 1
    (one per size it reached), × the optimizers; the archived students' eval-mode logits are exactly those
    candidates' targets and the teacher's the others'; real student steps count every candidate."""
    spec, result, ev, calls, _ = multipass
    o, L = spec.options, spec.options["steps_per_candidate"]
    starts = ev["passes"]["starts"]
    assert ev["passes"]["count"] == PASSES and starts[0] == 0 and 0 < starts[1] < ITERATIONS
    archived = _levels_archived(ev["decisions"], 0)
    assert archived, "pass 1 archived nothing"
    n_base, n_opt = len(o["losses"]), len(o["optimizers"])
    K2 = (n_base + len(archived)) * n_opt
    assert len(ev["candidates"]) == K2  # the last pass's family
    extra = [c["loss"] for c in ev["candidates"] if "target" in c["loss"]]
    assert sorted(c["target"] for c in extra) == list(range(len(archived)))
    assert all(c["loss"] == "reverse_kl" and c["t_kd"] == 1.0 for c in extra)
    rounds_2 = ITERATIONS - starts[1]
    assert len(calls) == rounds_2  # every pass-2 round, none of pass 1
    n_losses = n_base + len(archived)
    for teachers, xb, base_logits, out in calls:
        assert len(teachers) == len(archived) and out.shape[0] == xb.shape[0] == K2
        base = [c for c in range(K2) if c % n_losses < n_base]
        np.testing.assert_array_equal(np.asarray(out[np.array(base)]), np.asarray(base_logits))
        for j, t in enumerate(teachers):
            ids = np.arange(n_base + j, K2, n_losses)
            x = xb[ids].reshape(-1, *xb.shape[3:])
            want = models.apply(t["arch"].graphdef, t["params"]["params"], t["params"]["rest"], x)[0]
            np.testing.assert_allclose(np.asarray(out[ids]).reshape(want.shape), np.asarray(want), atol=1e-5)
    assert ev["passes"]["student_steps"] == L * (starts[1] * n_base * n_opt + rounds_2 * K2)
    assert result.compute["student_steps"] == ITERATIONS * n_base * n_opt * L  # the loop's clock: K₁·L a round


def test_the_archive_keeps_the_best_student_of_each_size(multipass):
    """Replayed from the decisions: per growth level, the archived entry is the first θ with the highest decide
    accuracy over every pass, and a round archives exactly when θ beats what its level holds."""
    _, _, ev, _, _ = multipass
    best, level, index = {}, 0, 0
    for d in ev["decisions"]:
        if d["pass"] != index:
            index, level = d["pass"], 0
        if d["grew"]:
            level += 1
            continue
        better = level not in best or d["current_decide_accuracy"] > best[level][0]
        assert ("archived" in d) == better and (not better or d["archived"] == level)
        if better:
            best[level] = (d["current_decide_accuracy"], d["pass"], d["iteration"])
    archive = {e["level"]: (e["decide_accuracy"], e["pass"], e["iteration"]) for e in ev["passes"]["archive"]}
    assert archive == best


def test_offer_keeps_the_better_of_two_same_size_students():
    first = {"accuracy": 0.5, "iteration": 0}
    archive = ev3_method.offer({}, 0, first)
    assert archive == {0: first}
    assert ev3_method.offer(archive, 0, {"accuracy": 0.4, "iteration": 1}) is archive  # worse: kept
    assert ev3_method.offer(archive, 0, {"accuracy": 0.5, "iteration": 2}) is archive  # a tie keeps the earlier
    better = {"accuracy": 0.6, "iteration": 3}
    assert ev3_method.offer(archive, 0, better) == {0: better}
    assert ev3_method.offer(archive, 1, {"accuracy": 0.1})[0] is first  # another size: its own slot


def test_one_pass_is_the_single_pass_method(smoke_config, data_dir, mnist1d, teacher):
    """``passes: 1`` (and no ``passes``) keep no multi-pass state, so runs take the single-pass code path."""
    for options in ({}, {"passes": 1}):
        spec = _spec(smoke_config, data_dir, **options)
        assert methods.get("ev3").init(spec, mnist1d, teacher, jax.random.key(0)).multipass is None
    spec = _spec(smoke_config, data_dir, passes=2)
    first = methods.get("ev3").init(spec, mnist1d, teacher, jax.random.key(0)).multipass
    assert (first.index, first.start, first.end) == (0, 0, spec.options["iterations"] // 2)


def test_passes_are_validated(smoke_config):
    config = dict(smoke_config)
    config["methods"] = {**smoke_config["methods"], "ev3": {**smoke_config["methods"]["ev3"], "passes": 5}}
    with pytest.raises(ConfigError, match="^" + re.escape("methods/ev3/passes: 5 passes exceed iterations (4 rounds)")):
        validate(config)
    config["methods"]["ev3"]["passes"] = 2
    with pytest.raises(ConfigError, match="^methods/ev3/passes: 2 passes need a round budget"):
        validate({**config, "budget": {"flops": 1e12}})
    config["methods"]["ev3"]["passes"] = 0
    with pytest.raises(ConfigError, match="^methods/ev3/passes"):
        validate(config)


def test_a_run_resumes_inside_pass_two_to_the_uninterrupted_result(data_dir, mnist1d, teacher, multipass):
    """The run's last checkpoint removed, the rerun resumes from the one before (inside pass 2: it restores the
    archive and the pass's archived targets) and ends identical to the uninterrupted run (selected params,
    summary, history, compute counters)."""
    import shutil

    spec, reference, ev_ref, _, state = multipass
    per_round = spec.train["eval_every"]
    assert ev_ref["passes"]["starts"][1] <= ITERATIONS - 2, "pass 2 too short to resume inside it"
    steps = sorted(int(n) for n in os.listdir(state) if n.isdigit())
    assert steps[-2:] == [(ITERATIONS - 1) * per_round, ITERATIONS * per_round]
    shutil.rmtree(state / str(steps[-1]))
    logs = []
    ev3 = methods.get("ev3")
    result = fit(ev3, spec, mnist1d, teacher, log=logs.append, state_dir=str(state))
    assert f"[ev3 seed0] resumed from step {(ITERATIONS - 1) * per_round} ({state})" in logs
    la = jax.tree.leaves(result.selected_state.student.params)
    lb = jax.tree.leaves(reference.selected_state.student.params)
    assert len(la) == len(lb) > 0 and all(np.array_equal(x, y) for x, y in zip(la, lb))
    assert ev3.summary(result) == ev_ref
    strip = lambda h: [{k: v for k, v in e.items() if k != "wall_s"} for e in h]  # noqa: E731
    assert strip(result.history) == strip(reference.history)
    drop = lambda c: {k: v for k, v in c.items() if k not in ("wall_s", "compile_s", "steps_per_s")}  # noqa: E731
    assert drop(result.compute) == drop(reference.compute)
