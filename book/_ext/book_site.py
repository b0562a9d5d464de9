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
"""

from __future__ import annotations

from typing import Any


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


def setup(app: Any) -> dict[str, object]:
    app.connect("config-inited", preset_timeout)
    app.connect("html-page-context", dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
