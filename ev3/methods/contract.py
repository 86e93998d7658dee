"""The method contract: what a method module provides to the one training loop, :func:`ev3.train.fit`.

A method is a module (``ev3.methods.<name>``, registered in ``ev3.methods``) satisfying :class:`Method`. Its
unit of work is a :class:`Work` bound to one run: for the supervised methods one jitted
``step(state, batch, key) -> (state, logs)`` call (:class:`ev3.train.StepWork`); for EV3 one explore → assess →
decide → grow round. The loop owns everything else (budget stop, eval cadence, selection on ``val``, history,
resume, compute counters). Defaults of the optional hooks are in ``ev3.methods.common``; every module declares
each hook, so the loop never probes for one.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax


@runtime_checkable
class Work(Protocol):
    """A method's unit of work bound to one run (built by ``method.work(ctx)``, ``ctx``: :class:`ev3.train.RunContext`).

    It holds the live method state. ``units``: units in the run, or None to run until the FLOPs budget
    (``budget.flops``) is spent; ``steps_per_unit``: student steps of one population member per unit, the clock
    of the eval and checkpoint cadence (``train.eval_every``, ``train.checkpoint_every``) and of checkpoint
    names; ``units_per_call``: the most units one :meth:`advance` may run (``train.steps_per_call`` for
    :class:`ev3.train.StepWork`; 1 for EV3's round, which ``steps_per_call`` does not apply to)."""

    units: int | None
    steps_per_unit: int
    units_per_call: int

    def load(self, state: Any, units_done: int) -> None:
        """Take ``state`` as the state after ``units_done`` units."""

    def advance(self, index: int, count: int = 1) -> None:
        """Run units ``index`` … ``index + count - 1`` (0-based; ``count`` ≤ ``units_per_call``)."""

    def state(self) -> Any:
        """The current method state."""

    def train_loss(self) -> float | None:
        """The training loss reported at an evaluation, over the units since the previous one (host sync)."""

    def nonfinite(self, train_loss: float | None) -> str | None:
        """What is non-finite (stops the run), or None."""

    def training_flops(self, units: int) -> tuple[float, float, float]:
        """(student, teacher, total) training FLOPs once ``units`` units are done."""

    def progress(self, units: int) -> str:
        """Where the run is, for the log (e.g. ``step 700/1400``)."""

    def checkpoint(self) -> tuple[dict, dict]:
        """The state as named pytrees and JSON metadata, for ``ev3.checkpoint.ResumeStore``."""

    def likes(self, meta: dict) -> dict:
        """Pytrees shaped like a checkpoint's trees, from its metadata (e.g. a grown EV3 student's config)."""

    def restore(self, trees: dict, meta: dict, units_done: int) -> None:
        """Take a restored checkpoint as the state after ``units_done`` units."""

    def model_meta(self, model: Any) -> dict:
        """JSON metadata from which :meth:`model_like` rebuilds the structure of ``model`` (selected model)."""

    def model_like(self, meta: dict) -> Any:
        """A model pytree shaped like the one ``meta`` describes (to restore the selected model)."""


@runtime_checkable
class Method(Protocol):
    """A method module. ``spec``: :class:`ev3.config.RunSpec`; ``options``: a config method instance's options
    (with ``type``); a *model* is what is evaluated, selected and reported (``model(state)``)."""

    def init(self, spec, data, teacher, key: jax.Array) -> Any:
        """The initial method state."""

    def work(self, ctx) -> Work:
        """The unit of work for this run."""

    def evaluate(self, model, x: jax.Array) -> jax.Array:
        """Pure: logits (N, C), of a population (members, N, C); jitted by the loop."""

    def model(self, state) -> Any:
        """The model the state holds (a pytree ``evaluate`` takes)."""

    def population_size(self, spec) -> int | None:
        """Members trained together (selection runs over them), or None."""

    def select(self, model, k: int) -> Any:
        """Member ``k`` of a population's model, as a population of one."""

    def teacher_passes(self, spec) -> tuple[int, int]:
        """Teacher forwards and backwards per unit (compute accounting)."""

    def budget_share(self, options: dict) -> int:
        """Student steps of one unit, for an equal ``budget.student_steps``."""

    def with_units(self, options: dict, train: dict, units: int) -> tuple[dict, dict]:
        """(options, train) of a run of ``units`` units (``budget.student_steps``)."""

    def track(self, state, data, counter, teacher) -> dict | None:
        """Values recorded at every evaluation (``FitResult.tracked``), or None."""

    def summary(self, result) -> dict | None:
        """The method's object in metrics.json (key: the method type), or None."""
