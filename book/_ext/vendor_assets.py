"""Fetch the JavaScript the book's pages load, so that the site needs no CDN.

MathJax (which typesets the equations) and the Jupyter widget manager with RequireJS
(which renders the chapters' saved widgets) come from the npm registry, by name and
exact version, downloaded over HTTPS and checked against the registry's published
``sha512`` integrity hash (no Node.js needed); their files go to ``_vendor/``, which
``_config.yml`` makes a static path (``mathjax_path``, ``nb_ipywidgets_js``). The
versions are the ones Sphinx 7 and MyST-NB 1.x would otherwise load from a CDN.

    python book/_ext/vendor_assets.py    # run by `make book` / `make test` when missing
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The npm registry (``$NPM_CONFIG_REGISTRY`` overrides it, e.g. for a mirror).
REGISTRY = os.environ.get("NPM_CONFIG_REGISTRY", "https://registry.npmjs.org").rstrip("/")
VENDOR = ROOT / "_vendor"

#: npm package -> (folder under _vendor, files to keep: the package's path prefix, and
#: the suffixes to skip under it).
PACKAGES = {
    "mathjax@3.2.2": ("mathjax", "package/es5/"),
    "@jupyter-widgets/html-manager@1.0.6": ("html-manager", "package/dist/"),
    "requirejs@2.3.6": ("requirejs", "package/require.js"),
}
SKIP = (".map", ".d.ts")
# MathJax's other combined bundles (SVG output, MathML-only input, ...) are never loaded.
MATHJAX_BUNDLES = ("tex-mml-chtml.js", "latest.js", "startup.js", "core.js", "loader.js")


def _keep(folder: str, name: str, prefix: str) -> str | None:
    """The path under ``_vendor/folder`` for tar member ``name``, or None to skip it."""
    if not name.startswith(prefix) or name.endswith(SKIP):
        return None
    rel = name[len(prefix) :] or Path(name).name
    if folder == "mathjax" and "/" not in rel and rel.endswith(".js"):
        return rel if rel in MATHJAX_BUNDLES else None
    if folder == "html-manager" and rel in ("embed.js", "libembed-amd.js"):
        return None  # the AMD bundle (embed-amd.js) is the one MyST-NB's pages use
    return rel


def _fetch(spec: str) -> bytes:
    """The tarball of npm package ``spec`` (``name@version``), verified against the
    registry's integrity hash."""
    name, version = spec.rsplit("@", 1)
    with urllib.request.urlopen(f"{REGISTRY}/{name}/{version}", timeout=60) as r:
        dist = json.load(r)["dist"]
    with urllib.request.urlopen(dist["tarball"], timeout=120) as r:
        data = r.read()
    algo, _, digest = dist["integrity"].partition("-")
    if algo != "sha512" or base64.b64encode(hashlib.sha512(data).digest()).decode() != digest:
        raise RuntimeError(f"{spec}: the tarball does not match the registry's integrity hash")
    return data


def vendor(dest: Path = VENDOR) -> Path:
    """Fetch every package in :data:`PACKAGES` into ``dest`` (replaced whole)."""
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "_vendor"
        for spec, (folder, prefix) in PACKAGES.items():
            with tarfile.open(fileobj=io.BytesIO(_fetch(spec)), mode="r:gz") as tar:
                for member in tar.getmembers():
                    rel = _keep(folder, member.name, prefix)
                    if rel is None or not member.isfile():
                        continue
                    out = staged / folder / rel
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
        (staged / "VERSIONS").write_text("\n".join(PACKAGES) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        shutil.move(staged, dest)
    return dest


if __name__ == "__main__":
    print(f"vendored {', '.join(PACKAGES)} into {vendor()}")
