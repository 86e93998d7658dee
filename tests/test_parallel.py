"""Data parallelism: the step sharded over 2 (host) devices equals the single-device step."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_sharded_training_equals_single_device_training(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "scripts", "sharded_fit.py"), str(tmp_path)],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["devices"] == 2
    sharded, single = out["sharded"], out["single"]
    assert sharded["param_devices"] == 2 and single["param_devices"] == 1  # it really ran on both devices
    np.testing.assert_allclose(sharded["losses"], single["losses"], rtol=1e-4)
    for a, b in zip(sharded["leaves"], single["leaves"], strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    assert single["losses"][-1] < single["losses"][0]  # a few steps of resnet8 on mock cifar10 lower the loss
