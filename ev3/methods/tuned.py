"""``tuned``: a validation-tuned baseline — a grid of configurations of ``scratch`` or ``kd`` trained together.

Options: ``base`` (``scratch`` | ``kd``) and ``space``: lists of values per hyperparameter — ``learning_rate``
(the student's peak learning rate; the config's optimizer and schedule otherwise) and, for ``kd``,
``temperature`` and ``alpha``. The population is the grid (cartesian product, in the order ``temperature``,
``alpha``, ``learning_rate``, each in the listed order).

All members share the architecture, the initialization and the batches (the run's seed), so one ``jax.vmap``
over the members is one jitted step: hyperparameters are per-member arrays (loss hyperparameters in the
state; the learning rate as the step size of an injected ``optax.scale`` after the optimizer run with peak
learning rate 1, which is the same update up to rounding). The teacher forward is not vmapped: it runs once
per step for the whole population.

Selection (in :func:`ev3.train.fit`): at every evaluation each member's ``val`` accuracy is measured; the
reported model is the (member, evaluation) with the best ``val`` accuracy (earliest, then lowest member
index, on ties) — never test. Compute: every member's steps count (``student_steps`` = members × steps);
student FLOPs are the vmapped step's; the teacher forward shared by the members is counted once, as teacher
FLOPs. A non-finite member stops the run like any non-finite loss.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from ev3 import methods
from ev3.methods.common import (  # noqa: F401  (the method contract's default hooks)
    StepWork as work, Student, model, track, with_units,
)
from ev3.methods.options import tuned_share as budget_share  # noqa: F401  (a unit: one step of every member)
from ev3.optim import make_optimizer
from ev3.protocol.state import stack


def grid(options: dict) -> list[dict]:
    """The population: one dict of hyperparameters per member, in grid order."""
    keys = [k for k in ("temperature", "alpha", "learning_rate") if k in options["space"]]
    return [dict(zip(keys, values)) for values in itertools.product(*(options["space"][k] for k in keys))]


def population_size(spec) -> int:
    return len(grid(spec.options))


def teacher_passes(spec) -> tuple[int, int]:
    """Teacher forwards and backwards per step: the base method's (shared by the members)."""
    return methods.get(spec.options["base"]).teacher_passes(spec)


@struct.dataclass
class TunedState:
    """``members``: the base method's state with a leading member axis on every array (its ``teacher`` is
    None); ``teacher``: the frozen teacher, shared; ``base``: the base method type; ``grid``: each member's
    hyperparameters as ``((name, value), ...)``."""

    members: Any
    teacher: Any = None
    base: str = struct.field(pytree_node=False, default="kd")
    grid: tuple = struct.field(pytree_node=False, default=())

    @property
    def student(self) -> Student:
        """The student of a one-member state (what :func:`select` returns)."""
        return jax.tree.map(lambda x: x[0], self.members.student)


def init(spec, data, teacher, key) -> TunedState:
    base = methods.get(spec.options["base"])
    peak_one = {**spec.train["optimizer"], "learning_rate": 1.0}
    tx = optax.chain(make_optimizer(peak_one, spec.train["steps"]), optax.inject_hyperparams(optax.scale)(step_size=1.0))
    population = grid(spec.options)
    states = []
    for member in population:
        options = {k: v for k, v in member.items() if k != "learning_rate"}
        member_spec = dataclasses.replace(spec, method_type=spec.options["base"], options=options)
        s = base.init(member_spec, data, None, key)  # the same key: every member starts alike
        opt_state = tx.init(s.student.params)
        opt_state = (opt_state[0], opt_state[1]._replace(hyperparams={"step_size": jnp.float32(member["learning_rate"])}))
        states.append(s.replace(student=s.student.replace(tx=tx, opt_state=opt_state)))
    return TunedState(stack(states), teacher, spec.options["base"], tuple(tuple(m.items()) for m in population))


def step(state: TunedState, batch, key):
    """One step of every member on the same batch; the loss is the members' mean."""
    base = methods.get(state.base)

    def one(member):
        new, logs = base.step(member.replace(teacher=state.teacher), batch, key)
        return new.replace(teacher=None), logs["loss"]

    members, losses = jax.vmap(one)(state.members)
    return state.replace(members=members), {"loss": jnp.mean(losses)}


def evaluate(state: TunedState, x) -> jax.Array:
    """Logits of every member, (members, N, C)."""
    return jax.vmap(lambda m: m.student.logits(x))(state.members)


def select(state: TunedState, k: int) -> TunedState:
    """The one-member state of member ``k``."""
    return state.replace(members=jax.tree.map(lambda x: x[k : k + 1], state.members))


def summary(result) -> dict:
    """The ``tuned`` object of metrics.json: the grid, each member's val accuracy per evaluation (from the
    loop's tracking) and the selected member (best val accuracy; earliest evaluation, then lowest index)."""
    per_eval = [t["val_accuracy_per_member"] for t in result.tracked]
    best = max((acc, -i, -k) for i, accs in enumerate(per_eval) for k, acc in enumerate(accs))
    k = -best[2]
    grid_ = [dict(m) for m in result.final_state.grid]
    return {
        "base": result.final_state.base,
        "members": grid_,
        "selected_member": k,
        "selected": grid_[k],
        "selected_student_steps": result.tracked[-best[1]]["student_steps"],
        "best_val_accuracy_per_member": [max(accs[j] for accs in per_eval) for j in range(len(grid_))],
        "val_history": result.tracked,
    }
