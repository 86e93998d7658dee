import os

# Tests run single-threaded XLA on CPU so that parallel test workers and subprocesses do not oversubscribe.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """Both embedded datasets prepared once per session (TFDS array_record, offline)."""
    from ev3.data import prepare

    root = tmp_path_factory.mktemp("data")
    for name in ("mnist1d", "digits"):
        prepare(name, str(root))
    return str(root)


@pytest.fixture
def smoke_config():
    """A fresh copy of config/smoke.yaml as a dict (tests edit it freely)."""
    import yaml

    with open(os.path.join(os.path.dirname(__file__), "..", "config", "smoke.yaml")) as f:
        return yaml.safe_load(f)
