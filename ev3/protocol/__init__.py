"""Functional core of EV3 (Ever Evolving Evaluator, Ding et al. 2023): explore, assess, adapt."""

from ev3.protocol.adapt import Decision, PairedResult, adapt, paired_test, prioritized_decision
from ev3.protocol.assess import METRICS, Metric, lower_confidence_bound, pick, register, score, score_one
from ev3.protocol.explore import (
    ADAM,
    ADAMW,
    SGD,
    Family,
    candidate_loss,
    explore,
    explore_sequential,
    family,
    hparams,
    init_family,
)
from ev3.protocol.state import EV3State, concat, init_state, stack, take

__all__ = [
    "ADAM", "ADAMW", "SGD", "METRICS", "Decision", "EV3State", "Family", "Metric", "PairedResult", "adapt",
    "candidate_loss", "concat", "explore", "explore_sequential", "family", "hparams", "init_family", "init_state",
    "lower_confidence_bound", "paired_test", "pick", "prioritized_decision", "register", "score", "score_one",
    "stack", "take",
]
