"""EV3 assess: per-sample metrics of K candidates on the same N held-out samples.

A metric maps ``(logits (N, C), labels (N,), teacher_logits (N, C)) -> (N,)`` floats. Metrics need not be
differentiable (argmax accuracy is the usual selection objective); register your own with :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ev3.losses import cross_entropy_per_sample


class Metric(NamedTuple):
    name: str
    fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
    higher_is_better: bool
    differentiable: bool


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add (or replace) ``metric`` in the registry under ``metric.name``."""
    METRICS[metric.name] = metric
    return metric


def _argmax_match(a, b):
    return (jnp.argmax(a, axis=-1) == b).astype(jnp.float32)


accuracy = register(Metric("accuracy", lambda logits, y, t: _argmax_match(logits, y), True, False))
teacher_agreement = register(
    Metric("teacher_agreement", lambda logits, y, t: _argmax_match(logits, jnp.argmax(t, axis=-1)), True, False)
)
nll = register(Metric("nll", lambda logits, y, t: cross_entropy_per_sample(logits, y), False, True))


def _resolve(metric: str | Metric) -> Metric:
    return metric if isinstance(metric, Metric) else METRICS[metric]


@partial(jax.jit, static_argnums=(0, 5, 6))
def _score(apply, params, x, y, teacher_logits, metrics: tuple[Metric, ...], batched: bool) -> dict:
    def per_model(params):
        logits = apply(params, x)
        return {m.name: m.fn(logits, y, teacher_logits) for m in metrics}

    return jax.vmap(per_model)(params) if batched else per_model(params)


def _metrics(metrics) -> tuple[Metric, ...]:
    return tuple(map(_resolve, metrics or tuple(METRICS)))


def score_one(apply, params, x, y, teacher_logits, metrics: Sequence[str | Metric] | None = None) -> dict:
    """``{name: (N,)}`` per-sample scores of one model (``metrics=None``: every registered metric). Jitted."""
    return _score(apply, params, x, y, teacher_logits, _metrics(metrics), False)


def score(apply, candidate_params, x, y, teacher_logits, metrics: Sequence[str | Metric] | None = None) -> dict:
    """``{name: (K, N)}`` per-sample scores of K batched candidates (vmapped over the candidate axis). Jitted."""
    return _score(apply, candidate_params, x, y, teacher_logits, _metrics(metrics), True)


def lower_confidence_bound(scores, alpha: float, higher_is_better: bool) -> np.ndarray:
    """``mean − α·stderr`` over N per candidate, ``(K, N) -> (K,)``, on the score negated when lower is better."""
    s = np.asarray(scores, np.float64)
    s = s if higher_is_better else -s
    return s.mean(-1) - alpha * s.std(-1, ddof=1) / np.sqrt(s.shape[-1])


def pick(scores: dict, objective: str | Metric, alpha: float = 1.0, higher_is_better: bool | None = None) -> int:
    """Index of the candidate with the best lower confidence bound on ``objective``; non-finite bounds lose."""
    name = objective.name if isinstance(objective, Metric) else objective
    if higher_is_better is None:
        higher_is_better = _resolve(objective).higher_is_better
    lcb = lower_confidence_bound(scores[name], alpha, higher_is_better)
    return int(np.argmax(np.where(np.isfinite(lcb), lcb, -np.inf)))
