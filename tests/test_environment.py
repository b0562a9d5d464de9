"""environment.yml (conda) must name the same dependencies as pyproject.toml (pip)."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PYPI = {"pytorch": "torch", "ray-core": "ray"}
NOT_PACKAGES = {"python", "pip"}


def _split(req: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req)
    assert m, req
    name = m.group(1).lower().replace("_", "-")
    spec = ",".join(sorted(s.strip() for s in m.group(2).replace(" ", "").split(",") if s.strip()))
    return name, spec


def _pyproject() -> dict[str, str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = list(data["project"]["dependencies"])
    for extra in data["project"]["optional-dependencies"].values():
        reqs += extra
    return dict(_split(r) for r in reqs)


def _conda() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    out = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            continue  # the pip: section installs the package itself
        name, spec = _split(dep)
        if name not in NOT_PACKAGES:
            out[CONDA_TO_PYPI.get(name, name)] = spec
    return out


def test_environment_matches_pyproject():
    assert _conda() == _pyproject()


def test_environment_installs_the_package_without_deps():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip and "--no-deps" in pip


def test_python_bound_matches():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert f"python{data['project']['requires-python']}" in env["dependencies"]
