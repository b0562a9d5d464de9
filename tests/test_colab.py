"""The Colab path: launch links, the bootstrap cell, and chapters run in a Colab-like
environment.

The repository is named once, in `_config.yml`. Every chapter's launch button (as built)
must open that repository's copy of the chapter's notebook, and every chapter's first
code cell must start with the bootstrap that installs prenorm from the same repository
at the same ref (tests/bootstrap_cell.py writes it from the config).

The Colab-like test (marked ``slow``; it runs in `make test`) creates a fresh virtual
environment holding only what Colab preinstalls and the book needs (torch, numpy,
pandas, matplotlib, seaborn, ipywidgets, ipykernel, at the versions of the environment
running the tests, so that pip takes them from its cache or local wheels), makes its
kernel look like Colab's (``google.colab`` imported at start-up), points the bootstrap at
a wheel of this working tree (``PRENORM_BOOTSTRAP``), executes chapters at the ``ci``
preset from an empty working directory, and checks that no package the environment had
was replaced. ``PRENORM_COLAB_CHAPTERS=all`` (or a comma list of chapter stems) picks
the chapters; by default 01 and 02 (training, and a saved widget). torch comes from the
source the Makefile used: ``TORCH_INDEX`` is passed to pip, as in `make test TORCH_INDEX=...`.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlparse

import nbformat
import pytest
import yaml
from bootstrap_cell import (
    CHAPTERS,
    ROOT,
    bootstrap,
    first_code_cell,
    fixed_cell,
    install_url,
    repository,
)

COLAB_PACKAGES = ("torch", "numpy", "pandas", "matplotlib", "seaborn", "ipywidgets", "ipykernel")
DEFAULT_CHAPTERS = ("01_where_the_norm_goes", "02_layernorm_jacobian")


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.name)
def test_bootstrap_cell_agrees_with_the_repository(nb):
    cell = first_code_cell(nbformat.read(nb, as_version=4))
    expected = fixed_cell(cell.source)
    assert cell.source.startswith(bootstrap()) and "\nimport prenorm as P" in cell.source, (
        f"{nb.name}: the first code cell must be the bootstrap for {install_url()} "
        f"(from _config.yml). Run `python tests/bootstrap_cell.py book/{nb.name}`, or make "
        f"the cell read:\n\n{expected}\n"
    )
    assert "hide-cell" in cell.metadata.get("tags", []), f"{nb.name}: tag the bootstrap hide-cell"


class _FakeIPython:
    def __init__(self):
        self.calls = []

    def system(self, cmd):
        self.calls.append(("!", cmd))

    def run_line_magic(self, name, line):
        self.calls.append((name, line))


def _run_bootstrap(monkeypatch, on_colab, source=None):
    from IPython.core.inputtransformer2 import TransformerManager

    code = TransformerManager().transform_cell(bootstrap())
    shell = _FakeIPython()
    if on_colab:
        monkeypatch.setitem(sys.modules, "google.colab", type(sys)("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    if source is None:
        monkeypatch.delenv("PRENORM_BOOTSTRAP", raising=False)
    else:
        monkeypatch.setenv("PRENORM_BOOTSTRAP", source)
    ns = {"get_ipython": lambda: shell}
    exec(compile(code, "bootstrap", "exec"), ns)
    return shell.calls, ns


def test_bootstrap_does_nothing_off_colab(monkeypatch):
    calls, _ = _run_bootstrap(monkeypatch, on_colab=False)
    assert calls == []
    calls, _ = _run_bootstrap(monkeypatch, on_colab=False, source="/some/wheel.whl")
    assert calls == []  # the variable redirects an install; it never starts one


def test_bootstrap_on_colab_pins_what_is_installed_and_installs_the_ref(monkeypatch):
    calls, ns = _run_bootstrap(monkeypatch, on_colab=True)
    (bang, freeze), (magic, line) = calls
    assert bang == "!" and "pip list --format=freeze" in freeze and "> /tmp/pins.txt" in freeze
    assert "'^prenorm=='" in freeze  # a prenorm of another version must not block the update
    assert magic == "pip" and line == "install --quiet --constraint /tmp/pins.txt {src}"
    assert ns["src"] == install_url() == "git+https://github.com/prenorm/prenorm@main"
    _, ns = _run_bootstrap(monkeypatch, on_colab=True, source="/tmp/prenorm.whl")
    assert ns["src"] == "/tmp/prenorm.whl"


def test_launch_links_open_each_chapter_notebook(built_book):
    html, _ = built_book
    repo = repository()
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    colab = config["launch_buttons"]["colab_url"].rstrip("/")
    org_repo = urlparse(repo["url"]).path.strip("/")
    assert install_url() == f"git+https://github.com/{org_repo}@{repo['branch']}"
    for nb in CHAPTERS:
        page = (html / "book" / f"{nb.stem}.html").read_text()
        links = set(re.findall(r'href="(https://colab\.research\.google\.com/[^"]*)"', page))
        rel = nb.relative_to(ROOT).as_posix()
        expected = f"{colab}/github/{org_repo}/blob/{repo['branch']}/{rel}"
        assert links == {expected}, f"{nb.name}: launch links {links}, expected {expected}"
        assert "/./" not in expected and (ROOT / rel).exists()


# ---- the Colab-like environment --------------------------------------------------------


def _pip(py: Path, *args: str) -> None:
    # From the interpreter's own folder: `python -m` puts the working directory on
    # sys.path, and this checkout's prenorm.egg-info would pass for an installed prenorm.
    proc = subprocess.run(
        [str(py), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=py.parent,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


_INVENTORY = textwrap.dedent(
    """
    import json, importlib.metadata as md
    out = {}
    for d in md.distributions():
        record = d.locate_file(d._path) / "RECORD"
        stamp = record.stat().st_mtime_ns if record.exists() else None
        out[d.metadata["Name"].lower().replace("_", "-")] = [d.version, stamp]
    print(json.dumps(out))
    """
)


def _inventory(py: Path) -> dict[str, list]:
    """Every installed distribution: name -> [version, mtime of its RECORD] (a reinstall,
    even of the same version, rewrites RECORD)."""
    proc = subprocess.run(
        [str(py), "-I", "-c", _INVENTORY], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout)


def _chapters() -> list[Path]:
    pick = os.environ.get("PRENORM_COLAB_CHAPTERS", ",".join(DEFAULT_CHAPTERS))
    if pick == "all":
        return CHAPTERS
    stems = [s.strip() for s in pick.split(",") if s.strip()]
    return [ROOT / "book" / f"{s}.ipynb" for s in stems]


def _wheel(tmp: Path) -> Path:
    """A wheel of this working tree's package (committed or not), as Colab would build it
    from the repository: pyproject.toml, README.md and prenorm/*.py."""
    src = tmp / "src"
    (src / "prenorm").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for f in (ROOT / "prenorm").glob("*.py"):
        shutil.copy(f, src / "prenorm" / f.name)
    out = tmp / "wheels"
    _pip(
        Path(sys.executable),
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(out),
        str(src),
    )
    (whl,) = out.glob("prenorm-*.whl")
    return whl


@pytest.mark.slow
def test_chapters_run_in_a_colab_like_environment(tmp_path_factory, monkeypatch):
    from nbclient import NotebookClient

    base = tmp_path_factory.mktemp("colab")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    pins = {name: f"{name}=={version(name)}" for name in COLAB_PACKAGES}
    _pip(py, "install", "-q", *shlex.split(os.environ.get("TORCH_INDEX", "")), pins["torch"])
    _pip(py, "install", "-q", *pins.values())
    before = _inventory(py)
    assert "prenorm" not in before and set(COLAB_PACKAGES) <= set(before)

    # Colab's kernel has google.colab imported before the first cell runs.
    startup = base / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-colab.py").write_text(
        'import sys, types\nsys.modules.setdefault("google.colab", types.ModuleType("google.colab"))\n'
    )
    spec = base / "jupyter" / "kernels" / "colab-like"
    spec.mkdir(parents=True)
    env = {
        "IPYTHONDIR": str(base / "ipython"),
        "PRENORM_BOOTSTRAP": str(_wheel(base)),
        "PRENORM_SCALE": "ci",
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(venv),
    }
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [str(py), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Colab-like",
                "language": "python",
                "env": env,
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(base / "jupyter"))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    content = base / "content"  # Colab's working directory: no checkout next to the notebook
    content.mkdir()

    for path in _chapters():
        nb = nbformat.read(path, as_version=4)
        nb.cells.append(
            nbformat.v4.new_code_cell(
                "import prenorm, torch, sys\nprint(sys.executable, prenorm.__file__, torch.__file__)"
            )
        )
        NotebookClient(
            nb,
            kernel_name="colab-like",
            timeout=900,
            resources={"metadata": {"path": str(content)}},
        ).execute()
        where = nb.cells[-1].outputs[0]["text"].split()
        assert where[0] == str(py), where
        # prenorm was installed into the environment by the bootstrap, not found in a checkout
        assert all(Path(p).is_relative_to(venv) for p in where[1:]), where

    after = _inventory(py)
    replaced = {n: (before[n], after.get(n)) for n in before if after.get(n) != before[n]}
    assert not replaced, f"the bootstrap replaced packages the environment had: {replaced}"
    added = set(after) - set(before)
    assert "prenorm" in added and added <= {"prenorm", "tqdm"}, added
    shutil.rmtree(venv, ignore_errors=True)  # 1.3 GB; kept only when the test fails
