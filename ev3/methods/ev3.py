"""``ev3``: EV3 (Ding et al. 2023, "Ever Evolving Evaluator") as a benchmark method.

Each iteration, from the current student:

1. **Explore** — K = |losses| × |optimizer settings| candidates, each running ``steps_per_candidate`` (L) steps
   on the same fresh train batches with its own loss ``w·T_kd²·KL(p_t^{T_kd} ‖ p_s^{T_kd}) + (1−w)·CE(s/T_ce)``
   and its own optimizer state (kept across iterations); candidates of one optimizer family run vmapped in one
   compiled call (``ev3.protocol.explore``).
2. **Assess** — every candidate is scored per sample on a fresh random subset of the *assess* half of ``meta``;
   the pick is the best lower confidence bound (mean − α·stderr) on the first objective.
3. **Adapt** — on the disjoint *decide* half of ``meta``, the pick is compared with the current model and the
   stable checkpoint by paired tests with prioritized objectives (``ev3.protocol.adapt``). The current model
   moves on a win (always, with ``gate: false``); the stable checkpoint moves only on a significant win over
   it. With ``gate: false`` there is no safety net: the stable checkpoint is the current model.
4. **Grow** — after ``growth.patience`` consecutive decisions without a win, the current model gets one more
   identity-initialized layer (``ev3.models.growth``, function-preserving) up to ``growth.max_size``; the new
   parameters start with fresh optimizer states.

EV3 is host-driven (statistical tests, architecture changes), so it runs its own loop with the shared loop's
conventions: the budget is ``iterations`` (with a FLOPs budget: rounds until the next one would exceed it); every candidate step counts as a student step (K·L per iteration);
evaluations on ``val``/``test`` follow ``train.eval_every`` student steps and measure the **stable** checkpoint;
the reported model is the evaluated stable checkpoint with the best ``val`` accuracy (earliest on ties), the
same selection rule as every other method's. FLOPs: explore = XLA cost of the
vmapped step × L (a scan's cost analysis counts its body once); teacher forwards on the L train batches are
teacher FLOPs; assess and decide forwards are selection FLOPs.
"""

from __future__ import annotations

import math
import time
from functools import partial

import jax
import numpy as np

from ev3 import models
from ev3.methods.common import Student, SupervisedState, evaluate  # noqa: F401  (evaluate: the method interface)
from ev3.data.augment import augment_fn
from ev3.models.growth import grow, size
from ev3.protocol import assess
from ev3.protocol.adapt import adapt
from ev3.protocol.explore import ADAM, SGD, explore, hparams, init_family
from ev3.protocol.state import EV3State, concat, init_state
from ev3.rng import seed_key, stream
from ev3.train import (
    Counter, FitResult, NonFiniteError, accuracy, compile_record, compute_counters, flops_budget, frozen_logits,
    merge_compiles, predict, resume_store,
)

FAMILIES = {"adam": ADAM, "sgd": SGD}


def _variables(net: models.Network) -> dict:
    """EV3's "parameters" of a student: trainable ``params`` and BatchNorm statistics ``rest`` (empty for the
    MLP and CNN) in one pytree, so candidates, the stable checkpoint and resume carry both."""
    return {"params": net.params, "rest": net.rest}


class _Arch:
    """One student architecture: its config, static graphdef, and the pure functions compiled for it.

    ``apply(v, x)`` is the eval-mode forward (running statistics) used to assess, decide and evaluate;
    ``train_apply(v, x) -> (logits, v with updated statistics)`` is the training forward of explore."""

    def __init__(self, config: dict, graphdef):
        self.config, self.graphdef = config, graphdef
        self.apply = lambda v, x: models.apply(graphdef, v["params"], v["rest"], x)[0]
        self.fns: dict = {}

    def train_apply(self, v, x):
        logits, rest = models.apply(self.graphdef, v["params"], v["rest"], x, train=True)
        return logits, {"params": v["params"], "rest": rest}

    def fn(self, name: str, make):
        if name not in self.fns:
            self.fns[name] = make()
        return self.fns[name]


def _candidates(options: dict) -> list[tuple[str, dict, dict]]:
    """(family, loss hparams, optimizer hparams) per candidate, grouped by family in config order."""
    out = []
    for opt in options["optimizers"]:
        hp = {k: v for k, v in opt.items() if k != "name"}
        if opt["name"] == "sgd":
            hp.setdefault("momentum", 0.0)
        out += [(opt["name"], dict(loss), hp) for loss in options["losses"]]
    return out


def _family_batches(candidates) -> dict[str, tuple[list[int], dict, dict]]:
    """family → (candidate indices, stacked loss hparams, stacked optimizer hparams)."""
    groups: dict = {}
    for i, (fam, loss, opt) in enumerate(candidates):
        groups.setdefault(fam, []).append((i, loss, opt))
    return {
        fam: ([i for i, _, _ in g], hparams(**{k: [l[k] for _, l, _ in g] for k in ("w", "t_kd", "t_ce")}),
              hparams(**{k: [o[k] for _, _, o in g] for k in g[0][2]}))
        for fam, g in groups.items()
    }


def _objectives(options: dict) -> list[tuple[str, bool, float]]:
    return [(o["metric"], assess.METRICS[o["metric"]].higher_is_better, o["margin"]) for o in options["objectives"]]


def _finite(scores: dict) -> bool:
    return all(np.isfinite(np.asarray(v)).all() for v in scores.values())


def fit(spec, data, teacher, *, log=print, state_dir=None) -> FitResult:
    """Run EV3 per ``spec.options``; returns the shared loop's :class:`FitResult` (stable checkpoint selected).

    ``state_dir``: checkpoint there at evaluations every ``train.checkpoint_every`` student steps (default:
    every evaluation) and at the end, and resume from the newest usable checkpoint. A checkpoint holds the
    current and stable parameters, every candidate's optimizer state, both architectures' configs (a grown
    student is rebuilt from its config), the stall count and the loop's bookkeeping (decisions, history,
    trajectory, growth events, FLOPs, timings). Batches and assess subsets are functions of the iteration
    number, so a resumed run ends as an uninterrupted one would."""
    t_start = time.perf_counter()
    o = spec.options
    key = seed_key(spec.seed)
    init = models.build(spec.model, data.input_shape, data.num_classes, stream(key, "student_init"))
    arch = _Arch(dict(spec.model), init.graphdef)
    stable_arch = arch
    counter = Counter()
    candidates = _candidates(o)
    families = _family_batches(candidates)
    objectives = _objectives(o)
    metric_names = sorted({name for name, _, _ in objectives} | {"accuracy"})
    L, B = o["steps_per_candidate"], spec.train["batch_size"]
    K = len(candidates)

    def init_opt_states(params):
        return {fam: init_family(FAMILIES[fam], params, ohp) for fam, (_, _, ohp) in families.items()}

    state = init_state(_variables(init), init_opt_states(_variables(init)))
    x_train, y_train = data.splits["train"]
    x_meta, y_meta = data.splits["meta"]
    half = x_meta.shape[0] // 2  # meta is stratified and shuffled per class: first half assesses, rest decides
    x_assess, y_assess, x_decide, y_decide = x_meta[:half], y_meta[:half], x_meta[half:], y_meta[half:]
    n_assess = min(o["assess_samples"], half)
    x_val, y_val = data.splits["val"]
    x_test, y_test = data.splits["test"]
    teacher_decide, _ = predict(counter, frozen_logits, teacher, x_decide)
    teacher_assess_all, _ = predict(counter, frozen_logits, teacher, x_assess)

    flops = {"student": 0.0, "teacher": 0.0, "selection": 0.0}
    history, trajectory, decisions, growth_events = [], [], [], []
    order_key, assess_key = stream(key, "batch_order"), stream(key, "assess")
    student_steps, next_eval, train_s = 0, spec.train["eval_every"], 0.0
    last_losses = None
    start, store, resumed = 0, None, {}
    best = None  # (val accuracy, _Arch, stable params) of the selected evaluation
    if state_dir is not None:
        checkpoint_every = spec.train.get("checkpoint_every", spec.train["eval_every"])
        store = resume_store(spec, teacher, state_dir, log)
        built: dict = {}

        def arch_like(config):
            """An :class:`_Arch` and a parameter pytree shaped like ``config``'s model (one per config)."""
            name = _arch_name(config)
            if name not in built:
                net = models.build(config, data.input_shape, data.num_classes, jax.random.key(0))
                built[name] = (_Arch(config, net.graphdef), _variables(net))
            return built[name]

        def likes(meta):
            params = arch_like(meta["arch"])[1]
            return {"params": params, "opt_states": init_opt_states(params), "stable_params": arch_like(meta["stable_arch"])[1],
                    "best_params": arch_like(meta["best_arch"])[1]}

        restored = store.restore(likes)
        if restored is not None:
            student_steps, trees, resumed = restored
            arch, stable_arch = arch_like(resumed["arch"])[0], arch_like(resumed["stable_arch"])[0]
            state = EV3State(trees["params"], trees["opt_states"], trees["stable_params"], resumed["state_iteration"], resumed["stall_count"])
            start, next_eval, train_s = resumed["iteration"], resumed["next_eval"], resumed["train_s"]
            flops, history, trajectory = resumed["flops"], resumed["history"], resumed["trajectory"]
            decisions, growth_events = resumed["decisions"], resumed["growth_events"]
            best = (resumed["best_val_accuracy"], arch_like(resumed["best_arch"])[0], trees["best_params"])
            last_losses = np.array([np.nan if x is None else x for x in resumed["last_losses"]])
            t_start -= resumed["wall_s"]
            log(f"[{spec.method} seed{spec.seed}] resumed from step {student_steps} ({state_dir})")
    last_checkpoint = student_steps

    def score(a: _Arch, params, x, y, t, batched):
        fn = a.fn(f"score{batched}", lambda: partial(assess._score, a.apply, metrics=tuple(assess.METRICS[m] for m in metric_names), batched=batched))
        compiled, f = counter.compile(f"score{batched}", fn, params, x, y, t)
        flops["selection"] += f
        return {k: np.asarray(v) for k, v in compiled(params, x, y, t).items()}

    def eval_logits(a: _Arch, params, x):
        logits, f = predict(counter, a.fn("evaluate", lambda: lambda p, x: a.apply(p, x)), params, x)
        return logits, f

    augment = augment_fn(spec.train.get("augment"))

    def draw(teacher, order_key, assess_key, it):  # keys are arguments: other seeds reuse the compiled kernel
        """This round's L train batches (augmented with ``train.augment``) with their teacher logits, and a
        fresh subset of the assess half."""
        idx = jax.random.randint(jax.random.fold_in(order_key, it), (L * B,), 0, x_train.shape[0])
        xb, yb = x_train[idx], y_train[idx]
        if augment is not None:
            xb = augment(stream(jax.random.fold_in(order_key, it), "augment"), xb)
        a_idx = jax.random.choice(jax.random.fold_in(assess_key, it), half, (n_assess,), replace=False)
        return (xb.reshape(L, B, *xb.shape[1:]), yb.reshape(L, B), teacher(xb).reshape(L, B, -1),
                x_assess[a_idx], y_assess[a_idx], teacher_assess_all[a_idx])

    budget = flops_budget(spec)
    for it in range(start, o["iterations"] if budget is None else 2**31 - 1):
        t_iter = time.perf_counter()
        trained_before = flops["student"] + flops["teacher"]
        draw_args = (teacher, order_key, assess_key, np.int32(it))
        draw_c, f_t = counter.compile("draw", draw, *draw_args)
        xb, yb, teacher_logits, xa, ya, ta = draw_c(*draw_args)
        flops["teacher"] += f_t

        family_params, new_opt_states, losses = [], {}, np.zeros(K)
        for fam, (ids, lhp, ohp) in families.items():  # candidate ids are contiguous per family, in order
            fn = arch.fn(f"explore_{fam}", lambda fam=fam: partial(explore, arch.train_apply, FAMILIES[fam]))
            args = (state.params, state.opt_states[fam], lhp, ohp, (xb, yb), teacher_logits)
            compiled, f = counter.compile(f"explore_{fam}", fn, *args)
            flops["student"] += f * L
            params_f, opt_f, loss_f = compiled(*args)
            new_opt_states[fam] = opt_f
            losses[ids] = np.asarray(loss_f)
            family_params.append(params_f)
        batched = concat(family_params) if len(family_params) > 1 else family_params[0]
        state = state._replace(opt_states=new_opt_states)
        student_steps += K * L
        last_losses = losses

        assess_scores = score(arch, batched, xa, ya, ta, True)
        decide_scores = score(arch, batched, x_decide, y_decide, teacher_decide, True)
        current_scores = score(arch, state.params, x_decide, y_decide, teacher_decide, False)
        stable_scores = score(stable_arch, state.stable_params, x_decide, y_decide, teacher_decide, False)
        state, decision = adapt(
            state, batched, decide_scores, current_scores, stable_scores,
            objectives=objectives, confidence=o["confidence"], alpha=o["lcb_alpha"], gate=o["gate"],
            assess_scores=assess_scores,
        )
        picked = decision["candidate"]
        fam, loss_hp, opt_hp = candidates[picked]
        decision["nonfinite_candidates"] = [int(i) for i in np.flatnonzero(~np.isfinite(losses))]  # never picked
        if not o["gate"]:
            state = state._replace(stable_params=state.params)
            decision["stable_moved"] = True
        if decision["stable_moved"]:
            stable_arch = arch
        decision.update(family=fam, loss=loss_hp, optimizer=opt_hp, student_steps=student_steps, train_loss=float(losses[picked]))
        decisions.append(decision)

        if o["growth"] and state.stall_count >= o["growth"]["patience"] and size(arch.config) < o["growth"]["max_size"]:
            before, old_config = models.param_count(state.params["params"]), arch.config
            current = models.Network(arch.graphdef, state.params["params"], state.params["rest"])
            new_config, grown = grow(arch.config, current, data.input_shape, data.num_classes)
            arch = _Arch(new_config, grown.graphdef)
            state = state._replace(params=_variables(grown), opt_states=init_opt_states(_variables(grown)), stall_count=0)
            growth_events.append({"iteration": it, "student_steps": student_steps, "from_arch": _arch_name(old_config),
                                  "to_arch": _arch_name(new_config), "params_before": before, "params": models.param_count(grown.params)})
            log(f"[{spec.method} seed{spec.seed}] iteration {it}: grew to {growth_events[-1]['to_arch']}")
        train_s += time.perf_counter() - t_iter

        trained = flops["student"] + flops["teacher"]
        if budget is None:
            done = it + 1 == o["iterations"]
        else:  # stop before a round that would exceed the budget (a round costs about what this one did)
            if it == 0 and trained > budget:
                raise ValueError(f"budget/flops: {budget:.3g} is less than one round of {spec.method} ({trained:.3g} FLOPs)")
            done = trained + (trained - trained_before) > budget
        if student_steps >= next_eval or done:
            # Diverged candidates are only rejected; a non-finite current or stable model stops the run.
            if not _finite(dict(enumerate(jax.tree.leaves((state.params, state.stable_params))))):
                raise NonFiniteError(f"{spec.method}: non-finite current or stable model at step {student_steps}")
            val_logits, f = eval_logits(stable_arch, state.stable_params, x_val)
            flops["selection"] += f
            test_logits, _ = eval_logits(stable_arch, state.stable_params, x_test)
            cur_val, _ = eval_logits(arch, state.params, x_val)
            total = sum(flops.values())
            history.append({"student_steps": student_steps, "flops": total, "wall_s": time.perf_counter() - t_start,
                            "train_loss": _min_finite(losses), "val_accuracy": accuracy(val_logits, y_val),
                            "test_accuracy": accuracy(test_logits, y_test)})
            if best is None or history[-1]["val_accuracy"] > best[0]:
                best = (history[-1]["val_accuracy"], stable_arch, state.stable_params)
            trajectory.append({"iteration": it, "student_steps": student_steps, "flops": total,
                               "stable_val_accuracy": history[-1]["val_accuracy"], "current_val_accuracy": accuracy(cur_val, y_val),
                               "stable_test_accuracy": history[-1]["test_accuracy"]})
            log(f"[{spec.method} seed{spec.seed}] iteration {it + 1}/{o['iterations']} steps {student_steps} "
                f"stable val {history[-1]['val_accuracy']:.4f} current val {trajectory[-1]['current_val_accuracy']:.4f}")
            while next_eval <= student_steps:
                next_eval += spec.train["eval_every"]
            if store is not None and (student_steps // checkpoint_every > last_checkpoint // checkpoint_every or done):
                meta = {
                    "iteration": it + 1, "state_iteration": state.iteration, "stall_count": state.stall_count,
                    "arch": arch.config, "stable_arch": stable_arch.config, "next_eval": next_eval,
                    "best_arch": best[1].config, "best_val_accuracy": best[0],
                    "train_s": train_s, "wall_s": time.perf_counter() - t_start, "flops": flops,
                    "history": history, "trajectory": trajectory, "decisions": _json_safe(decisions),
                    "growth_events": growth_events, "last_losses": _json_safe(list(last_losses)),
                    **compile_record(counter, resumed),
                }
                trees = {"params": state.params, "opt_states": state.opt_states, "stable_params": state.stable_params,
                         "best_params": best[2]}
                store.save(student_steps, trees, meta)
                last_checkpoint = student_steps
        if done:
            break
    if store is not None:
        store.close()
    merge_compiles(counter, resumed)  # compiles counted by name, as across a resume

    def as_state(a: _Arch, v):
        return SupervisedState(Student(a.graphdef, None, v["params"], v["rest"], None), None, {})

    accepted = sum(d["accepted"] for d in decisions)
    compute = compute_counters(
        counter, student_steps=student_steps, teacher_forwards=len(decisions) * L, teacher_backwards=0,
        flops_student=flops["student"], flops_teacher=flops["teacher"], flops_selection=flops["selection"],
        wall_s=time.perf_counter() - t_start, train_s=train_s,
    )
    summary = {
        "candidates": [{"family": f, "loss": l, "optimizer": h} for f, l, h in candidates],
        "objectives": [{"metric": n, "higher_is_better": h, "margin": m} for n, h, m in objectives],
        "iterations": len(decisions),
        "accepted": accepted,
        "rejected": len(decisions) - accepted,
        "stable_moves": sum(d["stable_moved"] for d in decisions),
        "decisions": decisions,
        "growth_events": growth_events,
        "final_arch": stable_arch.config,
        "final_params": models.param_count(state.stable_params["params"]),
        "selected_arch": best[1].config,
        "selected_params": models.param_count(best[2]["params"]),
        "current_arch": arch.config,
        "trajectory": trajectory,
        "mean_candidate_losses_last": [float(x) for x in last_losses],
    }
    return FitResult(as_state(best[1], best[2]), as_state(stable_arch, state.stable_params), best[0], history, compute, [summary])


def _min_finite(losses: np.ndarray) -> float | None:
    """The round's best finite candidate training loss (None if every candidate diverged)."""
    finite = losses[np.isfinite(losses)]
    return float(finite.min()) if finite.size else None


def _arch_name(config: dict) -> str:
    unit = {"mlp": "depth", "cnn": "convs"}.get(config["type"], "blocks")
    return f"{config['type']}-{unit}{size(config)}"


def _json_safe(obj):
    """Non-finite floats (a zero-variance paired test gives t = ±inf) become None: JSON has no inf/nan."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    return obj


def summary(result: FitResult) -> dict:
    """The ``ev3`` object of metrics.json (non-finite statistics are null)."""
    return _json_safe(result.tracked[0])
