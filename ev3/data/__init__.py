"""Dataset registry and loading: prepared TFDS directories → device arrays split per the contract.

``load(name, data_dir, ...)`` returns a :class:`Dataset` whose ``splits`` hold ``train``, ``val``, ``meta``
(carved from the dataset's train split, see :mod:`ev3.data.splits`) and ``test``, each as ``(x, y)`` device
arrays: ``x`` float32 (N, *input_shape), ``y`` int32 (N,).

Datasets
- Embedded (``EMBEDDED``): ``mnist1d`` and ``digits``, real TFDS builders shipped in this package
  (:mod:`ev3.data.embedded`); ``prepare`` writes them offline, already scaled (no normalization here).
- TFDS catalog (``TFDS_IMAGES``): ``mnist`` (28×28×1), ``cifar10``, ``cifar100`` (32×32×3), uint8 images read
  with ``tfds.data_source`` over array_record (no TensorFlow at run time, never a download). Pixels become
  float32 ``(x / 255 − mean_c) / std_c`` with the per-channel mean and std of the carved ``train`` part.
  Preparing them needs TensorFlow (TFDS encodes images with it): ``pip install -e ".[prepare]"`` and
  ``python -m ev3 prepare-data NAME --data-dir DIR`` (downloads once, writes array_record).

A dataset that is not prepared raises :class:`DatasetMissingError` at once, saying how to prepare it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from ev3.data.splits import carve

EMBEDDED = ("mnist1d", "digits")
TFDS_IMAGES = {"mnist": 10, "cifar10": 10, "cifar100": 100}  # name -> classes
DATASETS = EMBEDDED + tuple(TFDS_IMAGES)
SIGNALS = ("mnist1d",)  # 1-D signal datasets (the signal augmentations); every other dataset holds images
SIGNAL_KEYS = ("scale", "translate", "corr_noise", "iid_noise", "shear")  # train.augment keys for signals …
IMAGE_KEYS = ("crop_padding", "flip")  # … and for images (ev3.data.augment)


class DatasetMissingError(RuntimeError):
    """A dataset is not prepared under the given directory (no download is ever attempted)."""


@dataclass(frozen=True)
class Dataset:
    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    splits: dict  # name -> (x, y) device arrays


def how_to_prepare(name: str, data_dir: str) -> str:
    if name in EMBEDDED:
        return f"python -m ev3 prepare-data {name} --data-dir {data_dir}"
    return f'pip install -e ".[prepare]" && python -m ev3 prepare-data {name} --data-dir {data_dir}'


def prepared_dir(name: str, data_dir: str) -> str:
    """The newest version directory of ``name`` under ``data_dir`` written as array_record (only the file
    system is read: fast, no TFDS import); raises :class:`DatasetMissingError` if there is none."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {list(DATASETS)}")
    root = os.path.join(data_dir, name)
    versions = sorted(os.listdir(root)) if os.path.isdir(root) else []
    for version in reversed(versions):
        d = os.path.join(root, version)
        if os.path.exists(os.path.join(d, "dataset_info.json")) and any(".array_record" in f for f in os.listdir(d)):
            return d
    raise DatasetMissingError(
        f"dataset {name!r} is not prepared (as array_record) under {data_dir!r}; prepare it once with: "
        f"{how_to_prepare(name, data_dir)}"
    )


def describe(name: str, data_dir: str) -> dict:
    """Where a prepared dataset lives and its split sizes (from its dataset_info.json)."""
    d = prepared_dir(name, data_dir)
    with open(os.path.join(d, "dataset_info.json")) as f:
        info = json.load(f)
    sizes = {s["name"]: sum(int(n) for n in s.get("shardLengths", [])) for s in info.get("splits", [])}
    return {"name": name, "path": os.path.abspath(d), "version": info.get("version"), "splits": sizes}


def prepare(name: str, data_dir: str) -> str:
    """Build a dataset as array_record under ``data_dir``; returns the versioned directory.

    Embedded datasets are generated offline; TFDS catalog datasets are downloaded and encoded by TFDS (needs
    the ``[prepare]`` extra, i.e. TensorFlow, and the network)."""
    import tensorflow_datasets as tfds

    if name in EMBEDDED:
        from ev3.data.embedded import BUILDERS

        builder = BUILDERS[name](data_dir=data_dir, file_format="array_record")
    elif name in TFDS_IMAGES:
        builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    else:
        raise ValueError(f"unknown dataset {name!r}; known: {list(DATASETS)}")
    builder.download_and_prepare()
    return str(builder.data_dir)


def _records(source) -> list[dict]:
    return [source[i] for i in range(len(source))]


def read_tfds(name: str, data_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """All examples of a prepared dataset as numpy ``{split: (x, y)}`` (images stay uint8); never downloads."""
    import tensorflow_datasets as tfds

    if name in EMBEDDED:
        source = tfds.builder_from_directory(prepared_dir(name, data_dir)).as_data_source()
        key = "x"
    elif name in TFDS_IMAGES:
        try:
            source = {s: tfds.data_source(name, split=s, data_dir=data_dir, download=False) for s in ("train", "test")}
        except Exception as e:  # not prepared (or prepared as tfrecord): say how to prepare it
            prepared_dir(name, data_dir)
            raise RuntimeError(f"dataset {name!r} under {data_dir!r} is unreadable: {e}") from e
        key = "image"
    else:
        raise ValueError(f"unknown dataset {name!r}; known: {list(DATASETS)}")
    out = {}
    for split, records in source.items():
        examples = _records(records)
        x = np.stack([e[key] for e in examples])
        out[split] = (x if x.dtype == np.uint8 else x.astype(np.float32), np.asarray([e["label"] for e in examples], np.int32))
    return out


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 images (N, H, W, C) in [0, 1] units, exact, via value histograms."""
    values = np.arange(256, dtype=np.float64) / 255.0
    mean, std = [], []
    for c in range(x.shape[-1]):
        counts = np.bincount(x[..., c].ravel(), minlength=256)
        m = counts @ values / counts.sum()
        mean.append(m)
        std.append(np.sqrt(counts @ (values - m) ** 2 / counts.sum()) + 1e-8)
    return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def normalize_images(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """uint8 images (N, H, W, C) → float32 ``(x / 255 − mean) / std`` per channel."""
    return ((x.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


def load(name: str, data_dir: str, *, seed: int, val: float, meta: float) -> Dataset:
    """Device arrays for ``train``/``val``/``meta`` (seeded, stratified carve of train) and ``test``."""
    import jax.numpy as jnp

    raw = read_tfds(name, data_dir)
    x, y = raw["train"]
    x_test, y_test = raw["test"]
    parts = carve(y, seed=seed, val=val, meta=meta)
    if name in TFDS_IMAGES:  # statistics of the carved train part only
        mean, std = channel_stats(x[parts["train"]])
        x, x_test = normalize_images(x, mean, std), normalize_images(x_test, mean, std)
    splits = {k: (jnp.asarray(x[i]), jnp.asarray(y[i])) for k, i in parts.items()}
    splits["test"] = (jnp.asarray(x_test), jnp.asarray(y_test))
    num_classes = TFDS_IMAGES.get(name) or int(y.max()) + 1
    return Dataset(name=name, num_classes=num_classes, input_shape=tuple(x.shape[1:]), splits=splits)
