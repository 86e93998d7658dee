"""Seed groups: S seeds of one (dataset, student, method) trained in one vmapped step.

:func:`fit_vmapped` is :func:`ev3.train.fit` for several runs that differ only in their seed. Member ``s`` is
the single-seed run of ``specs[s]``: its own initialisation (stream ``student_init``), batch order
(``batch_order``), step keys and augmentation (``step``), drawn exactly as :class:`ev3.train.StepWork` draws
them, so it equals ``fit(method, specs[s], ...)`` up to float reassociation (vmapped kernels). The step is
:class:`~ev3.train.StepWork`'s own (``loop_step``, or its ``lax.scan`` of ``train.steps_per_call`` steps)
under ``jax.vmap``; the data and the step index are shared by the members.

Shared state: a state leaf that is the same array in every member's initial state and that the step passes
through unchanged (a frozen KD teacher, MetaDistil's quiz split) is kept once, unbatched, so the teacher
forward runs with one copy of its weights on each member's own batch; every other leaf (a MetaDistil
teacher, which learns) is stacked along a leading member axis.

Per seed, as a single run reports it: history, selection on ``val``, tracking, the NaN guard (the error names
the seed), and the compute counters, whose steps and FLOPs are those of a single-seed run (the single-seed
compiled step's XLA cost × steps, not the vmapped cost / S). The job's wall, training and compile times are
split evenly between the seeds and marked shared: ``FitResult.shared`` holds ``{"seeds", "wall_s",
"train_s", "compile_s"}`` of the whole job.

Resume (``state_dir``): one checkpoint for the job (all members, their selections and bookkeeping), at the
evaluations every ``train.checkpoint_every`` steps and at the end, identified by every member's spec and the
teacher; a resumed group equals an uninterrupted one. A stop request (``ev3.stop``, SIGTERM) checkpoints the step
the group is at, with the losses summed since the last evaluation, and raises ``ev3.stop.Stopped``.

Not supported in this mode (a ``ValueError`` from :func:`check_group`, which config validation can call before
any job starts; ``UNSUPPORTED`` names the method types and why): ``ev3`` (host-driven rounds, per-seed
architectures), ``tuned`` (already a population) and any method whose unit of work is not
:class:`~ev3.train.StepWork`; a FLOPs budget. A group trains on one device (no data parallelism).

Wiring (``ev3.run``): build the dataset and teacher once, call ``fit_vmapped(method, specs, data, teacher,
state_dir=...)`` and write each seed's ``metrics.json``/``predictions.npz`` from its :class:`FitResult` exactly
as ``ev3.run.run`` does for ``fit``'s result (``test_report``, ``method.summary``); the shared times may be
recorded beside ``compute`` from ``result.shared``.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from ev3 import stop
from ev3.rng import seed_key, stream
from ev3.train import (
    Counter, FitResult, NonFiniteError, RunContext, Selection, StepWork, _all_finite, accuracy, compile_record,
    compute_counters, flops_budget, merge_compiles, on_flat_state, predict, run_identity,
)

UNSUPPORTED = {"ev3": "its rounds are host-driven and each seed grows its own architecture",
               "tuned": "it already trains a population over its grid"}


def unsupported(method_type: str) -> str | None:
    """Why a seed group in mode vmap cannot train ``method_type``, or None: the types of :data:`UNSUPPORTED`, and
    any method whose unit of work is not the plain :class:`~ev3.train.StepWork` (batches with indices or a
    second view)."""
    from ev3 import methods

    if method_type in UNSUPPORTED:
        return UNSUPPORTED[method_type]
    work = methods.get(method_type).work
    if work is not StepWork:
        return f"its unit of work is {work.__name__}, not a plain step on (x, y) batches"
    return None


def check_group(method_type: str, specs: list) -> None:
    """Raise ValueError unless ``specs`` (RunSpecs) can train as one vmapped seed group of ``method_type``."""
    if (reason := unsupported(method_type)) is not None:
        raise ValueError(f"seeds_per_job: mode vmap does not support method type {method_type!r} "
                         f"({reason}); use mode sequential")
    if not specs:
        raise ValueError("a seed group needs at least one run spec")
    seeds = [s.seed for s in specs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"a seed group's seeds must be distinct: {seeds}")
    base = {k: v for k, v in run_identity(specs[0]).items() if k != "seed"}
    for s in specs[1:]:
        other = {k: v for k, v in run_identity(s).items() if k != "seed"}
        if other != base:
            diff = sorted(k for k in set(base) | set(other) if base.get(k) != other.get(k))
            raise ValueError(f"a seed group's runs may differ only in their seed; seed {s.seed} differs in {diff}")
    if flops_budget(specs[0]) is not None:
        raise ValueError("seeds_per_job: mode vmap does not support budget/flops")


class _Layout:
    """Which flat state leaves are shared (kept once) and which are per member (stacked on axis 0)."""

    def __init__(self, member_leaves: list[list], forwarded: list[bool]):
        first = member_leaves[0]
        shared = [forwarded[k] and all(m[k] is first[k] for m in member_leaves) for k in range(len(first))]
        self.shared_idx = [k for k, s in enumerate(shared) if s]
        self.member_idx = [k for k, s in enumerate(shared) if not s]

    def split(self, leaves: list) -> tuple[list, list]:
        return [leaves[k] for k in self.member_idx], [leaves[k] for k in self.shared_idx]

    def merge(self, member: list, shared: list) -> list:
        leaves = [None] * (len(member) + len(shared))
        for k, x in zip(self.member_idx, member):
            leaves[k] = x
        for k, x in zip(self.shared_idx, shared):
            leaves[k] = x
        return leaves

    def vmapped(self, flat_fn, args_axes: tuple, outs_axes: tuple):
        """``flat_fn(leaves, *args) -> (leaves, *outs)`` vmapped over the members: ``(member, shared, *args) ->
        (member, *outs)``; ``args_axes``/``outs_axes``: vmap axes of the other arguments and outputs."""

        def per_member(member, shared, *args):
            leaves, *outs = flat_fn(self.merge(member, shared), *args)
            return (self.split(leaves)[0], *outs)

        return jax.vmap(per_member, in_axes=(0, None, *args_axes), out_axes=(0, *outs_axes))


def _forwarded(flat_fn, leaves: list, *args) -> list[bool]:
    """For each state leaf, whether ``flat_fn`` returns it unchanged (the same variable in its jaxpr)."""
    closed = jax.make_jaxpr(flat_fn)(leaves, *args)
    invars, outvars = closed.jaxpr.invars, closed.jaxpr.outvars
    return [outvars[k] is invars[k] for k in range(len(leaves))]


class SeedGroup:
    """The vmapped unit of work of a seed group (the members' :class:`~ev3.train.StepWork` steps in one call).

    ``member``: the per-member state leaves, stacked on axis 0 (``layout.member_idx``); ``shared``: the leaves
    kept once; ``base``: the single-seed :class:`~ev3.train.StepWork` of ``specs[0]`` (its step compiled: its
    XLA cost is each seed's per-step FLOPs, ``base.training_flops``). :meth:`advance` runs steps ``index`` …
    ``index + count - 1`` of every member in one compiled call (``count`` > 1: the vmapped ``lax.scan``)."""

    def __init__(self, method, specs: list, data, teacher, counter: Counter, log=print):
        self.specs, self.n_seeds, spec = specs, len(specs), specs[0]
        self.counter = counter
        self.base = base = StepWork(RunContext(method, spec, data, teacher, counter, None, log))
        init_stream = "student_init" if spec.role == "student" else "teacher_init"
        keys = [seed_key(s.seed) for s in specs]
        states = [method.init(s, data, teacher, stream(k, init_stream)) for s, k in zip(specs, keys)]
        base.units_per_call, self.units_per_call = 1, base.units_per_call
        base.load(states[0], 0)  # compiles the single-seed step
        base.units_per_call = self.units_per_call
        self.treedef, i32 = base.treedef, np.int32
        flat_leaves = [jax.tree.leaves(s) for s in states]
        perm0 = base.perm_c(base.order_key, i32(0))
        forwarded = _forwarded(on_flat_state(base.loop_step, self.treedef), flat_leaves[0], jnp.float32(0.0), i32(0),
                               base.train, perm0, base.step_key)
        self.layout = layout = _Layout(flat_leaves, forwarded)
        self.shared = layout.split(flat_leaves[0])[1]
        self.initial = [jnp.stack([m[k] for m in flat_leaves]) for k in layout.member_idx]
        self.order_keys = jnp.stack([stream(k, "batch_order") for k in keys])
        self.step_keys = jnp.stack([stream(k, "step") for k in keys])
        self.zeros = jnp.zeros((self.n_seeds,), jnp.float32)
        self.perm_c, _ = counter.compile("group_permutation", jax.vmap(base.permutation, in_axes=(0, None)),
                                         self.order_keys, i32(0))
        step_fn = layout.vmapped(on_flat_state(base.loop_step, self.treedef), (0, None, None, 0, 0), (0, None))
        self.step_c, _ = counter.compile("group_step", step_fn, self.initial, self.shared, self.zeros, jnp.int32(0),
                                         base.train, self.perm_c(self.order_keys, i32(0)), self.step_keys,
                                         donate_argnums=(0, 3))
        self.finite_c, _ = counter.compile("group_all_finite", jax.vmap(_all_finite), self.initial)
        self.chunks = {}
        if self.units_per_call > 1 and base.units >= self.units_per_call:
            self.chunk(self.units_per_call)  # compiled before the loop's clock starts
        self.load(self.initial, 0)

    def chunk(self, length: int):
        """The compiled vmapped scan of ``length`` steps (compiled on first use)."""
        if length not in self.chunks:
            fn = self.layout.vmapped(on_flat_state(self.base.steps(length), self.treedef), (0, None, None, 0, 0, 0),
                                     (0, None, 0))
            self.chunks[length], _ = self.counter.compile(
                f"group_steps{length}", fn, self.initial, self.shared, self.zeros, jnp.int32(0), self.base.train,
                self.perm_c(self.order_keys, np.int32(0)), self.order_keys, self.step_keys, donate_argnums=(0, 3, 5))
        return self.chunks[length]

    def load(self, member: list, units_done: int) -> None:
        """Take ``member`` (stacked leaves) as the members' state after ``units_done`` steps (copied: donated)."""
        self.member = [jnp.copy(x) for x in member]
        self.step_index, self.loss_sum, self.since, self.perm = jnp.int32(units_done), self.zeros, 0, None

    def advance(self, index: int, count: int = 1) -> None:
        epoch, j = divmod(index, self.base.per_epoch)
        if self.perm is None or (count == 1 and j == 0):
            self.perm = self.perm_c(self.order_keys, np.int32(epoch))
        if count == 1:
            self.member, self.loss_sum, self.step_index = self.step_c(
                self.member, self.shared, self.loss_sum, self.step_index, self.base.train, self.perm, self.step_keys)
        else:
            self.member, self.loss_sum, self.step_index, self.perm = self.chunk(count)(
                self.member, self.shared, self.loss_sum, self.step_index, self.base.train, self.perm,
                self.order_keys, self.step_keys)
        self.since += count

    def train_losses(self) -> np.ndarray:
        """Each member's mean training loss since the last call (S,) (host sync)."""
        losses = np.asarray(self.loss_sum, np.float64) / self.since
        self.loss_sum, self.since = self.zeros, 0
        return losses

    def finite(self) -> np.ndarray:
        """Whether each member's state is finite (S,) bool."""
        return np.asarray(self.finite_c(self.member))

    def member_state(self, s: int):
        """Member ``s``'s method state (a pytree as a single run holds it)."""
        return jax.tree.unflatten(self.treedef, self.layout.merge([x[s] for x in self.member], self.shared))


def fit_vmapped(method, specs: list, data, teacher, *, log=print, state_dir: str | None = None) -> list[FitResult]:
    """Train the runs ``specs`` (equal but for their seeds) of ``method`` as one vmapped seed group; returns one
    :class:`~ev3.train.FitResult` per spec, in order (see the module docstring)."""
    check_group(specs[0].method_type, specs)
    if method.population_size(specs[0]) is not None:
        raise ValueError(f"seeds_per_job: mode vmap needs a method with a single-model step; {specs[0].method_type!r} is not one")
    t_start = time.perf_counter()
    n_seeds, spec = len(specs), specs[0]
    counter = Counter()
    group = SeedGroup(method, specs, data, teacher, counter, log)
    base, units_per_call = group.base, group.units_per_call
    units, eval_every = base.units, spec.train["eval_every"]

    x_val, y_val = data.splits["val"]
    x_test, y_test = data.splits["test"]
    tag = f"[{spec.method} seeds {','.join(str(s.seed) for s in specs)}]"
    histories, trackeds = [[] for _ in specs], [[] for _ in specs]
    best: list[Selection | None] = [None] * n_seeds
    selection_flops, train_s = [0.0] * n_seeds, 0.0
    start, store, resumed = 0, None, {}
    if state_dir is not None:
        from ev3.checkpoint import ResumeStore, fingerprint

        checkpoint_every = spec.train.get("checkpoint_every", eval_every)
        identity = {"seed_group": [run_identity(s) for s in specs]}
        store = ResumeStore(state_dir, fingerprint(identity, teacher), log=log)
        restored = store.restore(lambda meta: {
            "members": group.initial,
            **({} if meta.get("best") is None else {"best": [base.model_like({}) for _ in specs]}),
        })
        if restored is not None:
            start, trees, resumed = restored
            group.load(trees["members"], start)
            if resumed.get("since"):  # stopped between evaluations: the losses summed since the last one
                group.loss_sum = jnp.asarray(np.asarray(resumed["loss_sum"], resumed["loss_dtype"]))
                group.since = resumed["since"]
            histories, trackeds = resumed["histories"], resumed["tracked"]
            if resumed["best"] is not None:
                best = [Selection(b["val_accuracy"], b["student_steps"], None, m)
                        for b, m in zip(resumed["best"], trees["best"])]
            selection_flops, train_s = resumed["flops_selection"], resumed["train_s"]
            t_start -= resumed["wall_s"]
            log(f"{tag} resumed from step {start} ({state_dir})")

    def save(i: int) -> None:
        """A checkpoint after ``i`` steps: at an evaluation, or at a stop request (then with the losses summed
        since the last evaluation, exact float32 values, and before the first one without selections)."""
        selected = None if any(b is None for b in best) else best
        meta = {
            "histories": histories,
            "tracked": trackeds,
            "best": None if selected is None else [{"val_accuracy": b.val_accuracy, "student_steps": b.student_steps}
                                                   for b in selected],
            "flops_selection": selection_flops,
            "train_s": train_s,
            "wall_s": time.perf_counter() - t_start,
            **compile_record(counter, resumed),
        }
        if group.since:
            pending = np.asarray(group.loss_sum)
            meta.update(since=group.since, loss_sum=pending.tolist(), loss_dtype=str(pending.dtype))
        trees = {"members": group.member, **({} if selected is None else {"best": [b.model for b in selected]})}
        store.save(i, trees, meta)

    next_eval = (start // eval_every + 1) * eval_every
    last_checkpoint, i = start, start
    t_loop = time.perf_counter()
    while i < units:
        if stop.requested():  # checkpoint the steps done, then stop (ev3.stop)
            if store is not None and i != last_checkpoint:
                train_s += time.perf_counter() - t_loop
                save(i)
                last_checkpoint = i
            where = (f"its checkpoint of step {last_checkpoint} is in {state_dir}" if store is not None and i
                     else "nothing was saved")
            if store is not None:
                store.close()
            raise stop.Stopped(f"{tag} stopped by {stop.requested().name} at {base.progress(i)}: {where}; rerun "
                               "the same command to resume", stop.requested())
        count = max(1, min(units_per_call, units - i, next_eval - i))
        group.advance(i, count)
        i += count
        last = i == units
        if i < next_eval and not last:
            continue
        losses = group.train_losses()  # host sync
        train_s += time.perf_counter() - t_loop
        finite = group.finite()
        for s, spec_s in enumerate(specs):
            if not (np.isfinite(losses[s]) and finite[s]):
                raise NonFiniteError(f"{spec_s.method} seed{spec_s.seed}: non-finite training loss or parameters "
                                     f"at step {i} (mean loss {losses[s]})")
        wall = time.perf_counter() - t_start
        for s in range(n_seeds):
            state = group.member_state(s)
            model = method.model(state)
            val_logits, f = predict(counter, method.evaluate, model, x_val)
            selection_flops[s] += f
            test_logits, _ = predict(counter, method.evaluate, model, x_test)
            val_acc = accuracy(val_logits, y_val)
            histories[s].append({
                "student_steps": i,
                "flops": base.training_flops(i)[2] + selection_flops[s],
                "wall_s": wall / n_seeds,
                "train_loss": float(losses[s]),
                "val_accuracy": val_acc,
                "test_accuracy": accuracy(test_logits, y_test),
            })
            if best[s] is None or val_acc > best[s].val_accuracy:
                best[s] = Selection(val_acc, i, None, jax.tree.map(jnp.copy, model))
            values = method.track(state, data, counter, teacher)
            if values is not None:
                trackeds[s].append({"student_steps": i, **values})
        log(f"{tag} {base.progress(i)} loss " + " ".join(f"{x:.4f}" for x in losses)
            + " val " + " ".join(f"{h[-1]['val_accuracy']:.4f}" for h in histories))
        while next_eval <= i:
            next_eval += eval_every
        if store is not None and (i // checkpoint_every > last_checkpoint // checkpoint_every or last):
            save(i)
            last_checkpoint = i
        t_loop = time.perf_counter()
    if store is not None:
        store.close()
        merge_compiles(counter, resumed)

    wall = time.perf_counter() - t_start
    forwards, backwards = method.teacher_passes(spec)
    flops_student, flops_teacher, _ = base.training_flops(units)
    shared_times = {"seeds": [s.seed for s in specs], "wall_s": wall, "train_s": train_s, "compile_s": counter.compile_s}
    counter.compile_s /= n_seeds  # each seed's share
    results = []
    for s in range(n_seeds):
        compute = compute_counters(
            counter, student_steps=units, teacher_forwards=units * forwards, teacher_backwards=units * backwards,
            flops_student=flops_student, flops_teacher=flops_teacher, flops_selection=selection_flops[s],
            wall_s=wall / n_seeds, train_s=train_s / n_seeds,
        )
        state = group.member_state(s)
        results.append(FitResult(best[s], method.model(state), histories[s], compute, trackeds[s], state,
                                 shared=shared_times))
    return results
