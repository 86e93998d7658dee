"""The shared training loop: every method runs through :func:`fit`.

The loop owns the step budget, batch order, eval cadence, selection on ``val``, the NaN/Inf guard, timing and
compute accounting; a method only supplies ``init`` / ``step`` / ``evaluate`` (see ``ev3.methods.common``).

Conventions
- Batches: each epoch is a permutation of ``train`` (stream ``batch_order`` folded with the epoch number),
  cut into ``N // batch_size`` batches (the remainder is dropped); the gather runs on device inside the
  jitted step. The step key is stream ``step`` folded with the step number. With ``train.augment`` (images),
  the batch is augmented on device in the same step (``ev3.data.augment``, stream ``augment`` of the step key).
- The Python loop calls one ahead-of-time compiled step per iteration (conv training inside ``lax.scan`` is
  much slower on CPU); the loss is summed on device and fetched only at evaluations. The step takes and returns
  the state's flat list of leaves and a device-resident step index, so a call does no pytree flattening and
  no host-to-device transfer.
- FLOPs: XLA's ``cost_analysis()`` of each compiled call × its number of calls. ``flops_teacher`` = teacher
  forward cost on a batch × (teacher forwards + 2 × teacher backwards; a backward pass is counted as two
  forwards); ``flops_student`` = the rest of the training steps; ``flops_selection`` = evaluations on ``val``.
  Test-set evaluations are reporting only and not counted.
- Tracking: a method may define ``track(state, data, counter, initial_teacher) -> dict``; it is called at every evaluation
  and the entries (with ``student_steps``) are returned as ``FitResult.tracked`` (e.g. MetaDistil's teacher).
- Selection: the state with the best ``val`` accuracy (earliest on ties) is the reported model.
- Populations: a method with ``population_size(spec)`` (``tuned``) trains several members in one step and
  its ``evaluate`` returns logits (members, N, C). Selection runs over (member, evaluation), ``select(state,
  k)`` keeps member ``k``; every member's steps count as student steps; each evaluation's per-member ``val``
  accuracies are tracked (``val_accuracy_per_member``). Its teacher passes per step come from
  ``teacher_passes(spec)``.
- Resume: with ``state_dir``, the loop checkpoints (``ev3.checkpoint.ResumeStore``, orbax) at evaluations every
  ``train.checkpoint_every`` steps (default: every evaluation) and at the end: the method state, the selected
  state, the step and the loop's bookkeeping (history, tracking, best val accuracy/step, selection FLOPs,
  timings). Batch order and step keys are functions of the step index, so a resumed run is bit-identical to
  an uninterrupted one; an unusable checkpoint falls back to the previous one, or to a fresh start.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
import zlib
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from ev3.data.augment import augment_fn
from ev3.losses import cross_entropy_per_sample
from ev3.parallel import data_parallel
from ev3.rng import seed_key, stream

EVAL_CHUNK = 1024


class NonFiniteError(FloatingPointError):
    """NaN/Inf in the training loss or parameters; the run stops and writes no metrics."""


@dataclass
class Counter:
    """Ahead-of-time compilation with a compile counter, compile time and per-call FLOPs."""

    compiles: int = 0
    compile_s: float = 0.0
    cache: dict = field(default_factory=dict)

    def compile(self, name: str, fn, *args, donate_argnums=()):
        """Compile ``fn`` for ``args``' shapes once per (name, fn, shapes); returns (compiled, flops per call)."""
        shapes = tuple((a.shape, a.dtype) if hasattr(a, "shape") else type(a) for a in jax.tree.leaves(args))
        key = (name, fn, jax.tree.structure(args), shapes)
        if key not in self.cache:
            t0 = time.perf_counter()
            compiled = jax.jit(fn, donate_argnums=donate_argnums).lower(*args).compile()
            self.compile_s += time.perf_counter() - t0
            self.compiles += 1
            self.cache[key] = (compiled, flops_of(compiled))
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
    n = x.shape[0]
    chunk = min(n, EVAL_CHUNK)
    pieces, flops = [], 0.0
    for start in range(0, n, chunk):
        xb = x[start : start + chunk]
        pad = chunk - xb.shape[0]
        if pad:
            xb = jnp.concatenate([xb, jnp.zeros((pad, *xb.shape[1:]), xb.dtype)])
        compiled, f = counter.compile("evaluate", evaluate, state, xb)
        pieces.append(compiled(state, xb)[..., : chunk - pad, :])  # a population's logits: (members, N, C)
        flops += f
    return jnp.concatenate(pieces, axis=-2), flops


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
    """The run's :class:`ev3.checkpoint.ResumeStore`; its identity is the spec (minus the checkpoint cadence)
    and the teacher's parameters."""
    from ev3.checkpoint import ResumeStore, fingerprint

    identity = {**vars(spec), "train": {k: v for k, v in spec.train.items() if k != "checkpoint_every"}}
    return ResumeStore(state_dir, fingerprint(identity, teacher), log=log)


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
class FitResult:
    selected_state: object
    final_state: object
    val_accuracy: float
    history: list
    compute: dict
    tracked: list = field(default_factory=list)


def fit(method, spec, data, teacher, *, log=print, state_dir: str | None = None, devices=None) -> FitResult:
    """Train ``method`` (a module from ``ev3.methods``) per ``spec`` on ``data`` and select on ``val``.

    ``state_dir``: checkpoint there and resume from the newest usable checkpoint found there (see Resume).
    ``devices``: data-parallel over these (default: all local devices; see ``ev3.parallel``)."""
    if hasattr(method, "fit"):  # host-driven methods (EV3) run their own loop with the same conventions
        return method.fit(spec, data, teacher, log=log, state_dir=state_dir)
    if flops_budget(spec) is not None:
        spec = apply_flops_budget(method, spec, data, teacher)
    t_start = time.perf_counter()
    key = seed_key(spec.seed)
    init_key = stream(key, "student_init" if spec.role == "student" else "teacher_init")
    order_key, step_key = stream(key, "batch_order"), stream(key, "step")
    # The step donates its state: copy it once, so arrays the state shares with the caller (the teacher,
    # data splits) stay alive.
    state = jax.tree.map(jnp.copy, method.init(spec, data, teacher, init_key))
    dp = data_parallel(spec.train["batch_size"], devices)
    put = dp.put if dp else (lambda tree: tree)
    state = put(state)
    members = method.population_size(spec) if hasattr(method, "population_size") else None
    forwards, backwards = (
        method.teacher_passes(spec) if hasattr(method, "teacher_passes")
        else (method.TEACHER_FORWARDS_PER_STEP, method.TEACHER_BACKWARDS_PER_STEP)
    )

    x_all, y_all = put(data.splits["train"])
    x_val, y_val = put(data.splits["val"])
    x_test, y_test = put(data.splits["test"])
    n, batch_size = x_all.shape[0], spec.train["batch_size"]
    steps, eval_every = spec.train["steps"], spec.train["eval_every"]
    per_epoch = n // batch_size
    if per_epoch < 1:
        raise ValueError(f"train/batch_size={batch_size} exceeds the {n} training examples")

    augment = augment_fn(spec.train.get("augment"))

    # The data and keys are arguments, never constants: no dataset inside the executable, and other seeds
    # reuse the compiled kernel. The step index lives on device and comes back incremented, and the state
    # crosses the call as its flat leaves (``on_flat_state``), so a step sends nothing from the host.
    def loop_step(state, loss_sum, i, train, perm, step_key):
        idx = jax.lax.dynamic_slice_in_dim(perm, (i % per_epoch) * batch_size, batch_size)
        (x, y), key = (train[0][idx], train[1][idx]), jax.random.fold_in(step_key, i)
        if dp:
            x, y = dp.constrain_batch((x, y))
        if augment is not None:  # its own stream: the method's key is the same with or without augmentation
            x = augment(stream(key, "augment"), x)
        state, logs = method.step(state, (x, y), key)
        if dp:
            state = dp.constrain_replicated(state)
        return state, loss_sum + logs["loss"], i + 1

    def permutation(key, epoch):  # the key is an argument, so runs with other seeds reuse the compiled kernel
        return jax.random.permutation(jax.random.fold_in(key, epoch), n)

    counter = Counter()
    zero, order_key, step_key = put((jnp.float32(0.0), order_key, step_key))
    i32 = np.int32
    train = (x_all, y_all)
    perm_c, _ = counter.compile("permutation", permutation, order_key, i32(0))
    treedef = jax.tree.structure(state)
    step_c, step_flops = counter.compile(
        "step", on_flat_state(loop_step, treedef), jax.tree.leaves(state), zero, put(i32(0)), train,
        perm_c(order_key, i32(0)), step_key, donate_argnums=(0, 2),
    )
    finite_c, _ = counter.compile("all_finite", _all_finite, state)
    teacher_fwd_flops = 0.0
    if teacher is not None and (forwards or backwards):
        _, teacher_fwd_flops = counter.compile("teacher_forward", frozen_logits, put(teacher), x_all[:batch_size])

    history, tracked, selection_flops = [], [], 0.0
    best = None  # (val_accuracy, step, state copy)
    loss_sum, since_eval, train_s = zero, 0, 0.0
    perm = None
    start, store, resumed = 0, None, {}
    if state_dir is not None:
        checkpoint_every = spec.train.get("checkpoint_every", eval_every)
        store = resume_store(spec, teacher, state_dir, log)
        restored = store.restore({"state": state, "best": method.select(state, 0) if members else state})
        if restored is not None:
            start, trees, resumed = restored
            trees = put(trees)
            state, history, tracked = trees["state"], resumed["history"], resumed["tracked"]
            best = (resumed["best_val_accuracy"], resumed["best_step"], trees["best"], resumed.get("best_member"))
            selection_flops, train_s = resumed["selection_flops"], resumed["train_s"]
            t_start -= resumed["wall_s"]  # the wall time before the interruption counts too
            log(f"[{spec.method} seed{spec.seed}] resumed from step {start} ({state_dir})")
    leaves, step_index = jax.tree.leaves(state), put(jnp.int32(start))
    t_loop = time.perf_counter()
    for i in range(start, steps):
        epoch, j = divmod(i, per_epoch)
        if j == 0 or perm is None:
            perm = perm_c(order_key, i32(epoch))
        leaves, loss_sum, step_index = step_c(leaves, loss_sum, step_index, train, perm, step_key)
        since_eval += 1
        done = i + 1
        if done % eval_every == 0 or done == steps:
            state = jax.tree.unflatten(treedef, leaves)
            train_loss = float(loss_sum) / since_eval  # host sync
            train_s += time.perf_counter() - t_loop
            if not (math.isfinite(train_loss) and bool(finite_c(state))):
                raise NonFiniteError(
                    f"{spec.method}: non-finite training loss or parameters at step {done} (mean loss {train_loss})"
                )
            val_logits, f = predict(counter, method.evaluate, state, x_val)
            selection_flops += f
            test_logits, _ = predict(counter, method.evaluate, state, x_test)
            k = None
            if members:  # the best member now; val only
                per_member = member_accuracy(val_logits, y_val)
                k = int(np.argmax(per_member))
                tracked.append({"student_steps": done * members, "val_accuracy_per_member": per_member.tolist()})
                val_logits, test_logits = val_logits[k], test_logits[k]
            val_acc = accuracy(val_logits, y_val)
            flops_so_far = step_flops * done + selection_flops
            history.append(
                {
                    "student_steps": done * (members or 1),
                    "flops": flops_so_far,
                    "wall_s": time.perf_counter() - t_start,
                    "train_loss": train_loss,
                    "val_accuracy": val_acc,
                    "test_accuracy": accuracy(test_logits, y_test),
                }
            )
            log(f"[{spec.method} seed{spec.seed}] step {done}/{steps} loss {train_loss:.4f} val {val_acc:.4f}")
            if best is None or val_acc > best[0]:
                best = (val_acc, done, jax.tree.map(jnp.copy, state if k is None else method.select(state, k)), k)
            if hasattr(method, "track"):
                tracked.append({"student_steps": done, **method.track(state, data, counter, teacher)})
            loss_sum, since_eval = zero, 0
            if store is not None and (done % checkpoint_every == 0 or done == steps):
                meta = {
                    "history": history,
                    "tracked": tracked,
                    "best_val_accuracy": best[0],
                    "best_step": best[1],
                    "best_member": best[3],
                    "selection_flops": selection_flops,
                    "train_s": train_s,
                    "wall_s": time.perf_counter() - t_start,
                    **compile_record(counter, resumed),
                }
                store.save(done, {"state": state, "best": best[2]}, meta)
            t_loop = time.perf_counter()
    if store is not None:
        store.close()
        merge_compiles(counter, resumed)

    teacher_forwards, teacher_backwards = steps * forwards, steps * backwards
    flops_teacher = teacher_fwd_flops * (teacher_forwards + 2 * teacher_backwards)
    compute = compute_counters(
        counter, student_steps=steps * (members or 1), teacher_forwards=teacher_forwards, teacher_backwards=teacher_backwards,
        flops_student=step_flops * steps - flops_teacher, flops_teacher=flops_teacher, flops_selection=selection_flops,
        wall_s=time.perf_counter() - t_start, train_s=train_s,
    )
    final = state if not members else method.select(state, best[3])  # the selected member's final state
    return FitResult(best[2], final, best[0], history, compute, tracked)


def flops_budget(spec) -> float | None:
    """The run's training-FLOPs budget (config ``budget: {flops: F}``), or None."""
    return (spec.budget or {}).get("flops")


def apply_flops_budget(method, spec, data, teacher):
    """``spec`` with ``train.steps`` = floor(budget FLOPs / training FLOPs of one step) (student + teacher,
    XLA cost of the method's step on one batch), so the run's training FLOPs land within one step of the
    budget; selection FLOPs are reported beside. Raises ValueError when the budget is less than one step."""
    state = method.init(spec, data, teacher, jax.random.key(0))
    x, y = data.splits["train"]
    batch = (x[: spec.train["batch_size"]], y[: spec.train["batch_size"]])
    per_step = flops_of(jax.jit(method.step).lower(state, batch, jax.random.key(0)).compile())
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
    metrics = {
        "test_accuracy": accuracy(logits, y_test),
        "final_test_accuracy": accuracy(final_logits, y_test),
        "val_accuracy": result.val_accuracy,
        "test_nll": float(jnp.mean(cross_entropy_per_sample(logits, y_test))),
        "teacher_agreement": None
        if teacher_test_logits is None
        else float(jnp.mean(pred == jnp.argmax(teacher_test_logits, -1))),
    }
    predictions = {
        "pred": np.asarray(pred, np.int64),
        "label": np.asarray(y_test, np.int64),
        "prob": np.asarray(jax.nn.softmax(logits, -1), np.float32),
    }
    return metrics, predictions
