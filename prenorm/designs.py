r"""Comparing norm placements ("designs") trained on one harness: the analyses of chapter 9.

A *cell* is a design at a learning rate, trained under several seeds
(:func:`~prenorm.sweep`, pooled by :func:`~prenorm.mean_over_seeds`). The functions here
turn such a sweep's rows into the numbers the chapter compares:

- :func:`deep_shares`: from the layer-removal probe (:func:`~prenorm.layer_ablation`),
  how much of a model's loss increase comes from its deeper layers, and
  :func:`share_summary` per design;
- :func:`paired_medians`: every design against a baseline, paired by learning rate;
- :func:`paired_estimates`, :func:`interval_or_nan`: the same pairs seed by seed, with
  intervals; :func:`top_shared_lr`, :func:`growth_word`: the stream's comparison;
- :func:`share_source`: whether a rise of the deep share comes from the deep layers or the
  shallow ones;
- :func:`seed_values`: a per-seed summary (:func:`~prenorm.lr_summary` with
  ``by_seed=True``) as a design-by-seed table;
- :func:`lr_table`: each design's learning-rate curve summarised in one row;
- :func:`stream_rms`: the residual stream's RMS at one probe step, learning rate by design;
- :func:`with_diverged`: a learning rate by design table as text, a diverged cell as a word;

and three small helpers for the prose: :func:`joined` (numbers as one string),
:func:`~prenorm.compare` with its ``missing`` word for a design with no value, and
:func:`~prenorm.glue_all` (glue one value per design). :func:`plot_by_design`,
:func:`plot_stream_growth`, :func:`plot_stream_by_layer`, :func:`plot_layer_removal` and
:func:`plot_share_vs_lr` draw the chapter's figures (matplotlib is imported on first use).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .stats import t_interval
from .training import lr_summary
from .verdicts import Estimate, Prediction

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "confirmation_lrs",
    "ratio_estimate",
    "FLAT_FACTOR",
    "GROWTH_STANDARD",
    "growth_standard",
    "stops_predictions",
    "stream_rms_by_seed",
    "GROWTH_WORDS",
    "deep_shares",
    "growth_word",
    "interval_or_nan",
    "joined",
    "lr_table",
    "paired_estimates",
    "paired_medians",
    "plot_by_design",
    "plot_layer_removal",
    "plot_stream_by_layer",
    "plot_stream_growth",
    "plot_share_vs_lr",
    "seed_values",
    "share_source",
    "share_source_sentence",
    "share_summary",
    "stream_rms",
    "top_shared_lr",
    "with_diverged",
]


def _share(pos: pd.Series, part: pd.Series) -> float:
    total = float(pos.sum())
    return float(pos[part].sum() / total) if total > 0 else math.nan


def deep_shares(
    ablation: pd.DataFrame,
    by: Sequence[str],
    split: int,
    value: str = "loss_increase",
    layer: str = "layer",
) -> pd.DataFrame:
    r"""How much of each model's loss increase under layer removal comes from its deeper
    layers. ``ablation`` has one row per (cell, layer) with the loss increase
    :math:`\Delta_l` when layer :math:`l` is removed (:func:`~prenorm.layer_ablation`);
    ``by`` names the columns that identify a cell. With :math:`\Delta^+ = \max(\Delta, 0)`
    (a layer whose removal helps contributes nothing) and the deep layers
    :math:`l \ge s` (``split``, :math:`\lfloor L/2 \rfloor` for the deeper half), one row
    per cell, in sorted order, with

    - ``deep_share`` :math:`= \sum_{l \ge s} \Delta_l^+ / \sum_l \Delta_l^+`
      (0.5 for equal layers split in halves);
    - ``without_first``: the same share over the layers :math:`l \ge 1` only;
    - ``deep_increase`` :math:`= \sum_{l \ge s} \Delta_l^+` (nats);
    - ``first_share`` :math:`= \Delta_0^+ / \sum_l \Delta_l^+`, layer 0's part;
    - ``shallow_increase`` :math:`= \sum_{1 \le l < s} \Delta_l^+` (nats), the shallow
      layers' summed increase without layer 0.

    A share whose denominator is 0 (no layer's removal hurts) is NaN."""
    by = list(by)
    columns = [
        *by,
        "deep_share",
        "without_first",
        "deep_increase",
        "first_share",
        "shallow_increase",
    ]
    rows = []
    for key, g in ablation.groupby(by):
        pos = g[value].clip(lower=0)
        lay = g[layer]
        rows.append(
            {
                **dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True)),
                "deep_share": _share(pos, lay >= split),
                "without_first": _share(pos[lay > 0], lay[lay > 0] >= split),
                "deep_increase": float(pos[lay >= split].sum()),
                "first_share": _share(pos, lay == 0),
                "shallow_increase": float(pos[(lay > 0) & (lay < split)].sum()),
            }
        )
    return pd.DataFrame(rows, columns=columns)


def share_summary(
    shares: pd.DataFrame, by: str = "placement", order: Sequence[object] | None = None
) -> pd.DataFrame:
    """The rows of :func:`deep_shares` summarised per level of ``by`` (in ``order`` if
    given): the ``median``, ``min`` and ``max`` of ``deep_share``, the median of
    ``without_first`` and the number of ``cells``. A level without cells has NaN
    statistics and 0 cells."""
    per = shares.groupby(by)
    table = pd.DataFrame(
        {
            "median": per["deep_share"].median(),
            "min": per["deep_share"].min(),
            "max": per["deep_share"].max(),
            "without_first": per["without_first"].median(),
            "cells": per.size(),
        }
    )
    if order is not None:
        table = table.reindex(list(order))
    table["cells"] = table["cells"].fillna(0).astype(int)
    return table


def paired_medians(
    frame: pd.DataFrame,
    by: str,
    base: str,
    value: str,
    pair: Sequence[str] = ("lr",),
    levels: Sequence[object] | None = None,
) -> pd.DataFrame:
    r"""Every level :math:`d` of ``by`` against the level ``base``, paired: the median over
    the values of ``pair`` (learning rates, say) at which both have a ``value`` of the
    difference :math:`v_d - v_{\text{base}}`, and the number ``n`` of such pairs. One row
    per level other than ``base`` (those of ``levels`` if given, else those of ``frame``
    in order of appearance), indexed by ``by``; ``median`` is NaN where ``n`` is 0 (a
    level with no rows, say). ``frame`` has at most one row per (level, pair)."""
    pair = list(pair)
    ref = frame[frame[by] == base].set_index(pair)[value]
    if levels is None:
        levels = list(dict.fromkeys(frame[by]))
    rows = []
    for level in levels:
        if level == base:
            continue
        mine = frame[frame[by] == level].set_index(pair)[value]
        diff = (mine - ref).dropna()
        rows.append(
            {by: level, "median": float(diff.median()) if len(diff) else math.nan, "n": len(diff)}
        )
    return pd.DataFrame(rows, columns=[by, "median", "n"]).set_index(by)


def interval_or_nan(values: Sequence[float] | pd.Series, level: float = 0.95) -> Estimate:
    """The mean of the finite ``values`` with its Student-t interval
    (:func:`~prenorm.t_interval`), or an :class:`~prenorm.Estimate` of NaNs with ``n = 0``
    when there is none (no run trained): a prediction judged on it is then undecided
    rather than the chapter stopping."""
    v = pd.Series(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return Estimate(math.nan, math.nan, math.nan, n=0)
    return t_interval(v.to_numpy(), level)


def paired_estimates(
    frame: pd.DataFrame,
    by: str,
    base: str,
    values: Sequence[str],
    levels: Sequence[str],
    pair: Sequence[str] = ("lr", "seed"),
    level: float = 0.95,
) -> dict[tuple[str, str], Estimate]:
    r"""Every level :math:`d` of ``levels`` (other than ``base``) against ``base``, for each
    column of ``values``: the mean paired difference :math:`v_d - v_{\text{base}}` over the
    rows paired by ``pair`` (a seed at a learning rate) at which both have a finite value,
    with its Student-t interval at ``level`` (:func:`~prenorm.paired_difference`). Keyed by
    (value, level); a level with no complete pair gets an Estimate of NaNs with ``n = 0``."""
    out: dict[tuple[str, str], Estimate] = {}
    for v in values:
        wide = frame.pivot_table(index=list(pair), columns=by, values=v, aggfunc="first")
        for d in levels:
            if d == base:
                continue
            if d in wide.columns and base in wide.columns:
                out[v, d] = interval_or_nan((wide[d] - wide[base]).dropna(), level)
            else:
                out[v, d] = Estimate(math.nan, math.nan, math.nan, n=0)
    return out


def top_shared_lr(
    runs: pd.DataFrame, designs: Sequence[str], default: float, by: str = "placement"
) -> float:
    """The largest learning rate at which every design of ``designs`` trained (``runs``:
    one row per cell with ``lr`` and ``outcome``), or ``default`` when there is none."""
    ok = runs[(runs["outcome"] == "trained") & runs[by].isin(list(designs))]
    counts = ok.groupby("lr")[by].nunique()
    shared = counts[counts == len(set(designs))].index
    return float(max(shared)) if len(shared) else float(default)


#: The band within which a growth factor (final / initial) counts as flat: a factor of at
#: most ``FLAT_FACTOR`` is no growth, for the residual stream (C15) and the attention
#: logits (C21) alike.
FLAT_FACTOR = 2.0

#: The words of :func:`growth_standard`.
GROWTH_STANDARD = (
    "stops it",
    "limits it but does not stop it",
    "does not limit it",
    "undecided (the growth's interval over seeds reaches across the flat band)",
    "does not stop it; whether it limits it is undecided (the growth relative to the "
    "reference reaches across 1)",
)


def growth_standard(growth: Estimate, relative: Estimate, flat: float = FLAT_FACTOR) -> str:
    r"""What a design does to a growth, by one standard for every claim that says a design
    "stops" or "limits" one, from two intervals over seeds: ``growth``, the design's own
    growth factor (final over initial value), and ``relative``, that factor over the
    reference design's (paired by seed). *Stops it*: the whole interval of ``growth`` is
    at most ``flat`` (:data:`FLAT_FACTOR`, a growth within a factor of 2 counting as
    none). *Limits it but does not stop it*: the whole interval of ``growth`` is above
    ``flat`` and the whole interval of ``relative`` below 1. *Does not limit it*: the
    growth is above ``flat`` and the whole interval of ``relative`` at or above 1.
    *Does not stop it, limiting undecided*: the growth is above ``flat`` and the
    interval of ``relative`` contains 1. Anything else (the interval of ``growth``
    reaches across ``flat``) is *undecided* (:data:`GROWTH_STANDARD`)."""
    if not (isinstance(growth, Estimate) and isinstance(relative, Estimate)):
        raise TypeError(f"growth_standard takes two Estimates, got {growth!r}, {relative!r}")
    if not (isinstance(flat, int | float) and flat >= 1):
        raise ValueError(f"flat must be a number >= 1, got {flat!r}")
    if growth.hi <= flat:
        return GROWTH_STANDARD[0]
    if growth.lo > flat and relative.hi < 1:
        return GROWTH_STANDARD[1]
    if growth.lo > flat and relative.lo >= 1:
        return GROWTH_STANDARD[2]
    if growth.lo > flat:
        return GROWTH_STANDARD[4]
    return GROWTH_STANDARD[3]


def stops_predictions(
    growth: str,
    ratio: str,
    ratio_id: str = "ratio",
    ratio_threshold: float = 10.0,
    flat: float = FLAT_FACTOR,
) -> dict[str, Prediction]:
    r"""The predictions of a claim that a design *stops* a growth (C15, C21), with the
    claim's own word as the core. ``"growth"`` (core): the design's growth factor
    :math:`g` (final over initial value, an interval over seeds) has its whole interval at
    or below ``flat``, the "stops" of :func:`growth_standard`: it holds when
    :math:`g_{hi} \le` ``flat``, fails when :math:`g_{lo} >` ``flat`` (the growth lies
    wholly above the flat band) and is undecided otherwise. ``ratio_id`` (secondary, the
    weaker "limits" reading): the reference design's final value over this design's,
    ``ratio``, is at least ``ratio_threshold``; a large ratio to a growing reference
    alone cannot confirm "stops"."""
    for name, text in (("growth", growth), ("ratio", ratio)):
        if not (isinstance(text, str) and text.strip()):
            raise ValueError(f"{name} must be a non-empty description, got {text!r}")
    if not (isinstance(ratio_id, str) and ratio_id.isidentifier() and ratio_id != "growth"):
        raise ValueError(f"ratio_id must be an identifier other than 'growth', got {ratio_id!r}")
    if not (isinstance(ratio_threshold, int | float) and ratio_threshold > 0):
        raise ValueError(f"ratio_threshold must be a positive number, got {ratio_threshold!r}")
    if not (isinstance(flat, int | float) and flat >= 1):
        raise ValueError(f"flat must be a number >= 1, got {flat!r}")
    return {
        "growth": Prediction(f"{growth} (stops)", "<=", float(flat)),
        ratio_id: Prediction(f"{ratio} (limits)", ">=", float(ratio_threshold), core=False),
    }


def stream_rms_by_seed(
    probes: pd.DataFrame,
    step: int,
    lr_of: Mapping[str, float],
    by: str = "placement",
    seed: str = "seed",
) -> pd.DataFrame:
    r"""The RMS of the stream entering the head at probe ``step``
    (:func:`stream_rms`), seed by seed, each design ``d`` of ``lr_of`` read at its own
    learning rate ``lr_of[d]``: one row per seed, one column per design (NaN where that
    run was not probed at ``step``, e.g. it diverged earlier)."""
    if seed not in probes.columns:
        raise KeyError(f"no column {seed!r}; columns: {list(probes.columns)}")
    rows = {}
    for s, g in probes.groupby(seed):
        table = stream_rms(g, step, by)
        rows[s] = {
            d: float(table.at[lr, d]) if d in table.columns and lr in table.index else math.nan
            for d, lr in lr_of.items()
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(seed)


def ratio_estimate(numerator: pd.Series, denominator: pd.Series, level: float = 0.95) -> Estimate:
    r"""A ratio measured seed by seed (two series indexed by seed, paired by index): the
    geometric mean of :math:`r_i = a_i / b_i` with its Student-t interval computed on
    :math:`\log_{10} r_i` and carried back, over the seeds where both are finite and
    positive (a run that diverged has no value). One seed gives the interval
    :math:`(-\infty, \infty)`; none, an Estimate of NaNs with ``n = 0`` (a prediction
    judged on it is then undecided rather than the chapter stopping)."""
    r = (pd.Series(numerator, dtype=float) / pd.Series(denominator, dtype=float)).dropna()
    r = r[np.isfinite(r) & (r > 0)]
    if not len(r):
        return Estimate(math.nan, math.nan, math.nan, n=0)
    if len(r) == 1:
        return Estimate(float(r.iloc[0]), -math.inf, math.inf, n=1)
    e = t_interval(np.log10(r.to_numpy()), level)
    return Estimate(10**e.value, 10**e.lo, 10**e.hi, n=e.n, sd=e.sd, log10=True)


def confirmation_lrs(
    best_lr: Mapping[str, float],
    fallback: float,
    extra: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, list[float]]:
    """The learning rates at which each design's confirmation seeds are run: its best
    learning rate on the development seeds (``best_lr``; ``fallback`` for a design that
    trained nowhere, whose best is NaN), plus the rates in ``extra`` for that design,
    without repeats, sorted. Keys in the order of ``best_lr``."""
    extra = dict(extra or {})
    unknown = sorted(set(extra) - set(best_lr))
    if unknown:
        raise KeyError(f"extra names designs with no best learning rate: {unknown}")
    out = {}
    for d, lr in best_lr.items():
        first = float(lr) if lr is not None and math.isfinite(float(lr)) else float(fallback)
        out[d] = sorted({first, *map(float, extra.get(d, ()))})
    return out


#: How :func:`growth_word` reads a design's growth against a baseline's.
GROWTH_WORDS = ("stops it", "limits it but does not stop it", "does not limit it")


def growth_word(growth: float, baseline: float, stop: float = 2.0, missing: str = "") -> str:
    """What a design does to the stream's growth over training, from its growth factor
    (final / initial RMS) and the baseline's: ``"stops it"`` when it grows by at most
    ``stop``; ``"limits it but does not stop it"`` when it grows more than that but less
    than the baseline; ``"does not limit it"`` otherwise; ``missing`` when either is not a
    finite number."""
    if not (math.isfinite(growth) and math.isfinite(baseline)):
        return missing
    if growth <= stop:
        return GROWTH_WORDS[0]
    return GROWTH_WORDS[1] if growth < baseline else GROWTH_WORDS[2]


def share_source(deep: Estimate, shallow: Estimate) -> str:
    r"""Where a change of the deep share against a baseline comes from, in words, from the
    paired differences (design minus baseline, each with its interval) of the deep layers'
    summed loss increase (``deep``) and of the shallow layers' (``shallow``, layer 0 left
    out). Each difference whose interval lies wholly above 0 reads as those layers "doing
    more", wholly below 0 as "doing less"; the decided parts are joined with "and"
    (``"its deep layers doing more and its shallow layers doing less"``), and with neither
    decided (both intervals reach 0) the result is ``"undecided"``."""
    if not (isinstance(deep, Estimate) and isinstance(shallow, Estimate)):
        raise TypeError(f"share_source takes two Estimates, got {deep!r} and {shallow!r}")
    parts = []
    for name, e in (("deep", deep), ("shallow", shallow)):
        if e.lo > 0:
            parts.append(f"its {name} layers doing more")
        elif e.hi < 0:
            parts.append(f"its {name} layers doing less")
    return " and ".join(parts) if parts else "undecided"


def share_source_sentence(sources: Mapping[str, str]) -> str:
    """The sentence on where each design's change of deep share comes from, one clause
    per design, from ``sources``: design (a placement key) to :func:`share_source`'s word.
    An ``"undecided"`` source says that the intervals cannot tell."""
    from .plotting import PLACEMENT_LABELS

    for design, source in sources.items():
        if not (source == "undecided" or source.startswith("its ")):
            raise ValueError(
                f"source of {design!r} is {source!r}; valid: 'undecided' or a phrase of "
                "share_source ('its deep layers doing more', ...)"
            )
    return " ".join(
        f"{PLACEMENT_LABELS.get(d, d)}'s change of share comes from {s}."
        if s != "undecided"
        else f"Whether {PLACEMENT_LABELS.get(d, d)}'s change of share comes from its deep or "
        "its shallow layers, the intervals cannot tell."
        for d, s in sources.items()
    )


def seed_values(
    runs: pd.DataFrame,
    by: str,
    cap: float,
    value: str = "sensitivity",
    order: Sequence[object] | None = None,
) -> pd.DataFrame:
    """One column of :func:`~prenorm.lr_summary` computed seed by seed
    (``by_seed=True``), as a table: one row per level of ``by`` (in ``order`` if given),
    one column per seed (sorted). ``runs`` has one row per run, with a ``seed`` column."""
    table = lr_summary(runs, by, cap, by_seed=True).reset_index()
    wide = table.pivot(index=by, columns="seed", values=value)
    return wide.reindex(list(order)) if order is not None else wide


def joined(values: Sequence[float] | pd.Series | np.ndarray, spec: str = ".3f") -> str:
    """The numbers, each formatted with the format ``spec`` (``"+.3f"``: signed, three
    decimals), joined by ``", "``: ``joined([0.1, -0.02], "+.2f") == "+0.10, -0.02"``."""
    return ", ".join(format(float(v), spec) for v in values)


def lr_table(
    runs: pd.DataFrame,
    runs_by_seed: pd.DataFrame,
    by: str,
    cap: float,
    order: Sequence[object],
) -> pd.DataFrame:
    """Each design's learning-rate curve in one row, in ``order``: ``best_loss``,
    ``best_lr`` and ``sensitivity`` of :func:`~prenorm.lr_summary` over the pooled cells
    ``runs`` (one row per cell, with an ``outcome`` column from :func:`~prenorm.outcome`),
    ``trained`` (how many of its cells trained) and ``seed_sensitivity``, the
    sensitivity of each seed's own curve (``runs_by_seed``, one row per run), as text."""
    table = lr_summary(runs, by, cap).reindex(list(order))
    trained = runs[runs["outcome"] == "trained"].groupby(by).size()
    table["trained"] = trained.reindex(table.index).fillna(0).astype(int)
    per_seed = seed_values(runs_by_seed, by, cap, order=order)
    table["seed_sensitivity"] = [joined(per_seed.loc[d]) for d in table.index]
    return table


def stream_rms(
    probes: pd.DataFrame,
    step: int,
    by: str = "placement",
    layer: int | None = None,
) -> pd.DataFrame:
    r"""The RMS :math:`\|x_l\|/\sqrt d` of the residual stream at probe ``step``, from a
    sweep's :func:`~prenorm.residual_norms` rows: learning rate by level of ``by`` (both
    sorted). ``layer=None`` takes the stream entering the head (``layer == n_layers``);
    an integer, that layer's input. A cell not probed at ``step`` is missing."""
    res = probes[(probes["probe"] == "residual_norms") & (probes["step"] == step)]
    at = res["n_layers"] if layer is None else layer
    return res[res["layer"] == at].pivot(index="lr", columns=by, values="rms")


def plot_by_design(
    frame: pd.DataFrame,
    x: str,
    y: str,
    designs: Sequence[str],
    ax: Axes,
    markers: Mapping[str, str],
    labels: Mapping[str, str] | None = None,
    by: str = "placement",
) -> Axes:
    """One line of ``y`` against ``x`` per design, in the design's book colour
    (:data:`~prenorm.PLACEMENT_COLORS`) and marker; labelled with ``labels`` (for a
    legend) when given. A design with no rows draws an empty line (it keeps its legend
    entry)."""
    from .plotting import PLACEMENT_COLORS

    for d in designs:
        g = frame[frame[by] == d].sort_values(x)
        label = labels[d] if labels is not None else None
        ax.plot(g[x], g[y], color=PLACEMENT_COLORS[d], marker=markers[d], lw=1.6, ms=4, label=label)
    return ax


def plot_share_vs_lr(
    shares: pd.DataFrame,
    designs: Sequence[str],
    markers: Mapping[str, str],
    labels: Mapping[str, str],
    panels: Mapping[str, tuple[str, float]],
    by: str = "placement",
    height: float = 3.4,
) -> Figure:
    """One panel per entry of ``panels`` (column of ``shares`` -> (title, reference)):
    that column against the learning rate (log axis), one line per design through the
    mean over its seeds at each learning rate, in the design's colour and marker, each
    seed's own value a small point of the same colour; a dashed line at the reference
    (what equal layers would give). ``shares`` has one row per trained run
    (:func:`deep_shares` by design, ``lr`` and ``seed``); with none, the panels are
    empty. One legend below. Returns the figure."""
    import matplotlib.pyplot as plt

    from .plotting import PLACEMENT_COLORS, TEXT_WIDTH

    fig, axes = plt.subplots(
        1, len(panels), figsize=(TEXT_WIDTH, height), sharey=True, squeeze=False
    )
    axes = axes[0]
    for ax, (column, (title, ref)) in zip(axes, panels.items(), strict=True):
        mean = shares.groupby([by, "lr"], as_index=False)[column].mean()
        plot_by_design(mean, "lr", column, designs, ax, markers, labels, by=by)
        for d in designs:
            g = shares[shares[by] == d]
            ax.scatter(g["lr"], g[column], s=10, color=PLACEMENT_COLORS[d], alpha=0.6, lw=0)
        ax.axhline(ref, ls="--", color="0.5", lw=1)
        if len(shares):  # a log axis needs a value (at ci no run may have trained)
            ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_title(title, fontsize=11)
    axes[0].set_ylabel("deep share")
    return _legend_below(fig, axes[0])


def with_diverged(
    values: pd.DataFrame,
    runs: pd.DataFrame,
    by: str = "placement",
    index: str = "lr",
    word: str = "diverged",
    digits: int = 3,
) -> pd.DataFrame:
    """``values`` (one row per level of ``index``, one column per level of ``by``) as
    text rounded to ``digits``, where every cell whose run in ``runs`` (one row per cell,
    with a boolean ``diverged``) diverged reads ``word`` instead of a number: a diverged
    run has no final value to compare, only the last one before it blew up. A missing
    value reads ``"-"``."""
    if "diverged" not in runs.columns:
        raise KeyError(f"runs needs a 'diverged' column; columns: {list(runs.columns)}")
    flags = runs.pivot_table(index=index, columns=by, values="diverged", aggfunc="max")
    flags = flags.reindex(index=values.index, columns=values.columns).fillna(0).astype(bool)
    text = values.map(lambda v: "-" if pd.isna(v) else f"{float(v):.{digits}f}")
    return text.mask(flags, word)


def plot_stream_growth(
    stream: pd.DataFrame,
    designs: Sequence[str],
    lr: float,
    step: int,
    markers: Mapping[str, str],
    labels: Mapping[str, str],
    height: float = 3.4,
) -> Figure:
    """Two panels of the RMS of the residual stream entering the head (``stream``: the
    :func:`~prenorm.residual_norms` rows with ``layer == n_layers``, one per cell and
    step), one line per design: against the training step at the learning rate ``lr``
    (left) and against the learning rate at step ``step`` (right). Log axes; one legend
    below. Returns the figure."""
    import matplotlib.pyplot as plt

    from .plotting import TEXT_WIDTH

    fig, axes = plt.subplots(1, 2, figsize=(TEXT_WIDTH, height))
    plot_by_design(stream[stream["lr"] == lr], "step", "rms", designs, axes[0], markers, labels)
    plot_by_design(stream[stream["step"] == step], "lr", "rms", designs, axes[1], markers)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel(r"RMS of $x_L$")
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("learning rate")
    axes[1].set_ylabel(r"RMS of $x_L$ at the end")
    return _legend_below(fig, axes[0])


def _legend_below(fig: Figure, ax: Axes) -> Figure:
    """One legend for the whole figure, below its panels, from ``ax``'s entries."""
    fig.legend(
        *ax.get_legend_handles_labels(), ncol=6, fontsize=9, loc="lower center", frameon=False
    )
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def plot_stream_by_layer(
    stream: pd.DataFrame,
    designs: Sequence[str],
    lrs: Sequence[float],
    markers: Mapping[str, str],
    labels: Mapping[str, str],
    height: float = 3.3,
) -> Figure:
    """One panel per learning rate in ``lrs``: the RMS of the residual stream entering
    each layer (``stream``: :func:`~prenorm.residual_norms` rows at one step), one line per
    design, on a shared log axis; one legend below. Returns the figure."""
    import matplotlib.pyplot as plt

    from .plotting import TEXT_WIDTH

    fig, axes = plt.subplots(1, len(lrs), figsize=(TEXT_WIDTH, height), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, lr in zip(axes, lrs, strict=True):
        plot_by_design(stream[stream["lr"] == lr], "layer", "rms", designs, ax, markers, labels)
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_title(f"learning rate {lr:g}", fontsize=11)
    axes[0].set_ylabel(r"RMS of $x_l$")
    return _legend_below(fig, axes[0])


def plot_layer_removal(
    ablation: pd.DataFrame,
    designs: Sequence[str],
    split: int,
    markers: Mapping[str, str],
    labels: Mapping[str, str],
    by: str = "placement",
    height: float = 3.4,
) -> Figure:
    r"""The loss increase :math:`\Delta_l` when layer :math:`l` is removed, against
    :math:`l`, one line per design of ``designs`` that has rows in ``ablation``
    (:func:`~prenorm.layer_ablation` rows of one learning rate). Symmetric-log axis,
    linear inside the shaded band :math:`\pm 0.01` nats; a dotted line before layer
    ``split`` divides shallow from deep. Returns the figure."""
    import matplotlib.pyplot as plt

    from .plotting import TEXT_WIDTH

    fig, ax = plt.subplots(figsize=(TEXT_WIDTH, height))
    drawn = [d for d in designs if (ablation[by] == d).any()]
    plot_by_design(ablation, "layer", "loss_increase", drawn, ax, markers, labels, by=by)
    ax.axhspan(-0.01, 0.01, color="0.92", zorder=0)
    ax.axhline(0, color="0.4", lw=0.8)
    ax.axvline(split - 0.5, color="0.5", ls=":", lw=1.2)
    ax.set_yscale("symlog", linthresh=0.01)
    if len(ablation):
        ax.set_ylim(top=max(0.1, float(ablation["loss_increase"].max()) * 2))
    ax.set_xlabel("layer removed")
    ax.set_ylabel(r"loss increase $\Delta_l$ (nats)")
    ax.legend(ncol=3, fontsize=10, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    fig.tight_layout()
    return fig
