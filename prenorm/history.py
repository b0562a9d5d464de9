r"""Where published models put the norm: the table of chapter 6, as data, and its checks.

The table is a data file shipped with the package, ``prenorm/history_models.toml``, one
entry per model with the bibliography keys of its sources. :func:`load_history` reads and
validates it into a DataFrame; :func:`norm_layout` lists where a built model has its norms;
:func:`check_history_builds` builds every row that the package can express and checks
that the model carries exactly the norms the row claims; :func:`record_flags` and
:func:`record_shares` count what the record says about the post's claim (C10); and
:func:`plot_timeline` draws the rows by year.

In the vocabulary of :data:`~prenorm.SLOTS`, a residual step with norms in the set
:math:`S \subseteq \{\text{in}, \text{out}, \text{after}\}` is Post-LN when
:math:`S = \{\text{after}\}`, Pre-LN when :math:`\text{in} \in S` and
:math:`\text{after} \notin S`, and has a skip path free of norms exactly when
:math:`\text{after} \notin S`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from .blocks import PLACEMENTS, SLOTS, SUBLAYERS
from .model import TransformerLM, build_model
from .norms import NORMS
from .registry import unknown

__all__ = [
    "HISTORY_FILE",
    "POST_LABELS",
    "check_history_builds",
    "load_history",
    "norm_layout",
    "placements_with_slots",
    "plot_timeline",
    "record_flags",
    "record_shares",
]

#: The name of the table's data file inside the package.
HISTORY_FILE = "history_models.toml"
#: The blog post's two labels, each as the set of slots it means.
POST_LABELS: dict[str, tuple[str, ...]] = {"Post-LN": ("after",), "Pre-LN": ("in",)}
#: The text of the ``prenorm`` column for a documented row the package cannot build.
NOT_IN_PRENORM = "not in prenorm (see part 3)"

_REQUIRED = ("model", "year", "placement", "norm", "parallel", "cite", "paper", "code", "rests_on")
_OPTIONAL = ("slots", "final_norm", "norm_key", "norm_bias", "config", "post_says")
#: Column order of :func:`load_history`'s frame (``model`` is the index).
_COLUMNS = (
    "year",
    "placement",
    "norm",
    "slots",
    "parallel",
    "final_norm",
    "norm_key",
    "norm_bias",
    "config",
    "post_says",
    "cite",
    "paper",
    "code",
    "rests_on",
)
_CONFIG_KEYS = ("placement", "norm", "bias")
_SHARES = ("early_post", "late_pre", "as_says", "late_in", "late_clean")


class _Bad(ValueError):
    pass


def _text(where: str, key: str, value: object) -> str:
    if not (isinstance(value, str) and value.strip()):
        raise _Bad(f"{where}: {key} must be a non-empty string, got {value!r}")
    return value


def _flag(where: str, key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"{where}: {key} must be true or false, got {value!r}")
    return value


def _choice(where: str, key: str, value: object, valid: Sequence[str], kind: str) -> str:
    if value not in valid:
        raise _Bad(f"{where}: {key}: {unknown(kind, value, valid)}")
    return value  # type: ignore[return-value]


def _slots(where: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _Bad(f"{where}: slots must be a non-empty list of {list(SLOTS)}, got {value!r}")
    for s in value:
        _choice(where, "slots", s, SLOTS, "norm slot")
    if len(set(value)) != len(value):
        raise _Bad(f"{where}: slots lists a slot twice: {value!r}")
    return tuple(s for s in SLOTS if s in value)  # in forward order


def _config(where: str, value: object) -> dict[str, object]:
    if not isinstance(value, dict):
        raise _Bad(f"{where}: config must be a table of {list(_CONFIG_KEYS)}, got {value!r}")
    for k in value:
        _choice(where, "config", k, _CONFIG_KEYS, "config key")
    missing = [k for k in _CONFIG_KEYS if k not in value]
    if missing:
        raise _Bad(f"{where}: config lacks {missing}; it needs all of {list(_CONFIG_KEYS)}")
    placement = _choice(
        where, "config.placement", value["placement"], list(PLACEMENTS), "placement"
    )
    norm = _choice(where, "config.norm", value["norm"], list(NORMS), "norm")
    return {
        "placement": placement,
        "norm": norm,
        "bias": _flag(where, "config.bias", value["bias"]),
    }


def _row(i: int, entry: object) -> dict[str, Any]:
    where = f"entry {i}"
    if not isinstance(entry, dict):
        raise _Bad(f"{where}: each [[model]] must be a table, got {entry!r}")
    if isinstance(entry.get("model"), str):
        where = f"entry {i} (model {entry['model']!r})"
    for k in entry:
        _choice(where, "field", k, _REQUIRED + _OPTIONAL, "field")
    missing = [k for k in _REQUIRED if k not in entry]
    if missing:
        raise _Bad(f"{where}: missing required fields {missing}")
    year = entry["year"]
    if isinstance(year, bool) or not isinstance(year, int) or not 1900 <= year <= 2100:
        raise _Bad(f"{where}: year must be an integer year, got {year!r}")
    cite = entry["cite"]
    if not isinstance(cite, list) or not cite:
        raise _Bad(f"{where}: cite must be a non-empty list of bibliography keys, got {cite!r}")
    row: dict[str, Any] = {
        "model": _text(where, "model", entry["model"]),
        "year": year,
        "placement": _text(where, "placement", entry["placement"]),
        "norm": _text(where, "norm", entry["norm"]),
        "slots": _slots(where, entry["slots"]) if "slots" in entry else None,
        "parallel": _flag(where, "parallel", entry["parallel"]),
        "final_norm": _flag(where, "final_norm", entry["final_norm"])
        if "final_norm" in entry
        else None,
        "norm_key": _choice(where, "norm_key", entry["norm_key"], list(NORMS), "norm")
        if "norm_key" in entry
        else None,
        "norm_bias": _flag(where, "norm_bias", entry["norm_bias"])
        if "norm_bias" in entry
        else None,
        "config": _config(where, entry["config"]) if "config" in entry else None,
        "post_says": _choice(where, "post_says", entry["post_says"], list(POST_LABELS), "label")
        if "post_says" in entry
        else None,
        "cite": tuple(_text(where, "cite", c) for c in cite),
        "paper": _text(where, "paper", entry["paper"]),
        "code": _text(where, "code", entry["code"]),
        "rests_on": _text(where, "rests_on", entry["rests_on"]),
    }
    if row["config"] is not None:
        absent = [k for k in ("slots", "norm_key", "norm_bias", "final_norm") if row[k] is None]
        if absent:
            raise _Bad(f"{where}: a row with a config must document {absent} too")
    return row


def _config_text(config: Mapping[str, object] | None, slots: tuple[str, ...] | None) -> str:
    if slots is None:
        return "nothing to configure"
    if config is None:
        return NOT_IN_PRENORM
    return ", ".join(f"{k}={v!r}" for k, v in config.items())


def load_history(path: str | Path | None = None) -> pd.DataFrame:
    """The table of models, one row per model, indexed by ``model``, in the file's order.

    ``path`` is a TOML file of ``[[model]]`` entries; the default is the one shipped with
    the package (:data:`HISTORY_FILE`, read with :mod:`importlib.resources`). Columns:

    - ``year`` (int): year of the arXiv identifier, or of publication;
    - ``placement``, ``norm`` (str): the block and its norm, in words;
    - ``slots`` (tuple of :data:`~prenorm.SLOTS`, in forward order, or ``None`` where no
      source documents it): where each residual step has a norm;
    - ``parallel`` (bool): attention and MLP side by side on one input;
    - ``final_norm``, ``norm_bias`` (bool or ``None`` where undocumented): a norm after the
      last block; an additive bias in the norm;
    - ``norm_key`` (a key of :data:`~prenorm.NORMS`, or ``None``);
    - ``config`` (dict of ``placement``, ``norm``, ``bias`` for
      :class:`~prenorm.TransformerLM`, or ``None`` where the package has no such block);
    - ``post_says`` (``"Post-LN"``, ``"Pre-LN"`` or ``None``): the blog post's label;
    - ``cite`` (tuple of bibliography keys), ``paper``, ``code``, ``rests_on`` (str): the
      row's sources and what it rests on;
    - ``prenorm`` (str): ``config`` as text, ``"not in prenorm (see part 3)"`` or
      ``"nothing to configure"``.

    Raises ``ValueError`` naming the entry, the field, the bad value and the valid choices
    for a malformed file (unknown field or slot, a placement or norm the package does not
    have, a missing field, a duplicate model, ...).
    """
    if path is None:
        source = resources.files(__package__).joinpath(HISTORY_FILE)
        name, text = f"prenorm/{HISTORY_FILE}", source.read_text(encoding="utf-8")
    else:
        name, text = str(path), Path(path).read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{name}: not valid TOML: {e}") from None
    extra = sorted(set(data) - {"model"})
    if extra or not isinstance(data.get("model"), list) or not data["model"]:
        raise ValueError(
            f"{name}: expected only [[model]] entries (at least one), got top-level keys "
            f"{sorted(data)}"
        )
    try:
        rows = [_row(i, e) for i, e in enumerate(data["model"])]
    except _Bad as e:
        raise ValueError(f"{name}: {e}") from None
    names = [r["model"] for r in rows]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{name}: models listed more than once: {dupes}")
    table = pd.DataFrame(rows).set_index("model")[list(_COLUMNS)]
    table["prenorm"] = [_config_text(c, s) for c, s in zip(table.config, table.slots, strict=True)]
    return table


def norm_layout(model: TransformerLM) -> pd.DataFrame:
    """Every norm of ``model``, one row each: ``layer`` (0-based; the final norm before
    the head has ``layer = n_layers``), ``sublayer`` (``"attn"``, ``"mlp"``, or
    ``"final"``), ``slot`` (one of :data:`~prenorm.SLOTS`; ``None`` for the final norm),
    ``norm`` (its key in :data:`~prenorm.NORMS`) and ``bias`` (whether it has an additive
    bias). A model without norms gives an empty frame with these columns."""
    kind = {cls: key for key, cls in NORMS.items()}

    def row(layer: int, which: str, slot: str | None, n: object) -> dict[str, object]:
        return {
            "layer": layer,
            "sublayer": which,
            "slot": slot,
            "norm": kind[type(n)],
            "bias": getattr(n, "bias", None) is not None,
        }

    rows = [
        row(l, which, slot, n)
        for l, block in enumerate(model.blocks)
        for which, slot, n in block.norms()
    ]
    if type(model.final_norm) in kind:
        rows.append(row(len(model.blocks), "final", None, model.final_norm))
    return pd.DataFrame(rows, columns=["layer", "sublayer", "slot", "norm", "bias"])


def placements_with_slots(slots: Sequence[str]) -> list[str]:
    """The names of the placements in :data:`~prenorm.PLACEMENTS` whose residual step has
    norms in exactly ``slots`` and an unscaled skip path (DeepNorm's scaled one excluded)."""
    wanted = set(slots)
    for s in wanted:
        if s not in SLOTS:
            raise unknown("norm slot", s, SLOTS)
    return [
        key
        for key, spec in PLACEMENTS.items()
        if not spec.scaled_residual and {s for s in SLOTS if spec.has(s)} == wanted
    ]


def check_history_builds(
    table: pd.DataFrame, n_layers: int = 2, seed: int = 0, **model_kwargs: object
) -> pd.DataFrame:
    """Build every row of ``table`` (:func:`load_history`'s frame) that has a ``config``,
    as an ``n_layers`` model with ``model_kwargs`` (``vocab_size``, ``d_model``,
    ``n_heads``, ``seq_len``), and check with :func:`norm_layout` that, in both sublayers
    of every block, the norms sit in exactly the row's ``slots``, are of the row's
    ``norm_key`` and have a bias exactly when ``norm_bias`` says, and that the model has a
    final norm exactly when ``final_norm`` says (of the row's norm type and bias, like the
    others). Also check that no documented row
    without a ``config`` has, unless its block is ``parallel``, the slots of a placement
    the package has (:func:`placements_with_slots`): "not in prenorm" must be true.

    Returns one row per built model: ``norms per block``, ``slots (each sublayer)``,
    ``norm`` (the class name) and ``final norm``. Raises ``ValueError`` naming the model
    and what disagrees.
    """
    built = {}
    for name, row in table[table.config.notna()].iterrows():
        model = build_model(seed=seed, n_layers=n_layers, **model_kwargs, **row.config)
        layout = norm_layout(model)
        steps = layout[layout.sublayer != "final"]
        for (layer, which), norms in steps.groupby(["layer", "sublayer"]):
            if tuple(norms.slot) != row.slots:
                raise ValueError(
                    f"{name}: layer {layer} {which} has norms in {tuple(norms.slot)}, "
                    f"the row says {row.slots}"
                )
        n_steps = steps.groupby(["layer", "sublayer"]).ngroups
        if n_steps != n_layers * len(SUBLAYERS):
            raise ValueError(f"{name}: only {n_steps} residual steps have norms, the row says all")
        if set(layout.norm) != {row.norm_key}:
            raise ValueError(
                f"{name}: norms {sorted(set(layout.norm))}, the row says {row.norm_key!r}"
            )
        if set(layout.bias) != {row.norm_bias}:
            raise ValueError(
                f"{name}: norm biases {sorted(set(layout.bias))}, the row says {row.norm_bias}"
            )
        has_final = bool((layout.sublayer == "final").any())
        if has_final != row.final_norm:
            raise ValueError(f"{name}: final norm {has_final}, the row says {row.final_norm}")
        built[name] = {
            "norms per block": len(model.blocks[0].norms()),
            "slots (each sublayer)": " + ".join(row.slots),
            "norm": type(model.blocks[0].norms()[0][2]).__name__,
            "final norm": has_final,
        }
    for name, row in table[table.config.isna() & table.slots.notna()].iterrows():
        same = placements_with_slots(row.slots)
        if same and not row.parallel:
            raise ValueError(
                f"{name} is marked not in prenorm, but placements {same} have its slots {row.slots}"
            )
    return pd.DataFrame(built).T


def record_flags(table: pd.DataFrame, pivot: str = "GPT-2") -> pd.DataFrame:
    r"""Boolean facts about each row of ``table`` (:func:`load_history`'s frame), indexed
    by model: ``documented`` (``slots`` known), ``in_post`` (the post labels it),
    ``norm_in`` and ``norm_after`` (a norm in that slot), ``post_ln``
    (slots :math:`= \{\text{after}\}`), ``pre_ln`` (``norm_in`` and not ``norm_after``),
    ``early`` and ``late`` (documented, with a year before, or not before, the year of the
    ``pivot`` model) and ``as_post_says`` (documented, labelled by the post, and its slots
    are those of the post's label, :data:`POST_LABELS`). Undocumented rows are ``False``
    throughout except ``in_post``."""
    if pivot not in table.index:
        raise unknown("pivot model", pivot, list(table.index))
    pivot_year = table.loc[pivot, "year"]
    documented = table.slots.notna()
    slots = table.slots.map(lambda s: s if isinstance(s, tuple) else ())
    label_slots = table.post_says.map(lambda p: POST_LABELS.get(p) if isinstance(p, str) else None)
    flags = pd.DataFrame(
        {
            "documented": documented,
            "in_post": table.post_says.notna(),
            "norm_in": slots.map(lambda s: "in" in s),
            "norm_after": slots.map(lambda s: "after" in s),
            "post_ln": slots.map(lambda s: s == ("after",)),
            "early": documented & (table.year < pivot_year),
            "late": documented & (table.year >= pivot_year),
            "as_post_says": documented
            & pd.Series([s == ls for s, ls in zip(slots, label_slots, strict=True)], table.index),
        },
        index=table.index,
    ).astype(bool)
    flags.insert(5, "pre_ln", flags.norm_in & ~flags.norm_after)
    return flags


def record_shares(table: pd.DataFrame, pivot: str = "GPT-2") -> pd.DataFrame:
    """The shares of C10, from :func:`record_flags`: one row per id, with ``n`` (rows in
    the group), ``k`` (rows of the group with the property), ``share`` (:math:`k/n`, NaN
    for an empty group) and ``without`` (the group's models lacking it, comma-separated).

    - ``early_post``: documented rows of the post's table before ``pivot``'s year, Post-LN;
    - ``late_pre``: documented rows of the post's table from that year on, Pre-LN;
    - ``as_says``: rows of the post's table, documented as the post labels them;
    - ``late_in``: all documented rows from that year on, a norm on the sublayer input;
    - ``late_clean``: the same rows, no norm after the addition (a norm-free skip path).
    """
    f = record_flags(table, pivot)
    groups = {
        "early_post": (f.early & f.in_post, f.post_ln),
        "late_pre": (f.late & f.in_post, f.pre_ln),
        "as_says": (f.in_post, f.as_post_says),
        "late_in": (f.late, f.norm_in),
        "late_clean": (f.late, ~f.norm_after),
    }
    rows = {}
    for key, (group, has) in groups.items():
        n, k = int(group.sum()), int((group & has).sum())
        rows[key] = {
            "n": n,
            "k": k,
            "share": k / n if n else float("nan"),
            "without": ", ".join(table.index[group & ~has]),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def plot_timeline(table: pd.DataFrame, pivot: str = "GPT-2", height: float = 3.6):
    """Draw the rows of ``table`` (:func:`load_history`'s frame) by year, one line per
    model in the table's order from the top: colour for the slots of the residual step,
    marker for the norm (circle LayerNorm, square RMSNorm, question mark undocumented), a
    note on parallel blocks, and a dashed line just before ``pivot``'s year. Returns the
    matplotlib figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    from .plotting import PLACEMENT_COLORS, TEXT_WIDTH

    slot_style = {
        ("after",): (PLACEMENT_COLORS["post"], "Post-LN: norm after the add"),
        ("in",): (PLACEMENT_COLORS["pre"], "Pre-LN: norm on the input"),
        ("in", "out"): (PLACEMENT_COLORS["peri"], "peri: input and output"),
        ("out",): ("#8c613c", "output only, before the add"),
        None: ("0.55", "not documented"),
    }
    norm_marker = {"layernorm": ("o", "LayerNorm"), "rmsnorm": ("s", "RMSNorm")}
    fig, ax = plt.subplots(figsize=(TEXT_WIDTH, height))
    ypos = np.arange(len(table))[::-1]
    for yi, (_, row) in zip(ypos, table.iterrows(), strict=True):
        colour, _ = slot_style[row.slots if isinstance(row.slots, tuple) else None]
        documented_norm = isinstance(row.norm_key, str)
        marker = norm_marker[row.norm_key][0] if documented_norm else "$?$"
        size = 90 if documented_norm else 160
        ax.scatter(
            row.year, yi, s=size, marker=marker, color=colour, edgecolor="0.15", lw=0.6, zorder=3
        )
        if row.parallel:
            ax.annotate(
                "parallel block",
                (row.year, yi),
                xytext=(8, -4),
                textcoords="offset points",
                fontsize=10,
            )
    ax.axvline(table.loc[pivot, "year"] - 0.5, color="0.4", ls="--", lw=1)
    ax.set_yticks(ypos, table.index)
    ax.set_xticks(range(table.year.min(), table.year.max() + 1))
    ax.set_xlim(table.year.min() - 0.6, table.year.max() + 0.6)
    ax.set_ylim(-0.7, len(table) - 0.3)
    ax.set_xlabel("year")
    ax.grid(axis="y", visible=False)
    present = {s if isinstance(s, tuple) else None for s in table.slots}
    placement_handles = [
        plt.Line2D([], [], ls="", marker="o", ms=8, color=slot_style[s][0], label=slot_style[s][1])
        for s in slot_style
        if s in present
    ]
    norm_handles = [
        plt.Line2D([], [], ls="", marker=m, ms=8, color="0.85", markeredgecolor="0.15", label=lab)
        for m, lab in norm_marker.values()
    ]
    boxed = {"fontsize": 10, "frameon": True, "framealpha": 1.0, "edgecolor": "0.8"}
    first = ax.legend(handles=placement_handles, loc="lower left", **boxed)
    ax.add_artist(first)
    ax.legend(handles=norm_handles, loc="upper right", **boxed)
    return fig
