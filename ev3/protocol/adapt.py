"""EV3 adapt: paired, prioritized decisions on per-sample scores of the same N held-out samples.

Differences are oriented so that positive means "a (the candidate) is better". ``lower``/``upper`` are the
one-sided confidence bounds, at level ``confidence``, of the mean oriented difference.

Decision rule (objectives in priority order, each ``(name, higher_is_better, margin)``), per objective:
``better`` if lower > 0; ``worse`` if upper < 0; ``inferior`` if lower <= −margin (non-inferiority not shown);
``invalid`` if a bound is not finite (e.g. a diverged candidate); else ``tie``. The first objective that is not a
tie decides: accepted iff it is ``better``. All ties: rejected. So a margin lets a candidate through an objective
only where it is not significantly different and its lower bound is within the margin.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import stats

from ev3.protocol.assess import pick
from ev3.protocol.state import EV3State, take


class PairedResult(NamedTuple):
    mean_diff: float
    stderr: float
    t_stat: float
    p_value: float
    lower: float
    upper: float


class Decision(NamedTuple):
    accepted: bool
    deciding_objective: str | None
    details: dict  # name -> {"outcome", "margin", **PairedResult._asdict()}


def paired_test(a, b, *, higher_is_better: bool, margin: float = 0.0, confidence: float = 0.95) -> PairedResult:
    """Paired t-test on per-sample differences of ``a (N,)`` vs ``b (N,)`` (0/1 scores are fine).

    ``t_stat``/``p_value``: one-sided test of H0 ``mean_diff <= −margin`` (margin 0: superiority of a).
    """
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    d = d if higher_is_better else -d
    n = d.size
    mean, se = float(d.mean()), float(d.std(ddof=1) / np.sqrt(n))
    if se == 0.0:  # all differences equal: the sign decides
        sign = float(np.sign(mean + margin))
        t, p = sign * np.inf, {1.0: 0.0, 0.0: 0.5, -1.0: 1.0}[sign]
    else:
        res = stats.ttest_1samp(d, -margin, alternative="greater")
        t, p = float(res.statistic), float(res.pvalue)
    q = float(stats.t.ppf(confidence, n - 1))
    return PairedResult(mean, se, t, p, mean - q * se, mean + q * se)


def _outcome(r: PairedResult, margin: float) -> str:
    if not (np.isfinite(r.lower) and np.isfinite(r.upper)):
        return "invalid"
    if r.lower > 0:
        return "better"
    if r.upper < 0:
        return "worse"
    return "inferior" if r.lower <= -margin else "tie"


def prioritized_decision(cand_scores: dict, inc_scores: dict, objectives, confidence: float = 0.95) -> Decision:
    """Candidate vs incumbent on ``{name: (N,)}`` scores; ``objectives``: ``[(name, higher_is_better, margin)]``."""
    details, accepted, deciding = {}, False, None
    for name, higher_is_better, margin in objectives:
        r = paired_test(cand_scores[name], inc_scores[name], higher_is_better=higher_is_better, confidence=confidence)
        outcome = _outcome(r, margin)
        details[name] = {"outcome": outcome, "margin": float(margin), **r._asdict()}
        if deciding is None and outcome != "tie":
            deciding, accepted = name, outcome == "better"
    return Decision(accepted, deciding, details)


class ReferenceDecision(NamedTuple):
    """Outcome of :func:`reference_decision`: the new current model and whether the stable model moves to it."""

    winner: str  # "candidate", "current" or "stable"
    stable_moved: bool


REFERENCE_ORDER = ("candidate", "current", "stable")  # the tie order


def reference_decision(candidate, current, stable, *, alpha: float = 1.96) -> ReferenceDecision:
    """EV3's decide step as the reference implementation does it (google-research/google-research,
    ``ev3/model_history/decide.py``: ``select_best_update``, with the bounds of ``eval_util.evaluate_updates``).

    ``candidate``, ``current``, ``stable``: per-sample scores ``(N,)`` of one objective, higher is better, on the
    same N samples (e.g. 0/1 correctness). Each gets ``LCB = mean − alpha·stderr`` and ``UCB = mean +
    alpha·stderr`` with ``stderr = std(ddof=1) / √N`` (pandas' default), all three in one float64 array, so equal
    scores give exactly equal bounds.

    - ``winner``: the one with the highest LCB, which becomes the current model; ties go to the candidate, then
      the current model, then the stable one (the reference's ``idxmax`` over updates, ``params``,
      ``stable_params``). A non-finite LCB (NaN or ±inf: a NaN score, N = 1) loses; if none is finite the
      winner is ``"current"`` (nothing changes). There is no significance test: the current model stays or
      rolls back to the stable one whenever one of them has the highest LCB.
    - ``stable_moved``: ``LCB(winner) > UCB(stable)`` (intervals that do not overlap), the reference's
      ``significantly_better``; the stable model then becomes the winner (which may be the current model).
    """
    if alpha < 0:
        raise ValueError(f"alpha must be ≥ 0, got {alpha}")
    scores = np.stack([np.asarray(s, np.float64) for s in (candidate, current, stable)])
    if scores.ndim != 2 or scores.shape[1] < 1:
        raise ValueError(f"expected three score vectors (N,) of equal length, got shape {scores.shape}")
    n = scores.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = scores.mean(axis=1)
        stderr = scores.std(axis=1, ddof=1) / np.sqrt(n) if n > 1 else np.full(3, np.nan)
        lcb, ucb = mean - alpha * stderr, mean + alpha * stderr
    finite = np.isfinite(lcb)
    if not finite.any():
        return ReferenceDecision("current", False)
    best = int(np.argmax(np.where(finite, lcb, -np.inf)))  # argmax returns the first maximum: the tie order
    return ReferenceDecision(REFERENCE_ORDER[best], bool(lcb[best] > ucb[2]))


def adapt(
    state: EV3State,
    candidate_params,
    cand_scores: dict,
    current_scores: dict,
    stable_scores: dict,
    *,
    objectives,
    confidence: float = 0.95,
    alpha: float = 1.0,
    assess_scores: dict | None = None,
    candidate: int | None = None,
) -> tuple[EV3State, dict]:
    """Pick a candidate and move the current / stable models by paired tests (EV3's ``decide.rule: paired``).

    candidate_params: batched ``(K, ...)``; cand_scores ``{name: (K, N)}``; current_scores / stable_scores
    ``{name: (N,)}`` of ``state.params`` / ``state.stable_params`` on the same samples. The pick is the best
    lower confidence bound (``alpha``) on the first objective, computed on ``assess_scores`` ``{name: (K, M)}``
    (fresh samples disjoint from the decision samples) when given, else on ``cand_scores``; ``candidate`` (an
    index) overrides the pick. The current model moves to it if it wins by
    :func:`prioritized_decision`; the stable model moves only if it wins
    against the stable model. ``stall_count`` counts consecutive decisions without a win against the current
    model. ``opt_states`` are left to the caller. Returns ``(new_state, log)``, the log holding plain Python values.
    """
    name, higher_is_better, _ = objectives[0]
    k = pick(cand_scores if assess_scores is None else assess_scores, name, alpha, higher_is_better) if candidate is None else candidate
    cand = {n: np.asarray(s)[k] for n, s in cand_scores.items()}
    vs_current = prioritized_decision(cand, current_scores, objectives, confidence)
    vs_stable = prioritized_decision(cand, stable_scores, objectives, confidence)
    chosen = take(candidate_params, k)
    new_state = state._replace(
        params=chosen if vs_current.accepted else state.params,
        stable_params=chosen if vs_stable.accepted else state.stable_params,
        iteration=state.iteration + 1,
        stall_count=0 if vs_current.accepted else state.stall_count + 1,
    )
    mean = lambda s: float(np.mean(np.asarray(s, np.float64)))  # noqa: E731
    log = {
        "iteration": state.iteration,
        "candidate": k,
        "accepted": vs_current.accepted,
        "deciding_objective": vs_current.deciding_objective,
        "stable_moved": vs_stable.accepted,
        "stable_deciding_objective": vs_stable.deciding_objective,
        "stall_count": new_state.stall_count,
        "objectives": {
            n: {
                "candidate_mean": mean(cand[n]),
                "current_mean": mean(current_scores[n]),
                "stable_mean": mean(stable_scores[n]),
                "vs_current": vs_current.details[n],
                "vs_stable": vs_stable.details[n],
            }
            for n, _, _ in objectives
        },
    }
    return new_state, log
