"""Stop requests: a training job asked to end (SIGTERM from a scheduler's time limit, a preemption, ``scancel``
or ``kill``) stops at the next step boundary after a checkpoint, instead of losing the steps since the last one.

``python -m ev3 train``/``train-group`` call :func:`on_signals` before anything else; the signal handler only
records the request (:func:`request`), and the training loop (``ev3.train.fit``, ``ev3.seedgroup``) checks
:func:`requested` after every call of its unit of work: it then writes a resume checkpoint of the state it is
at and raises :class:`Stopped`; the command exits with status 128 + the signal's number (143 for SIGTERM), so a
workflow manager sees the job fail and a rerun (Snakemake's ``retries``) resumes from that checkpoint. A request
that comes while the outputs are written, after the training, lets the job finish normally. No JAX here.
"""

from __future__ import annotations

import signal

_requested: signal.Signals | None = None


class Stopped(Exception):
    """A run stopped at a stop request; ``signal``: the request's signal, ``exit_status``: 128 + its number."""

    def __init__(self, message: str, signum: signal.Signals):
        super().__init__(message)
        self.signal = signum
        self.exit_status = 128 + int(signum)


def request(signum: int = signal.SIGTERM) -> None:
    """Ask the running training loop to stop at its next step boundary."""
    global _requested
    if _requested is None:
        _requested = signal.Signals(signum)


def requested() -> signal.Signals | None:
    """The signal of a pending stop request, or None."""
    return _requested


def clear() -> None:
    global _requested
    _requested = None


def on_signals(signums=(signal.SIGTERM,)) -> None:
    """Turn ``signums`` into stop requests in this process (the main thread's handlers)."""
    for signum in signums:
        signal.signal(signum, lambda received, frame: request(received))
