"""Dataset registry and loading: prepared TFDS directories → device arrays split per the contract.

``load(name, data_dir, split)`` returns a :class:`Dataset` whose ``splits`` hold ``train``, ``val``, ``meta``
(carved from the dataset's train split, see :mod:`ev3.data.splits`) and ``test``, each as ``(x, y)`` device
arrays: ``x`` float32 (N, *input_shape), ``y`` int32 (N,).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from ev3.data.splits import carve

EMBEDDED = ("mnist1d", "digits")
DATASETS = EMBEDDED


class DatasetMissingError(RuntimeError):
    """A dataset is not prepared under the given directory (no download is ever attempted)."""


@dataclass(frozen=True)
class Dataset:
    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    splits: dict  # name -> (x, y) device arrays


def prepare(name: str, data_dir: str) -> str:
    """Build an embedded dataset as array_record under ``data_dir``; returns the versioned directory."""
    from ev3.data.embedded import BUILDERS

    if name not in BUILDERS:
        raise ValueError(f"unknown embedded dataset {name!r}; known: {sorted(BUILDERS)}")
    builder = BUILDERS[name](data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    return str(builder.data_dir)


def read_tfds(name: str, data_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """All examples of a prepared TFDS dataset as numpy ``{split: (x, y)}``; never downloads."""
    import tensorflow_datasets as tfds

    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {list(DATASETS)}")
    version_dirs = sorted(
        os.path.join(data_dir, name, v) for v in (os.listdir(os.path.join(data_dir, name)) if os.path.isdir(os.path.join(data_dir, name)) else [])
    )
    ready = [d for d in version_dirs if os.path.exists(os.path.join(d, "dataset_info.json"))]
    if not ready:
        raise DatasetMissingError(
            f"dataset {name!r} is not prepared under {data_dir!r}; run `python -m ev3 prepare-data {name} --data-dir {data_dir}`"
        )
    source = tfds.builder_from_directory(ready[-1]).as_data_source()
    out = {}
    for split, records in source.items():
        examples = records.__getitems__(range(len(records)))
        out[split] = (
            np.stack([e["x"] for e in examples]).astype(np.float32),
            np.asarray([e["label"] for e in examples], np.int32),
        )
    return out


def load(name: str, data_dir: str, *, seed: int, val: float, meta: float) -> Dataset:
    """Device arrays for ``train``/``val``/``meta`` (seeded, stratified carve of train) and ``test``."""
    raw = read_tfds(name, data_dir)
    x, y = raw["train"]
    parts = carve(y, seed=seed, val=val, meta=meta)
    splits = {k: (jnp.asarray(x[i]), jnp.asarray(y[i])) for k, i in parts.items()}
    splits["test"] = tuple(jnp.asarray(a) for a in raw["test"])
    return Dataset(name=name, num_classes=int(y.max()) + 1, input_shape=tuple(x.shape[1:]), splits=splits)
