"""The training loop: every method runs through :func:`fit`.

The loop owns the budget stop, eval cadence, selection on ``val``, history, the NaN/Inf guard, checkpoints and
resume, timing and compute accounting; a method (:class:`ev3.methods.contract.Method`) supplies ``init``, its
unit of work (:class:`ev3.methods.contract.Work`: :class:`StepWork` for a pure ``step``; EV3's round) and
``evaluate``, plus the hooks it declares.

Conventions
- Batches (:class:`StepWork`): each epoch is a permutation of ``train`` (stream ``batch_order`` folded with the
  epoch number), cut into ``N // batch_size`` batches (the remainder is dropped); the gather runs on device
  inside the jitted step. A batch is ``(x, y)``, or ``(x, y, indices)`` (int32 (B,), the examples' rows in
  ``train``) for a method whose unit of work is :class:`IndexedStepWork` (CRD's memory bank), or ``(x, y,
  x_strong)`` for :class:`TwoViewStepWork` (MLKD's strong view). The step key is
  stream ``step`` folded with the step number. With ``train.augment`` (image or signal transforms) the batch is
  augmented on device in the same step (``ev3.data.augment``, stream ``augment`` of the step key), then with
  ``train.mixup`` mixed (stream ``mixup``; ``y`` becomes (B, C) float targets). The method's step gets that
  view (views; ``StepWork.batch_fn``) and nothing else, so its teacher sees the very inputs its student trains
  on (function matching).
- Steps per call (``train.steps_per_call``, N): the Python loop calls one ahead-of-time compiled step per unit
  when N = 1 (the CPU default: conv training inside ``lax.scan`` is much slower on CPU), or one compiled
  ``lax.scan`` over n ≤ N consecutive steps (the same per-step batch slicing, key folding and augmentation, so
  results equal N = 1 up to float reassociation). A chunk ends exactly at every evaluation (hence at every
  checkpoint) and at the end of training; it does not need to end at epoch boundaries: the scan draws the next
  epoch's permutation on device (``lax.cond`` at the epoch's first step, from ``batch_order`` and the epoch,
  as the host does for N = 1). Chunks of N steps and the remainders that occur (e.g. ``eval_every`` mod N)
  compile once each; a chunk of one step is the single compiled step. The loss is summed on device and
  fetched only at evaluations. The step takes and returns the state's flat list of leaves and a device-resident
  step index, so a call does no pytree flattening and no host-to-device transfer.
- Cadence: a unit is ``work.steps_per_unit`` steps per population member (one step; an EV3 round: K·L); one
  ``work.advance`` runs up to ``work.units_per_call`` units (``train.steps_per_call``; an EV3 round: 1). The
  state is evaluated once ``train.eval_every`` more steps are done and after the last unit; checkpoints are
  named by steps done.
- FLOPs: XLA's ``cost_analysis()`` of each compiled call × its number of calls; training steps count the
  single compiled step's cost × steps whatever ``steps_per_call`` (XLA's cost of a scan counts its body
  once). ``flops_teacher`` = teacher forward cost on a batch × (teacher forwards + 2 × teacher backwards; a
  backward pass is counted as two forwards; per unit: ``method.teacher_passes``); ``flops_student`` = the
  rest of the training steps; ``flops_selection`` = evaluations on ``val`` (and a method's own selection work,
  e.g. EV3's assess/decide). Test-set evaluations are reporting only and not counted.
- Tracking: ``method.track(state, data, counter, teacher)`` runs at every evaluation; a dict it returns (with
  ``student_steps``) is appended to ``FitResult.tracked`` (e.g. MetaDistil's teacher).
- Selection: ``method.model(state)`` is evaluated; the one with the best ``val`` accuracy (earliest on ties)
  is the reported model, a :class:`Selection`.
- Populations: with ``method.population_size(spec)`` (``tuned``), several members train in one step and
  ``evaluate`` returns logits (members, N, C). Selection runs over (member, evaluation), ``select(model, k)``
  keeps member ``k``; every member's steps count as student steps; each evaluation's per-member ``val``
  accuracies are tracked (``val_accuracy_per_member``).
- Resume: with ``state_dir``, the loop checkpoints (``ev3.checkpoint.ResumeStore``, orbax) at evaluations every
  ``train.checkpoint_every`` steps (default: every evaluation) and at the end: the method state
  (``work.checkpoint``), the selected model, the steps done and the loop's bookkeeping (history, tracking,
  selection, FLOPs, timings). Batch order and step keys are functions of the step index, so a resumed run is
  bit-identical to an uninterrupted one; an unusable checkpoint falls back to the previous one, or to a fresh
  start.
- Stop requests (``ev3.stop``: SIGTERM from a scheduler's time limit or preemption): the loop checks for one
  before every call of the unit of work; it then checkpoints the state it is at (between evaluations too: the
  loss summed since the last evaluation is part of that checkpoint, so the resumed history is the same) and
  raises :class:`ev3.stop.Stopped`. A resume from it is bit-identical to an uninterrupted run as well (with
  ``train.steps_per_call`` > 1 the stop comes at the end of a chunk, where the uninterrupted run's chunks end).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import re
import time
import zlib
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from ev3 import diagnostics, stop
from ev3.data.augment import augment_fn, mixup_fn, view_fn
from ev3.losses import cross_entropy_per_sample
from ev3.parallel import data_parallel
from ev3.rng import seed_key, stream

EVAL_CHUNK = 1024


class NonFiniteError(FloatingPointError):
    """NaN/Inf in the training loss or parameters; the run stops and writes no metrics."""


# Executables compiled in this process, by their lowered program (StableHLO text), donated arguments, input and
# output pytree structures and input shapes (a compiled call checks its inputs' structure, static fields
# included, and every input's shape): the runs
# of one job (a seed group) trace their own functions but compile each distinct program once. Bounded; the
# oldest entry goes first.
_EXECUTABLES: dict = {}
_EXECUTABLES_MAX = 256


def _executable(fn, args, donate_argnums, shapes) -> tuple:
    """(compiled, flops per call) of ``jax.jit(fn)`` for ``args`` (``shapes``: their leaves' shapes and dtypes,
    unused ones included: a program drops unused arguments but its executable checks them), from this process's
    cache where the lowered program is one compiled before."""
    lowered = jax.jit(fn, donate_argnums=donate_argnums).lower(*args)
    key = (hashlib.sha256(lowered.as_text().encode()).hexdigest(), tuple(donate_argnums), lowered.in_tree,
           lowered.out_tree, shapes)
    if key not in _EXECUTABLES:
        compiled = lowered.compile()
        if len(_EXECUTABLES) >= _EXECUTABLES_MAX:
            del _EXECUTABLES[next(iter(_EXECUTABLES))]
        _EXECUTABLES[key] = (compiled, flops_of(compiled))
    return _EXECUTABLES[key]


@dataclass
class Counter:
    """Ahead-of-time compilation with a compile counter, compile time and per-call FLOPs of one run.

    ``compiles``: the executables the run needed; ``compile_s``: the time it spent getting them (tracing and
    lowering, plus XLA's compile unless an earlier run of the same process compiled the same program)."""

    compiles: int = 0
    compile_s: float = 0.0
    cache: dict = field(default_factory=dict)

    def compile(self, name: str, fn, *args, donate_argnums=()):
        """Compile ``fn`` for ``args``' shapes once per (name, fn, shapes); returns (compiled, flops per call)."""
        shapes = tuple((a.shape, a.dtype) if hasattr(a, "shape") else type(a) for a in jax.tree.leaves(args))
        key = (name, fn, jax.tree.structure(args), shapes)
        if key not in self.cache:
            t0 = time.perf_counter()
            self.cache[key] = _executable(fn, args, donate_argnums, shapes)
            self.compile_s += time.perf_counter() - t0
            self.compiles += 1
        return self.cache[key]


def compiled_names(counter: Counter) -> set[str]:
    """Process-independent names of the calls ``counter`` compiled (to count compiles across a resume)."""
    names = set()
    for name, fn, treedef, shapes in counter.cache:
        fn_name = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
        signature = re.sub(r" at 0x[0-9a-f]+", "", f"{treedef}|{shapes}")  # no object addresses
        names.add(f"{name}|{fn_name}|{zlib.crc32(signature.encode()):08x}")
    return names


def flops_of(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def predict(counter: Counter, evaluate, state, x: jax.Array) -> tuple[jax.Array, float]:
    """Logits of ``evaluate(state, x)`` in fixed-size chunks (padded); returns (logits (N, C), FLOPs spent)."""
    leaves, treedef = jax.tree.flatten(state)
    n = x.shape[0]
    chunk = min(n, EVAL_CHUNK)
    pieces, flops = [], 0.0
    for start in range(0, n, chunk):
        xb = x[start : start + chunk]
        pad = chunk - xb.shape[0]
        if pad:
            xb = jnp.concatenate([xb, jnp.zeros((pad, *xb.shape[1:]), xb.dtype)])
        compiled, f = counter.compile("evaluate", on_leaves(evaluate, treedef), leaves, xb)
        pieces.append(compiled(leaves, xb)[..., : chunk - pad, :])  # a population's logits: (members, N, C)
        flops += f
    return jnp.concatenate(pieces, axis=-2), flops


@functools.lru_cache(maxsize=256)
def on_leaves(fn, treedef):
    """``fn(tree, *args)`` as ``(leaves, *args)``: a compiled call on a list of arrays, whose input structure is
    the same for every run of a process (a state's structure holds run-specific static fields, e.g. optimizer
    functions), so runs share the executable. One wrapper per (fn, treedef), named as ``fn``."""

    def leaves_fn(leaves, *args):
        return fn(jax.tree.unflatten(treedef, leaves), *args)

    leaves_fn.__module__ = getattr(fn, "__module__", leaves_fn.__module__)
    leaves_fn.__qualname__ = getattr(fn, "__qualname__", type(fn).__name__)
    return leaves_fn


def on_flat_state(fn, treedef):
    """``fn(state, *args) -> (state, *outs)`` as ``(leaves, *args) -> (leaves, *outs)``, over the state's flat
    list of leaves (``treedef``: the state's structure, the same before and after). A compiled call on a list of
    arrays skips flattening the state pytree (flax NNX variables inside struct dataclasses) on the host: 0.22
    vs 0.52 ms per call for the MLP student's state, host work that competes with XLA for the cores."""

    def flat(leaves, *args):
        state, *outs = fn(jax.tree.unflatten(treedef, leaves), *args)
        return (jax.tree.leaves(state), *outs)

    return flat


def frozen_logits(model, x: jax.Array) -> jax.Array:
    """Logits of a frozen model (``ev3.methods.common.Frozen``); a named function so it compiles once."""
    return model(x)


def accuracy(logits, labels) -> float:
    return float(jnp.mean(jnp.argmax(logits, -1) == labels))


def member_accuracy(logits, labels) -> np.ndarray:
    """Accuracy of each member of a population's logits (members, N, C)."""
    return np.asarray(jnp.mean(jnp.argmax(logits, -1) == labels, axis=-1), np.float64)


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def compute_counters(counter: Counter, *, student_steps: int, teacher_forwards: int, teacher_backwards: int,
                     flops_student: float, flops_teacher: float, flops_selection: float, wall_s: float,
                     train_s: float) -> dict:
    """The ``compute`` object of metrics.json (``train_s``: time in training steps, for steady steps/s)."""
    return {
        "student_steps": student_steps,
        "teacher_forwards": teacher_forwards,
        "teacher_backwards": teacher_backwards,
        "flops_student": flops_student,
        "flops_teacher": flops_teacher,
        "flops_selection": flops_selection,
        "flops": flops_student + flops_teacher + flops_selection,
        "wall_s": wall_s,
        "compile_s": counter.compile_s,
        "compiles": counter.compiles,
        "steps_per_s": student_steps / train_s if train_s > 0 else None,
        "peak_memory_bytes": (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use"),
    }


def resume_store(spec, teacher, state_dir: str, log):
    """The run's :class:`ev3.checkpoint.ResumeStore`; its identity is the spec (minus the checkpoint cadence and
    the machine's ``device``/``gpus``, which do not change what a run computes) and the teacher's parameters."""
    from ev3.checkpoint import ResumeStore, fingerprint

    return ResumeStore(state_dir, fingerprint(run_identity(spec), teacher), log=log)


def run_identity(spec) -> dict:
    """What a run computes: its spec minus the checkpoint cadence and the machine's ``device``/``gpus``."""
    identity = {k: v for k, v in vars(spec).items() if k not in ("device", "gpus")}
    identity["train"] = {k: v for k, v in spec.train.items() if k != "checkpoint_every"}
    return identity


def compile_record(counter: Counter, resumed: dict) -> dict:
    """Checkpoint metadata on compilation: time and names over this process and the one resumed from."""
    return {
        "compile_s": resumed.get("compile_s", 0.0) + counter.compile_s,
        "compiled": sorted(set(resumed.get("compiled", [])) | compiled_names(counter)),
    }


def merge_compiles(counter: Counter, resumed: dict) -> None:
    """A resumed run reports the compiles and compile time of both processes."""
    counter.compile_s += resumed.get("compile_s", 0.0)
    counter.compiles = len(set(resumed.get("compiled", [])) | compiled_names(counter))


@dataclass
class Selection:
    """The evaluated model with the best ``val`` accuracy so far (earliest, then lowest member, on ties).

    ``student_steps``: when it was evaluated; ``member``: its index in a population (None otherwise);
    ``model``: a copy of it (``method.model(state)``, or one member of it)."""

    val_accuracy: float
    student_steps: int
    member: int | None
    model: object


@dataclass
class FitResult:
    """What :func:`fit` returns: the selected model, the final model (``method.model`` of the final state; of a
    population, the selected member), the evaluations (``history``), compute counters, the per-evaluation
    tracked values, the method's final state (for its ``summary``) and, for a member of a seed group, the
    group's shared times (``ev3.seedgroup``)."""

    selection: Selection
    final_state: object
    history: list
    compute: dict
    tracked: list = field(default_factory=list)
    state: object = None
    shared: dict | None = None  # a seed group's job-wide times (``ev3.seedgroup``); None for a single run

    @property
    def selected_state(self):
        return self.selection.model

    @property
    def val_accuracy(self) -> float:
        return self.selection.val_accuracy


@dataclass
class RunContext:
    """One run as a method's :class:`ev3.methods.contract.Work` sees it. ``flops``: the run's FLOPs counters
    (``student``, ``teacher``, ``selection``), shared with the loop, which adds ``val`` evaluations to
    ``selection``; ``put``: places a pytree for data parallelism (identity without)."""

    method: object
    spec: object
    data: object
    teacher: object
    counter: Counter
    dp: object = None
    log: object = print
    flops: dict = field(default_factory=lambda: {"student": 0.0, "teacher": 0.0, "selection": 0.0})

    def put(self, tree):
        return self.dp.put(tree) if self.dp else tree


class StepWork:
    """The unit of work of a method with a pure ``step(state, batch, key) -> (state, logs)``: one compiled call
    of the step on the next batch (see Conventions: batches, keys, augmentation, flat leaves, donation).

    Units: ``train.steps``; one student step (per population member) each; ``units_per_call``:
    ``train.steps_per_call`` (default 1), the most steps one call runs (a ``lax.scan``, see Conventions). FLOPs:
    the single compiled step's cost × steps, the teacher's share from ``method.teacher_passes``; no per-step
    host accumulation."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        method, spec, put = ctx.method, ctx.spec, ctx.put
        x_all, y_all = put(ctx.data.splits["train"])
        n, batch_size = x_all.shape[0], spec.train["batch_size"]
        self.per_epoch = per_epoch = n // batch_size
        if per_epoch < 1:
            raise ValueError(f"train/batch_size={batch_size} exceeds the {n} training examples")
        dp, make_batch = ctx.dp, self.batch_fn(spec, ctx.data.num_classes)
        key = seed_key(spec.seed)
        self.train = (x_all, y_all)

        # The data and keys are arguments, never constants: no dataset inside the executable, and other seeds
        # reuse the compiled kernel. The step index lives on device and comes back incremented, and the state
        # crosses the call as its flat leaves (``on_flat_state``), so a step sends nothing from the host.
        def loop_step(state, loss_sum, i, train, perm, step_key):
            idx = jax.lax.dynamic_slice_in_dim(perm, (i % per_epoch) * batch_size, batch_size)
            (x, y), key = (train[0][idx], train[1][idx]), jax.random.fold_in(step_key, i)
            if dp:
                x, y = dp.constrain_batch((x, y))
            state, logs = method.step(state, make_batch(key, x, y, idx), key)
            if dp:
                state = dp.constrain_replicated(state)
            return state, loss_sum + logs["loss"], i + 1

        def permutation(key, epoch):  # the key is an argument, so runs with other seeds reuse the compiled kernel
            return jax.random.permutation(jax.random.fold_in(key, epoch), n)

        def steps(length):
            """``length`` consecutive steps in one ``lax.scan``; the permutation is carried and redrawn on device
            at each epoch's first step (the same as the host's ``permutation``)."""

            def run(state, loss_sum, i, train, perm, order_key, step_key):
                def body(carry, _):
                    state, loss_sum, i, perm = carry
                    new_epoch = i % per_epoch == 0
                    perm = jax.lax.cond(new_epoch, lambda: permutation(order_key, i // per_epoch), lambda: perm)
                    state, loss_sum, i = loop_step(state, loss_sum, i, train, perm, step_key)
                    return (state, loss_sum, i, perm), None

                return jax.lax.scan(body, (state, loss_sum, i, perm), length=length)[0]

            return run

        self.loop_step, self.permutation, self.steps = loop_step, permutation, steps
        self.chunks = {}  # length -> compiled scan of that many steps
        self.zero, self.order_key, self.step_key = put((jnp.float32(0.0), stream(key, "batch_order"), stream(key, "step")))
        if flops_budget(spec) is not None:  # resolved to steps before the state's init (LR schedules need them)
            ctx.spec = spec = budget_steps(spec, self._step_flops(spec))
        self.units, self.steps_per_unit = spec.train["steps"], 1
        self.units_per_call = int(spec.train.get("steps_per_call", 1))
        if self.units_per_call < 1:
            raise ValueError(f"train/steps_per_call: {self.units_per_call} is not a positive integer")
        self.forwards, self.backwards = method.teacher_passes(spec)
        self.members = method.population_size(spec)
        self.initial = None

    def batch_fn(self, spec, num_classes: int):
        """``batch(key, x, y, idx)``: what the method's step gets of the clean batch ``(x, y)`` (rows ``idx`` of
        ``train``) under the step's key: the view and targets of :func:`ev3.data.augment.view_fn` (augmentation
        and mixup on their own streams, so the method's key is the same with or without them)."""
        view = view_fn(spec.train, num_classes)
        return lambda key, x, y, idx: view(key, x, y)

    def _step_flops(self, spec) -> float:
        """XLA's FLOPs of one call of the loop's step (batch gather, view, method step), as the run will count
        them; the state is initialised with the step count from the config (FLOPs do not depend on it)."""
        ctx = self.ctx
        state = ctx.put(ctx.method.init(spec, ctx.data, ctx.teacher, jax.random.key(0)))
        treedef = jax.tree.structure(state)
        perm = ctx.put(jnp.arange(self.train[0].shape[0], dtype=jnp.int32))
        lowered = jax.jit(on_flat_state(self.loop_step, treedef)).lower(
            jax.tree.leaves(state), self.zero, ctx.put(np.int32(0)), self.train, perm, self.step_key)
        return flops_of(lowered.compile())

    def load(self, state, units_done: int) -> None:
        """Take ``state`` (initial or restored) as the state after ``units_done`` units; compiles on first use.
        The step donates its state: it gets a copy, so arrays shared with the caller (teacher, data) stay alive."""
        c, i32, put = self.ctx.counter, np.int32, self.ctx.put
        state = put(jax.tree.map(jnp.copy, state))
        if self.initial is None:
            self.initial = state
            self.treedef = jax.tree.structure(state)
            self.perm_c, _ = c.compile("permutation", self.permutation, self.order_key, i32(0))
            self.step_c, self.step_flops = c.compile(
                "step", on_flat_state(self.loop_step, self.treedef), jax.tree.leaves(state), self.zero, put(i32(0)),
                self.train, self.perm_c(self.order_key, i32(0)), self.step_key, donate_argnums=(0, 2),
            )
            self.finite_c, _ = c.compile("all_finite", _all_finite, jax.tree.leaves(state))
            self.teacher_fwd_flops = 0.0
            teacher = self.ctx.teacher
            if teacher is not None and (self.forwards or self.backwards):
                batch = self.train[0][: self.ctx.spec.train["batch_size"]]
                _, self.teacher_fwd_flops = c.compile("teacher_forward", frozen_logits, put(teacher), batch)
            if self.units_per_call > 1 and self.units >= self.units_per_call:
                self.chunk(self.units_per_call)  # compiled before the loop's clock starts
        self.leaves, self.step_index = jax.tree.leaves(state), put(jnp.int32(units_done))
        self.loss_sum, self.since, self.perm = self.zero, 0, None

    def chunk(self, length: int):
        """The compiled scan of ``length`` steps (compiled on first use; donates leaves, step index, permutation)."""
        if length not in self.chunks:
            i32, put = np.int32, self.ctx.put
            self.chunks[length], _ = self.ctx.counter.compile(
                f"steps{length}", on_flat_state(self.steps(length), self.treedef), jax.tree.leaves(self.initial),
                self.zero, put(i32(0)), self.train, self.perm_c(self.order_key, i32(0)), self.order_key,
                self.step_key, donate_argnums=(0, 2, 4),
            )
        return self.chunks[length]

    def advance(self, index: int, count: int = 1) -> None:
        """Run steps ``index`` … ``index + count - 1`` (``count`` ≤ ``units_per_call``) in one compiled call."""
        epoch, j = divmod(index, self.per_epoch)
        if count == 1:
            if j == 0 or self.perm is None:
                self.perm = self.perm_c(self.order_key, np.int32(epoch))
            self.leaves, self.loss_sum, self.step_index = self.step_c(
                self.leaves, self.loss_sum, self.step_index, self.train, self.perm, self.step_key
            )
        else:
            if self.perm is None:  # redrawn inside the scan when the chunk starts an epoch
                self.perm = self.perm_c(self.order_key, np.int32(epoch))
            self.leaves, self.loss_sum, self.step_index, self.perm = self.chunk(count)(
                self.leaves, self.loss_sum, self.step_index, self.train, self.perm, self.order_key, self.step_key
            )
        self.since += count

    def state(self):
        return jax.tree.unflatten(self.treedef, self.leaves)

    def train_loss(self) -> float:
        loss = float(self.loss_sum) / self.since  # host sync
        self.loss_sum, self.since = self.zero, 0
        return loss

    def nonfinite(self, train_loss) -> str | None:
        finite = math.isfinite(train_loss) and bool(self.finite_c(jax.tree.leaves(self.state())))
        return None if finite else "training loss or parameters"

    def training_flops(self, units: int) -> tuple[float, float, float]:
        teacher = self.teacher_fwd_flops * (units * self.forwards + 2 * units * self.backwards)
        total = self.step_flops * units
        return total - teacher, teacher, total

    def progress(self, units: int) -> str:
        return f"step {units}/{self.units}"

    def checkpoint(self) -> tuple[dict, dict]:
        """The state; between evaluations (a stop request) also the loss summed since the last one, as exact
        float32 values in the metadata, so the next evaluation's mean loss is the uninterrupted run's."""
        if not self.since:
            return {"state": self.state()}, {}
        pending = np.asarray(self.loss_sum)
        meta = {"since": self.since, "loss_sum": pending.tolist(), "loss_dtype": str(pending.dtype)}
        return {"state": self.state()}, meta

    def likes(self, meta: dict) -> dict:
        return {"state": self.initial}

    def restore(self, trees: dict, meta: dict, units_done: int) -> None:
        self.load(trees["state"], units_done)
        if meta.get("since"):
            self.loss_sum = self.ctx.put(jnp.asarray(np.asarray(meta["loss_sum"], meta["loss_dtype"])))
            self.since = meta["since"]

    def model_meta(self, model) -> dict:
        return {}

    def model_like(self, meta: dict):
        model = self.ctx.method.model(self.initial)
        return self.ctx.method.select(model, 0) if self.members else model


class IndexedStepWork(StepWork):
    """:class:`StepWork` whose batches are ``(x, y, indices)``: ``indices`` (B,) int32, each example's row in the
    ``train`` split (a per-example memory, e.g. CRD's bank)."""

    def batch_fn(self, spec, num_classes: int):
        view = view_fn(spec.train, num_classes)
        return lambda key, x, y, idx: (*view(key, x, y), idx)


class TwoViewStepWork(StepWork):
    """:class:`StepWork` whose batches are ``(x, y, x_strong)``: ``x_strong`` a second view of the same examples,
    the clean batch through the transforms of the method's ``strong_view`` option (``ev3.data.augment``, stream
    ``strong_view`` of the step key), then with ``train.mixup`` mixed with the same partners and λ as ``x``
    (stream ``mixup``), so both views share the targets ``y``; None when ``strong_view`` is absent (one view)."""

    def batch_fn(self, spec, num_classes: int):
        view, mix = view_fn(spec.train, num_classes), mixup_fn(spec.train.get("mixup"))
        strong = augment_fn(spec.options.get("strong_view"))

        def batch(key, x, y, idx):
            x_strong = None if strong is None else strong(stream(key, "strong_view"), x)
            if x_strong is not None and mix is not None:
                x_strong = mix(stream(key, "mixup"), x_strong, y, num_classes)[0]
            return (*view(key, x, y), x_strong)

        return batch


def fit(method, spec, data, teacher, *, log=print, state_dir: str | None = None, devices=None) -> FitResult:
    """Train ``method`` (a module of ``ev3.methods``, :class:`ev3.methods.contract.Method`) per ``spec`` on
    ``data`` and select on ``val``: the one training loop of every method.

    The method's :class:`~ev3.methods.contract.Work` advances the state one unit at a time; this loop owns the
    budget stop (``work.units`` units, or with ``units`` None until the FLOPs budget: it stops before a unit
    that would exceed it, a unit costing about what the last one did), the eval cadence (every
    ``train.eval_every`` steps per member, where a unit is ``work.steps_per_unit`` steps, and after the last
    unit), selection, history, tracking, checkpoints/resume and the compute counters. Its phases are the
    methods of :class:`_Loop`: setup (and resume), chunk, evaluate, checkpoint, result.

    ``state_dir``: checkpoint there and resume from the newest usable checkpoint found there (see Resume).
    ``devices``: data-parallel over these (default: all local devices; see ``ev3.parallel``)."""
    loop = _Loop(method, spec, data, teacher, log, state_dir, devices)
    i = loop.start
    while loop.units is None or i < loop.units:
        if stop.requested():
            loop.stop(i)
        i, last = loop.chunk(i)
        if i * loop.per_unit >= loop.next_eval or last:
            loop.evaluate(i)
            loop.checkpoint(i, last)
            loop.t_loop = time.perf_counter()
        if last:
            break
    return loop.result(i)


class _Loop:
    """The state of one :func:`fit` between its phases: the method's work, the eval cadence, history, tracking,
    the selection, the resume store and the clocks (``train_s``: time inside training calls)."""

    def __init__(self, method, spec, data, teacher, log, state_dir, devices):
        self.t_start = time.perf_counter()
        init_key = stream(seed_key(spec.seed), "student_init" if spec.role == "student" else "teacher_init")
        self.ctx = ctx = RunContext(method, spec, data, teacher, Counter(), data_parallel(spec.train["batch_size"], devices), log)
        self.method, self.data, self.teacher, self.log = method, data, teacher, log
        self.work = work = method.work(ctx)
        self.spec = spec = ctx.spec  # a FLOPs budget may be resolved to units (StepWork)
        work.load(method.init(spec, data, teacher, init_key), 0)
        self.members = method.population_size(spec)
        self.val, self.test = ctx.put(data.splits["val"]), ctx.put(data.splits["test"])
        self.eval_every, self.units, self.per_unit = spec.train["eval_every"], work.units, work.steps_per_unit
        self.budget = flops_budget(spec) if self.units is None else None
        self.tag = f"[{spec.method} seed{spec.seed}]"
        self.history, self.tracked, self.train_s = [], [], 0.0
        self.best: Selection | None = None
        self.start, self.store, self.resumed = 0, None, {}
        if state_dir is not None:
            self._resume(state_dir)
        self.next_eval = (self.start * self.per_unit // self.eval_every + 1) * self.eval_every
        self.last_checkpoint = self.start * self.per_unit
        self.t_loop = time.perf_counter()

    def _resume(self, state_dir: str) -> None:
        """Open the resume store and continue from its newest usable checkpoint, if any."""
        spec, work = self.spec, self.work
        self.checkpoint_every = spec.train.get("checkpoint_every", self.eval_every)
        self.store = resume_store(spec, self.teacher, state_dir, self.log)
        restored = self.store.restore(lambda meta: {
            **work.likes(meta.get("method", {})),
            **({} if meta.get("best") is None else {"best": work.model_like(meta.get("best_model") or {})}),
        })
        if restored is None:
            return
        step, trees, self.resumed = restored
        trees = self.ctx.put(trees)
        self.start = step // self.per_unit
        work.restore({k: v for k, v in trees.items() if k != "best"}, self.resumed["method"], self.start)
        self.history, self.tracked = self.resumed["history"], self.resumed["tracked"]
        b = self.resumed["best"]  # None: stopped before its first evaluation
        self.best = None if b is None else Selection(b["val_accuracy"], b["student_steps"], b["member"], trees["best"])
        self.ctx.flops.update(self.resumed["flops"])
        self.train_s = self.resumed["train_s"]
        self.t_start -= self.resumed["wall_s"]  # the wall time before the interruption counts too
        self.log(f"{self.tag} resumed from step {step} ({state_dir})")

    def chunk(self, i: int) -> tuple[int, bool]:
        """Units ``i`` … in one call, up to the next evaluation (so every checkpoint) and the end (one unit under
        a FLOPs budget); returns (units done, whether this was the last)."""
        work = self.work
        if self.budget is None:
            to_eval = -(-(self.next_eval - i * self.per_unit) // self.per_unit)
            count = max(1, min(work.units_per_call, self.units - i, to_eval))
        else:
            count = 1
        trained_before = work.training_flops(i)[2] if self.budget is not None else None
        work.advance(i, count)
        i += count
        if self.budget is None:
            return i, i == self.units
        trained = work.training_flops(i)[2]
        if i == 1 and trained > self.budget:
            raise ValueError(f"budget/flops: {self.budget:.3g} is less than one round of {self.spec.method} "
                             f"({trained:.3g} FLOPs)")
        return i, trained + (trained - trained_before) > self.budget

    def evaluate(self, done: int) -> None:
        """The evaluation after ``done`` units: NaN guard, val (selection) and test accuracy into the history,
        the selection, the method's tracking."""
        work, method, counter, members = self.work, self.method, self.ctx.counter, self.members
        steps = done * self.per_unit
        train_loss = work.train_loss()  # host sync
        self.train_s += time.perf_counter() - self.t_loop
        what = work.nonfinite(train_loss)
        if what is not None:
            raise NonFiniteError(f"{self.spec.method}: non-finite {what} at step {steps} (mean loss {train_loss})")
        state = work.state()
        model = method.model(state)
        (x_val, y_val), (x_test, y_test) = self.val, self.test
        val_logits, f = predict(counter, method.evaluate, model, x_val)
        self.ctx.flops["selection"] += f
        test_logits, _ = predict(counter, method.evaluate, model, x_test)
        k = None
        if members:  # the best member now; val only
            per_member = member_accuracy(val_logits, y_val)
            k = int(np.argmax(per_member))
            self.tracked.append({"student_steps": steps * members, "val_accuracy_per_member": per_member.tolist()})
            val_logits, test_logits = val_logits[k], test_logits[k]
        val_acc = accuracy(val_logits, y_val)
        self.history.append({
            "student_steps": steps * (members or 1),
            "flops": work.training_flops(done)[2] + self.ctx.flops["selection"],
            "wall_s": time.perf_counter() - self.t_start,
            "train_loss": train_loss,
            "val_accuracy": val_acc,
            "test_accuracy": accuracy(test_logits, y_test),
        })
        loss_text = "nan" if train_loss is None else f"{train_loss:.4f}"
        self.log(f"{self.tag} {work.progress(done)} loss {loss_text} val {val_acc:.4f}")
        if self.best is None or val_acc > self.best.val_accuracy:
            selected = model if k is None else method.select(model, k)
            self.best = Selection(val_acc, steps * (members or 1), k, jax.tree.map(jnp.copy, selected))
        values = method.track(state, self.data, counter, self.teacher)
        if values is not None:
            self.tracked.append({"student_steps": steps, **values})
        while self.next_eval <= steps:
            self.next_eval += self.eval_every

    def checkpoint(self, done: int, last: bool) -> None:
        """A resume checkpoint after this evaluation when ``train.checkpoint_every`` steps passed, or at the end."""
        steps = done * self.per_unit
        if self.store is None or not (steps // self.checkpoint_every > self.last_checkpoint // self.checkpoint_every
                                      or last):
            return
        self._save(done)

    def stop(self, done: int) -> None:
        """At a stop request (``ev3.stop``): a checkpoint of the state after ``done`` units unless the newest one
        is of it, then :class:`ev3.stop.Stopped`."""
        signum, steps = stop.requested(), done * self.per_unit
        if steps == 0:
            where = "no step was trained"
        elif self.store is None:
            where = "no --state-dir, so nothing was saved"
        else:
            if steps != self.last_checkpoint:
                self.train_s += time.perf_counter() - self.t_loop
                try:
                    self._save(done)
                except FloatingPointError as e:  # a diverged state is not saved; the rerun meets the NaN guard
                    self.log(f"{self.tag} not checkpointed at the stop: {e}")
            where = f"its checkpoint of step {self.last_checkpoint} is in {self.store.directory}"
        if self.store is not None:
            self.store.close()
        raise stop.Stopped(f"{self.tag} stopped by {signum.name} at {self.work.progress(done)}: {where}; rerun the "
                           "same command to resume", signum)

    def _save(self, done: int) -> None:
        steps = done * self.per_unit
        trees, method_meta = self.work.checkpoint()
        best = self.best  # None before the first evaluation (a stop request)
        if best is not None:
            trees = {**trees, "best": best.model}
        meta = {
            "history": self.history,
            "tracked": self.tracked,
            "best": None if best is None else {"val_accuracy": best.val_accuracy, "student_steps": best.student_steps,
                                               "member": best.member},
            "best_model": None if best is None else self.work.model_meta(best.model),
            "method": method_meta,
            "flops": self.ctx.flops,
            "train_s": self.train_s,
            "wall_s": time.perf_counter() - self.t_start,
            **compile_record(self.ctx.counter, self.resumed),
        }
        self.store.save(steps, trees, meta)
        self.last_checkpoint = steps

    def result(self, done: int) -> FitResult:
        """The :class:`FitResult` after ``done`` units (closes the resume store)."""
        counter, method, spec, work = self.ctx.counter, self.method, self.spec, self.work
        if self.store is not None:
            self.store.close()
            merge_compiles(counter, self.resumed)
        forwards, backwards = method.teacher_passes(spec)
        flops_student, flops_teacher, _ = work.training_flops(done)
        compute = compute_counters(
            counter, student_steps=done * self.per_unit * (self.members or 1), teacher_forwards=done * forwards,
            teacher_backwards=done * backwards, flops_student=flops_student, flops_teacher=flops_teacher,
            flops_selection=self.ctx.flops["selection"], wall_s=time.perf_counter() - self.t_start,
            train_s=self.train_s,
        )
        state = work.state()
        final = method.model(state) if not self.members else method.select(method.model(state), self.best.member)
        return FitResult(self.best, final, self.history, compute, self.tracked, state)


def flops_budget(spec) -> float | None:
    """The run's training-FLOPs budget (config ``budget: {flops: F}``), or None."""
    return (spec.budget or {}).get("flops")


def budget_steps(spec, per_step: float):
    """``spec`` with ``train.steps`` = floor(budget FLOPs / ``per_step``), the training FLOPs (student + teacher,
    XLA cost) of one step of the loop on one batch, so the run's training FLOPs land within one step of the
    budget; selection FLOPs are reported beside. Raises ValueError when the budget is less than one step."""
    steps = int(flops_budget(spec) // per_step)
    if steps < 1:
        raise ValueError(f"budget/flops: {flops_budget(spec):.3g} is less than one step of {spec.method} ({per_step:.3g} FLOPs)")
    return dataclasses.replace(spec, train={**spec.train, "steps": steps})


def test_report(method, result: FitResult, data, teacher_test_logits) -> tuple[dict, dict]:
    """Test metrics of the selected state (and the final one) plus ``predictions.npz`` arrays."""
    counter = Counter()
    x_test, y_test = data.splits["test"]
    logits, _ = predict(counter, method.evaluate, result.selected_state, x_test)
    final_logits, _ = predict(counter, method.evaluate, result.final_state, x_test)
    if logits.ndim == 3:  # a population of one (the selected member)
        logits, final_logits = logits[0], final_logits[0]
    pred = jnp.argmax(logits, -1)
    fidelity = None if teacher_test_logits is None else diagnostics.fidelity(logits, teacher_test_logits)
    metrics = {
        "test_accuracy": accuracy(logits, y_test),
        "final_test_accuracy": accuracy(final_logits, y_test),
        "val_accuracy": result.val_accuracy,
        "test_nll": float(jnp.mean(cross_entropy_per_sample(logits, y_test))),
        "teacher_agreement": None if fidelity is None else fidelity["agreement"],
        "test_kl_teacher_student": None if fidelity is None else fidelity["kl_teacher_student"],
    }
    predictions = {
        "pred": np.asarray(pred, np.int64),
        "label": np.asarray(y_test, np.int64),
        "prob": np.asarray(jax.nn.softmax(logits, -1), np.float32),
    }
    return metrics, predictions
