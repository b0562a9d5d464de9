"""The PDF edition (`make pdf`), read back as text.

conftest.py's ``built_pdf`` prints the session's `ci` book (the same executed notebooks
as the site, through the singlehtml build and book/_ext/print_pdf.py) into the site as
``prenorm.pdf``. Its text must hold every chapter's title with its number, a numbered
equation, the claims ledger with every claim and a computed verdict, and the
bibliography; its page count must be that of a book, not of one page or of a runaway
layout. tests/test_browser.py checks that the landing page's link to it resolves.
"""

import json
import re
import unicodedata
from pathlib import Path

import pytest

import prenorm as P

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))

pytestmark = pytest.mark.browser  # it prints with headless Chromium


def _title(nb: Path) -> str:
    first = "".join(json.loads(nb.read_text())["cells"][0]["source"])
    return first.splitlines()[0].lstrip("# ").strip()


def _flat(text: str) -> str:
    """Text with every run of whitespace (line and page breaks too) as one space, and a
    hyphenated word broken at the end of a line ("Mix-" / "LN") joined again; ligatures
    ("ﬀ") as their letters."""
    text = unicodedata.normalize("NFKC", text)
    return re.sub(r"-\s+", "-", re.sub(r"\s+", " ", text))


@pytest.fixture(scope="module")
def pdf_text(built_pdf):
    pypdf = pytest.importorskip("pypdf")  # the test extra
    path, _ = built_pdf
    reader = pypdf.PdfReader(path)
    pages = [p.extract_text() or "" for p in reader.pages]
    return pages, _flat(" ".join(pages))


def test_every_chapter_title_is_there_with_its_number(pdf_text):
    _, text = pdf_text
    assert CHAPTERS
    for n, nb in enumerate(CHAPTERS, start=1):
        title = _flat(_title(nb))
        assert f"Chapter {n} {title}" in text, f"chapter {n} ({title!r}) not found in the PDF"


def test_numbered_equations_are_typeset(pdf_text):
    pages, text = pdf_text
    # Every labelled equation of the chapters ("$$ ... $$ (label)") is numbered, (1) to (N)
    # through the book, the number on its own line beside MathJax's output; raw TeX left
    # behind would mean that printing did not wait for MathJax.
    sources = "".join(nb.read_text() for nb in CHAPTERS)
    labelled = len(re.findall(r"\$\$\s*\([\w-]+\)", sources))
    assert labelled >= 2
    lines = {line.strip() for page in pages for line in page.splitlines()}
    missing = [k for k in range(1, labelled + 1) if f"({k})" not in lines]
    assert not missing, f"equation numbers not found: {missing}"
    assert "\\frac" not in text and "$$" not in text


def test_the_ledger_and_bibliography_are_there(pdf_text):
    pages, text = pdf_text
    assert "The claims ledger" in text
    ledger_page = next(i for i, p in enumerate(pages) if "The claims ledger" in p)
    ledger = _flat(" ".join(pages[ledger_page : ledger_page + 4]))
    for cid, claim in P.ledger.CLAIMS.items():
        assert f"{cid} " in ledger and _flat(claim.claim)[:40] in ledger, cid
    assert any(v in ledger for v in P.VERDICTS)
    assert "Bibliography" in text and "Xiong" in text


def test_page_count_is_that_of_a_book(pdf_text, built_pdf):
    pages, _ = pdf_text
    path, seconds = built_pdf
    # each chapter is several pages of prose, figures and tables, and starts a new page
    assert 3 * len(CHAPTERS) <= len(pages) <= 600, len(pages)
    assert path.stat().st_size > 200_000
    print(f"PDF: {len(pages)} pages, {path.stat().st_size / 1e6:.1f} MB, {seconds:.0f} s")
