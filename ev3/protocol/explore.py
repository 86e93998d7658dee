"""EV3 explore: K candidates trained from the same params, vectorized over candidates.

Shapes: ``K`` candidates, ``L`` steps, ``B`` batch, ``C`` classes. A model is a pure ``apply(params, x) -> (B, C)``,
or, with BatchNorm, ``apply(params, x) -> ((B, C), params with updated statistics)`` (see ``_step``).
A *family* is one optax constructor wrapped by ``optax.inject_hyperparams``: its candidates differ only in
hyperparameter values ``{name: (K,)}``, which live in the optimizer state, so all candidates of a family share
one state structure and run as one ``jax.vmap``. Loss hyperparameters are ``{w, t_kd, t_ce}``, each ``(K,)``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from ev3.losses import cross_entropy, kd_loss, reverse_kd_loss
from ev3.protocol.state import stack, take


class Family(NamedTuple):
    """An optimizer family: ``tx(**hparams)`` is an optax transformation whose numeric hparams live in its state."""

    name: str
    tx: Callable[..., optax.GradientTransformation]


def family(name: str, constructor: Callable[..., optax.GradientTransformation]) -> Family:
    """``Family(name, optax.inject_hyperparams(constructor))``; use ``functools.partial`` for static options."""
    return Family(name, optax.inject_hyperparams(constructor))


def _weights_only(params):
    """Weight-decay mask of an EV3 student ``{"params", "rest"}``: decay the trainable ``params``, never the
    BatchNorm statistics ``rest``; any other pytree is decayed everywhere."""
    if isinstance(params, dict) and set(params) == {"params", "rest"}:
        return {"params": jax.tree.map(lambda _: True, params["params"]), "rest": jax.tree.map(lambda _: False, params["rest"])}
    return jax.tree.map(lambda _: True, params)


SGD = family("sgd", optax.sgd)  # hparams: learning_rate, momentum
ADAM = family("adam", optax.adam)  # hparams: learning_rate (b1, b2, eps optional)
ADAMW = family("adamw", partial(optax.adamw, mask=_weights_only))  # hparams: learning_rate, weight_decay (decoupled, × lr)


def hparams(**values) -> dict[str, jax.Array]:
    """``hparams(w=[...], t_kd=[...])`` -> ``{name: float32 array (K,)}``."""
    return {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}


def candidate_loss(student_logits, teacher_logits, labels, hp) -> jax.Array:
    """``w·T_kd²·KL(p_t^{T_kd} ‖ p_s^{T_kd}) + (1 − w)·CE(student / T_ce, labels)``, batch mean (scalar); with
    ``hp["reverse"] = 1`` instead the EV3 reference's ``T_kd·KL(p_s^{T_kd} ‖ p_t^{T_kd})`` (no CE term).

    logits ``(B, C)``, labels ``(B,)`` int, ``hp = {w, t_kd, t_ce[, reverse]}`` scalars (any values, e.g.
    ``t_ce = 0.5``; ``reverse`` 0 or 1, 0 when absent; a reverse candidate's ``w``, ``t_ce`` are unused but must
    be finite).
    """
    kd = kd_loss(student_logits, teacher_logits, hp["t_kd"])
    ce = cross_entropy(student_logits / hp["t_ce"], labels)
    mixture = hp["w"] * kd + (1.0 - hp["w"]) * ce
    if "reverse" not in hp:
        return mixture
    return hp["reverse"] * reverse_kd_loss(student_logits, teacher_logits, hp["t_kd"]) + (1.0 - hp["reverse"]) * mixture


def init_family(family: Family, params, hparams_batch: dict):
    """Optimizer states of K candidates for ``params``: batched pytree (leading axis K)."""
    return jax.vmap(lambda hp: family.tx(**hp).init(params))(hparams_batch)


def _with_hparams(opt_state, hp):
    """Write ``hp`` into an inject_hyperparams state (overrides what was stored; moments are kept)."""
    stored = opt_state.hyperparams
    return opt_state._replace(hyperparams={**stored, **{k: jnp.asarray(v, stored[k].dtype) for k, v in hp.items()}})


def _step(apply, opt, loss_hp, carry, inputs):
    """One optimizer step of one candidate on one batch; returns ``((params, opt_state), loss before the step)``.
    ``inputs``: ``(x, y, teacher logits[, update scale])``; the scale (a scalar) multiplies the step's update,
    which for optax's SGD and Adam(W) (learning rate applied last) is the learning rate × scale.

    A stateful forward (BatchNorm in train mode) returns ``(logits, params with updated statistics)``; the
    updates are applied to those. Statistics get no gradient, so their updates are 0 (SGD with momentum and
    Adam without weight decay, the families here) and they keep the forward's new values."""
    params, opt_state = carry
    x, y, t = inputs[:3]

    def objective(p):
        out = apply(p, x)
        logits, after = out if isinstance(out, tuple) else (out, p)
        return candidate_loss(logits, t, y, loss_hp), after

    (loss, after), grads = jax.value_and_grad(objective, has_aux=True)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    if len(inputs) == 4:
        updates = jax.tree.map(lambda u: u * inputs[3], updates)
    return (optax.apply_updates(lax.stop_gradient(after), updates), opt_state), loss


def _run_candidate(apply, family, params, opt_state, loss_hp, opt_hp, batches, teacher_logits_batches, scale):
    opt = family.tx(**opt_hp)
    carry = (params, _with_hparams(opt_state, opt_hp))
    inputs = (*batches, teacher_logits_batches) + (() if scale is None else (scale,))
    (params, opt_state), losses = lax.scan(partial(_step, apply, opt, loss_hp), carry, inputs)
    return params, opt_state, losses.mean()


@partial(jax.jit, static_argnums=(0, 1), static_argnames=("per_candidate",))
def explore(apply, family: Family, params, opt_states, loss_hparams_batch, opt_hparams_batch, batches,
            teacher_logits_batches, update_scale=None, *, per_candidate: bool = False):
    """Train K candidates for L steps each, all from the same ``params``; one jitted call per family.

    opt_states: batched ``(K, ...)`` (from ``init_family`` or the previous call). loss_hparams_batch
    ``{w, t_kd, t_ce[, reverse]}: (K,)``; opt_hparams_batch ``{name: (K,)}`` (written into the optimizer states).
    batches ``(x (L, B, ...), y (L, B))`` and teacher_logits_batches ``(L, B, C)`` shared by every candidate, or
    with ``per_candidate`` each candidate's own, ``(K, L, B, ...)``. update_scale ``(K, L)``: each step's update
    × this (a learning-rate schedule), or None (× 1).
    Returns ``(candidate_params (K, ...), new_opt_states (K, ...), mean_losses (K,))``, the losses being the
    mean over the L steps of the training loss before each step.
    """
    run = partial(_run_candidate, apply, family)
    data_axis = 0 if per_candidate else None
    return jax.vmap(run, in_axes=(None, 0, 0, 0, data_axis, data_axis, None if update_scale is None else 0))(
        params, opt_states, loss_hparams_batch, opt_hparams_batch, batches, teacher_logits_batches, update_scale
    )


@partial(jax.jit, static_argnums=(0, 1))
def _reference_step(apply, family, loss_hp, opt_hp, carry, inputs):
    return _step(apply, family.tx(**opt_hp), loss_hp, carry, inputs)


def explore_sequential(apply, family: Family, params, opt_states, loss_hparams_batch, opt_hparams_batch, batches,
                       teacher_logits_batches, update_scale=None, *, per_candidate: bool = False):
    """Reference for :func:`explore`: Python loops over candidates and steps, same maths, no vmap or scan."""
    n_candidates = len(jax.tree.leaves(loss_hparams_batch)[0])
    out = []
    for k in range(n_candidates):
        (x, y), t = (take(batches, k), teacher_logits_batches[k]) if per_candidate else (batches, teacher_logits_batches)
        loss_hp, opt_hp = take(loss_hparams_batch, k), take(opt_hparams_batch, k)
        carry = (params, _with_hparams(take(opt_states, k), opt_hp))
        losses = []
        for step in range(x.shape[0]):
            inputs = (x[step], y[step], t[step]) + (() if update_scale is None else (update_scale[k, step],))
            carry, loss = _reference_step(apply, family, loss_hp, opt_hp, carry, inputs)
            losses.append(loss)
        out.append((*carry, jnp.mean(jnp.stack(losses))))
    return stack(out)
