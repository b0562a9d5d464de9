"""The chapters' Colab bootstrap cell, derived from `_config.yml`'s repository, the one
place the repository is named; shared by tests/test_colab.py and the fix-up helper below.

    python tests/bootstrap_cell.py book/05_warmup.ipynb   # rewrite a chapter's bootstrap to match
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))

#: The start of every chapter's first code cell. The chapter's own imports follow it
#: (``import prenorm as P`` among them); ``{install}`` is the repository at its ref.
TEMPLATE = """\
# Bootstrap (Colab only): install prenorm at the ref this notebook was opened from; the
# constraints keep every package Colab ships (torch, numpy, ...) as it is.
import os
import sys

if "google.colab" in sys.modules:
    src = os.environ.get("PRENORM_BOOTSTRAP", "{install}")
    !{{sys.executable}} -m pip list --format=freeze | grep -v '^prenorm==' > /tmp/pins.txt
    %pip install --quiet --constraint /tmp/pins.txt {{src}}
"""


def repository() -> dict[str, str]:
    """``_config.yml``'s ``repository`` section (``url``, ``branch``, ``path_to_book``)."""
    return yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]


def install_url() -> str:
    """What the bootstrap installs on Colab: the repository at the launch links' branch."""
    repo = repository()
    return f"git+{repo['url'].rstrip('/')}@{repo['branch']}"


def bootstrap() -> str:
    """The bootstrap block every chapter's first code cell starts with."""
    return TEMPLATE.format(install=install_url())


def first_code_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if c.cell_type == "code")


def chapter_imports(source: str) -> list[str]:
    """The import lines of a first cell, outside the bootstrap (old-style or new)."""
    lines = source.splitlines()
    if source.startswith(bootstrap()):
        lines = source[len(bootstrap()) :].splitlines()
    return [
        l
        for l in lines
        if l.startswith(("import ", "from ")) and l not in ("import os", "import sys")
    ]


def fixed_cell(source: str) -> str:
    """``source`` with its bootstrap replaced by :func:`bootstrap`, keeping the chapter's
    imports (third-party first, then ``import prenorm as P``, as ruff's isort wants)."""
    imports = [l for l in chapter_imports(source) if "prenorm" not in l]
    return bootstrap() + "\n" + "\n".join([*imports, "", "import prenorm as P"])


def fix(path: Path) -> bool:
    """Rewrite ``path``'s first code cell with :func:`fixed_cell`; True if it changed."""
    nb = nbformat.read(path, as_version=4)
    cell = first_code_cell(nb)
    new = fixed_cell(cell.source)
    if new == cell.source:
        return False
    cell.source = new
    path.write_text(nbformat.writes(nb) + "\n")
    return True


if __name__ == "__main__":
    for arg in sys.argv[1:] or [str(p) for p in CHAPTERS]:
        print(arg, "rewritten" if fix(Path(arg)) else "already right")
