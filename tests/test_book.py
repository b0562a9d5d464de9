"""The book builds warning-free at the `ci` scale, and its notebooks are stored clean.

The chapters themselves are executed (and their asserts checked) by
`pytest --nbval-lax`, which collects book/*.ipynb; the site is built once per test
session by the `built_book` fixture in conftest.py (tests/test_browser.py opens it too).
"""

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))


def _toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part["chapters"]]
    return files


def test_every_chapter_is_in_the_toc():
    toc = set(_toc_files())
    assert CHAPTERS, "no chapters found"
    for nb in CHAPTERS:
        assert f"book/{nb.stem}" in toc, nb.name


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs(nb):
    cells = json.loads(nb.read_text())["cells"]
    dirty = [
        i
        for i, c in enumerate(cells)
        if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))
    ]
    assert not dirty, f"{nb.name}: cells {dirty} carry outputs; run nbstripout"


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.name)
def test_chapters_open_with_tests_box_and_close_with_measurements(nb):
    md = [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "markdown"]
    text = ["".join(c["source"]) for c in md]
    if text[-1].startswith("```{include} exercises/"):  # the exercises follow the measurements
        text = text[:-1]
    assert "What this chapter tests" in text[0]
    assert "What we measured" in text[-1]


def test_book_builds_warning_free(built_book):
    html, log = built_book
    assert (html / "index.html").exists()
    # book/_ext/book_site.py set the ci preset's per-cell timeout (fails if it did not run)
    assert "prenorm: 'ci' preset, cell timeout 120 s" in log
    assert not re.search(r"WARNING:", log), [l for l in log.splitlines() if "WARNING" in l][:10]


def test_every_toc_page_is_rendered_with_executed_numbers(built_book):
    html, _ = built_book
    for f in _toc_files():
        page = html / f"{f}.html"
        assert page.exists(), page
    for nb in CHAPTERS:
        page = (html / "book" / f"{nb.stem}.html").read_text()
        assert "Fig. " in page, f"{nb.stem}: no numbered figure"
        assert "<img" in page, f"{nb.stem}: no figure rendered"
        # glued numbers are substituted; a missing key would leave the role text behind
        assert "{glue" not in page and "glue:text" not in page


def test_bibliography_and_api_reference(built_book):
    html, _ = built_book
    bib = (html / "book" / "bibliography.html").read_text()
    for key in ("Xiong", "Vaswani", "Liu"):
        assert key in bib
    api = (html / "book" / "api.html").read_text()
    for name in ("layernorm_jacobian", "TransformerLM", "spectral_norm", "train", "scale"):
        assert name in api
