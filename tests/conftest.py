import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """Give nbval the preset's per-cell timeout (``prenorm.Scale.cell_timeout``) unless
    the command line sets one: a hung kernel fails its notebook in two minutes at ``ci``,
    not after nbval's default of 2000 s."""
    if not hasattr(config.option, "nbval_cell_timeout"):
        return  # nbval is not installed
    if any(a.startswith("--nbval-cell-timeout") for a in config.invocation_params.args):
        return
    import prenorm

    config.option.nbval_cell_timeout = prenorm.scale().cell_timeout


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def corpus():
    from prenorm import load_corpus

    return load_corpus()


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    """The book built once per session at the `ci` scale, warning-free: (html dir, log).
    tests/test_book.py checks its pages and tests/test_browser.py opens them."""
    exe = shutil.which(
        "jupyter-book",
        path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    assert exe, "jupyter-book is not installed (pip install -e '.[book]')"
    if not (ROOT / "_vendor" / "VERSIONS").exists():
        # MathJax and the widget manager, served locally (see _config.yml); from the npm registry.
        subprocess.run(
            [sys.executable, str(ROOT / "book" / "_ext" / "vendor_assets.py")], check=True
        )
    out = tmp_path_factory.mktemp("book")
    # Every Python process of the build, the notebook kernels included, runs with
    # tests/netguard/sitecustomize.py: it refuses and records any network connection
    # (tests/test_pretrained.py checks the record; the checkpoints come from disk).
    guard = str(ROOT / "tests" / "netguard")
    path = os.pathsep.join(p for p in (guard, os.environ.get("PYTHONPATH", "")) if p)
    env = {
        **os.environ,
        "PRENORM_SCALE": "ci",
        "PYTHONPATH": path,
        "PRENORM_NETGUARD_LOG": str(out / "network.log"),
    }
    proc = subprocess.run(
        [exe, "build", str(ROOT), "--path-output", str(out), "--warningiserror", "--keep-going"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    return out / "_build" / "html", log


@pytest.fixture(scope="session")
def built_pdf(built_book):
    """The PDF edition of the session's `ci` book, as `make pdf` makes it: the singlehtml
    build beside the site (same output folder, so the same execution cache: nothing is
    re-executed but the landing page), printed by book/_ext/print_pdf.py into the site as
    prenorm.pdf. Returns (pdf path, seconds the two steps took)."""
    import time

    html, _ = built_book
    out = html.parents[1]
    exe = shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) or "jupyter-book"
    env = {**os.environ, "PRENORM_SCALE": "ci"}
    t = time.monotonic()
    proc = subprocess.run(
        [exe, "build", str(ROOT), "--path-output", str(out), "--builder", "singlehtml"]
        + ["--warningiserror", "--keep-going"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    executed = re.findall(r"([\w.-]+\.ipynb): Executed notebook", log)
    assert executed == ["intro.ipynb"], (
        f"the singlehtml build executed {executed}, not only the landing page"
    )
    pdf = html / "prenorm.pdf"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "book" / "_ext" / "print_pdf.py"),
            str(out / "_build" / "singlehtml"),
            str(pdf),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return pdf, time.monotonic() - t


@pytest.fixture(scope="session")
def build_network_log(built_book):
    """What tests/netguard recorded during the ``built_book`` build: (the processes it
    was armed in, the connections it refused), each a list of lines."""
    html, _ = built_book
    log = html.parents[1] / "network.log"
    armed = Path(str(log) + ".armed")
    return [p.read_text().splitlines() if p.exists() else [] for p in (armed, log)]
