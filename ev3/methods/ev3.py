"""``ev3``: EV3 (Ding et al. 2023, "Ever Evolving Evaluator") as a benchmark method.

Each iteration, from the current student:

1. **Explore** — K = |losses| × |optimizer settings| candidates, each running ``steps_per_candidate`` (L) steps
   on its own fresh train batches with its own loss (the mixture ``w·T_kd²·KL(p_t^{T_kd} ‖ p_s^{T_kd}) +
   (1−w)·CE(s/T_ce)`` or ``{loss: reverse_kl}``: ``T_kd·KL(p_s^{T_kd} ‖ p_t^{T_kd})``, the reference's) and its
   own optimizer state (kept across iterations, won or not; ``adam``, ``adamw`` with decoupled weight decay,
   ``sgd`` with momentum; ``schedule: cosine`` decays the learning rate to 0 over ``iterations × L`` steps,
   restarting when growth re-initialises the states); candidates of one optimizer family run vmapped in one
   compiled call (``ev3.protocol.explore``).
2. **Assess** — every candidate is scored per sample on a fresh draw of ``stages.assess_samples``; the pick is
   the best ``mean − stages.assess_alpha·stderr`` on the first objective (default α = 0: the best mean), a
   diverged candidate never.
3. **Decide** — on a fresh draw of ``stages.decide_samples``, one for the pick, θ and θ_s, by
   ``decide.rule``: ``reference`` (default; the EV3 reference, :func:`ev3.protocol.adapt.reference_decision` on
   the first objective): the current model θ ← the highest lower confidence bound (``decide.alpha``, default
   1.96) of {pick, θ, stable θ_s} (ties in that order: θ may roll back to θ_s), θ_s ← θ's new value when its lower bound exceeds θ_s's upper bound; ``paired``
   (:func:`ev3.protocol.adapt.adapt`): θ moves to the pick on a significant paired win over θ, θ_s on one over
   θ_s, prioritized objectives with margins at ``confidence``; ``always``: θ ← the pick and θ_s = θ, no decide
   stage. A round is *significant* when θ_s moved (never under ``always``).
4. **Grow** — when at least ``growth.patience`` (k, default 5) rounds were decided since the last growth and
   none of the last k was significant, the next round grows instead: its proposal is discarded (its student
   steps count), θ and θ_s are grown by ``growth.operator`` with one key (``ev3.models.growth``; default per
   student type: MLP ``expand_mlp``, CNN ``deepen_cnn`` — CNNs are only deepened —, ResNet/WRN
   ``deepen_resnet_stage``; function-preserving, or freshly initialised with ``morphism: false``), the history
   resets and every optimizer state is re-initialised. ``growth.max_size``: the most growth events. Under
   ``always`` no round is significant, so the student grows every k + 1 rounds.

Every round's assess and decide draws are fresh, i.i.d. with replacement, each from its own RNG stream
(``stages.source``: ``train``, the reference: both from the training split, images assessed with a
reflect-pad-1 crop + flip and decided with a flip; ``meta``: assess from the first half of the ``meta`` split,
decide from the second).

**Multi-pass** (``passes`` P > 1, the reference's multi-pass KD; :class:`Passes`): the rounds split equally
over P passes (a pass's budget: the rounds left / the passes left); each pass starts from a freshly
initialised student (θ = θ_s, fresh optimizer states, growth history reset). After every decided round the
archive is offered θ, scored on that round's decide draw (accuracy), and keeps one student per size (growth
level of its pass, 0 … ``max_size``), replaced when θ's accuracy is strictly higher (:func:`offer`). From pass 2
the family holds one more loss per student archived at the pass's start, reverse KL (T = 1) toward its
eval-mode logits (:func:`pass_options`; ×|optimizers| candidates). A pass ends when its budget is spent or
when growth would exceed ``max_size`` (the last pass then keeps training at its size). The loop's unit stays
the round of nominal K₁·L student steps (K₁: the configured losses × optimizers; eval/checkpoint cadence,
``budget.student_steps``, ``compute.student_steps``); a pass-2+ round's real K·L steps are in the FLOPs and
``summary()["passes"]["student_steps"]``, and the archived students' forwards are teacher FLOPs (the teacher
forwards counter stays the teacher network's: K₁·L a round).

One round is EV3's unit of work (:class:`Round`; host-driven: statistical tests, architecture changes) in the
shared loop :func:`ev3.train.fit`: the budget is ``iterations`` rounds (with a FLOPs budget: rounds until the
next one would exceed it); every candidate step counts as a student step (K·L per round); evaluations on
``val``/``test`` follow ``train.eval_every`` student steps and measure the **current** model θ
(``model(state)``), so the reported model is the evaluated θ with the best ``val`` accuracy, as for every method; ``summary`` adds the final θ's
test accuracy (what the reference reports) and the val-selected θ_s's.
Function matching: a round's K·L training batches are drawn, augmented (``train.augment``) and mixed
(``train.mixup``) in one call (:func:`draw_batches`), and the teacher's logits are those of exactly these views.
Diagnostics: every decided round records ``confidently_wrong``, the fraction of a fixed sample of
:data:`PROBE_SAMPLES` clean training inputs on which θ puts more than 0.99 on a class other than the teacher's
argmax (:class:`WrongProbe`; reporting only, no FLOPs counted).
FLOPs: explore = XLA cost of the vmapped step × L (a scan's cost analysis counts its body once); teacher
forwards on the K·L train batches are teacher FLOPs; assess and decide forwards are selection FLOPs.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ev3 import models
from ev3.diagnostics import confidently_wrong
from ev3.methods.common import Student, select  # noqa: F401  (select: the method contract's default)
from ev3.methods.options import DEFAULT_OPERATOR
from ev3.methods.options import ev3_share as budget_share, ev3_units as with_units  # noqa: F401  (a unit: one round)
from ev3.data.augment import augment_fn, crop_flip, mixup_fn
from ev3.models.growth import GROWTH_OPERATORS
from ev3.models.mlp import hidden_widths
from ev3.models.resnet import stage_blocks
from ev3.protocol import assess
from ev3.protocol.adapt import REFERENCE_ORDER, adapt, reference_decision
from ev3.protocol.explore import ADAM, ADAMW, SGD, explore, hparams, init_family
from ev3.protocol.state import EV3State, concat, init_state, take
from ev3.rng import seed_key, stream
from ev3.train import FitResult, accuracy, flops_budget, frozen_logits, predict

FAMILIES = {"adam": ADAM, "adamw": ADAMW, "sgd": SGD}
STAGES = {"source": "train", "assess_samples": 128, "decide_samples": 256 * 128, "assess_alpha": 0.0}
"""``stages`` defaults: the reference's (assess 128 samples, pick by mean; decide 256 batches of 128)."""
ALPHA = 1.96  # decide.alpha default: the reference's KD configs


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


OPTIMIZER_DEFAULTS = {"adam": {}, "adamw": {"weight_decay": 1e-4}, "sgd": {"momentum": 0.0}}


def _loss_hparams(loss: dict) -> dict:
    """A ``losses`` entry as the hparams of :func:`ev3.protocol.explore.candidate_loss`: the mixture
    ``{w, t_kd, t_ce}`` or ``{loss: reverse_kl, t_kd}`` (reverse KL × T_kd; ``w``, ``t_ce`` unused)."""
    if loss.get("loss") == "reverse_kl":
        return {"w": 0.0, "t_kd": loss["t_kd"], "t_ce": 1.0, "reverse": 1.0}
    return {"w": loss["w"], "t_kd": loss["t_kd"], "t_ce": loss["t_ce"], "reverse": 0.0}


def _candidates(options: dict) -> list[tuple[str, dict, dict, str]]:
    """(family, loss spec, optimizer hparams, schedule) per candidate, grouped by family in config order."""
    out, names = [], [opt["name"] for opt in options["optimizers"]]
    for opt in sorted(options["optimizers"], key=lambda opt: names.index(opt["name"])):  # families contiguous
        hp = {**OPTIMIZER_DEFAULTS[opt["name"]], **{k: v for k, v in opt.items() if k not in ("name", "schedule")}}
        out += [(opt["name"], dict(loss), hp, opt.get("schedule", "constant")) for loss in options["losses"]]
    return out


def _family_batches(candidates) -> dict[str, tuple[list[int], dict, dict, np.ndarray]]:
    """family → (candidate indices, stacked loss hparams, stacked optimizer hparams, cosine flags (K_f,))."""
    groups: dict = {}
    for i, (fam, loss, opt, schedule) in enumerate(candidates):
        groups.setdefault(fam, []).append((i, _loss_hparams(loss), opt, schedule == "cosine"))
    return {
        fam: ([g[0] for g in group],
              hparams(**{k: [g[1][k] for g in group] for k in ("w", "t_kd", "t_ce", "reverse")}),
              hparams(**{k: [g[2][k] for g in group] for k in group[0][2]}),
              np.array([g[3] for g in group]))
        for fam, group in (sorted(groups.items(), key=lambda kv: kv[1][0][0]))
    }


def cosine_scale(cosine: np.ndarray, start: int, steps: int, total: int) -> np.ndarray:
    """(K, steps) float32 update multipliers of steps ``start … start + steps − 1`` since the optimizer states were
    (re)initialised: ``½(1 + cos(π·min(s, total)/total))`` where ``cosine``, else 1 (cosine decay to 0 over
    ``total`` steps, as the reference's SGD, restarting when growth re-initialises the states)."""
    s = np.minimum(np.arange(start, start + steps), total) / max(total, 1)
    decay = 0.5 * (1.0 + np.cos(np.pi * s))
    return np.where(np.asarray(cosine)[:, None], decay[None, :], 1.0).astype(np.float32)


def _objectives(options: dict) -> list[tuple[str, bool, float]]:
    return [(o["metric"], assess.METRICS[o["metric"]].higher_is_better, o.get("margin", 0.0))
            for o in options["objectives"]]


def _finite(scores: dict) -> bool:
    return all(np.isfinite(np.asarray(v)).all() for v in scores.values())


def _init_opt_states(families: dict, params) -> dict:
    return {fam: init_family(FAMILIES[fam], params, ohp) for fam, (_, _, ohp, _) in families.items()}


@struct.dataclass
class Model:
    """An EV3 student as evaluated, selected and reported: the network (no optimizer) and its architecture
    config as sorted JSON (static, so a grown student's structure can be rebuilt)."""

    student: Student
    arch: str = struct.field(pytree_node=False, default="{}")


def _model(a: _Arch, v) -> Model:
    return Model(Student(a.graphdef, None, v["params"], v["rest"], None), json.dumps(a.config, sort_keys=True))


@dataclass
class EV3Run:
    """EV3's method state (host-side). ``protocol``: current and stable parameters, every candidate's optimizer
    state; ``arch``: their architecture (θ and θ_s always share it: growth grows both); ``significant``: whether
    each round since the last growth moved θ_s (the growth trigger's history); ``decisions`` and
    ``growth_events`` so far; ``last_losses``: the last round's candidate training losses (K,); ``rounds``: rounds
    done."""

    protocol: EV3State
    arch: _Arch
    candidates: list
    objectives: list
    significant: list = field(default_factory=list)
    decisions: list = field(default_factory=list)
    growth_events: list = field(default_factory=list)
    last_losses: np.ndarray | None = None
    rounds: int = 0
    multipass: "Passes | None" = None


@dataclass
class Passes:
    """Multi-pass state (``passes`` > 1). ``index``: the pass (0-based); ``start``/``end``: its first round and the
    round its budget ends at; ``archive``: growth level (growth events of its pass) → ``{"arch", "params",
    "accuracy", "pass", "iteration"}``, one student per size; ``teachers``: the archive's entries at the start of
    this pass (level order), each the target of one reverse-KL loss; ``student_steps``: real student steps so
    far (a pass ≥ 2 round runs K₁ + |teachers|·|optimizers| candidates); ``starts``: each pass's first round."""

    index: int = 0
    start: int = 0
    end: int = 0
    archive: dict = field(default_factory=dict)
    teachers: list = field(default_factory=list)
    student_steps: int = 0
    starts: list = field(default_factory=lambda: [0])


def init(spec, data, teacher, key) -> EV3Run:
    net = models.build(spec.model, data.input_shape, data.num_classes, key)
    candidates = _candidates(spec.options)
    params = _variables(net)
    arch = _Arch(dict(spec.model), net.graphdef)
    protocol = init_state(params, _init_opt_states(_family_batches(candidates), params))
    passes = spec.options.get("passes", 1)
    multipass = Passes(end=_pass_end(0, spec.options["iterations"], 0, passes)) if passes > 1 else None
    return EV3Run(protocol, arch, candidates, _objectives(spec.options), multipass=multipass)


def _pass_end(start: int, units: int, index: int, passes: int) -> int:
    """The round at which pass ``index`` (starting at round ``start``) has spent its budget: the rounds left split
    equally over the passes left (the last takes the remainder; a pass ended early by growth leaves its rounds
    to the passes after it)."""
    return units if index == passes - 1 else start + (units - start) // (passes - index)


ARCHIVE_LOSS = {"loss": "reverse_kl", "t_kd": 1.0}
"""The loss toward an archived student (its eval-mode logits as the teacher's): reverse KL at T = 1."""


def pass_options(options: dict, teachers: int) -> dict:
    """The options of a pass with ``teachers`` archived students: ``losses`` + one reverse-KL loss toward each
    (``target``: its index in the pass's teachers), so K = (|losses| + teachers)·|optimizers|."""
    return {**options, "losses": list(options["losses"]) + [{**ARCHIVE_LOSS, "target": j} for j in range(teachers)]}


def evaluate(model: Model, x):
    return model.student.logits(x)


def model(state: EV3Run) -> Model:
    """The current model θ: what EV3 evaluates and reports (val-selected like every method's)."""
    return _model(state.arch, state.protocol.params)


def population_size(spec) -> None:
    return None


def teacher_passes(spec) -> tuple[int, int]:
    """Teacher forwards per round: one per candidate step batch (K·L, every candidate draws its own); no backward."""
    return budget_share(spec.options), 0


def track(state: EV3Run, data, counter, teacher) -> dict:
    """The round evaluated and the stable model θ_s's ``val`` and ``test`` accuracy (reporting: the val-selected
    θ_s in ``summary``; not selection FLOPs)."""
    stable = _model(state.arch, state.protocol.stable_params)
    out = {"iteration": state.rounds - 1}
    for split in ("val", "test"):
        x, y = data.splits[split]
        out[f"stable_{split}_accuracy"] = accuracy(predict(counter, evaluate, stable, x)[0], y)
    return out


def draw_batches(train, augment, mix, num_classes: int, L: int, B: int, teacher, order_key, it, *, k: int,
                 base=None):
    """Round ``it``'s L train batches of each of ``k`` candidates, ``(k, L, B, ...)``, drawn i.i.d. with
    replacement, augmented (``train.augment``) and mixed per batch (``train.mixup``; labels become (k, L, B, C)
    targets), with the teacher's logits on exactly those views (function matching): ``(k, L, B, C)``, or with
    ``base`` (static indices) on those candidates' batches only, ``(len(base), L, B, C)`` (a multi-pass round,
    whose other candidates match archived students). Keys are arguments: other seeds reuse the executable."""
    x_train, y_train = train
    round_key = jax.random.fold_in(order_key, it)
    idx = jax.random.randint(round_key, (k * L * B,), 0, x_train.shape[0])
    xb, yb = x_train[idx], y_train[idx]
    if augment is not None:
        xb = augment(stream(round_key, "augment"), xb)
    if mix is not None:
        keys = jax.random.split(stream(round_key, "mixup"), k * L)
        xb, yb = jax.vmap(lambda key, x, y: mix(key, x, y, num_classes))(
            keys, xb.reshape(k * L, B, *xb.shape[1:]), yb.reshape(k * L, B))
        xb, yb = xb.reshape(k * L * B, *xb.shape[2:]), yb.reshape(k * L * B, num_classes)
    if base is None:
        return xb.reshape(k, L, B, *xb.shape[1:]), yb.reshape(k, L, B, *yb.shape[1:]), teacher(xb).reshape(k, L, B, -1)
    xb, yb = xb.reshape(k, L, B, *xb.shape[1:]), yb.reshape(k, L, B, *yb.shape[1:])
    return xb, yb, teacher(xb[base].reshape(-1, *xb.shape[3:])).reshape(len(base), L, B, -1)


def draw_sample(teacher, key, it, *, pool, n: int, aug, needs_teacher: bool, num_classes: int):
    """``n`` fresh samples of ``pool`` for round ``it``, i.i.d. with replacement, augmented by ``aug``, with the
    teacher's logits where a metric reads them (zeros otherwise)."""
    k = jax.random.fold_in(key, it)
    idx = jax.random.randint(k, (n,), 0, pool[0].shape[0])
    x = pool[0][idx] if aug is None else aug(stream(k, "augment"), pool[0][idx])
    t = teacher(x) if needs_teacher else jnp.zeros((n, num_classes), jnp.float32)
    return x, pool[1][idx], t


def stage_pools(data, source: str) -> dict:
    """``{"assess": (pool, aug), "decide": (pool, aug)}``: ``source`` train (the reference: both stages draw from
    the training split; images assessed with a reflect-pad-1 crop + flip, decided with a flip) or meta (the
    first half of the stratified, per-class shuffled ``meta`` split assesses, the rest decides; no views)."""
    if source == "train":
        x, y = data.splits["train"]
        image = x.ndim == 4
        return {"assess": ((x, y), partial(crop_flip, padding=1, flip=True, mode="reflect") if image else None),
                "decide": ((x, y), partial(crop_flip, padding=0, flip=True) if image else None)}
    x, y = data.splits["meta"]
    half = x.shape[0] // 2
    return {"assess": ((x[:half], y[:half]), None), "decide": ((x[half:], y[half:]), None)}


PROBE_SAMPLES = 2048


@dataclass
class WrongProbe:
    """A fixed sample of (clean) training inputs ``x`` (at most :data:`PROBE_SAMPLES`, the first of a fixed
    permutation, the same for every run) and the teacher's argmax on them, ``teacher_class`` (N,)."""

    x: jax.Array
    teacher_class: np.ndarray

    def fraction(self, counter, apply, params) -> float:
        """The fraction of the sample on which ``apply(params, ·)`` is confidently wrong: its top softmax
        probability > 0.99 on a class other than the teacher's argmax (reporting only: no FLOPs counted)."""
        logits, _ = predict(counter, apply, params, self.x)
        return confidently_wrong(logits, self.teacher_class)


def wrong_probe(data, teacher, counter) -> WrongProbe:
    """The run's :class:`WrongProbe` (one teacher forward on it)."""
    x = data.splits["train"][0]
    rows = np.random.default_rng(0).permutation(x.shape[0])[:PROBE_SAMPLES]
    x = x[np.sort(rows)]
    logits, _ = predict(counter, frozen_logits, teacher, x)
    return WrongProbe(x, np.asarray(jnp.argmax(logits, -1)))


def work(ctx) -> "Round":
    return Round(ctx)


class Round:
    """EV3's unit of work: one explore → assess → decide → grow round (see the module docstring).

    A checkpoint holds the current and stable parameters, every candidate's optimizer state, both
    architecture's config (a grown student is rebuilt from its config), the growth trigger's history, decisions,
    growth events and the last round's losses. Batches and assess subsets are functions of the round number, so a
    resumed run ends as an uninterrupted one would. EV3 runs on one device (no data parallelism)."""

    def __init__(self, ctx):
        ctx.dp = None
        self.ctx = ctx
        spec, data = ctx.spec, ctx.data
        self.o = o = spec.options
        self.families = _family_batches(_candidates(o))
        self.growth_key = stream(seed_key(spec.seed), "growth")
        self.metric_names = sorted({name for name, _, _ in _objectives(o)} | {"accuracy"})
        self.L, B = o["steps_per_candidate"], spec.train["batch_size"]
        self.K = len(_candidates(o))
        self.units = o["iterations"] if flops_budget(spec) is None else None
        self.steps_per_unit = self.K * self.L
        self.units_per_call = 1  # a round is not a step: train.steps_per_call does not apply
        self.stages = stages = {**STAGES, **o.get("stages", {})}
        key = seed_key(spec.seed)
        self.order_key, self.assess_key, self.decide_key = (stream(key, s) for s in ("batch_order", "assess", "decide"))
        self.built: dict = {}
        self.archs: dict = {}
        self.passes = o.get("passes", 1)
        if self.passes > 1 and self.units is None:
            raise ValueError(f"methods/{spec.method}/passes: {self.passes} passes need a round budget, "
                             "not budget.flops")
        self.families_by_teachers = {0: self.families}
        self.draws: dict = {}
        train = data.splits["train"]
        self.draw = partial(draw_batches, train, augment_fn(spec.train.get("augment")),
                            mixup_fn(spec.train.get("mixup")), data.num_classes, self.L, B)
        needs_teacher = "teacher_agreement" in self.metric_names
        for stage, (pool, aug) in stage_pools(data, stages["source"]).items():
            setattr(self, f"draw_{stage}", partial(draw_sample, pool=pool, n=stages[f"{stage}_samples"], aug=aug,
                                                   needs_teacher=needs_teacher, num_classes=data.num_classes))
        self.probe = None  # the confidently-wrong probe (training samples, teacher argmax), built at load

    def load(self, state: EV3Run, units_done: int) -> None:
        self.archs.setdefault(json.dumps(state.arch.config, sort_keys=True), state.arch)
        self.run = state
        if self.probe is None:
            self.probe = wrong_probe(self.ctx.data, self.ctx.teacher, self.ctx.counter)

    def _canonical(self, config: dict, graphdef) -> _Arch:
        """The run's one :class:`_Arch` of ``config`` (so a pass that reaches an architecture again reuses its
        compiled functions)."""
        return self.archs.setdefault(json.dumps(config, sort_keys=True), _Arch(config, graphdef))

    def _families(self, teachers: int) -> dict:
        """The candidate families of a pass with ``teachers`` archived students (cached)."""
        if teachers not in self.families_by_teachers:
            self.families_by_teachers[teachers] = _family_batches(_candidates(pass_options(self.o, teachers)))
        return self.families_by_teachers[teachers]

    def _new_pass(self, it: int) -> EV3Run:
        """Pass ``index + 1`` starting at round ``it``: a freshly initialised student (θ = θ_s), fresh optimizer
        states, the growth history reset, and the archive as it is now as the pass's extra targets."""
        ctx, run, mp = self.ctx, self.run, self.run.multipass
        index = mp.index + 1
        teachers = [mp.archive[level] for level in sorted(mp.archive)]
        key = jax.random.fold_in(stream(seed_key(ctx.spec.seed), "pass_init"), index)
        net = models.build(ctx.spec.model, ctx.data.input_shape, ctx.data.num_classes, key)
        params = _variables(net)
        protocol = init_state(params, _init_opt_states(self._families(len(teachers)), params))
        protocol = protocol._replace(iteration=run.protocol.iteration)
        ctx.log(f"[{ctx.spec.method} seed{ctx.spec.seed}] iteration {it}: pass {index + 1} with "
                f"{len(teachers)} archived students")
        new = dataclasses.replace(mp, index=index, start=it, end=_pass_end(it, self.units, index, self.passes),
                                  teachers=teachers, starts=mp.starts + [it])
        return dataclasses.replace(run, protocol=protocol, arch=self._canonical(dict(ctx.spec.model), net.graphdef),
                                   candidates=_candidates(pass_options(self.o, len(teachers))), significant=[],
                                   multipass=new)

    def _targets(self, xb, logits, K: int):
        """``logits`` (K₁, L, B, C) of the base candidates merged with each archived student's eval-mode logits
        on its candidates' batches ``xb`` (K, L, B, ...) into (K, L, B, C) (archived forwards: teacher FLOPs)."""
        mp, nb = self.run.multipass, len(self.o["losses"])
        n_losses = nb + len(mp.teachers)
        base = np.array([c for c in range(K) if c % n_losses < nb])
        out = jnp.zeros((K, *logits.shape[1:]), logits.dtype).at[base].set(logits)
        for j, teacher in enumerate(mp.teachers):
            ids = np.arange(nb + j, K, n_losses)
            x = xb[ids].reshape(-1, *xb.shape[3:])
            compiled, f = self.ctx.counter.compile("archive_forward", teacher["arch"].apply, teacher["params"], x)
            self.ctx.flops["teacher"] += f
            out = out.at[ids].set(compiled(teacher["params"], x).reshape(len(ids), *logits.shape[1:]))
        return out

    def state(self) -> EV3Run:
        return self.run

    def _score(self, a: _Arch, params, x, y, t, batched):
        metrics = tuple(assess.METRICS[m] for m in self.metric_names)
        fn = a.fn(f"score{batched}", lambda: partial(assess._score, a.apply, metrics=metrics, batched=batched))
        compiled, f = self.ctx.counter.compile(f"score{batched}", fn, params, x, y, t)
        self.ctx.flops["selection"] += f
        return {k: np.asarray(v) for k, v in compiled(params, x, y, t).items()}

    def _sample(self, stage: str, it: int):
        """Round ``it``'s fresh ``stage`` draw ``(x, y, teacher logits)`` (teacher forwards: selection FLOPs)."""
        args = (self.ctx.teacher, getattr(self, f"{stage}_key"), np.int32(it))
        compiled, f = self.ctx.counter.compile(f"draw_{stage}", getattr(self, f"draw_{stage}"), *args)
        self.ctx.flops["selection"] += f
        return compiled(*args)

    def advance(self, it: int, count: int = 1) -> None:
        """Round ``it``: explore, then grow (when stalled) or assess → decide, as the module docstring says."""
        grows = self._begin(it)
        run = self.run
        xb, yb, teacher_logits = self._batches(it)
        batched, losses, diverged = self._explore(it, xb, yb, teacher_logits)
        student_steps = (it + 1) * len(run.candidates) * self.L
        if run.multipass is not None:  # a pass with archived students runs more candidates than the unit's K₁
            mp = run.multipass
            mp = dataclasses.replace(mp, student_steps=mp.student_steps + len(run.candidates) * self.L)
            student_steps = mp.student_steps
            self.run = dataclasses.replace(self.run, multipass=mp)
        if grows:  # this round's proposal is discarded (its steps count): θ and θ_s grow instead
            self.run = self._grow(it, self.run.protocol, run.arch, losses, student_steps)
            return
        picked, assess_scores = self._assess(it, batched, diverged)
        state, decision, decide_draw = self._decide(it, batched, picked, assess_scores, ~diverged)
        self._record(it, state, decision, decide_draw, picked, losses, diverged, student_steps)

    def _begin(self, it: int) -> bool:
        """Round ``it``'s start: a new pass when the current one is over (multi-pass); whether the round grows."""
        growth, mp = self.o["growth"], self.run.multipass
        stalled = bool(growth) and _stalled(self.run.significant, growth["patience"])
        if mp is not None and mp.index < self.passes - 1 and (
                it >= mp.end or (stalled and _level(self.run) >= growth["max_size"])):
            self.run = self._new_pass(it)  # budget spent, or growth would exceed max_size: the next pass
            stalled = False
        return stalled and _level(self.run) < growth["max_size"]

    def _batches(self, it: int):
        """The K candidates' L batches of round ``it`` with their targets' logits: the teacher's on the very
        views the candidate trains on, and in a multi-pass round each archived student's (teacher FLOPs)."""
        ctx, mp, K = self.ctx, self.run.multipass, len(self.run.candidates)
        args = (ctx.teacher, self.order_key, np.int32(it))
        archived = mp is not None and bool(mp.teachers)
        if (K, archived) not in self.draws:  # one function per shape, so each compiles once
            n_losses = len(self.o["losses"]) + (len(mp.teachers) if archived else 0)
            base = np.array([c for c in range(K) if c % n_losses < len(self.o["losses"])]) if archived else None
            self.draws[K, archived] = partial(self.draw, k=K, base=base)
        compiled, f = ctx.counter.compile(f"draw_pass{K}" if archived else "draw", self.draws[K, archived], *args)
        xb, yb, teacher_logits = compiled(*args)
        if archived:
            teacher_logits = self._targets(xb, teacher_logits, K)
        ctx.flops["teacher"] += f
        return xb, yb, teacher_logits

    def _explore(self, it: int, xb, yb, teacher_logits):
        """Every candidate's L steps from θ, one vmapped call per optimizer family; the families' optimizer
        states are kept (a diverged candidate's re-initialised). Returns the candidates' parameters (K, ...),
        their mean training losses (K,) and which diverged (K,) bool."""
        run, o, L, counter = self.run, self.o, self.L, self.ctx.counter
        state, arch, K, mp = run.protocol, run.arch, len(run.candidates), run.multipass
        family_params, new_opt_states, losses = [], {}, np.zeros(K)
        origin = run.growth_events[-1]["iteration"] + 1 if run.growth_events else 0  # the states' first round
        total = o["iterations"] * L
        if mp is not None:  # schedules restart at each pass and run over its budget
            origin, total = max(origin, mp.start), (mp.end - mp.start) * L
        families = self._families(len(mp.teachers) if mp is not None else 0)
        for fam, (ids, lhp, ohp, cosine) in families.items():  # candidate ids are contiguous per family, in order
            fn = arch.fn(f"explore_{fam}",
                         lambda fam=fam: partial(explore, arch.train_apply, FAMILIES[fam], per_candidate=True))
            scale = cosine_scale(cosine, (it - origin) * L, L, total)
            sl = slice(ids[0], ids[-1] + 1)
            args = (state.params, state.opt_states[fam], lhp, ohp, (xb[sl], yb[sl]), teacher_logits[sl], scale)
            compiled, f = counter.compile(f"explore_{fam}", fn, *args)
            self.ctx.flops["student"] += f * L
            params_f, opt_f, loss_f = compiled(*args)
            new_opt_states[fam] = opt_f
            losses[ids] = np.asarray(loss_f)
            family_params.append(params_f)
        batched = concat(family_params) if len(family_params) > 1 else family_params[0]
        diverged = ~(np.isfinite(losses) & _finite_members(batched, K))
        if diverged.any():  # NaN moments would keep a candidate diverged for good (and cannot be checkpointed)
            new_opt_states = {fam: _reset_members(new_opt_states[fam], diverged[ids], FAMILIES[fam], state.params, ohp)
                              for fam, (ids, _, ohp, _) in families.items()}
        self.run = dataclasses.replace(run, protocol=state._replace(opt_states=new_opt_states))
        return batched, losses, diverged

    def _assess(self, it: int, batched, diverged):
        """The pick: the best ``mean − assess_alpha·stderr`` on the first objective over a fresh assess draw (a
        diverged candidate never); returns (its index, the per-sample assess scores)."""
        arch, (name, higher, _) = self.run.arch, self.run.objectives[0]
        xa, ya, ta = self._sample("assess", it)
        scores = self._score(arch, batched, xa, ya, ta, True)
        lcb = assess.lower_confidence_bound(scores[name], self.stages["assess_alpha"], higher)
        return int(np.argmax(np.where(~diverged & np.isfinite(lcb), lcb, -np.inf))), scores

    def _decide(self, it: int, batched, picked: int, assess_scores, finite):
        """θ and θ_s after ``decide.rule`` on one fresh decide draw for the pick, θ and θ_s (no draw under
        ``always``); returns (protocol state, decision record, the decide draw or None)."""
        run, o, arch = self.run, self.o, self.run.arch
        state, rule, (name, higher, _) = run.protocol, o["decide"]["rule"], run.objectives[0]
        draw = None if rule == "always" else self._sample("decide", it)
        if rule == "paired":
            decide_scores = self._score(arch, batched, *draw, True)
            current_scores = self._score(arch, state.params, *draw, False)
            stable_scores = self._score(arch, state.stable_params, *draw, False)
            state, decision = adapt(
                state, batched, decide_scores, current_scores, stable_scores,
                objectives=run.objectives, confidence=o["confidence"], alpha=self.stages["assess_alpha"],
                assess_scores=assess_scores, candidate=picked,
            )
            decision.update(rule=rule, winner="candidate" if decision["accepted"] else "current")
            return state, decision, draw
        chosen = take(batched, picked)
        decision = {"iteration": state.iteration, "rule": rule, "candidate": picked}
        if rule == "always":  # θ ← the candidate, θ_s = θ: no decide stage (unless every candidate diverged)
            winner, stable_moved = ("candidate" if finite.any() else "current"), True
        else:
            scores = [self._score(arch, p, *draw, False)[name] for p in (chosen, state.params, state.stable_params)]
            oriented = [s if higher else -s for s in scores]
            winner, stable_moved = reference_decision(*oriented, alpha=o["decide"].get("alpha", ALPHA))
            decision["objectives"] = {name: {f"{who}_mean": float(np.mean(np.asarray(s, np.float64)))
                                             for who, s in zip(REFERENCE_ORDER, scores)}}
        params = {"candidate": chosen, "current": state.params, "stable": state.stable_params}[winner]
        state = state._replace(params=params, stable_params=params if stable_moved else state.stable_params,
                               iteration=state.iteration + 1)
        decision.update(winner=winner, accepted=winner == "candidate", stable_moved=stable_moved)
        return state, decision, draw

    def _record(self, it: int, state: EV3State, decision: dict, decide_draw, picked: int, losses, diverged,
                student_steps: int) -> None:
        """The decided round into the run: its decision record (candidate, loss, optimizer, θ's confidently-wrong
        fraction), the growth trigger's history and, with several passes, the archive offered θ."""
        run, rule, mp = self.run, self.o["decide"]["rule"], self.run.multipass
        fam, loss_hp, opt_hp, schedule = run.candidates[picked]
        decision.update(rolled_back=decision["winner"] == "stable", grew=False)
        decision["nonfinite_candidates"] = [int(i) for i in np.flatnonzero(diverged)]  # never picked
        decision.update(family=fam, loss=loss_hp, optimizer={**opt_hp, "schedule": schedule},
                        student_steps=student_steps, train_loss=float(losses[picked]))
        decision["confidently_wrong"] = self.probe.fraction(self.ctx.counter, run.arch.apply, state.params)
        significant = decision["stable_moved"] and rule != "always"  # under always θ_s = θ moves trivially
        if mp is not None:  # the archive is offered θ, scored on this round's decide draw
            draw = decide_draw if decide_draw is not None else self._sample("decide", it)
            acc = float(np.mean(self._score(run.arch, state.params, *draw, False)["accuracy"]))
            level = _level(run)
            decision.update({"pass": mp.index, "current_decide_accuracy": acc})
            entry = {"arch": run.arch, "params": state.params, "accuracy": acc, "pass": mp.index, "iteration": it}
            archive = offer(mp.archive, level, entry)
            if archive is not mp.archive:
                mp = dataclasses.replace(mp, archive=archive)
                decision["archived"] = level
        self.run = dataclasses.replace(run, protocol=state, decisions=run.decisions + [decision], multipass=mp,
                                       significant=run.significant + [significant], last_losses=losses, rounds=it + 1)

    def _grow(self, it: int, state: EV3State, arch: _Arch, losses, student_steps: int) -> EV3Run:
        """θ and θ_s grown by ``growth.operator`` with one key (the same random choice and new weights), fresh
        optimizer states for every candidate, the trigger's history reset."""
        ctx, run, growth = self.ctx, self.run, self.o["growth"]
        op = GROWTH_OPERATORS[growth.get("operator") or DEFAULT_OPERATOR[arch.config["type"]]]
        key = jax.random.fold_in(self.growth_key, it)
        shape, classes, morphism = ctx.data.input_shape, ctx.data.num_classes, growth.get("morphism", True)
        grown = [op(arch.config, models.Network(arch.graphdef, v["params"], v["rest"]), shape, classes, key,
                    morphism=morphism) for v in (state.params, state.stable_params)]
        new_config, (current, stable) = grown[0][0], (_variables(n) for _, n in grown)
        new_arch = self._canonical(new_config, grown[0][1].graphdef)
        families = self._families(len(run.multipass.teachers) if run.multipass else 0)
        state = state._replace(params=current, stable_params=stable,
                               opt_states=_init_opt_states(families, current), iteration=state.iteration + 1)
        event = {"iteration": it, "student_steps": student_steps, "operator": op.__name__, "morphism": morphism,
                 "from_arch": _arch_name(arch.config), "to_arch": _arch_name(new_config),
                 "params_before": models.param_count(run.protocol.params["params"]),
                 "params": models.param_count(current["params"])}
        if run.multipass is not None:
            event["pass"] = run.multipass.index
        ctx.log(f"[{ctx.spec.method} seed{ctx.spec.seed}] iteration {it}: grew to {event['to_arch']}")
        decision = {"iteration": it, "rule": self.o["decide"]["rule"], "grew": True, "winner": "current",
                    "accepted": False, "stable_moved": False, "rolled_back": False, "student_steps": student_steps,
                    "train_loss": _min_finite(losses)}
        if run.multipass is not None:
            decision["pass"] = run.multipass.index
        return dataclasses.replace(run, protocol=state, arch=new_arch, significant=[], decisions=run.decisions + [decision],
                                   growth_events=run.growth_events + [event], last_losses=losses, rounds=it + 1)

    def train_loss(self) -> float | None:
        return _min_finite(self.run.last_losses)

    def nonfinite(self, train_loss) -> str | None:
        """Diverged candidates are only rejected; a non-finite current or stable model stops the run."""
        p = self.run.protocol
        return None if _finite(dict(enumerate(jax.tree.leaves((p.params, p.stable_params))))) else "current or stable model"

    def training_flops(self, units: int) -> tuple[float, float, float]:
        f = self.ctx.flops  # accumulated round by round (a grown student's rounds cost more)
        return f["student"], f["teacher"], f["student"] + f["teacher"]

    def progress(self, units: int) -> str:
        return f"iteration {units}/{self.o['iterations']} steps {units * self.steps_per_unit}"

    def checkpoint(self) -> tuple[dict, dict]:
        run, p = self.run, self.run.protocol
        trees = {"params": p.params, "opt_states": p.opt_states, "stable_params": p.stable_params}
        meta = {"state_iteration": p.iteration, "stall_count": p.stall_count, "arch": run.arch.config,
                "significant": run.significant, "decisions": _json_safe(run.decisions),
                "growth_events": run.growth_events, "last_losses": _json_safe(list(run.last_losses))}
        mp = run.multipass
        if mp is not None:  # the archive's and the pass's targets' parameters, their configs in meta
            entries = {**{f"archive_{level}": e for level, e in mp.archive.items()},
                       **{f"teacher_{j}": e for j, e in enumerate(mp.teachers)}}
            trees.update({name: e["params"] for name, e in entries.items()})
            meta["multipass"] = {
                "index": mp.index, "start": mp.start, "end": mp.end, "student_steps": mp.student_steps,
                "starts": mp.starts, "teachers": len(mp.teachers),
                "entries": {name: {**{k: v for k, v in e.items() if k != "params"}, "arch": e["arch"].config}
                            for name, e in entries.items()}}
        return trees, meta

    def _arch_like(self, config: dict):
        """An :class:`_Arch` and a parameter pytree shaped like ``config``'s model (one per config)."""
        name = json.dumps(config, sort_keys=True)
        if name not in self.built:
            net = models.build(config, self.ctx.data.input_shape, self.ctx.data.num_classes, jax.random.key(0))
            self.built[name] = (self._canonical(config, net.graphdef), _variables(net))
        return self.built[name]

    def likes(self, meta: dict) -> dict:
        params = self._arch_like(meta["arch"])[1]
        mp = meta.get("multipass")
        teachers = mp["teachers"] if mp else 0
        extra = {name: self._arch_like(e["arch"])[1] for name, e in mp["entries"].items()} if mp else {}
        return {"params": params, "opt_states": _init_opt_states(self._families(teachers), params),
                "stable_params": params, **extra}

    def restore(self, trees: dict, meta: dict, units_done: int) -> None:
        protocol = EV3State(trees["params"], trees["opt_states"], trees["stable_params"], meta["state_iteration"], meta["stall_count"])
        self.run = dataclasses.replace(
            self.run, protocol=protocol, arch=self._arch_like(meta["arch"])[0], significant=meta["significant"],
            decisions=meta["decisions"], growth_events=meta["growth_events"], rounds=units_done,
            last_losses=np.array([np.nan if x is None else x for x in meta["last_losses"]]),
        )
        m = meta.get("multipass")
        if m is not None:
            entries = {name: {**e, "arch": self._arch_like(e["arch"])[0], "params": trees[name]}
                       for name, e in m["entries"].items()}
            archive = {int(name.split("_")[1]): e for name, e in entries.items() if name.startswith("archive_")}
            teachers = [entries[f"teacher_{j}"] for j in range(m["teachers"])]
            self.run = dataclasses.replace(
                self.run, candidates=_candidates(pass_options(self.o, len(teachers))),
                multipass=Passes(m["index"], m["start"], m["end"], archive, teachers, m["student_steps"], m["starts"]))

    def model_meta(self, model: Model) -> dict:
        return {"arch": json.loads(model.arch)}

    def model_like(self, meta: dict) -> Model:
        return _model(*self._arch_like(meta["arch"]))


def _reset_members(opt_state, reset: np.ndarray, family, params, hparams_batch):
    """A family's batched optimizer state (leading axis K_f) with the members where ``reset`` (K_f,) bool is set
    replaced by a fresh state for ``params``: a diverged candidate starts its next round without NaN moments."""
    if not reset.any():
        return opt_state
    fresh = init_family(family, params, hparams_batch)
    mask = jnp.asarray(reset)
    return jax.tree.map(lambda old, new: jnp.where(mask.reshape((-1,) + (1,) * (old.ndim - 1)), new, old),
                        opt_state, fresh)


def _finite_members(batched, k: int) -> np.ndarray:
    """(K,) bool: every parameter of candidate k is finite."""
    ok = np.ones(k, bool)
    for leaf in jax.tree.leaves(batched):
        ok &= np.asarray(jnp.isfinite(leaf).reshape(k, -1).all(axis=1))
    return ok


def offer(archive: dict, level: int, entry: dict) -> dict:
    """The multi-pass archive after ``entry`` (θ with its decide ``accuracy``) is offered at growth ``level``: a new
    dict holding it when the level is empty or its accuracy is strictly higher than the archived one's, else
    ``archive`` itself (one student per size; ties keep the earlier)."""
    if level in archive and not entry["accuracy"] > archive[level]["accuracy"]:
        return archive
    return {**archive, level: entry}


def _level(run: EV3Run) -> int:
    """Growth events of the current pass (the archive's size key)."""
    index = run.multipass.index if run.multipass is not None else 0
    return sum(e.get("pass", 0) == index for e in run.growth_events)


def _stalled(significant: list, patience: int) -> bool:
    """The growth trigger: at least ``patience`` rounds decided since the last growth, none of the last
    ``patience`` significant (θ_s moved)."""
    return len(significant) >= patience and not any(significant[-patience:])


def _min_finite(losses: np.ndarray) -> float | None:
    """The round's best finite candidate training loss (None if every candidate diverged)."""
    finite = losses[np.isfinite(losses)]
    return float(finite.min()) if finite.size else None


def _arch_name(config: dict) -> str:
    """``mlp-64x64`` (hidden widths), ``cnn-16-16`` (channels), ``resnet-1-2-1`` / ``wrn-…`` (blocks per stage)."""
    if config["type"] == "mlp":
        return "mlp-" + "x".join(map(str, hidden_widths(config)))
    if config["type"] == "cnn":
        return "cnn-" + "-".join(map(str, config["channels"]))
    return f"{config['type']}-" + "-".join(map(str, stage_blocks(config)))


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
    """The ``ev3`` object of metrics.json (non-finite statistics are null): candidates, objectives, decisions,
    growth, architectures, the round counters, the trajectory of the evaluations (θ and θ_s), the final θ's test
    accuracy (what the reference reports) and the test accuracy of θ_s at its best ``val`` evaluation."""
    run, selected = result.state, result.selected_state
    trajectory = [
        {"iteration": t["iteration"], "student_steps": t["student_steps"], "flops": h["flops"],
         "current_val_accuracy": h["val_accuracy"], "current_test_accuracy": h["test_accuracy"],
         "stable_val_accuracy": t["stable_val_accuracy"], "stable_test_accuracy": t["stable_test_accuracy"]}
        for t, h in zip(result.tracked, result.history)
    ]
    best_stable = max(trajectory, key=lambda e: e["stable_val_accuracy"]) if trajectory else {}  # earliest on ties
    decided = [d for d in run.decisions if not d["grew"]]
    accepted = sum(d["accepted"] for d in decided)
    return _json_safe({
        "candidates": [{"family": f, "loss": l, "optimizer": {**h, "schedule": c}} for f, l, h, c in run.candidates],
        "objectives": [{"metric": n, "higher_is_better": h, "margin": m} for n, h, m in run.objectives],
        "iterations": len(run.decisions),
        "rounds": {
            "total": len(run.decisions),
            "moved_current": sum(d["winner"] != "current" for d in decided),
            "moved_stable": sum(d["stable_moved"] for d in decided),
            "rolled_back": sum(d["rolled_back"] for d in decided),
            "grew": len(run.decisions) - len(decided),
        },
        "accepted": accepted,
        "rejected": len(decided) - accepted,
        "stable_moves": sum(d["stable_moved"] for d in decided),
        "final_current_test_accuracy": result.history[-1]["test_accuracy"] if result.history else None,
        "selected_stable_val_accuracy": best_stable.get("stable_val_accuracy"),
        "selected_stable_test_accuracy": best_stable.get("stable_test_accuracy"),
        "decisions": run.decisions,
        "growth_events": run.growth_events,
        "final_arch": run.arch.config,
        "final_params": models.param_count(run.protocol.params["params"]),
        "selected_arch": json.loads(selected.arch),
        "selected_params": models.param_count(selected.student.params),
        "current_arch": run.arch.config,
        "trajectory": trajectory,
        "mean_candidate_losses_last": [float(x) for x in run.last_losses],
        **({} if run.multipass is None else {"passes": {
            "count": len(run.multipass.starts), "starts": run.multipass.starts,
            "student_steps": run.multipass.student_steps,
            "archive": [{"level": level, "arch": e["arch"].config, "params": models.param_count(e["params"]["params"]),
                         "decide_accuracy": e["accuracy"], "pass": e["pass"], "iteration": e["iteration"]}
                        for level, e in sorted(run.multipass.archive.items())]}}),
    })
