"""Incremental rebuilds (book/_ext/book_site.py) never show a stale result.

The execution cache is keyed on the build (preset and package hash), the landing page is
re-read on every build, and a chapter whose ledger rows are gone is re-executed even
when jupyter-cache holds its outputs. These tests drive the extension's two hooks with a
stand-in Sphinx app and a real jupyter-cache, without building the book.
"""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

import prenorm as P

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import book_site  # noqa: E402

CHAPTER = "05_warmup"  # records C1, C6 and C9
CLAIMS = [c for c, claim in P.ledger.CLAIMS.items() if claim.chapter == CHAPTER]


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A source tree with one chapter (a one-cell notebook) and the landing page, its
    chapter's outputs in a jupyter-cache, and an app whose config is the book's."""
    from jupyter_cache import get_cache

    monkeypatch.delenv("PRENORM_RESULTS", raising=False)
    monkeypatch.delenv("PRENORM_BUILD", raising=False)
    monkeypatch.setenv("PRENORM_SCALE", "ci")
    book = tmp_path / "src" / "book"
    book.mkdir(parents=True)
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "id": "c1",
                "metadata": {},
                "source": "1",
                "outputs": [],
                "execution_count": None,
            }
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    for name in (CHAPTER, "intro"):
        (book / f"{name}.ipynb").write_text(json.dumps(nb))
    out = tmp_path / "_build" / "html"
    config = SimpleNamespace(nb_execution_cache_path="", prenorm_build="", root_doc="book/intro")
    app = SimpleNamespace(outdir=str(out), config=config)
    book_site.cache_per_build(app, config)
    cache_path = config.nb_execution_cache_path
    get_cache(cache_path).cache_notebook_file(book / f"{CHAPTER}.ipynb", check_validity=False)
    app.env = SimpleNamespace(mystnb_config=SimpleNamespace(execution_cache_path=cache_path))
    env = SimpleNamespace(
        found_docs={f"book/{CHAPTER}", "book/intro"},
        doc2path=lambda doc: str(tmp_path / "src" / f"{doc}.ipynb"),
    )
    return SimpleNamespace(app=app, env=env, book=book, cache=get_cache(cache_path))


def test_cache_folder_is_named_by_preset_and_package_hash(site, monkeypatch):
    build = f"ci-{P.ledger.package_hash()}"
    assert Path(site.app.config.nb_execution_cache_path).name == build
    assert site.app.config.prenorm_build == build
    # another preset: another folder, and a config value that changed (Sphinx re-reads all)
    monkeypatch.setenv("PRENORM_SCALE", "cpu")
    config = SimpleNamespace(nb_execution_cache_path="", prenorm_build="")
    book_site.cache_per_build(SimpleNamespace(outdir=site.app.outdir), config)
    assert Path(config.nb_execution_cache_path).name == f"cpu-{P.ledger.package_hash()}"
    assert config.prenorm_build != site.app.config.prenorm_build


def test_cached_chapter_with_its_rows_is_not_reexecuted(site):
    for cid in CLAIMS:
        P.ledger.record(
            cid, P.VERDICTS[0], "x", "sec", "ci", directory=P.ledger.results_dir(site.book)
        )
    extra = book_site.outdated_pages(site.app, site.env, set(), set(), set())
    assert extra == ["book/intro"]  # the landing page always; the chapter stays cached
    assert len(site.cache.list_cache_records()) == 1


def test_cache_hit_without_ledger_rows_reexecutes_the_chapter(site):
    # _results deleted (or never written for this build): the chapter's cached outputs
    # are dropped and it is re-read, so it runs again and writes its rows.
    extra = book_site.outdated_pages(site.app, site.env, set(), set(), set())
    assert extra == [f"book/{CHAPTER}", "book/intro"]
    assert site.cache.list_cache_records() == []


def test_rows_of_another_package_version_count_as_missing(site, monkeypatch):
    monkeypatch.setattr(P.ledger, "package_hash", lambda root=None: "0123456789ab")
    old = P.ledger.results_dir(site.book)
    for cid in CLAIMS:
        P.ledger.record(cid, P.VERDICTS[0], "x", "sec", "ci", directory=old)
    monkeypatch.undo()
    monkeypatch.setenv("PRENORM_SCALE", "ci")
    monkeypatch.delenv("PRENORM_BUILD", raising=False)
    extra = book_site.outdated_pages(site.app, site.env, set(), set(), set())
    assert f"book/{CHAPTER}" in extra and site.cache.list_cache_records() == []


def test_book_config_caches_and_the_landing_page_always_executes():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "cache"
    intro = json.loads((ROOT / "book" / "intro.ipynb").read_text())
    assert intro["metadata"]["mystnb"]["execution_mode"] == "force"
    assert "--all" not in (ROOT / "Makefile").read_text().split("\nbook:")[1].split("\n\n")[0]
