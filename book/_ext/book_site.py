"""A local Sphinx extension for the book's site (listed in _config.yml's
``sphinx.local_extensions``): each page loads every script once.

sphinx-thebe 0.3 adds its inline configuration script (``const THEBE_JS_URL = ...``)
from an ``env-before-read-docs`` handler, and under Sphinx 7.4 it reaches every page
twice: once through the builder, with no file name, and once through the registry, with
an empty one (so does sphinx-togglebutton's). The second THEBE copy throws "Identifier
'THEBE_JS_URL' has already been declared" in the reader's console, which
tests/test_browser.py checks stays clean.

It also sets the per-cell execution timeout from the scale preset the build runs at
(``prenorm.Scale.cell_timeout``: seconds at ``ci``, minutes at ``cpu``), so that a hung
kernel fails the build quickly, naming the notebook and the cell, instead of waiting out
the half hour that ``_config.yml`` allows the slowest preset.

And it makes rebuilds incremental without ever showing a stale result. The build runs
with ``execute_notebooks: cache`` (jupyter-cache), which re-executes a notebook only when
its code cells change; a chapter's outputs also depend on the package and the preset, so
:func:`cache_per_build` puts the cache in a folder named by the build id,
``<preset>-<package hash>`` (:func:`prenorm.ledger.build_id`), and records that id as a
config value that makes Sphinx re-read every page when it changes. Editing a chapter's
prose re-renders that page from its cached outputs; editing its code re-executes it;
editing the package (or switching preset) re-executes everything. The landing page
(book/intro.ipynb, ``execution_mode: force`` in its metadata) is re-read and re-executed
on every build, since it reads the ledger rows the chapters wrote; :func:`outdated_pages`
also re-executes any chapter whose ledger rows are missing from this build's
``_results/<build id>/`` (deleted, say) even when its outputs are cached, so a cache hit
can never leave the landing page without a row.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

#: How many per-build cache folders to keep (the newest; the current one always).
KEEP_CACHES = 4


def dedupe_scripts(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    """Keep the first of scripts with the same source and attributes (inline body included)."""
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    seen: set[tuple] = set()
    kept = []
    for js in scripts:
        attributes = getattr(js, "attributes", {})
        # the same inline script arrives once as filename None and once as ""
        key = (str(getattr(js, "filename", js) or ""), tuple(sorted(attributes.items())))
        if key not in seen:
            seen.add(key)
            kept.append(js)
    context["script_files"] = kept


def preset_timeout(app: Any, config: Any) -> None:
    """Set MyST-NB's per-cell timeout to the preset's ``cell_timeout``."""
    import prenorm

    preset = prenorm.scale()
    config.nb_execution_timeout = preset.cell_timeout
    print(f"prenorm: {preset.name!r} preset, cell timeout {preset.cell_timeout} s")


def cache_per_build(app: Any, config: Any) -> None:
    """Key the execution cache on the build (preset and package hash), not on code alone:
    ``nb_execution_cache_path`` becomes ``<cache>/<build id>``, and ``prenorm_build`` (a
    config value whose change makes Sphinx re-read every page) the build id. Older build
    folders beyond the newest :data:`KEEP_CACHES` are removed."""
    import prenorm

    build = prenorm.ledger.build_id()
    base = Path(config.nb_execution_cache_path or Path(app.outdir).parent / ".jupyter_cache")
    base.mkdir(parents=True, exist_ok=True)
    config.nb_execution_cache_path = str(base / build)
    config.prenorm_build = build
    older = sorted(
        (d for d in base.iterdir() if d.is_dir() and d.name != build),
        key=lambda d: d.stat().st_mtime,
        reverse=True,
    )
    for d in older[KEEP_CACHES - 1 :]:
        shutil.rmtree(d, ignore_errors=True)
    print(f"prenorm: build {build}, execution cache {base / build}")


def _forget(cache_path: str, notebook: Path) -> int:
    """Remove ``notebook``'s records from the jupyter-cache at ``cache_path``."""
    from jupyter_cache import get_cache

    cache = get_cache(cache_path)
    gone = 0
    for rec in cache.list_cache_records():
        if Path(rec.uri).resolve() == notebook.resolve():
            cache.remove_cache(rec.pk)
            gone += 1
    return gone


def outdated_pages(app: Any, env: Any, added: set, changed: set, removed: set) -> list[str]:
    """Pages to re-read besides those Sphinx found changed: the landing page (the root
    document) always, and every chapter whose ledger rows for this build are missing or
    stale, after dropping its cached execution so that it runs again."""
    import prenorm

    extra = []
    by_chapter: dict[str, list[str]] = {}
    for cid, claim in prenorm.ledger.CLAIMS.items():
        by_chapter.setdefault(claim.chapter, []).append(cid)
    for docname in sorted(env.found_docs):
        claims = by_chapter.get(docname.rsplit("/", 1)[-1])
        if not claims:
            continue
        notebook = Path(env.doc2path(docname))
        try:  # the chapter executes with its own folder as working directory
            prenorm.ledger.read(prenorm.ledger.results_dir(notebook.parent), claims=claims)
        except prenorm.ledger.LedgerError as err:
            if _forget(app.env.mystnb_config.execution_cache_path, notebook):
                problem = str(err).split(". Execute")[0]
                print(f"prenorm: re-executing {docname}, cached but {problem}")
            extra.append(docname)
    if app.config.root_doc in env.found_docs:
        extra.append(app.config.root_doc)
    return [d for d in extra if d not in added and d not in changed]


def singlehtml_handlers(app: Any) -> None:
    """Give the ``singlehtml`` builder (``make pdf``) every node handler registered for
    ``html``. Sphinx looks a builder's handlers up by its name and falls back to its format
    only when no extension registered any under that name; sphinx-exercise registers its
    nodes for ``singlehtml`` too, which hides the ``html`` handlers of every other extension
    (myst-nb's hidden-cell node first) from that builder."""
    if app.builder.name != "singlehtml":
        return
    handlers = app.registry.translation_handlers
    single = handlers.setdefault("singlehtml", {})
    for node, pair in handlers.get("html", {}).items():
        single.setdefault(node, pair)


def setup(app: Any) -> dict[str, object]:
    app.add_config_value("prenorm_build", "", "env")
    app.connect("config-inited", preset_timeout)
    app.connect("config-inited", cache_per_build)
    app.connect("builder-inited", singlehtml_handlers)
    app.connect("env-get-outdated", outdated_pages)
    app.connect("html-page-context", dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
