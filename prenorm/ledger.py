"""The claims ledger: one row per claim of the post, written by the chapter that tests it.

Each chapter calls :func:`record` with the verdict it computed
(:func:`prenorm.verdict`), the key number behind it (formatted from the executed
cells) and the label of the section that measured it. :func:`record` writes one JSON
file per claim into the results directory, stamped with the current build
(:func:`build_id`). The landing page reads them back with :func:`read`, which refuses
a ledger with a missing claim or a row from another build, so the table on the
landing page can only show numbers that this build's chapters produced.

A *build* is a version of the package at a scale preset: its id is the preset's name and
a hash of the package's source (:func:`package_hash`). Rows from the same package and
preset are interchangeable, since every experiment is seeded; this is what lets the book
reuse a chapter's cached execution (``execute_notebooks: cache``, keyed on the same id by
``book/_ext/book_site.py``) while the landing page still refuses a row written by another
version of the package or at another preset.

The results directory is ``$PRENORM_RESULTS`` if set, else ``_results/<build id>`` next
to the executing notebook (the book's chapters run with ``book/`` as working directory,
both in the Jupyter Book build and under nbval), so that builds at different presets or
package versions never overwrite each other's rows.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import os
import re
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .registry import Registry
from .verdicts import VERDICTS

__all__ = [
    "CLAIMS",
    "Claim",
    "LedgerError",
    "build_id",
    "package_hash",
    "read",
    "record",
    "results_dir",
    "to_html",
    "verdict_text",
]


@dataclass(frozen=True)
class Claim:
    """One claim of the post: its id (``C1`` ...), the claim in one line, and the
    chapter (notebook name without extension) that tests it."""

    id: str
    claim: str
    chapter: str


def _claims(*rows: tuple[str, str, str]) -> dict[str, Claim]:
    return {cid: Claim(cid, text, chapter) for cid, text, chapter in rows}


#: The post's claims, in the order the book tests them.
CLAIMS: Registry[Claim] = Registry(
    "claim",
    _claims(
        ("C1", "Placement decides whether a deep stack trains from random init", "05_warmup"),
        (
            "C2",
            "Post-LN has no identity path: every gradient crosses a LayerNorm",
            "03_post_ln_gradients",
        ),
        ("C3", "At init each sublayer is close to a zero map", "03_post_ln_gradients"),
        ("C4", "The LayerNorm Jacobian is dominated by its 1/σ scaling", "02_layernorm_jacobian"),
        (
            "C5",
            "At init, Post-LN gradients to early layers shrink, compounding with depth",
            "03_post_ln_gradients",
        ),
        ("C6", "Post-LN needs warmup: without it training stalls or diverges", "05_warmup"),
        ("C7", "The Pre-LN step Jacobian is I + J_F", "04_pre_ln_highway"),
        ("C8", "Pre-LN layers receive the gradient undiminished at any depth", "04_pre_ln_highway"),
        ("C9", "With Pre-LN, warmup is optional", "05_warmup"),
        ("C10", "The record: early models were Post-LN, later ones Pre-LN", "06_history"),
        ("C11", "LayerNorm costs two passes, and its bias is barely used", "07_rmsnorm"),
        ("C12", "RMSNorm is about 15% faster than LayerNorm", "07_rmsnorm"),
        ("C13", "RMSNorm loses no measurable quality", "07_rmsnorm"),
        ("C14", "Tuned Adam beats default Adam by more than people expect", "08_coda"),
        (
            "C15",
            "Peri-LN (a norm on each sublayer's output too) stops the residual growth of Pre-LN",
            "09_after_pre_ln",
        ),
        (
            "C16",
            "OLMo 2's reordered norm is less sensitive to the learning rate than Pre-LN",
            "09_after_pre_ln",
        ),
        ("C17", "In a Pre-LN stack the deeper layers contribute little", "09_after_pre_ln"),
        (
            "C18",
            "LayerNorm Scaling and Mix-LN make the deeper layers contribute more",
            "09_after_pre_ln",
        ),
        ("C19", "ReZero, with no norm at all, converges faster than Pre-LN", "10_without_a_norm"),
        ("C20", "DyT matches LayerNorm, mostly without tuning", "10_without_a_norm"),
        (
            "C21",
            "QK-norm stops attention logits from growing at high learning rates",
            "10_without_a_norm",
        ),
        # Part 4 revisits earlier claims inside two trained checkpoints: "-T" marks the
        # claim tested again in a trained model (C4-T revisits C4, and so on).
        (
            "C4-T",
            "In a trained Post-LN model, the LayerNorm Jacobian is dominated by its 1/σ scaling",
            "11_trained_models",
        ),
        (
            "C5-T",
            "In a trained Post-LN model, gradients to early layers are smaller than at the top",
            "11_trained_models",
        ),
        (
            "C8-T",
            "In a trained Pre-LN model, the gradient reaches the first layer undiminished",
            "11_trained_models",
        ),
        ("C11-T", "In a trained model, LayerNorm's bias β is barely used", "11_trained_models"),
        (
            "C13-T",
            "In a trained model, LayerNorm's mean subtraction does little (RMSNorm is enough)",
            "11_trained_models",
        ),
        (
            "C17-T",
            "In a trained Pre-LN model, the deeper layers contribute little",
            "11_trained_models",
        ),
    ),
)


class LedgerError(ValueError):
    """The ledger is incomplete or holds a row that this build did not produce."""


def results_dir(base: Path | str | None = None) -> Path:
    """Where ledger rows are written and read: ``$PRENORM_RESULTS`` if set, else
    ``<base>/_results/<build id>`` (``base`` defaults to the working directory; the
    build id is :func:`build_id` at the active preset)."""
    env = os.environ.get("PRENORM_RESULTS")
    if env:
        return Path(env)
    folder = Path(base) if base is not None else Path.cwd()
    return folder / "_results" / build_id()


_SOURCE_SUFFIXES = (".py", ".toml")


@functools.cache
def _hash_tree(root: Path, torch_version: str) -> str:
    h = hashlib.sha256(torch_version.encode() + b"\0")
    files = [
        p
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in _SOURCE_SUFFIXES and "__pycache__" not in p.parts
    ]
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def package_hash(root: Path | str | None = None) -> str:
    """The first 12 hex digits of a SHA-256 over the package's source: every ``.py`` and
    ``.toml`` file under ``root`` (default: this installed ``prenorm``), path and bytes,
    in sorted order, and the torch version. Any edit to the package changes it.
    Computed once per process and folder."""
    import torch

    folder = Path(root) if root is not None else Path(__file__).resolve().parent
    if not folder.is_dir():
        raise ValueError(f"package_hash: root {str(folder)!r} is not a directory")
    return _hash_tree(folder.resolve(), torch.__version__)


def build_id(preset: str | None = None) -> str:
    """The current build: ``$PRENORM_BUILD`` if set, else ``<preset>-<package hash>``
    with ``preset`` (default: the active one, :func:`~prenorm.scale`) and
    :func:`package_hash`. Two executions of a chapter with the same id compute the same
    rows (every experiment is seeded), so either's rows may stand in the ledger; a row
    from another preset or another version of the package may not."""
    env = os.environ.get("PRENORM_BUILD")
    if env:
        return env
    from .devices import scale

    return f"{scale(preset).name}-{package_hash()}"


def record(
    claim: str,
    verdict: str,
    key: str,
    section: str,
    scale: str,
    directory: Path | str | None = None,
    device: str | None = None,
    implementation: str | None = None,
    model: str | None = None,
    condition: str | None = None,
    post_hoc: str | None = None,
) -> dict[str, str]:
    """Write the ledger row of ``claim`` (a key of :data:`CLAIMS`): its ``verdict`` (one
    of :data:`~prenorm.VERDICTS`), the ``key`` number as text, the MyST label of the
    ``section`` that measured it and the ``scale`` preset it ran at; for a result that is
    a property of a device and an implementation rather than of scale, ``device`` and
    ``implementation`` too, and for a result measured in a trained checkpoint its
    ``model``, and for a result that holds only under one setting (an initialization) that
    ``condition``, all of which :func:`verdict_text` puts into the verdict shown;
    ``post_hoc`` (a reason, in words) marks a verdict whose prediction was revised after
    results of the same object had been seen, with nothing fresh to confirm it on.
    The row is stamped with :func:`build_id` at ``scale``, so a chapter run at another
    preset than the landing page's is refused there. Returns the row."""
    c = CLAIMS[claim]
    if verdict not in VERDICTS:
        raise ValueError(f"unknown verdict {verdict!r}; valid verdicts are {list(VERDICTS)}")
    if not key.strip():
        raise ValueError(f"claim {claim}: the key number must not be empty")
    row = {
        "id": c.id,
        "claim": c.claim,
        "verdict": verdict,
        "key": key,
        "chapter": c.chapter,
        "section": section,
        "scale": scale,
        "build": build_id(scale),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    named = {
        "device": device,
        "implementation": implementation,
        "model": model,
        "condition": condition,
        "post_hoc": post_hoc,
    }
    for name, value in named.items():
        if value is not None:
            if not (isinstance(value, str) and value.strip()):
                raise ValueError(f"claim {claim}: {name} must be a non-empty string, got {value!r}")
            row[name] = value
    folder = Path(directory) if directory is not None else results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{claim}.json.tmp"
    tmp.write_text(json.dumps(row, ensure_ascii=False, indent=1))
    tmp.replace(folder / f"{claim}.json")
    return row


def read(
    directory: Path | str | None = None,
    build: str | None = None,
    claims: list[str] | None = None,
) -> pd.DataFrame:
    """The ledger as a DataFrame, one row per claim in :data:`CLAIMS` order.

    Raises :class:`LedgerError` naming every claim whose row is missing, and every row
    whose build is not ``build`` (default: :func:`build_id` at the active preset: the
    same package source and preset). ``claims`` restricts the check to some claims
    (default: all)."""
    folder = Path(directory) if directory is not None else results_dir()
    build = build if build is not None else build_id()
    wanted = claims if claims is not None else list(CLAIMS)
    rows, missing, stale = [], [], []
    for cid in wanted:
        CLAIMS.check(cid)
        path = folder / f"{cid}.json"
        if not path.exists():
            missing.append(cid)
            continue
        row = json.loads(path.read_text())
        if row.get("build") != build:
            stale.append(f"{cid} (build {row.get('build')!r})")
        rows.append(row)
    problems = []
    if missing:
        problems.append(f"no row for {missing} in {folder}")
    if stale:
        problems.append(f"rows from another build than {build!r}: {stale}")
    if problems:
        raise LedgerError(
            "the claims ledger is not from this build: "
            + "; ".join(problems)
            + ". Execute every chapter with this package at this preset (make book, or"
            + " pytest --nbval-lax book/)."
        )
    return pd.DataFrame(rows)


def verdict_text(
    verdict: str,
    device: object = None,
    implementation: object = None,
    model: object = None,
    condition: object = None,
    post_hoc: object = None,
) -> str:
    """The verdict as shown to the reader: ``verdict`` itself, or, for a row that names the
    ``device`` and ``implementation`` its result depends on, the trained ``model`` it
    was measured in, or the ``condition`` it holds under (any may be missing: ``None``, NaN
    or empty), the verdict scoped to them: "at this scale" becomes "in {model}, on
    {device}, with {implementation}, under {condition}" (the parts named), and any other
    verdict gets the same words appended. A row with a ``post_hoc`` reason ends in
    "(post hoc)"."""
    parts = [
        f"{prefix}{v}"
        for prefix, v in (
            ("in ", model),
            ("on ", device),
            ("with ", implementation),
            ("under ", condition),
        )
        if isinstance(v, str) and v.strip()
    ]
    text = verdict
    if parts:
        scope = ", ".join(parts)
        if "at this scale" in verdict:
            text = verdict.replace("at this scale", scope)
        else:
            text = f"{verdict} {scope}"
    if isinstance(post_hoc, str) and post_hoc.strip():
        text += " (post hoc)"
    return text


def to_html(ledger: pd.DataFrame, suffix: str = ".html") -> str:
    """The ledger as an HTML table for the landing page: claim, verdict (scoped by
    :func:`verdict_text` where the row names a device and an implementation, or a model), key number and a
    link to the section (``{chapter}{suffix}#{section}``) that measured it."""
    esc = html.escape  # every field, text and attribute alike (quotes included)
    cells = []
    for r in ledger.itertuples():
        href = (
            urllib.parse.quote(f"{r.chapter}{suffix}", safe="/.")
            + "#"
            + urllib.parse.quote(str(r.section), safe="")
        )
        number = int(r.chapter[:2]) if str(r.chapter)[:2].isdigit() else r.chapter
        link = f'<a href="{esc(href)}">ch. {esc(str(number))}</a>'
        shown = verdict_text(
            str(r.verdict),
            getattr(r, "device", None),
            getattr(r, "implementation", None),
            getattr(r, "model", None),
            getattr(r, "condition", None),
            getattr(r, "post_hoc", None),
        )
        cls = "verdict-" + re.sub(r"[^a-z-]", "", str(r.verdict).split()[0].lower())
        cells.append(
            f"<tr><td>{esc(str(r.id))}</td><td>{esc(str(r.claim))}</td>"
            f'<td class="{esc(cls)}">{esc(shown)}</td>'
            f"<td>{esc(str(r.key))}</td><td>{link}</td></tr>"
        )
    head = "".join(f"<th>{h}</th>" for h in ("", "the post's claim", "verdict", "key number", ""))
    return (
        '<table class="table ledger"><thead><tr>'
        + head
        + "</tr></thead><tbody>"
        + "".join(cells)
        + "</tbody></table>"
    )
