import contextlib
import os

# Tests run single-threaded XLA on CPU so that parallel test workers and subprocesses do not oversubscribe.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import shutil

import pytest

# Tools outside pip that some tests need, with the command that installs each (README "Tests"). Where one is
# missing its tests skip, naming that command; EV3_REQUIRE_TOOLS=1 (set by .ci/run) makes them fail instead.
TOOLS = {"chromium": "apt-get install -y --no-install-recommends chromium"}


def _missing(reason: str):
    """Skip the calling test for ``reason`` (a missing tool or capability); fail with EV3_REQUIRE_TOOLS=1."""
    if os.environ.get("EV3_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{reason}; EV3_REQUIRE_TOOLS=1 requires it")
    pytest.skip(reason)


def require_tool(name: str) -> str:
    """The path of tool ``name``; skips the calling test when it is absent (fails with EV3_REQUIRE_TOOLS=1)."""
    path = shutil.which(name)
    if path is None:
        _missing(f"{name} not installed (install: {TOOLS[name]})")
    return path


@contextlib.contextmanager
def small_filesystem(directory, size: str = "3m"):
    """A real file system of ``size`` (tmpfs) mounted on ``directory`` while the context is open, for tests of a
    full disk. Needs root (``mount -t tmpfs``); otherwise the test skips naming why (fails with
    EV3_REQUIRE_TOOLS=1)."""
    import subprocess

    os.makedirs(directory, exist_ok=True)
    if os.geteuid() != 0:
        _missing(f"mounting a {size} tmpfs for a full disk needs root (running as uid {os.geteuid()})")
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        _missing(f"mount -t tmpfs -o size={size} failed: {(mount.stderr or mount.stdout).strip()}")
    try:
        yield str(directory)
    finally:
        subprocess.run(["umount", "--lazy", str(directory)], check=True)


def fill(directory) -> str:
    """Fill the file system of ``directory`` to its last byte with one file (returned); remove it to free space."""
    path = os.path.join(directory, "filler")
    block = b"\0" * (1 << 16)
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError:
            pass
        for size in (4096, 512, 1):  # the last partial blocks
            try:
                while True:
                    f.write(block[:size])
            except OSError:
                pass
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """Both embedded datasets prepared once per session (TFDS array_record, offline)."""
    from ev3.data import prepare

    root = tmp_path_factory.mktemp("data")
    for name in ("mnist1d", "digits"):
        prepare(name, str(root))
    return str(root)


@pytest.fixture(scope="module")
def mnist1d(data_dir):
    """The embedded mnist1d with the benchmark's split (seed 0, val 0.1, meta 0.1), loaded once per module."""
    from ev3.data import load

    return load("mnist1d", data_dir, seed=0, val=0.1, meta=0.1)


@contextlib.contextmanager
def persistent_compile_cache(directory: str):
    """JAX's persistent compilation cache in ``directory`` for every compile (no minimum time or size) while
    the context is open; the previous settings come back on exit. For modules whose runs compile the same
    programs again (the loop's counter still counts each compile)."""
    import jax
    from jax._src import compilation_cache

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    old = [getattr(jax.config, n) for n in names]
    for n, v in zip(names, (directory, 0.0, 0)):
        jax.config.update(n, v)
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        for n, v in zip(names, old):
            jax.config.update(n, v)
        compilation_cache.reset_cache()


@pytest.fixture
def smoke_config():
    """A fresh copy of config/smoke.yaml as a dict (tests edit it freely)."""
    import yaml

    with open(os.path.join(os.path.dirname(__file__), "..", "config", "smoke.yaml")) as f:
        return yaml.safe_load(f)


# Network guard: no test reaches the network. Installed here for the pytest process and, through PYTHONPATH
# (tests/guard/sitecustomize.py), in every Python subprocess the tests start: python -m ev3, snakemake, its jobs.
def _install_network_guard():
    import importlib.util
    import sys

    guard_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guard")
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if guard_dir not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([guard_dir, *paths])
    if "ev3_test_netguard" not in sys.modules:
        spec = importlib.util.spec_from_file_location("ev3_test_netguard", os.path.join(guard_dir, "ev3_test_netguard.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["ev3_test_netguard"] = module
        spec.loader.exec_module(module)
    sys.modules["ev3_test_netguard"].install()


_install_network_guard()
