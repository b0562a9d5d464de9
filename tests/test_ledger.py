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


def test_default_build_is_the_preset_and_the_package_hash(monkeypatch):
    monkeypatch.delenv("PRENORM_BUILD", raising=False)
    monkeypatch.setenv("PRENORM_SCALE", "ci")
    assert P.ledger.build_id() == f"ci-{P.ledger.package_hash()}"
    assert P.ledger.build_id("cpu") == f"cpu-{P.ledger.package_hash()}"
    with pytest.raises(KeyError, match="nope"):
        P.ledger.build_id("nope")


def test_package_hash_changes_with_any_source_edit(tmp_path):
    # A copy of the package: the hash is of its source, so an edit to one file (even a
    # comment) or a new module changes it, and an identical copy hashes the same.
    import shutil
    from pathlib import Path

    src = Path(P.__file__).resolve().parent
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        shutil.copytree(src, d, ignore=shutil.ignore_patterns("__pycache__"))
    assert P.ledger.package_hash(a) == P.ledger.package_hash(b) == P.ledger.package_hash()
    (b / "__pycache__").mkdir(exist_ok=True)
    (b / "__pycache__" / "x.cpython.pyc").write_bytes(b"compiled")  # not source
    assert P.ledger.package_hash(b) == P.ledger.package_hash(a)
    with open(b / "norms.py", "a") as f:
        f.write("\n# an edit\n")
    P.ledger._hash_tree.cache_clear()
    assert P.ledger.package_hash(b) != P.ledger.package_hash(a)
    (a / "new_module.py").write_text("x = 1\n")
    P.ledger._hash_tree.cache_clear()
    assert P.ledger.package_hash(a) not in (P.ledger.package_hash(), P.ledger.package_hash(b))
    with pytest.raises(ValueError, match="not a directory"):
        P.ledger.package_hash(tmp_path / "missing")


def test_row_from_another_package_hash_or_preset_is_refused(tmp_path, monkeypatch):
    # The freshness key is (package hash, preset): rows of a cached chapter execution with
    # the same package and preset are accepted, any other is refused, naming the claim.
    monkeypatch.delenv("PRENORM_BUILD", raising=False)
    monkeypatch.setenv("PRENORM_SCALE", "ci")
    _write_all(tmp_path)
    assert len(read(tmp_path)) == len(CLAIMS)  # same package and preset: accepted
    # a row written at another preset
    record("C4", P.VERDICTS[0], "x = 2.0", "sec", "cpu", directory=tmp_path)
    with pytest.raises(LedgerError, match=r"C4 \(build 'cpu-"):
        read(tmp_path)
    record("C4", P.VERDICTS[0], "x = 1.0", "sec", "ci", directory=tmp_path)
    assert len(read(tmp_path)) == len(CLAIMS)
    # a row written by another version of the package
    monkeypatch.setattr(P.ledger, "package_hash", lambda root=None: "0123456789ab")
    record("C7", P.VERDICTS[0], "x = 1.0", "sec", "ci", directory=tmp_path)
    monkeypatch.undo()
    monkeypatch.setenv("PRENORM_SCALE", "ci")
    monkeypatch.delenv("PRENORM_BUILD", raising=False)
    with pytest.raises(LedgerError, match=r"C7 \(build 'ci-0123456789ab'\)"):
        read(tmp_path)
    # and the landing page at another preset refuses the whole ci ledger
    monkeypatch.setenv("PRENORM_SCALE", "cpu")
    with pytest.raises(LedgerError, match="C1"):
        read(tmp_path, claims=["C1"])


def test_default_results_dir_is_per_build(tmp_path, monkeypatch):
    # Rows of another preset or package version go to their own folder, so a ci run
    # (make test) cannot overwrite the rows a cached cpu chapter execution wrote.
    monkeypatch.delenv("PRENORM_RESULTS", raising=False)
    monkeypatch.delenv("PRENORM_BUILD", raising=False)
    monkeypatch.setenv("PRENORM_SCALE", "ci")
    ci = P.ledger.results_dir(tmp_path)
    monkeypatch.setenv("PRENORM_SCALE", "cpu")
    cpu = P.ledger.results_dir(tmp_path)
    assert ci == tmp_path / "_results" / f"ci-{P.ledger.package_hash()}"
    assert cpu.parent == ci.parent and cpu != ci
    monkeypatch.setenv("PRENORM_RESULTS", str(tmp_path / "elsewhere"))
    assert P.ledger.results_dir(tmp_path) == tmp_path / "elsewhere"


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


def test_a_verdict_scoped_to_a_device_and_an_implementation_says_so(tmp_path, monkeypatch):
    # fails if a device-bound result keeps reading "at this scale" on the landing page
    from prenorm.ledger import verdict_text

    assert verdict_text(P.VERDICTS[2]) == P.VERDICTS[2]
    scoped = verdict_text(P.VERDICTS[2], "cpu (1 thread)", "unfused F.rms_norm")
    assert scoped == "not reproduced on cpu (1 thread), with unfused F.rms_norm"
    assert verdict_text(P.VERDICTS[0], "cuda", float("nan")) == "confirmed on cuda"
    monkeypatch.setenv("PRENORM_BUILD", "b1")
    record("C12", P.VERDICTS[2], "t 1.2", "s", "cpu", tmp_path, "cpu", "unfused F.rms_norm")
    record("C13", P.VERDICTS[0], "d 0.0", "s", "cpu", tmp_path)  # no scope: no such fields
    assert "device" not in json.loads((tmp_path / "C13.json").read_text())
    page = to_html(read(tmp_path, claims=["C12", "C13"]))
    assert "not reproduced on cpu, with unfused F.rms_norm" in page
    assert ">confirmed<" in page and 'class="verdict-not"' in page
    with pytest.raises(ValueError, match="device"):
        record("C12", P.VERDICTS[2], "t", "s", "cpu", tmp_path, device=" ")


def test_a_verdict_measured_in_a_checkpoint_names_it_on_the_landing_page(tmp_path, monkeypatch):
    # fails if a -T row of a published checkpoint reads "not reproduced at this scale"
    from prenorm.ledger import verdict_text

    assert verdict_text(P.VERDICTS[2], model="SmolLM2") == "not reproduced in SmolLM2"
    assert verdict_text(P.VERDICTS[3], model="MiniLM") == "inconclusive in MiniLM"
    monkeypatch.setenv("PRENORM_BUILD", "b1")
    t = P.ClaimTest("C5-T", "s", {"a": P.Prediction("q", "<", 1.0)}).in_model("all-MiniLM")
    t.measure(a=2.0)
    assert t.verdict == P.VERDICTS[2]  # the word the counts use is unchanged
    assert t.verdict_text == "not reproduced in all-MiniLM"
    row = record("C5-T", t.verdict, "k", "s", "cpu", tmp_path, model=t.model)
    assert row["verdict"] == P.VERDICTS[2] and row["model"] == "all-MiniLM"
    record("C13", P.VERDICTS[0], "d 0.0", "s", "cpu", tmp_path)
    page = to_html(read(tmp_path, claims=["C5-T", "C13"]))
    assert "not reproduced in all-MiniLM<" in page and ">confirmed<" in page
    with pytest.raises(ValueError, match="model"):
        t.in_model(" ")
