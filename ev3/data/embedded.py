"""Embedded offline datasets as real TFDS builders (array_record, no TensorFlow needed to read or write).

- ``mnist1d``: generated procedurally by the ``mnist1d`` package (``make_dataset`` with its default
  arguments, never its download path): the standard 4000 train / 1000 test split, 40-dim float32 signals,
  10 classes.
- ``digits``: scikit-learn's bundled 8×8 handwritten digits (1797 images), pixel values scaled to [0, 1],
  shape (8, 8, 1); a fixed stratified split (seed 0): 1437 train / 360 test.

Features are ``tfds.features.Tensor`` + ``ClassLabel`` (``Image`` would need TensorFlow to encode).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def _mnist1d_arrays() -> dict[str, np.ndarray]:
    """The standard mnist1d split; the package seeds numpy's global RNG, so the caller's state is restored."""
    from mnist1d.data import get_dataset_args, make_dataset

    saved = np.random.get_state()
    try:
        d = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(saved)
    return {
        "x_train": np.asarray(d["x"], np.float32),
        "y_train": np.asarray(d["y"], np.int64),
        "x_test": np.asarray(d["x_test"], np.float32),
        "y_test": np.asarray(d["y_test"], np.int64),
    }


def _digits_arrays() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=y
    )
    return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}


class _ArrayBuilder(tfds.core.GeneratorBasedBuilder):
    """A builder whose examples come from in-memory arrays returned by ``_arrays``."""

    VERSION = tfds.core.Version("1.0.0")
    SHAPE: tuple[int, ...] = ()
    NUM_CLASSES = 10
    DESCRIPTION = ""

    def _arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "x": tfds.features.Tensor(shape=self.SHAPE, dtype=np.float32),
                    "label": tfds.features.ClassLabel(num_classes=self.NUM_CLASSES),
                }
            ),
            supervised_keys=("x", "label"),
        )

    def _split_generators(self, dl_manager):
        arrays = self._arrays()
        return {
            "train": self._generate_examples(arrays["x_train"], arrays["y_train"]),
            "test": self._generate_examples(arrays["x_test"], arrays["y_test"]),
        }

    def _generate_examples(self, x, y):
        for i, (xi, yi) in enumerate(zip(x, y)):
            yield i, {"x": xi, "label": int(yi)}


class Mnist1d(_ArrayBuilder):
    """mnist1d (Greydanus 2020): 40-dim 1-D signals of the digits 0–9, generated offline."""

    SHAPE = (40,)
    DESCRIPTION = "mnist1d, standard 4000/1000 split generated procedurally by the mnist1d package."

    def _arrays(self):
        return _mnist1d_arrays()


class Digits(_ArrayBuilder):
    """scikit-learn's 8×8 handwritten digits, fixed stratified 80/20 split."""

    SHAPE = (8, 8, 1)
    DESCRIPTION = "scikit-learn digits (UCI optdigits test set), 8x8x1 in [0,1], stratified split seed 0."

    def _arrays(self):
        return _digits_arrays()


BUILDERS = {"mnist1d": Mnist1d, "digits": Digits}
