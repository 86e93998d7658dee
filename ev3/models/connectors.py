"""Learned connectors of the feature-distillation methods, flax NNX modules on channels-last features
(``ev3.models.features``); they belong to the student's trainable state and are dropped at evaluation.

- :class:`HintRegressor`: FitNet's regressor from the student's hint to the teacher's (RepDistiller
  ``models/util.py`` ``ConvReg``, as mdistiller ``distillers/_common.py``): conv → BN → ReLU between feature
  maps; flatten → linear (reshaped to the teacher's shape) where one side has no spatial axes (MLP ↔ CNN).
- :class:`Embed`: CRD's embedding head, linear → L2 normalisation (RepDistiller ``crd/criterion.py``).
- :class:`ABF` and :class:`ReviewFusion`: ReviewKD's attention-based fusion and its top-down review of the
  student's features (mdistiller ``distillers/ReviewKD.py``).

Initialisation follows the authors' PyTorch modules: PyTorch's default ``U(±1/sqrt(fan_in))`` for kernels and
biases, ``kaiming_uniform_(a=1)`` (``U(±sqrt(3/fan_in))``) for ABF's two convolutions, BatchNorm scale 1 and bias 0
with PyTorch's momentum 0.1 (flax 0.9) and epsilon 1e-5. Shapes below exclude the batch axis.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def _uniform(bound: float):
    """Initializer ``U(−bound, bound)`` for any shape."""
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def _bn(channels: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, rngs=rngs)


def _torch_conv(in_ch: int, out_ch: int, kernel: tuple[int, ...], *, strides=1, padding="VALID", use_bias=True,
                rngs: nnx.Rngs) -> nnx.Conv:
    """``nn.Conv{1,2}d`` with PyTorch's default initialisation (bound 1/sqrt(in · prod(kernel)))."""
    bound = 1.0 / math.sqrt(in_ch * math.prod(kernel))
    return nnx.Conv(in_ch, out_ch, kernel, strides=strides, padding=padding, use_bias=use_bias,
                    kernel_init=_uniform(bound), bias_init=_uniform(bound), rngs=rngs)


def _torch_linear(in_features: int, out_features: int, rngs: nnx.Rngs) -> nnx.Linear:
    bound = 1.0 / math.sqrt(in_features)
    return nnx.Linear(in_features, out_features, kernel_init=_uniform(bound), bias_init=_uniform(bound), rngs=rngs)


class HintRegressor(nnx.Module):
    """FitNet's regressor from a student hint of shape ``student_shape`` to ``teacher_shape``.

    Between feature maps of the same rank, ``(*s_spatial, C_s) → (*t_spatial, C_t)``, with ``s`` and ``t`` the
    first spatial sizes (``ConvReg``): a 3-wide stride-2 convolution (padding 1) where ``s = 2t``, a 4-wide
    stride-2 transposed convolution (PyTorch padding 1) where ``2s = t``, otherwise a valid convolution with kernel
    ``1 + s_i − t_i`` per axis (1×1 for equal sizes); then BatchNorm → ReLU. A student map smaller than the
    teacher's, other than half, is refused, as ``ConvReg``. Where either side has no spatial axes (an MLP):
    flatten → linear to ``prod(teacher_shape)`` → reshape."""

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], *, rngs: nnx.Rngs):
        self.teacher_shape = tuple(teacher_shape)
        if len(student_shape) < 2 or len(student_shape) != len(teacher_shape):
            self.linear = _torch_linear(math.prod(student_shape), math.prod(teacher_shape), rngs)
            self.conv = self.bn = None
            return
        (*s_size, s_ch), (*t_size, t_ch) = student_shape, teacher_shape
        rank = len(s_size)
        if s_size[0] == 2 * t_size[0]:
            self.conv = _torch_conv(s_ch, t_ch, (3,) * rank, strides=2, padding=1, rngs=rngs)
        elif 2 * s_size[0] == t_size[0]:
            # PyTorch ConvTranspose(k=4, s=2, p=1): output 2s; lax pads the dilated input by k − 1 − p = 2. PyTorch
            # counts the fan-in of a transposed kernel over its output channels.
            bound = 1.0 / math.sqrt(t_ch * 4**rank)
            self.conv = nnx.ConvTranspose(s_ch, t_ch, (4,) * rank, strides=2, padding=((2, 2),) * rank,
                                          kernel_init=_uniform(bound), bias_init=_uniform(bound), rngs=rngs)
        elif all(s >= t for s, t in zip(s_size, t_size)):
            self.conv = _torch_conv(s_ch, t_ch, tuple(1 + s - t for s, t in zip(s_size, t_size)), rngs=rngs)
        else:
            raise ValueError(f"no regressor from student size {student_shape} to teacher size {teacher_shape}")
        self.bn = _bn(t_ch, rngs)
        self.linear = None

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, *student_shape) → (B, *teacher_shape)."""
        if self.linear is not None:
            return self.linear(x.reshape(x.shape[0], -1)).reshape(x.shape[0], *self.teacher_shape)
        return nnx.relu(self.bn(self.conv(x)))


class Embed(nnx.Module):
    """CRD's embedding head: flatten → Linear(dim_in, dim_out) → L2 normalisation; (B, …) → (B, dim_out) unit
    vectors."""

    def __init__(self, dim_in: int, dim_out: int = 128, *, rngs: nnx.Rngs):
        self.linear = _torch_linear(dim_in, dim_out, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.linear(x.reshape(x.shape[0], -1))
        return h / jnp.linalg.norm(h, axis=-1, keepdims=True)


def resize_nearest(x: jax.Array, size: tuple[int, ...]) -> jax.Array:
    """PyTorch's ``F.interpolate(mode="nearest")`` on channels-last ``x`` (B, *spatial, C) → (B, *size, C): output
    index ``o`` of an axis of length ``L`` resized to ``l`` takes input ``floor(o · L / l)``."""
    for axis, (length, out) in enumerate(zip(x.shape[1:-1], size, strict=True), start=1):
        if length != out:
            x = jnp.take(x, np.arange(out) * length // out, axis=axis)
    return x


class ABF(nnx.Module):
    """ReviewKD's attention-based fusion on ``rank``-D maps. ``x`` (B, *size, in_ch) → ``conv1`` (1×1, no bias) →
    BN → mid-level ``m`` (B, *size, mid_ch). With ``fuse``, the deeper level's ``m'`` is nearest-resized to
    ``size``, ``z = sigmoid(att_conv([m, m']))`` (1×1 conv with bias, 2 channels), ``m ← m·z₀ + m'·z₁``. Then ``m``
    is nearest-resized to ``out_size`` and ``conv2`` (3×3, padding 1, no bias) → BN gives the output
    (B, *out_size, out_ch). Returns ``(output, m)``; ``m`` feeds the next shallower ABF."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, fuse: bool, *, rank: int = 2, rngs: nnx.Rngs):
        kaiming = nnx.initializers.variance_scaling(1.0, "fan_in", "uniform")  # kaiming_uniform_(a=1)
        self.conv1 = nnx.Conv(in_ch, mid_ch, (1,) * rank, use_bias=False, kernel_init=kaiming, rngs=rngs)
        self.bn1 = _bn(mid_ch, rngs)
        self.conv2 = nnx.Conv(mid_ch, out_ch, (3,) * rank, padding=1, use_bias=False, kernel_init=kaiming, rngs=rngs)
        self.bn2 = _bn(out_ch, rngs)
        self.att_conv = _torch_conv(2 * mid_ch, 2, (1,) * rank, rngs=rngs) if fuse else None

    def __call__(self, x: jax.Array, residual: jax.Array | None = None,
                 out_size: tuple[int, ...] | None = None) -> tuple[jax.Array, jax.Array]:
        m = self.bn1(self.conv1(x))
        if self.att_conv is not None:
            residual = resize_nearest(residual, m.shape[1:-1])
            z = jax.nn.sigmoid(self.att_conv(jnp.concatenate([m, residual], axis=-1)))
            m = m * z[..., :1] + residual * z[..., 1:]
        if out_size is not None:
            m = resize_nearest(m, out_size)
        return self.bn2(self.conv2(m)), m


def _as_map(feat_shape: tuple[int, ...], rank: int) -> tuple[int, ...]:
    """A (D,) embedding as a (1, …, 1, D) map of the given spatial rank; maps unchanged."""
    return (*(1,) * rank, *feat_shape) if len(feat_shape) == 1 else tuple(feat_shape)


class ReviewFusion(nnx.Module):
    """ReviewKD's review of the student's features (mdistiller ``ReviewKD.forward_train``): one :class:`ABF` per
    level, applied from the deepest level up, each fusing its level with the deeper levels' mid-level map.

    ``student_shapes`` and ``teacher_shapes``: equal-length lists of feature shapes, shallow to deep, e.g. the
    stage outputs and the embedding (``[*stages, embedding]`` of ``ev3.models.features``; mdistiller reviews the
    student's ``feats`` against the teacher's ``preact_feats``). A (D,) embedding is treated as a 1×…×1 map, as
    the authors' ``pooled_feat.unsqueeze(-1).unsqueeze(-1)``. Mid channels: ``min(max_mid_channel,
    C_deepest_student)``; the deepest ABF does not fuse. The outputs have the teacher's shapes."""

    def __init__(self, student_shapes, teacher_shapes, *, max_mid_channel: int = 512, rngs: nnx.Rngs):
        if len(student_shapes) != len(teacher_shapes):
            raise ValueError(f"{len(student_shapes)} student levels vs {len(teacher_shapes)} teacher levels")
        rank = max(len(s) for s in [*student_shapes, *teacher_shapes]) - 1
        self.rank = rank
        self.student_shapes = [_as_map(tuple(s), rank) for s in student_shapes]
        self.teacher_shapes = [_as_map(tuple(t), rank) for t in teacher_shapes]
        mid = min(max_mid_channel, self.student_shapes[-1][-1])
        last = len(student_shapes) - 1
        self.abfs = nnx.List([ABF(s[-1], mid, t[-1], i < last, rank=rank, rngs=rngs)
                              for i, (s, t) in enumerate(zip(self.student_shapes, self.teacher_shapes))])

    def __call__(self, feats) -> list[jax.Array]:
        """``feats``: list of (B, *student_shapes[i]) → list of (B, *teacher_shapes[i]), shallow to deep."""
        feats = [f.reshape(f.shape[0], *shape) for f, shape in zip(feats, self.student_shapes, strict=True)]
        outputs, residual = [], None
        for i in reversed(range(len(feats))):
            out, residual = self.abfs[i](feats[i], residual, self.teacher_shapes[i][:-1])
            outputs.insert(0, out)
        return outputs
