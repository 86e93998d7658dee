"""environment.yml (conda, for clusters) and pyproject.toml list the same pinned direct dependencies."""

import os
import tomllib

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _normalize(req: str) -> str:
    return req.strip().lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    with open(os.path.join(ROOT, "environment.yml")) as f:
        env = yaml.safe_load(f)
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert sorted(map(_normalize, pip)) == sorted(map(_normalize, project["dependencies"]))
    assert all("==" in r for r in project["dependencies"]), "direct dependencies are pinned"
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert python == "python=3.11" and project["requires-python"] == ">=3.11"
