"""environment.yml (conda, for clusters) and pyproject.toml list the same pinned direct dependencies."""

import ast
import glob
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib

import pytest
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


# --- the README's test command is the contract ------------------------------------------------------------------


def readme_command(which: str) -> str:
    proc = subprocess.run([os.path.join(ROOT, ".ci", "readme-command"), which], capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def test_ci_runs_the_readme_test_command_as_written():
    command = readme_command("tests")
    assert re.fullmatch(r'python3\.11 -m venv \.venv && \. \.venv/bin/activate && pip install -e "\.\[[\w,]+\]" && python -m pytest .*', command), command
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    assert 'test_command=$(.ci/readme-command tests)' in ci and 'eval "$test_command"' in ci
    code = [line for line in ci.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in code if "pip install" in line], ".ci/run installs Python packages only through the README's pip line"
    assert "snakemake --cores" in readme_command("benchmark")


def _requirement_closure(requirements: list[str], extras: set[str]) -> set[str]:
    """Normalized names of ``requirements`` (for ``extras``) and, through installed metadata, what they require."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen, todo = set(), [(r, extras) for r in requirements]
    while todo:
        req, active = todo.pop()
        r = Requirement(req)
        if r.marker is not None and not any(r.marker.evaluate({"extra": e}) for e in (active or {""})):
            continue
        name = canonicalize_name(r.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            todo += [(sub, set(r.extras)) for sub in importlib.metadata.requires(r.name) or []]
        except importlib.metadata.PackageNotFoundError:
            pass
    return seen


def _imported_top_level_modules(folder: str) -> set[str]:
    names = set()
    for path in glob.glob(os.path.join(folder, "**", "*.py"), recursive=True):
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_the_readme_pip_line_installs_every_package_the_tests_use():
    """Every third-party module the tests import, and the Snakemake executor plugin that the SLURM profile
    names, comes with ``pip install -e ".[extras]"`` as the README's test command writes it."""
    from packaging.utils import canonicalize_name

    extras = set(re.search(r'pip install -e "\.\[([\w,]+)\]"', readme_command("tests")).group(1).split(","))
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    requirements = project["dependencies"] + [r for e in extras for r in project["optional-dependencies"][e]]
    installed = _requirement_closure(requirements, extras)

    local = {"ev3", "benchmarks", "conftest"} | {
        os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(ROOT, "tests", "**", "*.py"), recursive=True)
    }
    providers = importlib.metadata.packages_distributions()
    needed = {}
    for module in _imported_top_level_modules(os.path.join(ROOT, "tests")) - set(sys.stdlib_module_names) - local:
        assert module in providers, f"tests import {module!r}, which no installed distribution provides"
        needed[module] = {canonicalize_name(d) for d in providers[module]}
    with open(os.path.join(ROOT, "profiles", "slurm", "config.yaml")) as f:
        executor = yaml.safe_load(f)["executor"]
    needed[f"--executor {executor}"] = {f"snakemake-executor-plugin-{executor}"}
    missing = {m: sorted(d) for m, d in needed.items() if not d & installed}
    assert not missing, f"not installed by the README's pip line (extras {sorted(extras)}): {missing}"


def test_a_missing_tool_skips_naming_its_install_command_and_fails_when_tools_are_required(monkeypatch):
    from conftest import TOOLS, require_tool

    monkeypatch.setattr("conftest.shutil.which", lambda name: None)
    monkeypatch.delenv("EV3_REQUIRE_TOOLS", raising=False)
    with pytest.raises(pytest.skip.Exception, match=re.escape(TOOLS["chromium"])):
        require_tool("chromium")
    monkeypatch.setenv("EV3_REQUIRE_TOOLS", "1")
    with pytest.raises(pytest.fail.Exception, match="EV3_REQUIRE_TOOLS=1"):
        require_tool("chromium")
    monkeypatch.setattr("conftest.shutil.which", lambda name: f"/usr/bin/{name}")
    assert require_tool("chromium") == "/usr/bin/chromium"
