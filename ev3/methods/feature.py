"""Pieces shared by the feature, relation and contrastive distillation methods (``fitnet``, ``at``, ``rkd``,
``crd``, ``reviewkd``).

Each step runs the frozen teacher once in eval mode with its features (``ev3.models.apply(..., features=True)``;
names and shapes in ``ev3.models.features``), the student in train mode with its features, and the method's
connector (FitNet's regressor, CRD's embedding heads, ReviewKD's fusion; none for AT and RKD), then one optimizer
step on ``ce_weight · CE(student, labels) + distillation term`` over the student's and the connector's parameters
together (one optax state, as the authors' single optimizer over ``trainable_list``). The connector's FLOPs are
part of the step's cost, so they count as student FLOPs; evaluation and selection use the student network only
(``model(state)`` drops the connector, the teacher and any memory). The teacher's parameters and BatchNorm
statistics are never updated.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from ev3 import models
from ev3.losses import adaptive_avg_pool, cross_entropy
from ev3.methods.common import Frozen
from ev3.optim import make_optimizer
from ev3.rng import stream


@struct.dataclass
class FeatureState:
    """``params`` / ``rest``: ``{"student": …, "connector": …}`` (the connector's are empty dicts without one);
    ``opt_state``: one optimizer state over ``params``; ``teacher``: frozen; ``hparams``: loss hyperparameters as
    scalar arrays (and ``step``, the steps done); ``memory``: method state that is not trained by gradients
    (CRD's banks, normalising constants and the training labels), ``{}`` otherwise; ``static``: hashable
    (name, value) pairs fixed at init that shapes depend on (e.g. CRD's number of negatives), see :meth:`fixed`."""

    graphdef: Any = struct.field(pytree_node=False)
    connector_graphdef: Any = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    params: dict = None
    rest: dict = None
    opt_state: Any = None
    teacher: Frozen | None = None
    hparams: dict = None
    memory: dict = None
    static: tuple = struct.field(pytree_node=False, default=())

    def fixed(self, name: str):
        """The static value ``name``."""
        return dict(self.static)[name]


def feature_shapes(graphdef, params, rest, input_shape: tuple[int, ...]):
    """The :class:`ev3.models.Features` of a model on one example, as ``jax.ShapeDtypeStruct`` (no compute);
    shapes include a batch axis of 1."""
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    (_, feats), _ = jax.eval_shape(lambda p, r, x: models.apply(graphdef, p, r, x, features=True), params, rest, x)
    return feats


def build_connector(factory: Callable[[nnx.Rngs], nnx.Module] | None, key: jax.Array):
    """(graphdef, params, rest) of ``factory(rngs)``, initialised in one compiled call; (None, {}, {}) without."""
    if factory is None:
        return None, {}, {}
    graphdef = nnx.split(nnx.eval_shape(lambda: factory(nnx.Rngs(params=key))), nnx.Param, ...)[0]
    params, rest = jax.jit(lambda k: nnx.split(factory(nnx.Rngs(params=k)), nnx.Param, ...)[1:])(key)
    return graphdef, params, rest


def init_state(spec, data, teacher: Frozen, key: jax.Array, connector: Callable | None, hparams: dict,
               memory: dict | None = None, static: dict | None = None) -> FeatureState:
    """The initial state: the student from ``spec.model`` (key stream ``student``), the connector from
    ``connector(student_feats, teacher_feats) -> factory(rngs) | None`` (abstract features of one example; key
    stream ``connector``), one optimizer over both (``spec.train.optimizer``, ``spec.train.steps``)."""
    net = models.build(spec.model, data.input_shape, data.num_classes, stream(key, "student"))
    student_feats = feature_shapes(net.graphdef, net.params, net.rest, data.input_shape)
    teacher_feats = feature_shapes(teacher.graphdef, teacher.params, teacher.rest, data.input_shape)
    factory = connector(student_feats, teacher_feats) if connector is not None else None
    c_graphdef, c_params, c_rest = build_connector(factory, stream(key, "connector"))
    params = {"student": net.params, "connector": c_params}
    tx = make_optimizer(spec.train["optimizer"], spec.train["steps"])
    hparams = {"ce_weight": jnp.float32(spec.options.get("ce_weight", 1.0)), "step": jnp.float32(0),
               **{k: jnp.float32(v) for k, v in hparams.items()}}
    return FeatureState(net.graphdef, c_graphdef, tx, params, {"student": net.rest, "connector": c_rest},
                        tx.init(params), teacher, hparams, memory or {}, tuple(sorted((static or {}).items())))


def teacher_features(teacher: Frozen, x: jax.Array):
    """(logits, Features) of the frozen teacher in eval mode, as constants."""
    out, _ = models.apply(teacher.graphdef, teacher.params, teacher.rest, x, features=True)
    return jax.lax.stop_gradient(out)


def feature_step(state: FeatureState, batch, distill: Callable) -> tuple[FeatureState, dict, Any]:
    """One optimizer step on ``ce_weight · CE + distill(connector, student_feats, teacher_feats, batch, state)``.

    ``distill`` returns ``(loss, aux)``; ``connector`` is the connector module in train mode (None without one),
    whose BatchNorm statistics are kept. Returns the new state (``hparams["step"]`` + 1), the logs
    (``loss``: the total, ``distill_loss``) and ``aux``."""
    x, y = batch[0], batch[1]
    _, t_feats = teacher_features(state.teacher, x)

    def objective(params):
        (logits, s_feats), s_rest = models.apply(state.graphdef, params["student"], state.rest["student"], x,
                                                 train=True, features=True)
        connector, c_rest = None, state.rest["connector"]
        if state.connector_graphdef is not None:
            connector = nnx.merge(state.connector_graphdef, params["connector"], c_rest, copy=True)
            connector.train()
        distill_loss, aux = distill(connector, s_feats, t_feats, batch, state)
        if connector is not None:
            c_rest = nnx.state(connector, nnx.Not(nnx.Param))
        loss = state.hparams["ce_weight"] * cross_entropy(logits, y) + distill_loss
        return loss, ({"student": s_rest, "connector": c_rest}, distill_loss, aux)

    (loss, (rest, distill_loss, aux)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    hparams = {**state.hparams, "step": state.hparams["step"] + 1}
    state = state.replace(params=optax.apply_updates(state.params, updates), rest=rest, opt_state=opt_state,
                          hparams=hparams)
    return state, {"loss": loss, "distill_loss": distill_loss}, aux


def warmup(state: FeatureState) -> jax.Array:
    """``min((step + 1) / warmup_steps, 1)`` at the 0-based ``step`` (1 throughout when ``warmup_steps`` is 0):
    mdistiller's ``min(epoch / warmup_epochs, 1)`` with 1-based epochs, per step."""
    return jnp.minimum((state.hparams["step"] + 1.0) / jnp.maximum(state.hparams["warmup_steps"], 1.0), 1.0)


def pair_maps(student_maps, teacher_maps):
    """Pairs of maps with equal spatial size: of each pair, the larger map is average-pooled to the smaller's size
    (``ev3.losses.adaptive_avg_pool``, as the authors' ``F.adaptive_avg_pool2d``)."""
    if len(student_maps) != len(teacher_maps):
        raise ValueError(f"{len(student_maps)} student stages vs {len(teacher_maps)} teacher stages")
    pairs = []
    for fs, ft in zip(student_maps, teacher_maps):
        s, t = fs.shape[1:-1], ft.shape[1:-1]
        if len(s) != len(t) or not s:
            raise ValueError(f"stage maps need the same spatial rank: student {fs.shape[1:]}, teacher {ft.shape[1:]}")
        if s[0] > t[0]:
            fs = adaptive_avg_pool(fs, t)
        elif t[0] > s[0]:
            ft = adaptive_avg_pool(ft, s)
        pairs.append((fs, ft))
    return [p[0] for p in pairs], [p[1] for p in pairs]


# --- The method contract for every feature method ----------------------------------------------------------------


@struct.dataclass
class StudentModel:
    """The student network alone, as evaluated, selected and reported (``student.params``: its parameters)."""

    student: Frozen


def model(state: FeatureState) -> StudentModel:
    """The student network alone (connector, teacher and memory dropped): what is evaluated and selected."""
    return StudentModel(Frozen(state.graphdef, state.params["student"], state.rest["student"]))


def evaluate(model: StudentModel, x: jax.Array) -> jax.Array:
    return model.student(x)


def teacher_passes(spec) -> tuple[int, int]:
    """One teacher forward (with features) per step."""
    return 1, 0
