"""TFDS catalog datasets (mnist, cifar10, cifar100) on mocked data, the offline error, and augmentation."""

import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ev3.data import DatasetMissingError, channel_stats, load, prepared_dir
from ev3.data.augment import crop_flip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name, shape, classes", [("mnist", (28, 28, 1), 10), ("cifar10", (32, 32, 3), 10), ("cifar100", (32, 32, 3), 100)])
def test_mock_datasets_load_with_documented_shapes_and_normalization(tmp_path, name, shape, classes):
    with tfds.testing.mock_data(num_examples=6 * classes):
        data = load(name, str(tmp_path), seed=0, val=0.1, meta=0.1)
    assert data.num_classes == classes and data.input_shape == shape
    sizes = {k: v[0].shape[0] for k, v in data.splits.items()}
    assert sizes["train"] + sizes["val"] + sizes["meta"] == 6 * classes and sizes["test"] == 6 * classes
    for x, y in data.splits.values():
        assert x.dtype == jnp.float32 and y.dtype == jnp.int32 and x.shape[1:] == shape
        assert int(y.min()) >= 0 and int(y.max()) < classes
    x_train = np.asarray(data.splits["train"][0]).reshape(-1, shape[-1])
    np.testing.assert_allclose(x_train.mean(0), 0.0, atol=1e-4)  # normalized with train statistics
    np.testing.assert_allclose(x_train.std(0), 1.0, atol=1e-3)


def test_channel_stats_are_exact():
    x = np.random.default_rng(0).integers(0, 256, (7, 5, 4, 3), dtype=np.uint8)
    mean, std = channel_stats(x)
    ref = x.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(mean, ref.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, ref.std(0), rtol=1e-5)


@pytest.mark.parametrize("name", ["cifar100", "mnist"])
def test_an_unprepared_dataset_is_a_clear_error_naming_the_fix(tmp_path, name):
    with pytest.raises(DatasetMissingError, match=f"prepare-data {name} --data-dir"):
        load(name, str(tmp_path), seed=0, val=0.1, meta=0.1)
    (tmp_path / name / "3.0.2").mkdir(parents=True)  # a half-written directory is not a prepared dataset
    with pytest.raises(DatasetMissingError, match=r"\[prepare\]"):
        prepared_dir(name, str(tmp_path))


def test_offline_data_check_from_the_command_line_fails_fast(tmp_path):
    """What the workflow's data job runs: no data → exit 1 with one error line, no download attempt (the
    test's network guard would turn one into a different error)."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "ev3", "check-data", "cifar100", "--data-dir", str(tmp_path),
                        "--marker", str(tmp_path / "marker")], capture_output=True, text=True, cwd=ROOT, timeout=60)
    elapsed = time.perf_counter() - t0
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("error: dataset 'cifar100' is not prepared") and "prepare-data cifar100" in r.stderr
    assert not (tmp_path / "marker").exists()
    print(f"offline check-data error after {elapsed:.2f} s")


def _image(b=4, h=6, w=5, c=2):
    """Images whose every pixel value is unique and non-zero (so positions can be recovered)."""
    return jnp.arange(1, b * h * w * c + 1, dtype=jnp.float32).reshape(b, h, w, c)


def test_crop_without_padding_and_flip_is_the_identity():
    x = _image()
    np.testing.assert_array_equal(crop_flip(jax.random.key(0), x, padding=0, flip=False), x)


def test_flip_mirrors_the_width_axis_of_about_half_the_images():
    x = _image(b=64)
    y = crop_flip(jax.random.key(1), x, padding=0, flip=True)
    same = np.array([np.array_equal(y[i], x[i]) for i in range(64)])
    mirrored = np.array([np.array_equal(y[i], x[i, :, ::-1]) for i in range(64)])
    assert np.all(same ^ mirrored) and 16 < mirrored.sum() < 48


def test_crop_is_a_shifted_window_of_the_zero_padded_image_and_covers_every_offset():
    p, x = 2, _image(b=200, h=6, w=5, c=2)
    y = np.asarray(crop_flip(jax.random.key(2), x, padding=p, flip=False))
    padded = np.pad(np.asarray(x), ((0, 0), (p, p), (p, p), (0, 0)))
    seen = set()
    for i in range(len(x)):
        matches = [(a, b) for a in range(2 * p + 1) for b in range(2 * p + 1) if np.array_equal(y[i], padded[i, a : a + 6, b : b + 5])]
        assert len(matches) == 1, i
        seen.add(matches[0])
    assert seen == {(a, b) for a in range(2 * p + 1) for b in range(2 * p + 1)}  # offsets uniform in [0, 2p]
    assert y.shape == x.shape
