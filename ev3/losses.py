"""Losses as pure functions of logits (below) and of intermediate features (the feature, relation and contrastive
distillation losses at the end of this module).

Shapes: ``logits`` and ``teacher_logits`` are ``(B, C)`` floats, ``labels`` is ``(B,)`` int — or, for the
cross-entropy after mixup (``ev3.data.augment.mixup``), ``(B, C)`` float targets (convex combinations of one-hot
labels).
Every loss returns the batch mean of a per-sample loss (a scalar); ``*_per_sample`` variants return ``(B,)``.
The relation losses (DIST, MLKD's class and batch levels, RKD, CRD) are scalars of the whole batch instead.

KL direction: ``kd_loss`` is ``T² · KL(p_teacher^T ‖ p_student^T)`` with ``p^T = softmax(logits / T)``, i.e.
``Σ_c p_t log(p_t / p_s)`` summed over classes, averaged over the batch. The ``T²`` factor (Hinton et al.
2015) keeps the gradient magnitude of the soft term independent of ``T``.

The EV3 reference implementation (google-research/google-research, ``ev3/examples/cifar_kd/train.py``, ``kld``)
distils with the other direction and a single ``T``: ``reverse_kd_loss`` is ``T · KL(p_student^T ‖
p_teacher^T)``, no cross-entropy term. Its label loss (``ev3/examples/cifar10/train.py``) is the cross-entropy
of ``T · logits``; that is ``ev3.protocol.explore.candidate_loss`` with ``w = 0`` and ``t_ce = 1/T``
(``CE(logits / t_ce)``), so it has no function of its own here.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax


def cross_entropy_per_sample(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``-log softmax(logits)[label]`` per sample, shape ``(B,)``; with float targets ``labels`` (B, C) (mixup),
    ``-Σ_c labels_c · log softmax(logits)_c`` (equal to the former for one-hot targets)."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    if labels.ndim == logits.ndim:
        return -jnp.sum(labels * log_p, axis=-1)
    return -jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy (nats)."""
    return jnp.mean(cross_entropy_per_sample(logits, labels))


def kd_per_sample(student_logits: jax.Array, teacher_logits: jax.Array, temperature) -> jax.Array:
    """``T² · KL(softmax(t/T) ‖ softmax(s/T))`` per sample, shape ``(B,)``; gradients flow into both sides."""
    t_log_p = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    s_log_p = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(t_log_p) * (t_log_p - s_log_p), axis=-1)
    return temperature**2 * kl


def kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, temperature) -> jax.Array:
    """Hinton KD term: batch mean of ``T² · KL(p_teacher^T ‖ p_student^T)``."""
    return jnp.mean(kd_per_sample(student_logits, teacher_logits, temperature))


def reverse_kd_per_sample(student_logits: jax.Array, teacher_logits: jax.Array, temperature) -> jax.Array:
    """``T · KL(softmax(s/T) ‖ softmax(t/T))`` per sample, shape ``(B,)``: reverse (student-first) KL scaled by
    ``T`` (not ``T²``), as the EV3 reference's ``kld``; gradients flow into both sides."""
    s_log_p = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    t_log_p = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    return temperature * jnp.sum(jnp.exp(s_log_p) * (s_log_p - t_log_p), axis=-1)


def reverse_kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, temperature) -> jax.Array:
    """The EV3 reference's KD loss: batch mean of ``T · KL(p_student^T ‖ p_teacher^T)`` (no cross-entropy)."""
    return jnp.mean(reverse_kd_per_sample(student_logits, teacher_logits, temperature))


def hinton_loss(student_logits, teacher_logits, labels, *, temperature, alpha) -> jax.Array:
    """``α · T² · KL(p_teacher^T ‖ p_student^T) + (1 − α) · CE(student, labels)`` (batch means)."""
    return alpha * kd_loss(student_logits, teacher_logits, temperature) + (1.0 - alpha) * cross_entropy(
        student_logits, labels
    )


def dkd_parts_per_sample(student_logits, teacher_logits, labels, temperature) -> tuple[jax.Array, jax.Array]:
    """Decoupled KD (Zhao et al. 2022) terms per sample, each with the ``T²`` factor, shapes ``(B,)``:

    - TCKD = ``T² · KL(b_t ‖ b_s)`` over the binary target/non-target split ``b = [p_gt, 1 − p_gt]``;
    - NCKD = ``T² · KL(p̂_t ‖ p̂_s)`` over the non-target classes, ``p̂ = softmax`` of the non-target logits
      (the target class masked out), all at temperature ``T``.

    They decompose Hinton KD exactly: ``kd_per_sample = TCKD + (1 − p_t,gt) · NCKD``.
    """
    gt = jax.nn.one_hot(labels, student_logits.shape[-1], dtype=bool)
    t_log_p = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    s_log_p = jax.nn.log_softmax(student_logits / temperature, axis=-1)

    def binary(log_p):  # log [p_gt, 1 − p_gt], the second computed stably as logsumexp over non-targets
        log_gt = jnp.sum(jnp.where(gt, log_p, 0.0), axis=-1)
        log_rest = jax.nn.logsumexp(jnp.where(gt, -jnp.inf, log_p), axis=-1)
        return jnp.stack([log_gt, log_rest], axis=-1)

    bt, bs = binary(t_log_p), binary(s_log_p)
    tckd = jnp.sum(jnp.exp(bt) * (bt - bs), axis=-1)
    t_hat = jax.nn.log_softmax(jnp.where(gt, -jnp.inf, teacher_logits / temperature), axis=-1)
    s_hat = jax.nn.log_softmax(jnp.where(gt, -jnp.inf, student_logits / temperature), axis=-1)
    nckd = jnp.sum(jnp.where(gt, 0.0, jnp.exp(t_hat) * (t_hat - s_hat)), axis=-1)
    return temperature**2 * tckd, temperature**2 * nckd


def dkd_loss(student_logits, teacher_logits, labels, *, temperature, alpha, beta) -> jax.Array:
    """DKD distillation term: batch mean of ``α · TCKD + β · NCKD`` (see :func:`dkd_parts_per_sample`)."""
    tckd, nckd = dkd_parts_per_sample(student_logits, teacher_logits, labels, temperature)
    return jnp.mean(alpha * tckd + beta * nckd)


# --- The logit methods of the CIFAR-100 table (LS, DIST, MLKD, CTKD, WTTM) ----------------------------------------
#
# Shapes as above: logits (B, C); every function returns a scalar unless it says otherwise. The teacher side is
# whatever the caller passes (the methods pass a frozen teacher's logits under ``stop_gradient``).


def standardize_logits(logits: jax.Array, eps: float = 1e-7) -> jax.Array:
    """Logit standardization (Sun et al. 2024, "Logit Standardization in Knowledge Distillation"), (B, C) → (B, C):
    each row z-scored over the classes, ``(z − mean(z)) / (eps + std(z))``, with the sample standard deviation
    (ddof 1, PyTorch's ``Tensor.std``) and ``eps = 1e-7``, as the authors' ``normalize``
    (sunshangquan/logit-standardization-KD, ``mdistiller/distillers/KD.py``).

    A loss "with LS" is the same loss of the standardized student and teacher logits, which are then divided by
    the loss's (base) temperature; its ``T²`` factor is that base temperature's. A standardized row is invariant
    (up to ``eps``) to adding a per-sample constant to, or positively scaling, the row's logits."""
    mean = jnp.mean(logits, axis=-1, keepdims=True)
    std = jnp.std(logits, axis=-1, keepdims=True, ddof=1)
    return (logits - mean) / (eps + std)


def pearson_rows(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Pearson correlation of matching rows of ``a`` and ``b`` (N, D) → (N,): the cosine similarity of the centred
    rows, ``⟨a', b'⟩ / (‖a'‖ · ‖b'‖ + eps)`` (DIST's ``pearson_correlation``)."""
    a = a - jnp.mean(a, axis=1, keepdims=True)
    b = b - jnp.mean(b, axis=1, keepdims=True)
    return jnp.sum(a * b, axis=1) / (jnp.linalg.norm(a, axis=1) * jnp.linalg.norm(b, axis=1) + eps)


def dist_parts(student_logits: jax.Array, teacher_logits: jax.Array, temperature) -> tuple[jax.Array, jax.Array]:
    """DIST's (Huang et al. 2022, "Knowledge Distillation from A Stronger Teacher") two relation terms on the
    distributions ``y = softmax(z / T)`` (B, C), each ``T² · (1 − mean Pearson correlation)``:

    - inter-class: the correlation of ``y_s[b]`` and ``y_t[b]`` over the classes, averaged over the B samples;
    - intra-class: the correlation of ``y_s[:, c]`` and ``y_t[:, c]`` over the batch, averaged over the C classes.

    A correlation is symmetric in student and teacher, so there is no KL direction; both terms are invariant to a
    joint permutation of the batch rows (or of the classes). Needs no labels. The ``T²`` factor and ``eps`` as the
    authors' ``DIST.forward`` (hunto/image_classification_sota, ``lib/models/losses/dist_kd.py``)."""
    y_s = jax.nn.softmax(student_logits / temperature, axis=-1)
    y_t = jax.nn.softmax(teacher_logits / temperature, axis=-1)
    inter = 1.0 - jnp.mean(pearson_rows(y_s, y_t))
    intra = 1.0 - jnp.mean(pearson_rows(y_s.T, y_t.T))
    return temperature**2 * inter, temperature**2 * intra


def dist_loss(student_logits, teacher_logits, *, temperature, beta=1.0, gamma=1.0) -> jax.Array:
    """``β · inter + γ · intra`` (:func:`dist_parts`; the authors' β = γ = 1, CIFAR-100 T = 4)."""
    inter, intra = dist_parts(student_logits, teacher_logits, temperature)
    return beta * inter + gamma * intra


MLKD_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)
"""MLKD's temperatures beside its base temperature (the authors' code: base, 3, 5, 2, 6)."""


def mlkd_class_loss(student_logits, teacher_logits, temperature) -> jax.Array:
    """MLKD's class-level alignment (the authors' ``cc_loss``): with ``P = softmax(z / T)`` (B, C), the squared
    Frobenius distance of the class-correlation matrices ``Pᵀ P`` (C, C), divided by C. Symmetric; no ``T²``."""
    p_s = jax.nn.softmax(student_logits / temperature, axis=-1)
    p_t = jax.nn.softmax(teacher_logits / temperature, axis=-1)
    return jnp.sum(jnp.square(p_t.T @ p_t - p_s.T @ p_s)) / student_logits.shape[1]


def mlkd_batch_loss(student_logits, teacher_logits, temperature) -> jax.Array:
    """MLKD's batch-level alignment (the authors' ``bc_loss``): the squared Frobenius distance of the sample
    similarity matrices ``P Pᵀ`` (B, B), ``P = softmax(z / T)``, divided by B. Symmetric; no ``T²``."""
    p_s = jax.nn.softmax(student_logits / temperature, axis=-1)
    p_t = jax.nn.softmax(teacher_logits / temperature, axis=-1)
    return jnp.sum(jnp.square(p_t @ p_t.T - p_s @ p_s.T)) / student_logits.shape[0]


def mlkd_masks(teacher_logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """MLKD's confidence masks from the teacher's weak-view logits at T = 1, as the authors' code computes them:

    - samples (B,) bool: the teacher's top probability is ≤ its batch median (``np.percentile(·, 50)``, linear
      interpolation), i.e. the confident half of the batch (above the median) is the half left out;
    - classes (C,) bool: the class's summed probability over the batch is ≤ the median of those sums."""
    p = jax.nn.softmax(teacher_logits, axis=-1)
    confidence, class_confidence = jnp.max(p, axis=-1), jnp.sum(p, axis=0)
    return confidence <= jnp.percentile(confidence, 50), class_confidence <= jnp.percentile(class_confidence, 50)


def mlkd_loss(student_weak, teacher_weak, student_strong, teacher_strong, *, temperature, ls: bool = False) -> jax.Array:
    """MLKD's (Jin et al. 2023, "Multi-level Logit Distillation") distillation term, unweighted (the authors
    multiply every term by one weight, ``KD.LOSS.KD_WEIGHT``), as their ``forward_train``
    (Jin-Ying/Multi-Level-Logit-Distillation ``mdistiller/distillers/KD_ours.py``; with LS
    sunshangquan/logit-standardization-KD ``MLKD.py``). With 𝒯 = (T, 3, 5, 2, 6) (``T`` the base temperature,
    :data:`MLKD_TEMPERATURES`), KD_τ = :func:`kd_loss` at τ (``T² · KL(teacher ‖ student)``, batch mean;
    of the standardized logits when ``ls``), CC_τ = :func:`mlkd_class_loss`, BC_τ = :func:`mlkd_batch_loss`
    (raw logits: LS applies to the KD terms only), and ``m̄``, ``c̄`` the fractions of samples and classes kept by
    :func:`mlkd_masks` of ``teacher_weak``::

        Σ_{τ∈𝒯} (m̄·KD_τ(weak) + c̄·CC_τ(weak) + m̄·BC_τ(weak))
          + Σ_{τ∈(T,3,5)} KD_τ(strong) + Σ_{τ∈(2,6)} KD_τ(weak)

    Two properties of the authors' code are kept as it computes them: the masks multiply losses already reduced
    to batch means (``(kd_loss(...) * mask).mean()``), so a mask scales its term by the kept fraction and does
    not drop a sample from the gradient; and the τ = 2 and 6 terms of its strong-view KD sum are taken on the weak
    view. Its strong-view class- and batch-level sums are computed but not part of the returned losses, so they
    are not here. Pass the weak view as the strong one for single-view training. Needs no labels."""
    sample_mask, class_mask = mlkd_masks(teacher_weak)
    m, c = jnp.mean(sample_mask), jnp.mean(class_mask)
    temperatures = (temperature, *MLKD_TEMPERATURES)

    def kd(s, t, tau):
        return kd_loss(standardize_logits(s), standardize_logits(t), tau) if ls else kd_loss(s, t, tau)

    weak = sum(m * kd(student_weak, teacher_weak, tau) + c * mlkd_class_loss(student_weak, teacher_weak, tau)
               + m * mlkd_batch_loss(student_weak, teacher_weak, tau) for tau in temperatures)
    strong = sum(kd(student_strong, teacher_strong, tau) for tau in temperatures[:3])
    return weak + strong + sum(kd(student_weak, teacher_weak, tau) for tau in temperatures[3:])


@jax.custom_vjp
def gradient_reversal(x: jax.Array, strength: jax.Array) -> jax.Array:
    """The gradient reversal layer (Ganin & Lempitsky 2015) as CTKD uses it: the identity forward, the incoming
    gradient times ``−strength`` backward (no gradient to ``strength``). The authors' ``GradientReversalFunction``
    multiplies by its ``lambda_`` and is passed a negative one; here ``strength`` = λ ≥ 0 and the sign is the
    layer's."""
    return x


def _reversal_fwd(x, strength):
    return x, strength


def _reversal_bwd(strength, g):
    return -strength * g, jnp.zeros_like(strength)


gradient_reversal.defvjp(_reversal_fwd, _reversal_bwd)


def ctkd_temperature(theta: jax.Array, *, t_start: float = 1.0, t_end: float = 20.0) -> jax.Array:
    """CTKD's global temperature from its parameter ``theta``: ``t_start + t_end · sigmoid(θ)``, in
    (t_start, t_start + t_end) = (1, 21) with the authors' defaults (zhengli97/CTKD ``helper/loops.py``)."""
    return t_start + t_end * jax.nn.sigmoid(theta)


def ctkd_lambda(epoch, *, loops: float, max_value: float = 1.0) -> jax.Array:
    """CTKD's curriculum for the reversal strength λ at ``epoch`` (1-based, as the authors'): ``max_value ·
    (1 − cos(π · i / loops)) / 2`` with ``i = clip(epoch, 0, loops)``, i.e. from 0 to ``max_value`` over ``loops``
    epochs along a cosine, then constant (the authors' ``CosineDecay(max_value=0, min_value=−1, num_loops=10)``,
    whose negative value their reversal layer multiplies by)."""
    i = jnp.clip(jnp.asarray(epoch, jnp.float32), 0.0, loops)
    return max_value * (1.0 - jnp.cos(jnp.pi * i / loops)) / 2.0



def ctkd_loss(student_logits, teacher_logits, labels, theta, strength, *, alpha, t_start=1.0,
              t_end=20.0) -> jax.Array:
    """CTKD (Li et al. 2023, "Curriculum Temperature for Knowledge Distillation") on vanilla KD:
    ``α · T² · KL(p_teacher^T ‖ p_student^T) + (1 − α) · CE(student, labels)`` (:func:`hinton_loss`) at the learnable
    temperature ``T = ctkd_temperature(gradient_reversal(θ, λ))``. The value is KD's at ``T``; the student's
    gradient is KD's at ``T``; the gradient reaching ``θ`` is ``−λ · ∂loss/∂θ`` (θ ascends the distillation loss
    while the student descends it; the ``T²`` factor is differentiated too, as the authors' ``DistillKL``).
    ``theta`` and ``strength`` (λ, :func:`ctkd_lambda`) are scalars; ``labels`` as :func:`cross_entropy`."""
    temperature = ctkd_temperature(gradient_reversal(theta, strength), t_start=t_start, t_end=t_end)
    return hinton_loss(student_logits, teacher_logits, labels, temperature=temperature, alpha=alpha)

def ttm_per_sample(student_logits, teacher_logits, gamma) -> tuple[jax.Array, jax.Array]:
    """Transformed teacher matching (Zheng & Yang 2024) per sample: ``(KL, w)``, shapes (B,) each.

    The teacher's distribution ``p_t = softmax(t)`` is power-transformed, ``p̂_t = p_t^γ / Σ_c p_t,c^γ`` (γ = 1/T:
    the same as ``softmax(t / T)``), and matched by the student at T = 1: ``KL = KL(p̂_t ‖ softmax(s))`` (teacher
    first, no temperature factor). ``w = Σ_c p_t,c^γ`` is WTTM's sample-adaptive weight (larger for smoother
    teacher outputs), computed in log space. As the authors' ``TTM``/``WTTM`` (zkxufo/TTM ``distiller_zoo``)."""
    log_pt = gamma * jax.nn.log_softmax(teacher_logits, axis=-1)
    log_norm = jax.nn.logsumexp(log_pt, axis=-1, keepdims=True)
    log_target = log_pt - log_norm
    kl = jnp.sum(jnp.exp(log_target) * (log_target - jax.nn.log_softmax(student_logits, axis=-1)), axis=-1)
    return kl, jnp.exp(log_norm[:, 0])


def ttm_loss(student_logits, teacher_logits, gamma) -> jax.Array:
    """TTM: the batch mean of ``KL(p̂_t ‖ p_s)`` (:func:`ttm_per_sample`)."""
    return jnp.mean(ttm_per_sample(student_logits, teacher_logits, gamma)[0])


def wttm_loss(student_logits, teacher_logits, gamma) -> jax.Array:
    """WTTM: the batch mean of ``w · KL(p̂_t ‖ p_s)`` with ``w = Σ_c p_t,c^γ`` (:func:`ttm_per_sample`); needs no
    labels."""
    kl, weight = ttm_per_sample(student_logits, teacher_logits, gamma)
    return jnp.mean(weight * kl)


# --- Feature, relation and contrastive distillation (FitNet, AT, RKD, CRD, ReviewKD) -----------------------------
#
# Feature maps are channels-last, ``(N, *spatial, C)`` (``ev3.models.features``). Every function is pure; gradients
# flow into every argument that is not a memory bank (the methods pass a frozen teacher's features). Computation is
# in float32 at least (bfloat16 features are promoted), float64 where the inputs are.


def _promote(x: jax.Array) -> jax.Array:
    return jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32))


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """``x / max(‖x‖₂, eps)`` along ``axis`` (PyTorch's ``F.normalize``); zero vectors stay zero, with gradient 0."""
    norm = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=axis, keepdims=True), eps**2))
    return x / norm


def adaptive_avg_pool(x: jax.Array, size: tuple[int, ...]) -> jax.Array:
    """PyTorch's ``adaptive_avg_pool{1,2}d`` for channels-last ``x`` (N, *spatial, C) → (N, *size, C): output cell
    ``i`` of an axis of length ``L`` averages inputs ``floor(i·L/l) … ceil((i+1)·L/l) − 1``."""
    spatial = x.shape[1:-1]
    if len(size) != len(spatial):
        raise ValueError(f"pool size {size} does not match the spatial shape {spatial}")
    for axis, (length, out) in enumerate(zip(spatial, size), start=1):
        weights = np.zeros((out, length))
        for i in range(out):
            start, stop = (i * length) // out, -(-((i + 1) * length) // out)
            weights[i, start:stop] = 1.0 / (stop - start)
        x = jnp.moveaxis(jnp.tensordot(jnp.asarray(weights, x.dtype), x, axes=((1,), (axis,))), 0, axis)
    return x


def fitnet_loss(student_projected: jax.Array, teacher_feat: jax.Array) -> jax.Array:
    """FitNet hint loss (Romero et al. 2015): mean squared error over all entries of the regressed student hint
    and the teacher's hint, equal shapes (RepDistiller ``distiller_zoo/FitNet.py``: ``nn.MSELoss``)."""
    if student_projected.shape != teacher_feat.shape:
        raise ValueError(f"hint shapes differ: {student_projected.shape} vs {teacher_feat.shape}")
    return jnp.mean(jnp.square(_promote(student_projected) - _promote(teacher_feat)))


def attention_map(feat: jax.Array, p: float = 2) -> jax.Array:
    """Spatial attention (Zagoruyko & Komodakis 2017) of (N, *spatial, C) features: the mean over channels of
    ``f^p``, flattened to (N, positions) and L2-normalised over positions."""
    a = jnp.mean(jnp.power(_promote(feat), p), axis=-1)
    return l2_normalize(a.reshape(a.shape[0], -1))


def attention_loss(student_feats, teacher_feats, *, p: float = 2) -> jax.Array:
    """Attention transfer: Σ over pairs of the mean over batch and positions of ``(a_s − a_t)²``,
    ``a`` = :func:`attention_map` (RepDistiller ``distiller_zoo/AT.py``, mdistiller ``distillers/AT.py``).

    Lists of (N, *spatial, C) maps, the same spatial size per pair (channels may differ); the methods first pool
    the larger map of a pair to the smaller size with :func:`adaptive_avg_pool`, as the authors do. Unweighted:
    the authors' weight is β = 1000. Invariant to a positive scaling of a map."""
    if len(student_feats) != len(teacher_feats):
        raise ValueError(f"{len(student_feats)} student maps vs {len(teacher_feats)} teacher maps")
    total = 0.0
    for fs, ft in zip(student_feats, teacher_feats):
        if fs.shape[:-1] != ft.shape[:-1]:
            raise ValueError(f"attention maps need equal batch and spatial sizes: {fs.shape} vs {ft.shape}")
        total = total + jnp.mean(jnp.square(attention_map(fs, p) - attention_map(ft, p)))
    return total


def _pairwise_distances(e: jax.Array, eps: float = 1e-12) -> jax.Array:
    """(N, N) Euclidean distances ``sqrt(max(‖e_i‖² + ‖e_j‖² − 2⟨e_i, e_j⟩, eps))``, zero diagonal (RKD's
    ``pdist``)."""
    sq = jnp.sum(jnp.square(e), axis=1)
    d = jnp.sqrt(jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * e @ e.T, eps))
    return jnp.where(jnp.eye(e.shape[0], dtype=bool), 0.0, d)


def _triplet_cosines(e: jax.Array) -> jax.Array:
    """(N, N, N) cosines ``⟨n(e_j − e_i), n(e_k − e_i)⟩`` at ``[i, j, k]``, ``n`` = :func:`l2_normalize` (0 where
    ``j = i`` or ``k = i``)."""
    diff = l2_normalize(e[None, :, :] - e[:, None, :], axis=-1)  # [i, j] = n(e_j − e_i)
    return jnp.einsum("ijd,ikd->ijk", diff, diff)


def rkd_parts(student_emb: jax.Array, teacher_emb: jax.Array) -> tuple[jax.Array, jax.Array]:
    """RKD's (Park et al. 2019) unweighted distance and angle terms, each a smooth-L1 (δ = 1) mean:

    - distance: over the N² entries of the pairwise-distance matrices, each divided by its mean over ``i ≠ j``
      (the authors' ``d[d > 0].mean()``: off-diagonal distances are at least ``sqrt(1e-12)``);
    - angle: over the N³ triplet cosines of :func:`_triplet_cosines`.

    ``student_emb`` (N, D_s), ``teacher_emb`` (N, D_t), flattened if they have more axes (RepDistiller
    ``distiller_zoo/RKD.py``, mdistiller ``distillers/RKD.py``). The teacher side is a constant
    (``stop_gradient``), as the authors compute it under ``torch.no_grad``."""
    n = student_emb.shape[0]
    s = _promote(student_emb).reshape(n, -1)
    t = jax.lax.stop_gradient(_promote(teacher_emb).reshape(n, -1))
    off_diagonal = n * (n - 1)
    ds, dt = _pairwise_distances(s), _pairwise_distances(t)
    ds, dt = ds / (jnp.sum(ds) / off_diagonal), dt / (jnp.sum(dt) / off_diagonal)
    distance = jnp.mean(optax.huber_loss(ds, dt, delta=1.0))
    angle = jnp.mean(optax.huber_loss(_triplet_cosines(s), _triplet_cosines(t), delta=1.0))
    return distance, angle


def rkd_loss(student_emb: jax.Array, teacher_emb: jax.Array, *, distance_weight: float = 25.0,
             angle_weight: float = 50.0) -> jax.Array:
    """``distance_weight · distance + angle_weight · angle`` (:func:`rkd_parts`; the authors' 25 and 50)."""
    distance, angle = rkd_parts(student_emb, teacher_emb)
    return distance_weight * distance + angle_weight * angle


def hcl_loss(student_feats, teacher_feats) -> jax.Array:
    """ReviewKD's hierarchical context loss (Chen et al. 2021; mdistiller ``distillers/ReviewKD.py``), summed over
    pairs of equal-shaped (N, *spatial, C) maps (or (N, C) vectors): the MSE of the maps plus, for each level
    ``l`` of 4, 2, 1 smaller than the first spatial size, the MSE of both maps adaptive-average-pooled to
    ``l`` per spatial axis with weights 1/2, 1/4, 1/8 in that order; the weighted sum divided by the sum of the
    weights used."""
    total = 0.0
    for fs, ft in zip(student_feats, teacher_feats, strict=True):
        if fs.shape != ft.shape:
            raise ValueError(f"ReviewKD pairs need equal shapes: {fs.shape} vs {ft.shape}")
        fs, ft = _promote(fs), _promote(ft)
        loss, weight, weights = jnp.mean(jnp.square(fs - ft)), 1.0, 1.0
        first = fs.shape[1] if fs.ndim > 2 else 1
        for level in (4, 2, 1):
            if level >= first:
                continue
            size = (level,) * (fs.ndim - 2)
            weight /= 2.0
            loss = loss + weight * jnp.mean(jnp.square(adaptive_avg_pool(fs, size) - adaptive_avg_pool(ft, size)))
            weights += weight
        total = total + loss / weights
    return total


# CRD (Tian et al. 2020): RepDistiller crd/memory.py (ContrastMemory) and crd/criterion.py (ContrastLoss), as in
# mdistiller distillers/CRD.py. Two banks of (n_data, feat_dim) embeddings: the student bank holds past student
# embeddings, against which teacher embeddings are scored, and vice versa.


def crd_bank_init(key: jax.Array, n_data: int, feat_dim: int) -> jax.Array:
    """A memory bank (n_data, feat_dim) drawn uniformly in ``±1/sqrt(feat_dim / 3)`` (so ``E‖row‖² = 1``), as
    ``ContrastMemory``."""
    bound = 1.0 / math.sqrt(feat_dim / 3)
    return jax.random.uniform(key, (n_data, feat_dim), jnp.float32, -bound, bound)


def crd_scores(embeddings: jax.Array, bank: jax.Array, contrast_idx: jax.Array, temperature: float) -> jax.Array:
    """``exp(⟨bank[contrast_idx[b, k]], embeddings[b]⟩ / T)``, shape (B, K + 1): column 0 the positive (the
    example's own row), columns 1… the K negatives. ``embeddings`` (B, D) unit vectors; the bank is a constant.
    Every row's dot product is one (B, D) × (D, n_data) product, from which the (B, K + 1) scored ones are picked:
    cheaper than gathering (B, K + 1, D) bank rows when K is a large fraction of the bank (CRD's 16,384 of
    50,000), and the same numbers."""
    dots = _promote(embeddings) @ jax.lax.stop_gradient(bank).T  # (B, n_data)
    return jnp.exp(jnp.take_along_axis(dots, contrast_idx, axis=1) / temperature)


def crd_normalizer(scores: jax.Array, n_data: int) -> jax.Array:
    """The NCE normalising constant ``Z = mean(scores) · n_data``; the authors fix it from the first batch."""
    return jax.lax.stop_gradient(jnp.mean(scores) * n_data)


def crd_nce_loss(scores: jax.Array, normalizer, n_data: int, eps: float = 1e-7) -> jax.Array:
    """NCE loss (CRD Eq. 18, ``ContrastLoss``) of (B, K + 1) scores, positive in column 0. With ``P = scores / Z``
    and noise ``m·Pn = K / n_data``: ``−(1/B) Σ_b [log(P_b0 / (P_b0 + m·Pn + eps))
    + Σ_{k≥1} log(m·Pn / (P_bk + m·Pn + eps))]``."""
    p = scores / normalizer
    noise = (scores.shape[1] - 1) / n_data
    positive = jnp.log(p[:, 0] / (p[:, 0] + noise + eps))
    negative = jnp.log(noise / (p[:, 1:] + noise + eps))
    return -(jnp.sum(positive) + jnp.sum(negative)) / scores.shape[0]


def crd_loss(student_emb: jax.Array, teacher_emb: jax.Array, student_bank: jax.Array, teacher_bank: jax.Array,
             contrast_idx: jax.Array, normalizers: jax.Array, *, temperature: float = 0.07,
             n_data: int | None = None) -> tuple[jax.Array, jax.Array]:
    """CRD's two-sided NCE loss and the normalising constants ``(Z_student, Z_teacher)``.

    The student embeddings (B, D) are scored against the teacher bank and the teacher embeddings against the
    student bank (:func:`crd_scores`, both unit vectors from the embedding heads). ``normalizers`` (2,): a
    negative entry is unset and is replaced by :func:`crd_normalizer` of this batch's scores, as the authors' −1;
    the method keeps the returned pair. ``n_data`` defaults to the banks' rows. Unweighted (the authors'
    β = 0.8). Update the banks afterwards with :func:`crd_bank_update`."""
    n_data = student_bank.shape[0] if n_data is None else n_data
    scores_s = crd_scores(student_emb, teacher_bank, contrast_idx, temperature)
    scores_t = crd_scores(teacher_emb, student_bank, contrast_idx, temperature)
    fresh = jnp.stack([crd_normalizer(scores_s, n_data), crd_normalizer(scores_t, n_data)])
    normalizers = jnp.where(normalizers < 0, fresh, normalizers)
    loss = crd_nce_loss(scores_s, normalizers[0], n_data) + crd_nce_loss(scores_t, normalizers[1], n_data)
    return loss, normalizers


def crd_bank_update(bank: jax.Array, indices: jax.Array, embeddings: jax.Array, momentum: float = 0.5) -> jax.Array:
    """Rows ``indices`` (B,) become ``normalize(momentum · bank[i] + (1 − momentum) · embeddings[b])``; the other
    rows are unchanged (``ContrastMemory``'s update; the embeddings are constants here)."""
    rows = momentum * bank[indices] + (1.0 - momentum) * jax.lax.stop_gradient(embeddings).astype(bank.dtype)
    return bank.at[indices].set(l2_normalize(rows, eps=0.0))


def crd_contrast_indices(key: jax.Array, indices: jax.Array, labels: jax.Array, all_labels: jax.Array,
                         k: int) -> jax.Array:
    """CRD's bank rows to score, (B, k + 1): column 0 the examples' own ``indices`` (B,), then ``k`` negatives per
    example drawn uniformly without replacement among the training examples of other classes than its label
    (``labels`` (B,); ``all_labels`` (n_data,) the label of every bank row), as RepDistiller's
    ``CIFAR100InstanceSample`` in its default ``exact`` mode. The draw takes the ``k`` largest of independent
    Gumbel keys over the eligible rows, so ``k`` must not exceed the smallest number of other-class examples."""
    gumbel = jax.random.gumbel(key, (indices.shape[0], all_labels.shape[0]))
    eligible = labels[:, None] != all_labels[None, :]
    negatives = jax.lax.top_k(jnp.where(eligible, gumbel, -jnp.inf), k)[1]
    return jnp.concatenate([indices[:, None], negatives.astype(indices.dtype)], axis=1)
