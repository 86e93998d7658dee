"""EV3 as a benchmark method: budget accounting, safety of the gate, growth in the loop, determinism."""

import os
import re

import jax
import numpy as np
import pytest

from ev3 import methods, models
from ev3.config import RunSpec, student_run, validate
from ev3.methods.common import Frozen
from ev3.train import accuracy, fit

NOLOG = lambda s: None  # noqa: E731



@pytest.fixture(scope="module")
def teacher(mnist1d):
    net = models.build({"type": "mlp", "width": 32, "depth": 1}, mnist1d.input_shape, 10, jax.random.key(3))
    return Frozen(net.graphdef, net.params, net.rest)


def _spec(config, data_dir, method="ev3", **options):
    config = validate(config)
    config["methods"][method].update(options)
    config["train"]["eval_every"] = 40
    return RunSpec.from_dict({**student_run(config, "mnist1d", "mlp64", method, 0), "data_dir": data_dir})


def test_budget_counts_every_candidate_step_and_logs_every_decision(smoke_config, data_dir, mnist1d, teacher):
    spec = _spec(smoke_config, data_dir)
    result = fit(methods.get("ev3"), spec, mnist1d, teacher, log=NOLOG)
    o, ev = spec.options, methods.get("ev3").summary(result)
    K = len(o["losses"]) * len(o["optimizers"])
    assert result.compute["student_steps"] == o["iterations"] * K * o["steps_per_candidate"]
    assert result.compute["teacher_forwards"] == o["iterations"] * K * o["steps_per_candidate"]  # own batches each
    assert result.compute["flops_student"] > 0 and result.compute["flops_selection"] > 0
    assert len(ev["decisions"]) == o["iterations"] == ev["accepted"] + ev["rejected"] + ev["rounds"]["grew"]
    d = ev["decisions"][0]
    assert {"iteration", "candidate", "family", "loss", "optimizer", "winner", "accepted", "stable_moved", "rolled_back",
            "objectives"} <= set(d)
    assert d["rule"] == "reference" and set(d["objectives"]) == {"accuracy"}  # the reference reads the first objective
    assert result.history[-1]["student_steps"] == result.compute["student_steps"]


def test_the_gate_keeps_harmful_candidates_out(smoke_config, data_dir, mnist1d, teacher, monkeypatch):
    """Starting from a trained student with only absurd learning rates: the gated stable model never moves, so
    its val accuracy (val is never used by decisions) does not drop; without the gate it drops."""
    config = validate(smoke_config)
    config["train"]["steps"] = 300
    pre = RunSpec.from_dict({**student_run(config, "mnist1d", "mlp64", "scratch", 0), "data_dir": data_dir})
    trained = fit(methods.get("scratch"), pre, mnist1d, None, log=NOLOG).final_state.student
    x_val, y_val = mnist1d.splits["val"]
    start_val = accuracy(trained.logits(x_val), y_val)
    assert start_val > 0.3
    monkeypatch.setattr(
        "ev3.methods.ev3.models.build", lambda *a, **k: models.Network(trained.graphdef, trained.params, trained.rest)
    )
    harmful = [{"name": "sgd", "learning_rate": 30.0}]
    gated = fit(methods.get("ev3"), _spec(smoke_config, data_dir, optimizers=harmful, growth=None), mnist1d, teacher, log=NOLOG)
    open_ = fit(methods.get("ev3"), _spec(smoke_config, data_dir, "ev3-no-gate", optimizers=harmful, growth=None), mnist1d, teacher, log=NOLOG)
    ev_gated = methods.get("ev3").summary(gated)
    assert ev_gated["stable_moves"] == 0 and ev_gated["accepted"] == 0
    assert all(h["val_accuracy"] == pytest.approx(start_val, abs=1e-6) for h in gated.history)
    assert open_.val_accuracy < start_val - 0.1


def _expected_growth(decisions: list, patience: int, max_size: int) -> list[bool]:
    """Which rounds must grow, replayed from the decisions: at least ``patience`` rounds decided since the last
    growth, none of the last ``patience`` significant (θ_s moved; never under rule always), fewer than
    ``max_size`` growth events so far."""
    history, events, out = [], 0, []
    for d in decisions:
        grows = events < max_size and len(history) >= patience and not any(history[-patience:])
        out.append(grows)
        if grows:
            history, events = [], events + 1
        else:
            history.append(d["stable_moved"] and d["rule"] != "always")
    return out


@pytest.mark.parametrize("method, patience", [("ev3-paired", 1), ("ev3-no-gate", 2)])
def test_growth_follows_the_trigger_and_training_continues(smoke_config, data_dir, mnist1d, teacher, method, patience):
    """Growth rounds are exactly those the trigger names (replayed from the logged decisions); a growth round
    discards its proposal (θ unchanged but grown, nothing accepted) and its student steps count; ``always``
    grows every ``patience`` + 1 rounds; every event makes a bigger student, up to ``max_size`` events."""
    options = dict(iterations=6, growth={"patience": patience, "max_size": 2})
    if method == "ev3-paired":  # a near-impossible confidence: θ_s never moves
        options.update(objectives=[{"metric": "accuracy", "margin": 0.0}], confidence=0.999999)
    spec = _spec(smoke_config, data_dir, method, **options)
    result = fit(methods.get("ev3"), spec, mnist1d, teacher, log=NOLOG)
    ev = methods.get("ev3").summary(result)
    grew = [d["grew"] for d in ev["decisions"]]
    assert grew == _expected_growth(ev["decisions"], patience, 2) and sum(grew) == len(ev["growth_events"]) == 2
    if method == "ev3-no-gate":
        assert grew == [False, False, True, False, False, True]
    for d in (d for d in ev["decisions"] if d["grew"]):
        assert d["winner"] == "current" and not d["accepted"] and not d["stable_moved"]
    sizes = [e["params_before"] for e in ev["growth_events"]] + [ev["growth_events"][-1]["params"]]
    assert sizes == sorted(set(sizes)) and ev["growth_events"][0]["operator"] == "expand_mlp"  # the MLP default
    o = spec.options
    assert result.compute["student_steps"] == 6 * len(o["losses"]) * len(o["optimizers"]) * o["steps_per_candidate"]
    assert ev["current_arch"] != spec.model and ev["final_arch"] == ev["current_arch"]


def test_growth_trigger_rule():
    from ev3.methods.ev3 import _stalled

    assert not _stalled([False] * 4, 5) and _stalled([False] * 5, 5) and _stalled([True] + [False] * 5, 5)
    assert not _stalled([False] * 4 + [True], 5) and _stalled([True, False], 1) and not _stalled([False, True], 1)


def _ids(x, pool) -> list[int]:
    """Row index in ``pool`` of every row of ``x`` (each row must be one of the pool's)."""
    rows = {r.tobytes(): i for i, r in enumerate(np.asarray(pool))}
    return [rows[r.tobytes()] for r in np.asarray(x)]


@pytest.mark.parametrize("source", ["train", "meta"])
def test_every_round_draws_fresh_samples_shared_by_candidate_current_and_stable(
        smoke_config, data_dir, mnist1d, teacher, monkeypatch, source):
    """The sample ids each scoring call sees: per round one assess draw (the K candidates) and one decide draw,
    the same for the pick, θ and θ_s; the next round draws others; with replacement from the source's pool."""
    from ev3.methods.ev3 import Round

    calls = []  # (round, stage, sample ids)
    score = Round._score

    def recording(self, a, params, x, y, t, batched):
        calls.append((self.run.rounds, batched, np.asarray(x)))
        return score(self, a, params, x, y, t, batched)

    monkeypatch.setattr(Round, "_score", recording)
    stages = {"source": source, "assess_samples": 48, "decide_samples": 300}
    spec = _spec(smoke_config, data_dir, iterations=3, growth=None, stages=stages)
    fit(methods.get("ev3"), spec, mnist1d, teacher, log=NOLOG)
    x_meta = mnist1d.splits["meta"][0]
    half = x_meta.shape[0] // 2
    pools = {"train": (mnist1d.splits["train"][0],) * 2, "meta": (x_meta[:half], x_meta[half:])}[source]
    assess_ids, decide_ids = [], []
    for r in range(3):
        this = [(batched, x) for rnd, batched, x in calls if rnd == r]
        assert [b for b, _ in this] == [True, False, False, False]  # assess the K candidates; pick, θ, θ_s
        assess_ids.append(_ids(this[0][1], pools[0]))
        decide = [_ids(x, pools[1]) for _, x in this[1:]]
        assert decide[0] == decide[1] == decide[2] and len(decide[0]) == 300 and len(assess_ids[-1]) == 48
        decide_ids.append(decide[0])
    assert len({tuple(i) for i in assess_ids}) == 3 and len({tuple(i) for i in decide_ids}) == 3
    if source == "meta":  # 300 draws from a pool of `half` rows: with replacement, so some repeat
        assert half < 300 and all(len(set(i)) < len(i) for i in decide_ids)


def test_same_seed_gives_identical_decisions(smoke_config, data_dir, mnist1d, teacher):
    spec = _spec(smoke_config, data_dir, iterations=3)
    a = methods.get("ev3").summary(fit(methods.get("ev3"), spec, mnist1d, teacher, log=NOLOG))
    b = methods.get("ev3").summary(fit(methods.get("ev3"), spec, mnist1d, teacher, log=NOLOG))
    assert a["decisions"] == b["decisions"]


@pytest.mark.parametrize("instance, key, value, message", [
    ("ev3", "confidence", 0.9, "methods/ev3/confidence: read only by decide.rule 'paired'"),
    ("ev3-no-gate", "objectives", [{"metric": "accuracy", "margin": 0.0}], "methods/ev3-no-gate/objectives/0/margin: read only"),
    ("ev3-no-gate", "decide", {"rule": "always", "alpha": 1.0}, "methods/ev3-no-gate/decide/alpha: read only by decide.rule 'reference'"),
    ("ev3-paired", "objectives", [{"metric": "accuracy"}], "methods/ev3-paired/objectives/0/margin: required by decide.rule 'paired'"),
    ("ev3", "decide", {"rule": "gated"}, "methods/ev3/decide/rule:"),
    ("ev3", "gate", True, "methods/ev3/gate:"),
])
def test_keys_of_another_decide_rule_are_config_errors(smoke_config, instance, key, value, message):
    from ev3.config import ConfigError

    smoke_config["methods"][instance][key] = value
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        validate(smoke_config)


def test_ev3_options_are_validated(smoke_config):
    from ev3.config import ConfigError

    import copy

    bad = copy.deepcopy(smoke_config["methods"]["ev3"])
    bad["optimizers"][0]["momentum"] = 0.9  # adam has no momentum option
    smoke_config["methods"]["ev3-bad"] = bad
    with pytest.raises(ConfigError, match="^methods/ev3-bad/optimizers/0/momentum:"):
        validate(smoke_config)


class Interrupt(Exception):
    pass


def test_an_interrupted_run_resumes_to_the_uninterrupted_result_across_growth(smoke_config, data_dir, mnist1d, teacher, tmp_path):
    """Stopped after an iteration's evaluation (before its checkpoint), two iterations after the student first
    grew (read off the uninterrupted run): the rerun rebuilds the grown student from the previous iteration's
    checkpoint and ends bit-identical (params, decisions, history, compute counters) to an uninterrupted run."""
    spec = _spec(smoke_config, data_dir, "ev3-paired", iterations=7, growth={"patience": 1, "max_size": 4},
                 objectives=[{"metric": "accuracy", "margin": 0.0}], confidence=0.999999)
    ev3 = methods.get("ev3")
    reference = fit(ev3, spec, mnist1d, teacher, log=NOLOG)
    grew = ev3.summary(reference)["growth_events"]
    assert grew and grew[0]["iteration"] <= 4, f"no growth early enough to resume after it: {grew}"
    stop = grew[0]["iteration"] + 3  # 1-based iteration interrupted; iteration stop - 1 (0-based: growth + 1) resumes
    o = spec.options
    per_iteration = len(o["losses"]) * len(o["optimizers"]) * o["steps_per_candidate"]  # student steps, K·L
    assert spec.train["eval_every"] == per_iteration  # every iteration is evaluated and checkpointed

    def interrupt(line):
        if f"iteration {stop}/7" in line:
            raise Interrupt

    state = tmp_path / "state"
    with pytest.raises(Interrupt):
        fit(ev3, spec, mnist1d, teacher, log=interrupt, state_dir=str(state))
    assert sorted(int(n) for n in os.listdir(state) if n.isdigit()) == [(stop - 2) * per_iteration, (stop - 1) * per_iteration]
    logs = []
    result = fit(ev3, spec, mnist1d, teacher, log=logs.append, state_dir=str(state))
    assert f"[ev3-paired seed0] resumed from step {(stop - 1) * per_iteration} ({state})" in logs

    la, lb = jax.tree.leaves(result.selected_state.student.params), jax.tree.leaves(reference.selected_state.student.params)
    assert len(la) == len(lb) > 0 and all(np.array_equal(x, y) for x, y in zip(la, lb))
    ev_a, ev_b = ev3.summary(result), ev3.summary(reference)
    assert ev_a == ev_b and ev_a["current_arch"] != spec.model
    strip = lambda h: [{k: v for k, v in e.items() if k != "wall_s"} for e in h]  # noqa: E731
    assert strip(result.history) == strip(reference.history)
    drop = lambda c: {k: v for k, v in c.items() if k not in ("wall_s", "compile_s", "steps_per_s")}  # noqa: E731
    assert drop(result.compute) == drop(reference.compute)


def test_growth_reinitialises_every_optimizer_state_and_morphism_false_reinitialises_the_student(
        smoke_config, data_dir, mnist1d, teacher):
    """``always`` with patience 1 grows at round 1 (0-based): after 3 rounds each candidate's optimizer state has
    counted only round 2's L steps (fresh at growth), against 3·L without growth. With ``morphism: false`` the
    grown θ is a fresh network, so its val accuracy right after growth moves; a function-preserving one's does not."""
    ev3 = methods.get("ev3")
    L = smoke_config["methods"]["ev3-no-gate"]["steps_per_candidate"]
    counts = {}
    for growth in ({"patience": 1, "max_size": 1}, None):
        spec = _spec(smoke_config, data_dir, "ev3-no-gate", iterations=3, growth=growth)
        run = fit(ev3, spec, mnist1d, teacher, log=NOLOG).state
        assert [d["grew"] for d in run.decisions] == ([False, True, False] if growth else [False] * 3)
        counts[bool(growth)] = {int(c) for s in run.protocol.opt_states.values() for c in np.asarray(s.count).ravel()}
    assert counts == {True: {L}, False: {3 * L}}
    for morphism in (True, False):
        spec = _spec(smoke_config, data_dir, "ev3-no-gate", iterations=2, growth={"patience": 1, "max_size": 1, "morphism": morphism})
        result = fit(ev3, spec, mnist1d, teacher, log=NOLOG)
        assert ev3.summary(result)["growth_events"][0]["morphism"] is morphism
        before, after = (h["val_accuracy"] for h in result.history)  # after round 0; after the growth round
        n_val = mnist1d.splits["val"][1].shape[0]
        if morphism:  # the grown θ computes θ's function (a near-tie argmax may flip one sample)
            assert after == pytest.approx(before, abs=1.5 / n_val)
        else:
            assert abs(after - before) > 3 / n_val


def test_a_diverged_candidate_restarts_its_optimizer_and_the_run_checkpoints(smoke_config, data_dir, mnist1d, teacher, tmp_path):
    """One optimizer whose steps overflow (SGD at lr 1e30): that candidate diverges every round and is never
    picked; its optimizer state is re-initialised instead of carrying NaN moments, so every checkpoint is
    finite (the checkpoint refuses non-finite values) and the run ends with a finite model."""
    optimizers = [{"name": "adamw", "learning_rate": 0.001, "weight_decay": 0.0001},
                  {"name": "sgd", "learning_rate": 1e30, "momentum": 0.9}]
    spec = _spec(smoke_config, data_dir, "ev3-no-growth", optimizers=optimizers, iterations=3)
    ev3 = methods.get("ev3")
    result = fit(ev3, spec, mnist1d, teacher, log=NOLOG, state_dir=str(tmp_path / "state"))
    decisions = ev3.summary(result)["decisions"]
    assert all(d["nonfinite_candidates"] for d in decisions), "the lr-1e30 candidates should diverge every round"
    assert all(d["candidate"] not in d["nonfinite_candidates"] for d in decisions)
    leaves = jax.tree.leaves(result.state.protocol.opt_states)
    assert leaves and all(np.isfinite(np.asarray(leaf)).all() for leaf in leaves)
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(result.selected_state.student.params))
