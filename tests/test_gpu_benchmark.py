"""``benchmarks/gpu.py --smoke`` runs on the CPU with only the bare stack importable (tensorflow_datasets,
snakemake, pandas, matplotlib and jsonschema blocked), prints versions and device first, and writes one
consistent JSON row per setting (PyTorch rows skipped, and said so, where torch is missing)."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCKED = ("tensorflow_datasets", "snakemake", "pandas", "matplotlib", "jsonschema")
RUN_BLOCKED = f"""
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError(name + " is blocked")
sys.meta_path.insert(0, Block())
sys.argv = ["benchmarks/gpu.py"] + sys.argv[1:]
runpy.run_path("benchmarks/gpu.py", run_name="__main__")
"""
JAX_SETTINGS = ["base", "batch32", "bf16", "spc4", "seeds2", "seeds4"]
TORCH_SETTINGS = ["torch-eager-8", "torch-eager-32", "torch-compile-8"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "rows.jsonl"
    path = os.pathsep.join([ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    env = {**os.environ, "PYTHONPATH": path, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", RUN_BLOCKED, "--smoke", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return proc.stdout.splitlines(), rows


def test_versions_and_device_come_first(smoke):
    lines, _ = smoke
    import jax

    assert lines[0].startswith("versions: ") and f"jax {jax.__version__}" in lines[0]
    assert lines[1].startswith("device: cpu")


def test_one_consistent_row_per_setting(smoke):
    _, rows = smoke
    assert [r["setting"] for r in rows] == JAX_SETTINGS + TORCH_SETTINGS
    for r in rows[: len(JAX_SETTINGS)]:
        assert "skipped" not in r, r.get("skipped")
        assert r["benchmark"] == "gpu" and r["device"].startswith("cpu") and r["versions"]["jax"]
        blocks = r["blocks_s"]
        assert 3 <= len(blocks) <= 8 and min(blocks) > 0
        step_s = np.median(blocks) / r["block_steps"]
        assert r["step_ms"] == pytest.approx(step_s * 1e3, rel=1e-9)
        assert r["images_per_s"] == pytest.approx(r["batch"] * r["seeds"] / step_s, rel=1e-9)
        recipe_steps = 240 * (512 // r["batch"])
        assert r["recipe_steps"] == recipe_steps
        assert r["projected_240_epochs_min"] == pytest.approx(recipe_steps * step_s / 60, rel=1e-9)
        assert r["projected_240_epochs_per_seed_min"] == pytest.approx(r["projected_240_epochs_min"] / r["seeds"])
        assert r["block_steps"] % r["steps_per_call"] == 0
        # a KD loss (0.9·T²·KL + 0.1·CE over 100 classes) of an untrained student: positive and finite
        assert 0 < r["mean_loss"] < 100
    by_name = {r["setting"]: r for r in rows}
    assert (by_name["batch32"]["batch"], by_name["bf16"]["dtype"], by_name["spc4"]["steps_per_call"],
            by_name["seeds4"]["seeds"]) == (32, "bfloat16", 4, 4)


def test_pytorch_rows_are_skipped_and_said_so_without_torch(smoke):
    lines, rows = smoke
    torch_rows = [r for r in rows if r["setting"] in TORCH_SETTINGS]
    if importlib.util.find_spec("torch") is None:
        assert "PyTorch rows skipped: torch is not installed" in lines
        assert all(r["skipped"] == "torch is not installed" for r in torch_rows)
    else:
        assert all("skipped" not in r and len(r["blocks_s"]) >= 3 for r in torch_rows)
