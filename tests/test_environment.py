"""environment.yml (conda) must name the same dependencies as pyproject.toml (pip), and the
lower bounds there must be versions that work (tests/min_versions.txt, `make test-min`)."""

import json
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


# --- The lower bounds are the versions that work -------------------------------------
# `make test-min` proves the bounds by running the unit tests on the versions in
# tests/min_versions.txt (a download of several GB). The three tests below keep that proof
# honest without downloading anything.

MIN_VERSIONS = ROOT / "tests" / "min_versions.txt"
#: Test tools the min-version venv needs besides the runtime dependencies.
MIN_TEST_TOOLS = {"pytest", "pyyaml"}


def _release(version: str) -> tuple[int, ...]:
    """``"2.2"`` -> ``(2, 2)``, ``"2.0.0"`` -> ``(2,)``: trailing zeros dropped, so equal
    versions compare equal however they are spelled."""
    parts = [int(p) for p in re.match(r"^\d+(?:\.\d+)*", version).group(0).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def _lower_bounds() -> dict[str, str]:
    """The ``>=`` bound of each runtime dependency and test tool in pyproject.toml."""
    out = {}
    for name, spec in _pyproject().items():
        m = re.search(r">=([\w.]+)", spec)
        if m and (name in _runtime() or name in MIN_TEST_TOOLS):
            out[name] = m.group(1)
    return out


def _runtime() -> set[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {_split(r)[0] for r in data["project"]["dependencies"]}


def _min_pins() -> dict[str, str]:
    pins = {}
    for line in MIN_VERSIONS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, spec = _split(line)
            assert spec.startswith("==") and "," not in spec, f"not an == pin: {line!r}"
            pins[name] = spec[2:]
    return pins


def test_min_versions_pin_the_lower_bounds():
    # Fails when a lower bound in pyproject.toml is raised or lowered without the pin in
    # tests/min_versions.txt (or the other way round), when a runtime dependency has no pin
    # or lacks a >= bound, or when the file pins something that is neither.
    bounds = _lower_bounds()
    assert _runtime() <= set(bounds), (
        f"runtime dependencies without a >= bound: {_runtime() - set(bounds)}"
    )
    pins = _min_pins()
    assert set(pins) == _runtime() | MIN_TEST_TOOLS
    wrong = {n: (pins[n], bounds[n]) for n in pins if _release(pins[n]) != _release(bounds[n])}
    assert not wrong, f"pin != pyproject lower bound (pin, bound): {wrong}"


#: APIs the package or the book might use, each with the first release of its package that
#: has it and an example its pattern must match. Add a row when code starts to use an API
#: newer than some release the bounds still allow.
VERSION_GATED_APIS = [
    ("numpy", "2.0", r"\b(?:np|numpy)\.trapezoid\b", "np.trapezoid(y, x)"),
    ("pandas", "2.2", r"\binclude_groups\s*=", "g.apply(f, include_groups=False)"),
    ("torch", "2.4", r"\bnn\.RMSNorm\b|\bF\.rms_norm\b", "torch.nn.RMSNorm(d)"),
    ("torch", "2.3", r"\btorch\.amp\.GradScaler\b", 'torch.amp.GradScaler("cpu")'),
    # torch._dynamo.config: 2.6 added fail_on_cache_limit_hit, 2.7 renamed it
    # fail_on_recompile_limit_hit (the old name kept as an alias); names, not string
    # literals, since prenorm.benchmark looks the strings up with hasattr.
    (
        "torch",
        "2.7",
        r"\bfail_on_recompile_limit_hit\s*=|\.fail_on_recompile_limit_hit\b",
        "torch._dynamo.config.patch(fail_on_recompile_limit_hit=True)",
    ),
    (
        "torch",
        "2.6",
        r"\bfail_on_cache_limit_hit\s*=|\.fail_on_cache_limit_hit\b",
        "torch._dynamo.config.fail_on_cache_limit_hit = True",
    ),
]
#: Floors found by running the unit tests (`make test-min`, and the newest versions with one
#: package at its bound): below these a lower bound admits a release that cannot work.
KNOWN_FLOORS = {
    "numpy": ("2.0", "np.trapezoid"),
    "pandas": ("2.2.2", "2.2.0 and 2.2.1 require numpy<2"),
    "matplotlib": ("3.9", "3.8.x imports IPython's backend2gui, gone from current IPython"),
    "seaborn": ("0.13.2", "0.13.0 and 0.13.1 draw no lineplot lines with pandas 3"),
    "torch": ("2.4", "torch.nn.RMSNorm"),
}


def _sources() -> dict[str, str]:
    """The package's modules, by path, and the code cells of the book's notebooks, by path
    and cell number (markdown may mention an API without calling it)."""
    out = {str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / "prenorm").glob("*.py"))}
    for nb in sorted((ROOT / "book").glob("*.ipynb")):
        for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
            if cell["cell_type"] == "code":
                out[f"{nb.relative_to(ROOT)} cell {i}"] = "".join(cell["source"])
    return out


def test_no_api_newer_than_the_lower_bounds():
    # Fails when prenorm/*.py or a notebook's code uses an API of VERSION_GATED_APIS whose
    # first release is above that package's lower bound in pyproject.toml (raise the bound,
    # or use an API the bound has), or when a row's pattern misses its own example.
    bounds = _lower_bounds()
    sources = _sources()
    assert "prenorm/benchmark.py" in sources and any(k.startswith("book/07_") for k in sources)
    too_new = []
    for package, since, pattern, example in VERSION_GATED_APIS:
        assert re.search(pattern, example), f"{pattern!r} misses its example {example!r}"
        if _release(since) <= _release(bounds[package]):
            continue
        for path, text in sources.items():
            for m in re.finditer(pattern, text):
                line = text.count("\n", 0, m.start()) + 1
                too_new.append(f"{path}, line {line}: {m.group(0)!r} needs {package}>={since}")
    assert not too_new, f"declared bounds: {bounds}\n" + "\n".join(too_new)


def test_bounds_not_below_known_floors():
    # Fails when a lower bound in pyproject.toml is lowered below a release KNOWN_FLOORS says
    # does not work (pip could then install it, or could not install the lowest versions
    # together).
    bounds = _lower_bounds()
    low = {
        n: (bounds[n], floor, why)
        for n, (floor, why) in KNOWN_FLOORS.items()
        if _release(bounds[n]) < _release(floor)
    }
    assert not low, f"bound below the known floor (bound, floor, why): {low}"
