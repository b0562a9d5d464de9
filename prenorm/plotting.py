"""The book's house style and helpers for its recurring figures.

Every placement keeps one colour across the whole book (:data:`PLACEMENT_COLORS`),
so Post-LN is always the same red and Pre-LN the same blue.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

#: One colour per placement, the same in every figure of the book.
PLACEMENT_COLORS: dict[str, str] = {
    "post": "#c44e52",
    "pre": "#4c72b0",
    "peri": "#55a868",
    "deepnorm": "#8172b3",
    "reorder": "#64b5cd",
    "mixln": "#dd8452",
    "lns": "#1f3b73",
    "rezero": "#7f7f7f",
}
#: One colour per norm.
NORM_COLORS: dict[str, str] = {"layernorm": "#4c72b0", "rmsnorm": "#dd8452", "dyt": "#55a868"}
#: One colour per initialization scheme.
INIT_COLORS: dict[str, str] = {
    "pytorch": "#937860",
    "gpt2": "#2a9d8f",
    "gpt2_scaled": "#9b2d86",
    "xavier": "#e9a03b",
    "xiong": "#da8bc3",
    "deepnorm": "#8172b3",
}
#: The printed name of each placement (``"post"`` is ``"Post-LN"``).
PLACEMENT_LABELS: dict[str, str] = {
    "post": "Post-LN",
    "pre": "Pre-LN",
    "peri": "Peri-LN",
    "deepnorm": "DeepNorm",
    "reorder": "Reorder",
    "mixln": "Mix-LN",
    "lns": "LN Scaling",
    "rezero": "ReZero",
}


#: Width of a figure that fills the book's text column, in inches. At the house dpi
#: a figure this wide is shown at about its natural size, so an 11-point label
#: renders close to the body text.
TEXT_WIDTH = 7.0


def set_style() -> None:
    """Apply the house style: seaborn's whitegrid theme, fonts sized so that a figure
    :data:`TEXT_WIDTH` inches wide renders its labels near the body text's size."""
    sns.set_theme(context="notebook", style="whitegrid", font_scale=1.0)
    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 150,
            "figure.figsize": (TEXT_WIDTH, 3.8),
            "font.size": 11,
            "axes.titlesize": 12,
            "axes.labelsize": 12,
            "xtick.labelsize": 11,
            "ytick.labelsize": 11,
            "legend.fontsize": 10.5,
            "legend.title_fontsize": 11,
            "legend.frameon": False,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "lines.linewidth": 1.8,
        }
    )


def palette(hue: str, levels: Sequence[object]) -> dict[object, str] | list[str]:
    """Colours for ``levels`` of a ``hue`` column: the fixed placement, norm or init colours
    where they apply, otherwise an ordered palette (for depths, seeds, ...) that stops
    short of viridis's pale yellow, so that every level stands out on white."""
    fixed = {"placement": PLACEMENT_COLORS, "norm": NORM_COLORS, "init": INIT_COLORS}.get(hue)
    if fixed is not None and all(lv in fixed for lv in levels):
        return {lv: fixed[lv] for lv in levels}
    cmap = plt.get_cmap("viridis")
    n = len(levels)
    return [cmap(v) for v in np.linspace(0.0, 0.8, n)] if n > 1 else [cmap(0.0)]


def label_placements(ax: Axes) -> None:
    """Replace placement keys (``"post"``) in a legend with their names (``"Post-LN"``)."""
    leg = ax.get_legend()
    if leg is None:
        return
    for text in leg.get_texts():
        text.set_text(PLACEMENT_LABELS.get(text.get_text(), text.get_text()))


def plot_per_layer(
    df: pd.DataFrame,
    y: str,
    ax: Axes | None = None,
    hue: str = "placement",
    style: str | None = None,
    x: str = "layer",
    logy: bool = False,
    ylabel: str | None = None,
    xlabel: str = "layer index $l$",
    title: str | None = None,
    spread: str = "sd",
) -> Axes:
    """A per-layer curve (mean over seeds), one line per ``hue`` level and optional
    ``style`` level. ``spread="sd"`` shades one standard deviation over seeds;
    ``spread="points"`` draws every observation instead (better for two or three seeds)."""
    if spread not in ("sd", "points"):
        raise ValueError(f"unknown spread {spread!r}; valid choices are 'sd', 'points'")
    ax = ax or plt.gca()
    levels = list(dict.fromkeys(df[hue]))
    colours = palette(hue, levels)
    sns.lineplot(
        data=df,
        x=x,
        y=y,
        hue=hue,
        style=style,
        palette=colours,
        errorbar="sd" if spread == "sd" else None,
        marker="o",
        markersize=4,
        ax=ax,
    )
    if spread == "points":
        sns.scatterplot(
            data=df, x=x, y=y, hue=hue, palette=colours, s=14, alpha=0.5, legend=False, ax=ax
        )
    if logy:
        _log_axis(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel or y)
    if title:
        ax.set_title(title)
    label_placements(ax)
    return ax


def depth_axis(ax: Axes, depths: Sequence[int], label: str = "depth $L$") -> Axes:
    """Log-scaled x axis for a quantity measured at several depths, with one plain
    tick label per measured depth and no minor ticks."""
    ax.set_xscale("log")
    ax.set_xticks(list(depths), [str(v) for v in depths])
    ax.minorticks_off()
    ax.set_xlabel(label)
    return ax


def one_legend(axes: Sequence[Axes] | np.ndarray, keep: int = 0, **kwargs: object) -> None:
    """One legend per figure: keep the legend of ``axes[keep]`` (re-drawn with
    ``kwargs``, e.g. ``title=``) and remove the others."""
    flat = list(np.ravel(axes))
    for i, ax in enumerate(flat):
        leg = ax.get_legend()
        if leg is None:
            continue
        if i != keep:
            leg.remove()
        elif kwargs:
            handles, labels = ax.get_legend_handles_labels()
            ax.legend(handles, labels, **kwargs)
            label_placements(ax)


def _log_axis(ax: Axes) -> None:
    """Log y axis. Where the data span less than two decades the ticks are labelled as
    plain numbers: evenly spaced under one decade, at 1, 2 and 5 times each power of ten
    up to two (matplotlib would otherwise print one lonely label, or labels like 6x10^0)."""
    from matplotlib import ticker

    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    if hi / lo < 100:
        locator = ticker.MaxNLocator(5) if hi / lo < 10 else ticker.LogLocator(subs=(1.0, 2.0, 5.0))
        ax.yaxis.set_major_locator(locator)
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_locator(ticker.NullLocator())


def plot_loss_curves(
    history: pd.DataFrame,
    ax: Axes | None = None,
    hue: str = "placement",
    style: str | None = None,
    y: str = "train_loss",
    smooth: int = 10,
    ylabel: str = "training loss (nats/char)",
    title: str | None = None,
) -> Axes:
    """Loss against step, smoothed by a running mean of ``smooth`` steps per run;
    a diverged run ends in a cross at the step where it was stopped.

    Each run is drawn as its own line, never averaged with another: a run is a stretch of
    rows whose steps increase and whose configuration columns (every column that is not
    one of :data:`~prenorm.training.HISTORY_COLUMNS`: placement, seed, optimizer, clip,
    ``qk_norm``, ``alpha0``, betas, ...) do not change, as :func:`~prenorm.sweep` with
    ``history=True`` and ``pd.concat`` of several histories lay them out."""
    ax = ax or plt.gca()
    df = history.dropna(subset=[y]).copy()
    df["_run"] = _run_ids(df)
    if smooth > 1 and y == "train_loss":
        df[y] = df.groupby("_run")[y].transform(lambda s: s.rolling(smooth, min_periods=1).mean())
    levels = list(dict.fromkeys(df[hue]))
    sns.lineplot(
        data=df,
        x="step",
        y=y,
        hue=hue,
        style=style,
        units="_run",
        estimator=None,
        palette=palette(hue, levels),
        lw=1.2,
        ax=ax,
    )
    if "diverged" in df:
        colors = palette(hue, levels)
        ends = df[df["diverged"].astype(bool)].groupby("_run").tail(1)
        for _, r in ends.iterrows():
            c = colors[r[hue]] if isinstance(colors, dict) else "k"
            ax.plot(r["step"], r[y], marker="x", color=c, ms=8, mew=2)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    label_placements(ax)
    return ax


def _run_ids(df: pd.DataFrame) -> pd.Series:
    """A run number for every row of a frame of concatenated histories: a new run starts
    where the step does not increase or any configuration column changes."""
    from .training import HISTORY_COLUMNS

    config = [c for c in df.columns if c not in HISTORY_COLUMNS and c != "_run"]
    # str() of each value, so that NaN, None and lists compare too (astype(str) keeps NaN
    # as a missing value under pandas 3's string dtype)
    key = (
        df[config].apply(lambda col: col.map(str)).agg("|".join, axis=1)
        if config
        else pd.Series("", df.index)
    )
    step = df["step"]
    starts = (key != key.shift()) | ~(step > step.shift())
    return starts.cumsum()


def mark_diverged(ax: Axes, xs: Sequence[float], color: str, y: float = 1.03) -> None:
    """The book's mark for a diverged run: a cross just above the frame (``y`` in axes
    fractions) at each of ``xs`` in data coordinates, since such a run has no final loss
    to place on the y axis."""
    for v in xs:
        ax.plot(
            [v],
            [y],
            "x",
            color=color,
            ms=10,
            mew=2,
            clip_on=False,
            transform=ax.get_xaxis_transform(),
        )


def plot_loss_vs_lr(
    runs: pd.DataFrame,
    hue: str,
    colors: dict[object, str],
    ax: Axes | None = None,
    labels: dict[object, str] | None = None,
    markers: dict[object, str] | None = None,
    entropy: float | None = None,
) -> Axes:
    """Final validation loss against the learning rate (log axis), one line per level of
    ``hue`` in the order of ``colors``: Wortsman et al. 2023's view of a design's
    sensitivity to the learning rate. ``runs`` has one row per run with ``lr``,
    ``final_val_loss`` and ``diverged``. A diverged run has no loss to draw (its
    ``final_val_loss`` is the last one before it blew up); it is a cross just above the
    frame at its learning rate instead. ``entropy`` draws the unigram entropy as a
    dashed line."""
    ax = ax or plt.gca()
    for level, color in colors.items():
        g = runs[runs[hue] == level].sort_values("lr")
        ok = g[~g["diverged"].astype(bool)]
        ax.plot(
            ok["lr"],
            ok["final_val_loss"],
            marker=(markers or {}).get(level, "o"),
            color=color,
            lw=1.6,
            label=(labels or {}).get(level, str(level)),
        )
        mark_diverged(ax, g[g["diverged"].astype(bool)]["lr"], color)
    if entropy is not None:
        ax.axhline(entropy, ls="--", color="0.4", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("final validation loss (nats/char)")
    return ax


def plot_grid(
    runs: pd.DataFrame,
    value: str = "final_train_loss",
    row: str = "lr",
    col: str = "warmup_steps",
    ax: Axes | None = None,
    fmt: str = ".2f",
    title: str | None = None,
    cbar_label: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    cbar: bool = True,
) -> Axes:
    """Heatmap of ``value`` (mean over seeds) over a ``row`` x ``col`` grid.

    Without an ``outcome`` column, a cell where any seed diverged is hatched and
    annotated with the diverged fraction. With one (:func:`~prenorm.outcome`), every
    cell where some seed did not train says how many seeds stalled or diverged
    (``"2/2 stalled"``); stalled cells are hatched grey, cells with a diverged seed red,
    and a cell whose every seed diverged shows no loss at all.
    """
    ax = ax or plt.gca()
    has_outcome = "outcome" in runs
    groups = runs.groupby([row, col])
    agg = groups.agg(value=(value, "mean"), diverged=("diverged", "mean")).reset_index()
    table = agg.pivot(index=row, columns=col, values="value")
    div = agg.pivot(index=row, columns=col, values="diverged")
    notes = {}
    if has_outcome:
        for key, g in groups:
            n = len(g)
            words = [
                f"{(g.outcome == w).sum()}/{n} {w}"
                for w in ("stalled", "diverged")
                if (g.outcome == w).any()
            ]
            notes[key] = ("\n".join(words), (g.outcome == "stalled").any())
    annot = table.copy().astype(object)
    for i in table.index:
        for j in table.columns:
            v, d = table.loc[i, j], div.loc[i, j]
            text = "" if (v is None or (isinstance(v, float) and math.isnan(v))) else format(v, fmt)
            if has_outcome:
                note = notes.get((i, j), ("", False))[0]
                annot.loc[i, j] = f"{text}\n{note}".strip("\n") if note else text
            else:
                annot.loc[i, j] = f"{text}\n{d:.0%} div" if d > 0 else text
    sns.heatmap(
        table.astype(float),
        annot=annot.values,
        fmt="",
        cmap="mako_r",
        ax=ax,
        vmin=vmin,
        vmax=vmax,
        cbar=cbar,
        cbar_kws={"label": cbar_label or value} if cbar else None,
        mask=np.isnan(table.astype(float).values),
        annot_kws={"fontsize": 10},
    )
    for (i, j), d in np.ndenumerate(div.values):
        stalled = has_outcome and notes.get((table.index[i], table.columns[j]), ("", False))[1]
        if d > 0 or stalled:
            ec = "#c44e52" if d > 0 else "0.55"
            ax.add_patch(plt.Rectangle((j, i), 1, 1, fill=False, hatch="//", ec=ec, lw=0))
    ax.set_ylabel(row)
    ax.set_xlabel(col)
    if title:
        ax.set_title(title)
    return ax


def glue(name: str, value: object) -> object:
    """Make ``value`` available to the chapter's prose as ``{glue:text}`name```
    (MyST-NB's glue, when it is installed; a no-op elsewhere, e.g. on Colab).
    Numpy scalars are glued as plain Python numbers. Returns the glued value, so
    that numbers can be glued where they are computed."""
    if isinstance(
        value, np.generic
    ):  # numpy scalars print as np.float64(...), which MyST cannot format
        value = value.item()
    try:
        from myst_nb import glue as _glue
    except ImportError:
        return value
    _glue(name, value, display=False)
    return value


def glue_all(
    values: Mapping[str, object] | None = None, **prefixed: Mapping[object, object]
) -> None:
    """Glue many values at once (:func:`glue`): each item of ``values`` under its key,
    and each item of a keyword's mapping under ``{keyword}_{key}``:
    ``glue_all(S=sens)`` glues one number per design as ``S_pre``, ``S_peri``, ..."""
    for key, value in (values or {}).items():
        glue(key, value)
    for prefix, mapping in prefixed.items():
        for key, value in mapping.items():
            glue(f"{prefix}_{key}", value)


def draw_placements(
    placements: Sequence[str] = ("post", "pre"), figsize: tuple[float, float] | None = None
):
    r"""Draw the data path of one residual step for each placement, side by side.

    The skip path is drawn in the placement's colour; a norm that sits *on* the
    skip path (Post-LN, DeepNorm) is filled red, a norm inside the branch is grey.
    LayerNorm Scaling's :math:`1/\sqrt{l}` and ReZero's gate :math:`g` are written on
    the branch; a per-layer rule (Mix-LN) is stated in words, since its layers are
    drawn by the placements it names. Returns the matplotlib figure.
    """
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    from .blocks import PLACEMENTS

    if figsize is None:  # 8 x 4.6 inches for up to three panels, wider for more
        figsize = (max(8.0, 2.2 * len(placements)), 4.6)
    fig, axes = plt.subplots(1, len(placements), figsize=figsize)
    axes = np.atleast_1d(axes)
    for ax, name in zip(axes, placements, strict=True):
        spec = PLACEMENTS[name]
        color = PLACEMENT_COLORS.get(name, "k")
        ax.set_xlim(0, 4)
        ax.set_ylim(-0.4, 7.6)
        ax.axis("off")
        ax.set_title(PLACEMENT_LABELS.get(name, name), color=color, fontweight="bold")
        skip_x, br_x = 1.0, 3.0
        if spec.mix is not None:
            first, rest = (PLACEMENT_LABELS.get(n, n) for n in spec.mix)
            ax.text(
                2.0,
                3.8,
                f"{first} in the\nfirst layers,\n{rest} in the rest",
                ha="center",
                va="center",
                fontsize=11,
            )
            continue

        def box(x: float, y: float, text: str, fc: str, ec: str = "#333333", ax: Axes = ax) -> None:
            ax.add_patch(
                FancyBboxPatch(
                    (x - 0.8, y - 0.3), 1.6, 0.6, boxstyle="round,pad=0.05", fc=fc, ec=ec, lw=1.2
                )
            )
            ax.text(x, y, text, ha="center", va="center", fontsize=11)

        def arrow(
            p: tuple[float, float],
            q: tuple[float, float],
            c: str = "#555555",
            lw: float = 1.4,
            ax: Axes = ax,
        ) -> None:
            ax.add_patch(FancyArrowPatch(p, q, arrowstyle="-|>", mutation_scale=11, color=c, lw=lw))

        ax.text(skip_x, -0.1, r"$x_l$", ha="center", va="center", fontsize=13)
        # branch: optional norm in, the sublayer F, optional norm out
        y = 2.0
        arrow((skip_x, 0.2), (skip_x, 1.0), color, 2.4)
        ax.plot([skip_x, br_x], [1.0, 1.0], color="#555555", lw=1.4)
        if spec.norm_in:
            arrow((br_x, 1.0), (br_x, y - 0.35))
            box(br_x, y, r"LN $\cdot 1/\sqrt{l}$" if spec.depth_scaled else "LN", "#dddddd")
            y += 1.3
        arrow((br_x, y - 1.3 + 0.3 if spec.norm_in else 1.0), (br_x, y - 0.35))
        box(br_x, y, "$F_l$\n(attn / MLP)", "#f5f5f5")
        y += 1.3
        if spec.norm_out:
            arrow((br_x, y - 1.0), (br_x, y - 0.35))
            box(br_x, y, "LN", "#dddddd")
            y += 1.3
        add_y = y
        ax.plot([br_x, br_x], [y - 1.0, add_y], color="#555555", lw=1.4)
        if spec.gated:
            ax.text(br_x + 0.2, add_y - 0.5, r"$g\,\cdot$ (0 at init)", va="center", fontsize=10)
        arrow((br_x, add_y), (skip_x + 0.3, add_y))
        # skip path up to the addition
        skip_label = r"$\alpha\,\cdot$" if spec.scaled_residual else ""
        arrow((skip_x, 1.0), (skip_x, add_y - 0.3), color, 2.4)
        if skip_label:
            ax.text(
                skip_x - 0.35, (1.0 + add_y) / 2, skip_label, ha="right", va="center", fontsize=11
            )
        ax.add_patch(plt.Circle((skip_x, add_y), 0.28, fc="white", ec="#333333", lw=1.2))
        ax.text(skip_x, add_y, "+", ha="center", va="center", fontsize=13)
        y = add_y + 1.3
        if spec.norm_after:
            arrow((skip_x, add_y + 0.3), (skip_x, y - 0.35), color, 2.4)
            box(skip_x, y, "LN", "#f4b6b6", ec=PLACEMENT_COLORS["post"])
            ax.text(skip_x + 0.95, y, "on the skip path", fontsize=10, va="center", color="#a33")
            y += 1.2
        arrow((skip_x, y - (1.2 if spec.norm_after else 1.3) + 0.3), (skip_x, y - 0.1), color, 2.4)
        ax.text(skip_x, y + 0.15, r"$x_{l+1}$", ha="center", va="center", fontsize=13)
    fig.tight_layout()
    return fig
