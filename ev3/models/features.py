"""The intermediate features every model returns beside its logits (``model.features(x)``, or
``ev3.models.apply(..., features=True)``), for the feature-based distillation losses.

Layout: channels-last, batch first, in the model's compute dtype (float32, or bfloat16 where the model config says
so; only the logits are cast to float32). With ``S`` the number of stages:

- ``stages``: a list of ``S`` arrays, each stage's output as the next stage receives it.

  - ResNet (``resnet``): the output of each of the 3 stages after its last block's ReLU, ``(B, H_s, W_s, C_s)``
    (CIFAR resnet20: 32×32×16, 16×16×32, 8×8×64).
  - Wide ResNet (``wrn``): the residual sum that ends each of the 3 stages, ``(B, H_s, W_s, C_s)``. A
    pre-activation block has no activation after the sum (the next block or the head applies BN → ReLU), so this
    is the map that RepDistiller's and mdistiller's ``wrn.py`` return as ``feats``.
  - MLP: each hidden layer after its ReLU, ``(B, width)``.
  - CNN: each conv block after its ReLU, ``(B, L_s, C_s)`` for a 1-D signal, ``(B, H_s, W_s, C_s)`` for images.

- ``preact``: a list of ``S`` arrays of the same shapes, the pre-activation of each stage output (ReviewKD's
  teacher targets, mdistiller's ``preact_feats``):

  - ResNet: the last block's residual sum before its ReLU (``stages[s] = relu(preact[s])``).
  - Wide ResNet: the BatchNorm output that the following ReLU takes, i.e. the ``bn1`` of the next stage's first
    block for stages 1 and 2 and the final BN for stage 3 (``relu(preact[-1])`` is what the pool averages). It is
    the value computed in the forward pass, so BatchNorm statistics are updated once, as in the plain forward.
  - MLP / CNN: the linear / convolution output before the ReLU (``stages[s] = relu(preact[s])``).

- ``embedding``: the head's input, ``(B, D)``: the global average pool of the last stage for ResNet (``D = C_3``)
  and Wide ResNet (of ``relu(preact[-1])``), the last hidden layer for the MLP (``D = width``; the flattened input
  when ``depth`` is 0), the flattened last conv block for the CNN (``D = L_S · C_S``, or the flattened input
  when it has no conv layer). ``logits = head(embedding)``.

The CIFAR zoo of the KD suites (``vgg``, ``mobilenetv2``, ``shufflenetv1``, ``shufflenetv2``, ``resnetv2``; each
module's docstring says which layer each tap is): ``stages``, ``preact`` and ``embedding`` are the suites'
``feats[1:]``, ``preact_feats[1:]`` and ``pooled_feat`` (checked against their PyTorch models, eval mode, to float32
rounding). On 32×32 inputs, ``S`` and the stage shapes (H×W×C):

  - ``vgg`` (vgg8, vgg13), S = 4: the ReLU of blocks 1–4, 16²×128, 8²×256, 4²×512, 4²×512; ``preact`` the block's
    last BatchNorm; ``embedding`` the pool of the last stage, 512.
  - ``mobilenetv2`` (mobile_half), S = 4: the outputs of block groups 2, 3, 5, 7, 16²×12, 8²×16, 4²×48, 2²×160;
    ``preact`` the same arrays (a linear bottleneck ends without activation); ``embedding`` the pool of the final
    1×1 conv → BN → ReLU, 1280.
  - ``shufflenetv1``, S = 3: each stage's output after its last ReLU, 16²×240, 8²×480, 4²×960; ``preact`` the last
    block's sum (concatenation) before it; ``embedding`` the pool of the last stage, 960.
  - ``shufflenetv2`` (ShuffleV2), S = 3: each stage's (shuffled) output, 16²×116, 8²×232, 4²×464; ``preact`` the
    last block's ``[x1, branch]`` before the ReLU and the shuffle, as the suites; ``embedding`` the pool of the
    final 1×1 conv → BN → ReLU, 1024.
  - ``resnetv2`` (ResNet50), S = 4: each stage's output after its last ReLU, 32²×256, 16²×512, 8²×1024, 4²×2048;
    ``preact`` the residual sum; ``embedding`` the pool of the last stage, 2048.

Stages follow RepDistiller / mdistiller (``models/resnet.py``, ``models/wrn.py``: ``feats[1:4]`` are our
``stages``, ``feats[4]`` / ``pooled_feat`` our ``embedding``); their stem output ``feats[0]`` is not returned (no
method here uses it). FitNet's hint is their ``feats[hint_layer = 2]``, our ``stages[1]`` (``ev3.methods.fitnet``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax


class Features(NamedTuple):
    """Intermediate features of one forward pass (a pytree); see the module docstring for names and shapes."""

    stages: list[jax.Array]
    preact: list[jax.Array]
    embedding: jax.Array
