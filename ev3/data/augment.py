"""On-device augmentation, run inside the jitted training step (the dataset stays on the device).

Every transform is a pure function of a ``jax.random`` key and the batch: the same key gives the same output,
and a strength of zero is the identity. Each sample draws its own random values.

Images, ``crop_flip(key, x, padding, flip)``: ``x`` (B, H, W, C), already normalized. Each image is
zero-padded by ``padding`` pixels on every side (zero = the per-channel mean colour after normalization) and a
random H × W window is cut out (offsets uniform in ``[0, 2·padding]`` per axis, independently per image); with
``flip``, each image is mirrored left–right (the W axis) with probability 1/2. The standard CIFAR recipe is
``padding=4, flip=True``.

Signals, ``signal_augment(key, x, ...)``: ``x`` (B, L) or (B, L, C), the length axis 1 (mnist1d: (B, 40)). The
transforms of the mnist1d generator (``mnist1d.transform``), in its order, with strengths in the data's units
(mnist1d is standardised to std 1), applied to the finished signal:

1. ``scale``: amplitude ``x · (1 + scale · (u − ½))``, u ~ U(0, 1) (the generator's ``scale_coeff``);
2. ``translate``: shift by an integer s ~ U{−translate … translate} samples, ``out[t] = x[t − s]``, zeros
   shifted in (the generator rolls a zero-padded template, so what moves in is its padding);
3. ``corr_noise``: ``gaussian_filter(corr_noise · N(0, 1), σ = 2)`` along the length (scipy's
   ``gaussian_filter``: truncate 4, half-sample-symmetric borders), added everywhere (the generator adds it
   where its padded template is zero; a finished signal has no such zeros);
4. ``iid_noise``: ``iid_noise · N(0, 1)`` per value;
5. ``shear``: ``x − c · linspace(−½, ½, L)``, c = ``shear · (u − ½)`` (the generator's ``shear_scale``).

Mixup (Zhang et al. 2018), ``mixup(key, x, targets, alpha, per)``: λ ~ Beta(α, α), one per batch
(``per="batch"``) or one per sample (``per="sample"``); each sample is mixed with a random partner (a
permutation of the batch): ``x' = λ·x + (1 − λ)·x[perm]`` and the same convex combination of the targets
(one-hot labels (B, C)). λ = 1 is the identity. Images and signals alike.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ev3.data import IMAGE_KEYS, SIGNAL_KEYS
CORR_SIGMA = 2.0  # the mnist1d generator's gaussian_filter(noise, 2)


def crop_flip(key: jax.Array, x: jax.Array, *, padding: int = 4, flip: bool = True, mode: str = "constant") -> jax.Array:
    """``mode``: ``jnp.pad``'s padding mode (``"constant"``: zeros, as above; ``"reflect"``: mirrored borders, what
    EV3's reference assesses with)."""
    b, h, w, c = x.shape
    k_crop, k_flip = jax.random.split(key)
    if padding:
        padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), mode=mode)
        offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * padding + 1)
        x = jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c)))(padded, offsets)
    if flip:
        mirrored = jax.random.bernoulli(k_flip, 0.5, (b,))
        x = jnp.where(mirrored[:, None, None, None], x[:, :, ::-1, :], x)
    return x


def shift(x: jax.Array, s: jax.Array, max_shift: int) -> jax.Array:
    """Each signal ``x[i]`` (length axis 1) shifted by ``s[i]`` samples (|s| ≤ ``max_shift``): ``out[i, t] =
    x[i, t − s[i]]``, zeros where ``t − s[i]`` falls outside the signal."""
    length = x.shape[1]
    pad = [(0, 0)] * x.ndim
    pad[1] = (max_shift, max_shift)
    padded = jnp.pad(x, pad)
    return jax.vmap(lambda row, si: jax.lax.dynamic_slice_in_dim(row, max_shift - si, length, axis=0))(padded, s)


def gaussian_kernel(sigma: float = CORR_SIGMA, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage's 1-D Gaussian weights: radius ``int(truncate·σ + ½)``, normalised to sum 1."""
    radius = int(truncate * sigma + 0.5)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (t / sigma) ** 2)
    return (w / w.sum()).astype(np.float32)


def gaussian_filter(noise: jax.Array, sigma: float = CORR_SIGMA) -> jax.Array:
    """``scipy.ndimage.gaussian_filter1d(noise, sigma, axis=1)`` (mode ``reflect``: half-sample symmetric)."""
    w = jnp.asarray(gaussian_kernel(sigma))
    r = (w.shape[0] - 1) // 2
    pad = [(0, 0)] * noise.ndim
    pad[1] = (r, r)
    padded = jnp.pad(noise, pad, mode="symmetric")
    length = noise.shape[1]
    return sum(w[j] * jax.lax.slice_in_dim(padded, j, j + length, axis=1) for j in range(w.shape[0]))


def signal_augment(key: jax.Array, x: jax.Array, *, scale: float = 0.0, translate: int = 0, corr_noise: float = 0.0,
                   iid_noise: float = 0.0, shear: float = 0.0) -> jax.Array:
    """The mnist1d generator's transforms on a batch of signals (module docstring); zero strengths skip a step."""
    b, length = x.shape[0], x.shape[1]
    per_sample = (b,) + (1,) * (x.ndim - 1)
    k_scale, k_shift, k_corr, k_iid, k_shear = jax.random.split(key, 5)
    if scale:
        x = x * (1.0 + scale * (jax.random.uniform(k_scale, per_sample) - 0.5))
    if translate:
        x = shift(x, jax.random.randint(k_shift, (b,), -translate, translate + 1), translate)
    if corr_noise:
        x = x + gaussian_filter(corr_noise * jax.random.normal(k_corr, x.shape))
    if iid_noise:
        x = x + iid_noise * jax.random.normal(k_iid, x.shape)
    if shear:
        ramp = jnp.linspace(-0.5, 0.5, length).reshape((1, length) + (1,) * (x.ndim - 2))
        x = x - shear * (jax.random.uniform(k_shear, per_sample) - 0.5) * ramp
    return x.astype(jnp.float32) if x.dtype != jnp.float32 else x


def mixup(key: jax.Array, x: jax.Array, targets: jax.Array, *, alpha: float, per: str = "batch"):
    """``(x', targets')``: each sample mixed with a random partner of the batch by λ ~ Beta(α, α) (one λ per
    batch, or per sample); ``targets`` (B, C) float (one-hot labels, or soft targets)."""
    k_lam, k_perm = jax.random.split(key)
    b = x.shape[0]
    lam = jax.random.beta(k_lam, alpha, alpha, () if per == "batch" else (b,))
    return mix(x, targets, lam, jax.random.permutation(k_perm, b))


def mix(x: jax.Array, targets: jax.Array, lam: jax.Array, perm: jax.Array):
    """``λ·x + (1 − λ)·x[perm]`` and the same for ``targets``; ``lam`` a scalar or (B,)."""
    lam = jnp.asarray(lam, jnp.float32)

    def combine(a):
        weight = lam.reshape(lam.shape + (1,) * (a.ndim - lam.ndim)) if lam.ndim else lam
        return weight * a + (1.0 - weight) * a[perm]

    return combine(x), combine(targets)


def augment_fn(config: dict | None):
    """``(key, x) -> x`` for a ``train.augment`` config — image keys ``{crop_padding, flip}`` or signal keys
    ``{scale, translate, corr_noise, iid_noise, shear}`` — or None without one (or with every strength 0)."""
    if not config or not any(config.values()):
        return None
    image = any(k in config for k in IMAGE_KEYS)
    padding, flip = config.get("crop_padding", 0), config.get("flip", False)
    strengths = {k: config.get(k, 0) for k in SIGNAL_KEYS}

    def apply(key, x):
        if image != (x.ndim == 4):  # config validation checks the datasets; this guards direct use
            raise ValueError(f"train.augment {sorted(config)}: {'image' if image else 'signal'} transforms, "
                             f"and the batch has shape {x.shape}")
        return crop_flip(key, x, padding=padding, flip=flip) if image else signal_augment(key, x, **strengths)

    return apply


def mixup_fn(config: dict | None):
    """``(key, x, labels) -> (x, targets (B, C))`` for a ``train.mixup`` config ``{alpha, per}`` (labels int (B,),
    one-hot encoded with ``num_classes``), or None without one."""
    if not config:
        return None
    alpha, per = float(config["alpha"]), config.get("per", "batch")

    def apply(key, x, labels, num_classes: int):
        return mixup(key, x, jax.nn.one_hot(labels, num_classes, dtype=jnp.float32), alpha=alpha, per=per)

    return apply


def view_fn(train: dict, num_classes: int):
    """What a training step sees of a clean batch: ``view(key, x, labels) -> (x', targets)``, ``x`` augmented by
    ``train.augment`` (stream "augment" of ``key``), then mixed by ``train.mixup`` (stream "mixup"; ``targets``
    the mixed one-hot (B, C)); without mixup ``targets`` are the labels, without either the view is ``x``."""
    from ev3.rng import stream

    augment, mix = augment_fn(train.get("augment")), mixup_fn(train.get("mixup"))

    def view(key, x, labels):
        if augment is not None:
            x = augment(stream(key, "augment"), x)
        if mix is not None:
            return mix(stream(key, "mixup"), x, labels, num_classes)
        return x, labels

    return view
