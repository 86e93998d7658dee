"""Function-preserving growth of a student (EV3's "grow when progress stalls").

Parameters and BatchNorm statistics of existing layers are copied; the new layer's are the only new ones.

The EV3 reference's operators (google-research/google-research,
``ev3/utils/nn_expansion_util.py``), each taking an explicit ``jax.random`` key: :func:`widen_mlp` (hidden
widths ``w → 2w + 1``), :func:`deepen_mlp` (an identity layer after a random hidden layer), :func:`expand_mlp`
(one of the two at random), :func:`deepen_cnn` (an identity convolution after a random one; CNNs are only
deepened), :func:`deepen_resnet_stage` (an identity block appended to a random stage), :func:`double_resnet`
(every stage's blocks doubled); ``morphism=False`` gives the grown architecture freshly initialised instead.
They are registered in ``GROWTH_OPERATORS``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ev3 import models
from ev3.models.cnn import conv_strides
from ev3.models.mlp import hidden_widths
from ev3.models.resnet import DEPTH_OFFSET, stage_blocks


def size(model_config: dict) -> int:
    """Number of hidden layers (MLP), convolutions (CNN) or residual blocks (ResNet, WRN): what growth increments."""
    c = model_config
    if c["type"] == "mlp":
        return len(hidden_widths(c))
    if c["type"] == "cnn":
        return len(c["channels"])
    return sum(stage_blocks(c))


# ---------------------------------------------------------------------------------------------------------------
# The EV3 reference's growth operators (google-research/google-research, ev3/utils/nn_expansion_util.py), each
# ``op(model_config, network, input_shape, num_classes, key, *, morphism=True, ...) -> (grown config, network)``.
# ``key`` draws the operator's random choice and the new weights. With ``morphism=True`` the grown network computes
# the same function as ``network`` (in eval mode and, with BatchNorm, in train mode with batch statistics); with
# ``morphism=False`` it is the grown architecture freshly initialised from ``key`` (the reference's multi-pass).
# CNNs grow by deepening only (no widening rule).
# ---------------------------------------------------------------------------------------------------------------


def _fresh(config: dict, input_shape, num_classes: int, key: jax.Array) -> nnx.Module:
    return nnx.merge(*models.build(config, input_shape, num_classes, key))


def _network(module: nnx.Module) -> models.Network:
    return models.Network(*nnx.split(module, nnx.Param, ...))


def _choice(key: jax.Array, n: int) -> int:
    return int(jax.random.randint(key, (), 0, n))


def _mlp_widths_config(model_config: dict, widths: list[int]) -> dict:
    c = {k: v for k, v in model_config.items() if k not in ("width", "depth")}
    return {**c, "widths": list(widths)}


def _check_index(name: str, index: int, n: int) -> None:
    if not 0 <= index < n:
        raise ValueError(f"{name} must be in [0, {n}), got {index}")


def widened_mlp_config(model_config: dict) -> dict:
    """MLP config with every hidden width ``w → 2w + 1``, as ``widths``."""
    return _mlp_widths_config(model_config, [2 * w + 1 for w in hidden_widths(model_config)])


def deepened_mlp_config(model_config: dict, layer: int) -> dict:
    """MLP config with a copy of hidden layer ``layer``'s width inserted after it, as ``widths``."""
    widths = hidden_widths(model_config)
    _check_index("layer", layer, len(widths))
    return _mlp_widths_config(model_config, [*widths[: layer + 1], widths[layer], *widths[layer + 1 :]])


def deepened_cnn_config(model_config: dict, layer: int) -> dict:
    """CNN config with a stride-1 convolution of convolution ``layer``'s channels inserted after it."""
    channels = list(model_config["channels"])
    _check_index("layer", layer, len(channels))
    strides = conv_strides(channels, model_config["stride"])
    return {**model_config, "channels": [*channels[: layer + 1], channels[layer], *channels[layer + 1 :]],
            "stride": [*strides[: layer + 1], 1, *strides[layer + 1 :]]}


def _resnet_config(model_config: dict, counts: list[int]) -> dict:
    """``model_config`` with ``blocks: counts`` (``extra_blocks`` folded in) and ``depth`` the layer count."""
    c = {k: v for k, v in model_config.items() if k != "extra_blocks"}
    return {**c, "depth": 2 * sum(counts) + DEPTH_OFFSET[c["type"]], "blocks": list(counts)}


def deepened_resnet_config(model_config: dict, stage: int) -> dict:
    """ResNet / WRN config with one more block in stage ``stage``: ``blocks`` and ``depth`` (+ 2) updated."""
    counts = stage_blocks(model_config)
    _check_index("stage", stage, len(counts))
    return _resnet_config(model_config, [c + (s == stage) for s, c in enumerate(counts)])


def doubled_resnet_config(model_config: dict) -> dict:
    """ResNet / WRN config with every stage's block count doubled (depth 6n + 2 → 12n + 2)."""
    return _resnet_config(model_config, [2 * c for c in stage_blocks(model_config)])


def widen_mlp(model_config: dict, network: models.Network, input_shape, num_classes: int, key: jax.Array, *,
              morphism: bool = True) -> tuple[dict, models.Network]:
    """Every hidden width ``w → 2w + 1`` (the reference's ``widen_mlp``, widen factor 2).

    The new units' incoming weights and biases are drawn from ``key`` (the model's initialisers); their outgoing
    weights, into the old units of the next layer and into the head, are zero, so the old units and the logits
    are unchanged. Old weights and biases are copied. The grown config lists ``widths``."""
    new_config = widened_mlp_config(model_config)
    new = _fresh(new_config, input_shape, num_classes, key)
    if not morphism:
        return new_config, _network(new)
    old = nnx.merge(*network)
    for i, (a, b) in enumerate(zip([*old.hidden, old.head], [*new.hidden, new.head])):
        n_in, n_out = a.kernel.value.shape
        k = b.kernel.value.at[:n_in, :n_out].set(a.kernel.value)
        if i > 0:  # from the previous layer's new units into this layer's old units (the head: every logit): zero
            k = k.at[n_in:, :n_out].set(0.0)
        b.kernel.value = k
        b.bias.value = b.bias.value.at[:n_out].set(a.bias.value)
    return new_config, _network(new)


def deepen_mlp(model_config: dict, network: models.Network, input_shape, num_classes: int, key: jax.Array, *,
               morphism: bool = True, layer: int | None = None) -> tuple[dict, models.Network]:
    """An identity Linear (kernel ``I``, bias 0) after hidden layer ``layer`` (drawn uniformly from ``key`` when
    None), as the reference's ``deepen_mlp``: ``relu(I·h + 0) = h`` for post-ReLU ``h ≥ 0``."""
    init_key, layer_key = jax.random.split(key)
    widths = hidden_widths(model_config)
    layer = _choice(layer_key, len(widths)) if layer is None else layer
    new_config = deepened_mlp_config(model_config, layer)
    new = _fresh(new_config, input_shape, num_classes, init_key)
    if not morphism:
        return new_config, _network(new)
    old = nnx.merge(*network)
    old_layers, new_layers = [*old.hidden, old.head], [*new.hidden, new.head]
    for j, b in enumerate(new_layers):
        if j == layer + 1:
            b.kernel.value = jnp.eye(widths[layer], dtype=b.kernel.value.dtype)
            b.bias.value = jnp.zeros_like(b.bias.value)
        else:
            a = old_layers[j if j <= layer else j - 1]
            b.kernel.value, b.bias.value = a.kernel.value, a.bias.value
    return new_config, _network(new)


def expand_mlp(model_config: dict, network: models.Network, input_shape, num_classes: int, key: jax.Array, *,
               morphism: bool = True) -> tuple[dict, models.Network]:
    """:func:`widen_mlp` or :func:`deepen_mlp`, drawn with probability ½ each (the reference's ``expand_mlp``)."""
    decide_key, expand_key = jax.random.split(key)
    op = (widen_mlp, deepen_mlp)[_choice(decide_key, 2)]
    return op(model_config, network, input_shape, num_classes, expand_key, morphism=morphism)


def deepen_cnn(model_config: dict, network: models.Network, input_shape, num_classes: int, key: jax.Array, *,
               morphism: bool = True, layer: int | None = None) -> tuple[dict, models.Network]:
    """A stride-1 identity convolution (kernel ``I`` at the tap that SAME padding aligns with the output, tap
    ``(k − 1) // 2`` per axis, zero elsewhere; bias 0) after convolution ``layer`` (drawn from ``key`` when None),
    with that layer's channel count; ``relu(x) = x`` for its post-ReLU input. The only CNN growth rule (1-D and
    2-D): there is no widening for CNNs."""
    init_key, layer_key = jax.random.split(key)
    layer = _choice(layer_key, len(model_config["channels"])) if layer is None else layer
    new_config = deepened_cnn_config(model_config, layer)
    new = _fresh(new_config, input_shape, num_classes, init_key)
    if not morphism:
        return new_config, _network(new)
    old = nnx.merge(*network)
    for j, b in enumerate(new.convs):
        if j == layer + 1:
            k = b.kernel.value  # (..spatial.., c, c)
            tap = tuple((s - 1) // 2 for s in k.shape[:-2])
            b.kernel.value = jnp.zeros_like(k).at[tap].set(jnp.eye(k.shape[-1], dtype=k.dtype))
            b.bias.value = jnp.zeros_like(b.bias.value)
        else:
            a = old.convs[j if j <= layer else j - 1]
            b.kernel.value, b.bias.value = a.kernel.value, a.bias.value
    new.head.kernel.value, new.head.bias.value = old.head.kernel.value, old.head.bias.value
    return new_config, _network(new)


def _grow_blocks(model_config, network, input_shape, num_classes, key, new_config, source, morphism):
    """The ResNet / WRN of ``new_config``, whose block ``i`` copies old block ``source[i]`` (stem, head and final
    BatchNorm copied too) or,
    where that is None, is a fresh stride-1 block made the identity: last BatchNorm scale and bias 0 (ResNet,
    ``relu(x + 0) = x`` for post-ReLU ``x``) or last convolution 0 (WRN, ``x + 0 = x``)."""
    new = _fresh(new_config, input_shape, num_classes, key)
    if not morphism:
        return new_config, _network(new)
    old = nnx.merge(*network)
    for name in ("conv", "bn", "head"):
        if hasattr(old, name):
            nnx.update(getattr(new, name), nnx.state(getattr(old, name)))
    for block, j in zip(new.blocks, source, strict=True):
        if j is not None:
            nnx.update(block, nnx.state(old.blocks[j]))
        elif model_config["type"] == "resnet":
            block.bn2.scale.value = jnp.zeros_like(block.bn2.scale.value)
            block.bn2.bias.value = jnp.zeros_like(block.bn2.bias.value)
        else:
            block.conv2.kernel.value = jnp.zeros_like(block.conv2.kernel.value)
    return new_config, _network(new)


def deepen_resnet_stage(model_config: dict, network: models.Network, input_shape, num_classes: int,
                        key: jax.Array, *, morphism: bool = True,
                        stage: int | None = None) -> tuple[dict, models.Network]:
    """One identity block appended to stage ``stage`` (drawn uniformly from ``key`` when None) of a ResNet / WRN,
    as the reference's ``deepen_resnet``; the grown config has ``blocks`` and its ``depth`` + 2."""
    init_key, stage_key = jax.random.split(key)
    counts = stage_blocks(model_config)
    stage = _choice(stage_key, len(counts)) if stage is None else stage
    new_config = deepened_resnet_config(model_config, stage)
    end = sum(counts[: stage + 1])  # the new block's index
    source = [*range(end), None, *range(end, sum(counts))]
    return _grow_blocks(model_config, network, input_shape, num_classes, init_key, new_config, source, morphism)


def double_resnet(model_config: dict, network: models.Network, input_shape, num_classes: int, key: jax.Array, *,
                  morphism: bool = True) -> tuple[dict, models.Network]:
    """Every stage's block count doubled, the new blocks (identity) after the old ones of their stage, as the
    reference's ``deepen_resnet_all_blocks``: resnet8 → 14 → 26 → 50, resnet20 → 38 → 74."""
    counts = stage_blocks(model_config)
    source, start = [], 0
    for c in counts:
        source += [*range(start, start + c), *[None] * c]
        start += c
    return _grow_blocks(model_config, network, input_shape, num_classes, key, doubled_resnet_config(model_config),
                        source, morphism)


GROWTH_OPERATORS = {
    "widen_mlp": widen_mlp,
    "deepen_mlp": deepen_mlp,
    "expand_mlp": expand_mlp,
    "deepen_cnn": deepen_cnn,
    "deepen_resnet_stage": deepen_resnet_stage,
    "double_resnet": double_resnet,
}
