"""EV3 protocol state and small pytree helpers.

Batched pytrees carry the candidate axis ``K`` first on every leaf.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class EV3State(NamedTuple):
    """Host-side state of one EV3 run.

    params: the current model. opt_states: ``{family name: batched optimizer states (K_f, ...)}``, kept across
    iterations by the caller (``explore`` returns the new ones). stable_params: the last checkpoint that was a
    significant improvement. stall_count: consecutive decisions without a significant improvement.
    """

    params: Any
    opt_states: dict[str, Any]
    stable_params: Any
    iteration: int = 0
    stall_count: int = 0


def init_state(params, opt_states: dict[str, Any] | None = None) -> EV3State:
    """Fresh state: current = stable = ``params``."""
    return EV3State(params, dict(opt_states or {}), params)


def stack(trees):
    """List of K same-structured pytrees -> one batched pytree (leading axis K)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def take(tree, k: int):
    """Candidate ``k`` of a batched pytree."""
    return jax.tree.map(lambda x: x[k], tree)


def concat(trees):
    """Concatenate batched pytrees along the candidate axis (e.g. candidates of several families)."""
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *trees)
