"""``metadistil``: MetaDistil (Zhou, Xu & McAuley 2021) — a teacher that keeps learning to teach.

One round per training batch ``(x, y)``:

1. **Pilot** (``pilot: true``): a throw-away copy of the student takes one plain-SGD step of size
   ``pilot_lr`` on the KD loss ``α·T²·KL(p_teacher^T ‖ p_student^T) + (1−α)·CE``, keeping its dependence on
   the teacher parameters.
2. **Teacher meta-step**: the piloted student's cross-entropy on a quiz batch (sampled from the ``meta``
   split with its own RNG stream ``quiz``, augmented with ``train.augment`` as the training batch is — the
   official code's held-out loader uses the training transform — but never mixed; never test) is differentiated w.r.t. the teacher through the pilot
   step (second order, :func:`meta_gradient`); the teacher takes a step of its own optax optimizer (SGD with
   momentum; learning rate 0 for the first ``teacher_frozen_fraction`` of training).
3. **Real student step** on the same batch with the *updated* teacher, with the student's optimizer
   (exactly a ``kd`` step).

``pilot: false`` is the "w/o pilot update" ablation: the student steps first with the old teacher, then the
teacher's meta-gradient is taken at that updated student.

BatchNorm: the teacher runs in eval mode (running statistics fixed); student batch statistics produced inside
the pilot and quiz forwards are discarded. Compute per round: 2 teacher forwards (pilot, real step) and
1 teacher backward (the meta-gradient).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import struct

from ev3 import models
from ev3.data.augment import augment_fn
from ev3.losses import hinton_loss
from ev3.methods.common import (  # noqa: F401  (work and the default hooks: the method contract)
    Frozen, StepWork as work, Student, SupervisedState, budget_share, init_student, loss_step, model,
    population_size, select, with_units,
)
from ev3.methods.metadistil_math import meta_gradient  # noqa: F401  (public: ev3.methods.metadistil.meta_gradient)
from ev3.rng import stream
from ev3.train import accuracy, frozen_logits, predict


def teacher_passes(spec) -> tuple[int, int]:
    """Teacher forwards and backwards per round: pilot and real step forwards, the meta-gradient's backward."""
    return 2, 1


@struct.dataclass
class MetaDistilState:
    student: Student
    teacher: Student  # trainable teacher with its own optimizer
    quiz: tuple  # (x_meta, y_meta) device arrays
    hparams: dict  # temperature, alpha, pilot_lr (scalar arrays)
    pilot: bool = struct.field(pytree_node=False, default=True)
    quiz_batch_size: int = struct.field(pytree_node=False, default=128)
    quiz_augment: tuple = struct.field(pytree_node=False, default=())  # train.augment as sorted (key, value) pairs


def teacher_optimizer(options: dict, total_steps: int) -> optax.GradientTransformation:
    """SGD(+momentum) whose learning rate is 0 for the first ``teacher_frozen_fraction`` of the steps."""
    boundary = int(round(options["teacher_frozen_fraction"] * total_steps))
    lr = optax.join_schedules(
        [optax.constant_schedule(0.0), optax.constant_schedule(options["teacher_lr"])], [boundary]
    )
    return optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=options["teacher_momentum"] or None)


def init(spec, data, teacher: Frozen, key) -> MetaDistilState:
    o = spec.options
    tx = teacher_optimizer(o, spec.train["steps"])
    trainable_teacher = Student(teacher.graphdef, tx, teacher.params, teacher.rest, tx.init(teacher.params))
    hparams = {k: jnp.float32(o[k]) for k in ("temperature", "alpha", "pilot_lr")}
    return MetaDistilState(
        student=init_student(spec.model, spec.train, data, key),
        teacher=trainable_teacher,
        quiz=data.splits["meta"],
        hparams=hparams,
        pilot=o["pilot"],
        quiz_batch_size=min(o["quiz_batch_size"], data.splits["meta"][0].shape[0]),
        quiz_augment=tuple(sorted((spec.train.get("augment") or {}).items())),
    )


def _kd_loss(logits, teacher_logits, labels, hparams):
    return hinton_loss(logits, teacher_logits, labels, temperature=hparams["temperature"], alpha=hparams["alpha"])


def _student_step(state: MetaDistilState, batch) -> tuple[Student, jax.Array]:
    t = state.teacher
    kd_state = SupervisedState(state.student, Frozen(t.graphdef, t.params, t.rest), state.hparams)
    kd_state, logs = loss_step(kd_state, batch, _kd_loss)
    return kd_state.student, logs["loss"]


def _teacher_step(state: MetaDistilState, student: Student, batch, quiz_batch) -> tuple[Student, jax.Array]:
    t = state.teacher

    def teacher_apply(params, x):
        return models.apply(t.graphdef, params, t.rest, x)[0]

    def student_apply(params, x):
        return models.apply(student.graphdef, params, student.rest, x, train=True)[0]

    grads = meta_gradient(
        teacher_apply, student_apply, t.params, student.params, batch, quiz_batch,
        pilot_lr=state.hparams["pilot_lr"], temperature=state.hparams["temperature"], alpha=state.hparams["alpha"],
    )
    updates, opt_state = t.tx.update(grads, t.opt_state, t.params)
    new_teacher = t.replace(params=optax.apply_updates(t.params, updates), opt_state=opt_state)
    return new_teacher, optax.global_norm(grads)


def quiz_batch(state: MetaDistilState, key) -> tuple[jax.Array, jax.Array]:
    """The round's quiz batch: ``quiz_batch_size`` rows of ``meta`` drawn with replacement (stream ``quiz``),
    augmented with ``train.augment`` (stream ``quiz_augment``), never mixed."""
    x_meta, y_meta = state.quiz
    idx = jax.random.randint(stream(key, "quiz"), (state.quiz_batch_size,), 0, x_meta.shape[0])
    x, y = x_meta[idx], y_meta[idx]
    augment = augment_fn(dict(state.quiz_augment))
    return (x if augment is None else augment(stream(key, "quiz_augment"), x)), y


def step(state: MetaDistilState, batch, key):
    quiz_batch_ = quiz_batch(state, key)
    if state.pilot:
        teacher, meta_norm = _teacher_step(state, state.student, batch, quiz_batch_)
        state = state.replace(teacher=teacher)
        student, loss = _student_step(state, batch)
    else:
        student, loss = _student_step(state, batch)
        teacher, meta_norm = _teacher_step(state, student, batch, quiz_batch_)
        state = state.replace(teacher=teacher)
    return state.replace(student=student), {"loss": loss, "meta_grad_norm": meta_norm}


def evaluate(state: MetaDistilState, x):
    return state.student.logits(x)


def teacher_logits(state: MetaDistilState, x):
    """The (evolving) teacher's logits, for reporting its drift."""
    return state.teacher.logits(x)


def track(state: MetaDistilState, data, counter, initial_teacher: Frozen) -> dict:
    """Teacher drift at an evaluation (test split, reporting only): accuracy, argmax agreement with the
    initial teacher, and relative parameter change ‖θ_t − θ_t⁰‖ / ‖θ_t⁰‖."""
    x, y = data.splits["test"]
    logits, _ = predict(counter, teacher_logits, state, x)
    initial, _ = predict(counter, frozen_logits, initial_teacher, x)
    delta = jax.tree.map(lambda a, b: a - b, state.teacher.params, initial_teacher.params)
    return {
        "teacher_test_accuracy": accuracy(logits, y),
        "teacher_agreement_with_initial": float(jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(initial, -1))),
        "teacher_param_drift": float(optax.global_norm(delta) / optax.global_norm(initial_teacher.params)),
    }


def summary(result) -> dict:
    """The ``metadistil`` object of metrics.json: the final teacher and its trajectory."""
    final = result.tracked[-1]
    return {
        "teacher_test_accuracy_final": final["teacher_test_accuracy"],
        "teacher_agreement_with_initial": final["teacher_agreement_with_initial"],
        "teacher_param_drift": final["teacher_param_drift"],
        "pilot": result.final_state.pilot,
        "teacher_history": result.tracked,
    }
