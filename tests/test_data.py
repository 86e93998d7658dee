"""Embedded TFDS builders and the split contract."""

import time

import numpy as np
import pytest

from ev3.data import DatasetMissingError, load, read_tfds
from ev3.data.splits import carve


@pytest.mark.parametrize(
    "name, n_train, n_test, shape",
    [("mnist1d", 4000, 1000, (40,)), ("digits", 1437, 360, (8, 8, 1))],
)
def test_builders_give_documented_shapes_and_classes(data_dir, name, n_train, n_test, shape):
    raw = read_tfds(name, data_dir)
    (x, y), (xt, yt) = raw["train"], raw["test"]
    assert x.shape == (n_train, *shape) and xt.shape == (n_test, *shape)
    assert x.dtype == np.float32 and y.dtype == np.int32
    assert set(np.unique(y)) == set(range(10)) and set(np.unique(yt)) == set(range(10))
    assert np.isfinite(x).all()


def test_digits_pixels_are_scaled_to_unit_interval(data_dir):
    x, _ = read_tfds("digits", data_dir)["train"]
    assert x.min() == 0.0 and x.max() == 1.0


def test_carve_is_disjoint_complete_stratified_and_deterministic():
    labels = np.repeat(np.arange(10), 400)
    np.random.default_rng(0).shuffle(labels)
    parts = carve(labels, seed=3, val=0.1, meta=0.1)
    sizes = {k: len(v) for k, v in parts.items()}
    assert sizes == {"train": 3200, "val": 400, "meta": 400}
    all_idx = np.concatenate(list(parts.values()))
    assert len(np.unique(all_idx)) == len(labels)  # disjoint and complete
    for idx in parts.values():
        counts = np.bincount(labels[idx], minlength=10)
        assert counts.max() - counts.min() <= 1  # stratified
    again = carve(labels, seed=3, val=0.1, meta=0.1)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    other = carve(labels, seed=4, val=0.1, meta=0.1)
    assert not np.array_equal(parts["val"], other["val"])


def test_carve_rejects_bad_fractions():
    with pytest.raises(ValueError, match="val"):
        carve(np.zeros(10, int), seed=0, val=0.6, meta=0.5)


def test_load_carves_only_the_train_split_and_leaves_test_untouched(data_dir):
    raw = read_tfds("mnist1d", data_dir)
    a = load("mnist1d", data_dir, seed=0, val=0.1, meta=0.1)
    b = load("mnist1d", data_dir, seed=1, val=0.1, meta=0.1)
    for ds in (a, b):
        np.testing.assert_array_equal(np.asarray(ds.splits["test"][0]), raw["test"][0])
        np.testing.assert_array_equal(np.asarray(ds.splits["test"][1]), raw["test"][1])
        carved = np.concatenate([np.asarray(ds.splits[k][0]) for k in ("train", "val", "meta")])
        assert carved.shape == raw["train"][0].shape
        # no test example leaks into train/val/meta
        test_rows = {r.tobytes() for r in raw["test"][0]}
        assert not any(r.tobytes() in test_rows for r in carved)
    assert not np.array_equal(np.asarray(a.splits["val"][0]), np.asarray(b.splits["val"][0]))
    assert a.num_classes == 10 and a.input_shape == (40,)


def test_missing_dataset_fails_fast_with_instructions(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(DatasetMissingError, match="prepare-data mnist1d"):
        load("mnist1d", str(tmp_path), seed=0, val=0.1, meta=0.1)
    assert time.perf_counter() - t0 < 2.0


def test_unknown_dataset_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        read_tfds("imagenet", str(tmp_path))
