"""The claims ledger refuses a missing claim or a row from another build."""

import json

import pytest

import prenorm as P
from prenorm.ledger import CLAIMS, LedgerError, read, record, to_html


def _write_all(folder, build="b1", skip=()):
    for cid in CLAIMS:
        if cid not in skip:
            record(cid, P.VERDICTS[0], "x = 1.0", "sec", "ci", directory=folder)


def test_complete_ledger_from_this_build_reads_back_in_claim_order(tmp_path, monkeypatch):
    monkeypatch.setenv("PRENORM_BUILD", "b1")
    _write_all(tmp_path)
    table = read(tmp_path)
    assert list(table.id) == list(CLAIMS)
    assert set(table.build) == {"b1"}
    assert (table.chapter == [CLAIMS[c].chapter for c in CLAIMS]).all()


def test_missing_row_fails_and_names_the_claim(tmp_path, monkeypatch):
    monkeypatch.setenv("PRENORM_BUILD", "b1")
    _write_all(tmp_path, skip=("C12",))
    with pytest.raises(LedgerError, match="C12"):
        read(tmp_path)


def test_row_from_another_build_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("PRENORM_BUILD", "old")
    _write_all(tmp_path)
    monkeypatch.setenv("PRENORM_BUILD", "new")
    record("C3", P.VERDICTS[1], "r = 0.1", "sec", "ci", directory=tmp_path)
    with pytest.raises(LedgerError, match=r"C1 \(build 'old'\)"):
        read(tmp_path)
    assert len(read(tmp_path, claims=["C3"])) == 1  # the fresh row alone is fine


def test_default_build_is_the_parent_process(monkeypatch):
    import os

    monkeypatch.delenv("PRENORM_BUILD", raising=False)
    assert P.ledger.build_id() == f"ppid-{os.getppid()}"


def test_bad_input_names_the_valid_choices(tmp_path):
    with pytest.raises(ValueError, match="valid verdicts"):
        record("C1", "sort of", "x", "sec", "ci", directory=tmp_path)
    with pytest.raises(KeyError, match="C1"):
        record("C99", P.VERDICTS[0], "x", "sec", "ci", directory=tmp_path)
    with pytest.raises(ValueError, match="key number"):
        record("C1", P.VERDICTS[0], "  ", "sec", "ci", directory=tmp_path)


def test_html_table_links_each_row_to_its_section(tmp_path, monkeypatch):
    monkeypatch.setenv("PRENORM_BUILD", "b1")
    record("C5", P.VERDICTS[2], "ratio 0.98 < 1 & more", "c5-sec", "cpu", directory=tmp_path)
    row = json.loads((tmp_path / "C5.json").read_text())
    assert row["scale"] == "cpu"
    page = to_html(read(tmp_path, claims=["C5"]))
    assert '<a href="03_post_ln_gradients.html#c5-sec">ch. 3</a>' in page
    assert "0.98 &lt; 1 &amp; more" in page  # escaped


def test_every_claim_is_recorded_once_by_its_chapter_at_a_labelled_section():
    """Static check of the book's sources: each claim of CLAIMS has exactly one
    P.ledger.record call, or one P.ClaimTest("C..", section=...) whose .record is called,
    in the chapter CLAIMS names, whose section label exists there."""
    import re
    from pathlib import Path

    book = Path(__file__).resolve().parents[1] / "book"
    calls = {}
    for nb in sorted(book.glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        md = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        found = re.findall(
            r'P\.ledger\.record\(\s*"(C\d+(?:-T)?)",.*?section="([\w-]+)"', code, flags=re.S
        )
        # A ClaimTest names its section where it is made and writes the row with .record
        tests = re.findall(
            r'(\w+)\s*=\s*P\.ClaimTest\(\s*"(C\d+(?:-T)?)",\s*section="([\w-]+)"', code, flags=re.S
        )
        found += [(cid, sec) for var, cid, sec in tests if re.search(rf"\b{var}\.record\(", code)]
        for cid, section in found:
            calls.setdefault(cid, []).append(nb.stem)
            assert f"({section})=" in md, f"{nb.name}: {cid} links to a missing label {section!r}"
    for cid, claim in CLAIMS.items():
        assert calls.get(cid) == [claim.chapter], f"{cid} is recorded by {calls.get(cid)}"


def test_html_escapes_every_field_it_writes(monkeypatch):
    # The id, the section (in the link) and the verdict's class were written into the page
    # unescaped: a section such as x"><script> would have opened a tag. Fails if any field
    # reaches the page raw.
    import pandas as pd

    evil = '"><script>alert(1)</script>'
    ledger = pd.DataFrame(
        [
            {
                "id": "C1" + evil,
                "claim": "claim" + evil,
                "verdict": P.VERDICTS[0],
                "key": "key" + evil,
                "chapter": "05_warmup",
                "section": "sec" + evil,
            }
        ]
    )
    page = to_html(ledger)
    assert "<script>" not in page and evil not in page
    assert page.count("<a ") == 1 and page.count("<tr>") == 2
