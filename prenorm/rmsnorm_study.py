r"""The tables and figures of chapter 7 (RMSNorm against LayerNorm), from the frames of
:func:`~prenorm.time_norms`, :func:`~prenorm.count_passes`,
:func:`~prenorm.norm_affine_drift` and :func:`~prenorm.sweep`.

The speed comparison is a ratio of times, :math:`t_{\text{RMS}}/t_{\text{LN}}`, taken
for one kind of implementation (plain ops, torch's built-ins, compiled) at one width in
one run; RMSNorm's time saving is :math:`1 - t_{\text{RMS}}/t_{\text{LN}}`. Plotting
imports matplotlib inside each function, so ``import prenorm`` does not.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .benchmark import BOUND_TRANSFERS, count_passes
from .verdicts import Estimate

__all__ = [
    "pass_table",
    "plot_affine_drift",
    "plot_norm_speed",
    "plot_paired_losses",
    "speed_table",
    "time_ratios",
]


def time_ratios(speed: pd.DataFrame) -> pd.DataFrame:
    r"""RMSNorm's time over LayerNorm's, :math:`t_{\text{RMS}}/t_{\text{LN}}`, from a
    :func:`~prenorm.time_norms` frame: one row per width ``d``, one column per ``kind``
    of implementation (the median times over repeats of the two norms of that kind, at
    that width, in that run). Below 1, RMSNorm is faster."""
    times = speed.pivot_table(index="d", columns=["kind", "norm"], values="seconds")
    return times.xs("rmsnorm", level="norm", axis=1) / times.xs("layernorm", level="norm", axis=1)


def speed_table(speed: pd.DataFrame) -> pd.DataFrame:
    """A :func:`~prenorm.time_norms` frame as the reader sees it: one row per width,
    columns ``(kind, quantity, norm)``, the quantities being the time in milliseconds
    (``ms``) and the fraction of the bandwidth bound (``bound_fraction``)."""
    return (
        speed.assign(ms=speed.seconds * 1e3)
        .pivot_table(index="d", columns=["kind", "norm"], values=["ms", "bound_fraction"])
        .swaplevel(0, 1, axis=1)
        .sort_index(axis=1)
    )


def pass_table(implementations: Sequence[str], **kwargs: object) -> pd.DataFrame:
    """The memory traffic of one forward and backward pass of each eager implementation
    (:func:`~prenorm.count_passes`, ``kwargs`` passed on): one row per implementation,
    with the operators, full-size reads and writes per phase (``"operators (forward)"``,
    ...), ``operators`` (both phases), ``transfers`` (all reads and writes) and
    ``x minimum``, the transfers over the minimum of
    :data:`~prenorm.benchmark.BOUND_TRANSFERS`."""
    ops = pd.concat([count_passes(n, **kwargs) for n in implementations], ignore_index=True)
    passes = (
        ops.assign(operators=1)
        .groupby(["implementation", "phase"], sort=False)[["operators", "reads", "writes"]]
        .sum()
        .unstack("phase")
    )
    passes.columns = [f"{what} ({phase})" for what, phase in passes.columns]
    passes["operators"] = passes.filter(like="operators (").sum(axis=1)
    passes["transfers"] = (
        ops.groupby("implementation", sort=False)[["reads", "writes"]].sum().sum(axis=1)
    )
    passes["x minimum"] = passes["transfers"] / BOUND_TRANSFERS
    return passes


def plot_norm_speed(speed: pd.DataFrame, post_saving: float = 0.15):
    r"""Two panels from a :func:`~prenorm.time_norms` frame: left, each implementation's
    fraction of the bandwidth bound against the width (colour: the norm; line style:
    solid plain ops, dashed built-ins, dotted compiled); right, :func:`time_ratios` per
    kind on a log scale, with the line of equal times and the post's saving
    (:math:`1 - ` ``post_saving``). The legends sit below the panels. Returns the figure."""
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    from .plotting import NORM_COLORS, TEXT_WIDTH, depth_axis

    style = {"ops": "-", "torch": "--", "compiled": ":"}
    ratio = time_ratios(speed)
    fig, axes = plt.subplots(1, 2, figsize=(TEXT_WIDTH, 4.2))
    for (norm, kind), grp in speed.groupby(["norm", "kind"]):
        axes[0].plot(
            grp.d, grp.bound_fraction, style[kind], marker="o", ms=3.5, color=NORM_COLORS[norm]
        )
    for kind in ratio.columns:
        axes[1].plot(
            ratio.index, ratio[kind], style[kind], marker="o", ms=3.5, color="0.25", label=kind
        )
    for norm, name in (("layernorm", "LayerNorm"), ("rmsnorm", "RMSNorm")):  # colour legend
        axes[0].plot([], [], "-", color=NORM_COLORS[norm], label=name)
    axes[1].axhline(1.0, color="0.5", lw=0.8)
    axes[1].axhline(
        1 - post_saving, color="0.75", lw=2.0, ls="-.", label=f"post: {post_saving:.0%} faster"
    )
    axes[0].set_ylabel("fraction of the bound")
    axes[0].set_ylim(bottom=0)
    axes[1].set_ylabel(r"$t_{\mathrm{RMS}} / t_{\mathrm{LN}}$")
    axes[1].set_yscale("log")
    axes[1].yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axes[1].yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axes[1].yaxis.set_minor_locator(ticker.NullLocator())
    for ax in axes:
        depth_axis(ax, sorted(speed.d.unique()), label="width $d$")
    below = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.2), "frameon": False}
    axes[0].legend(title="norm", ncol=2, **below)  # below the panels, off the data
    axes[1].legend(title="implementation", ncol=2, **below)
    fig.tight_layout()
    return fig


def plot_affine_drift(drift: pd.DataFrame):
    r"""The :func:`~prenorm.norm_affine_drift` table along the stack: RMS of
    :math:`\gamma - 1` and of :math:`\beta` per norm, labelled ``layer.sublayer``.
    Returns the figure."""
    import matplotlib.pyplot as plt

    from .plotting import TEXT_WIDTH

    fig, ax = plt.subplots(figsize=(TEXT_WIDTH, 3.5))
    for col, label, colour in (
        ("gamma_drift", r"RMS of $\gamma - 1$", "0.35"),
        ("beta_drift", r"RMS of $\beta$", "#c44e52"),
    ):
        ax.plot(drift.position, drift[col], "o-", ms=4, color=colour, label=label)
    labels = [
        f"{r.layer}.{r.sublayer}" if r.sublayer != "final" else "final" for r in drift.itertuples()
    ]
    many = len(labels) > 8
    ax.set_xticks(
        range(len(labels)), labels, rotation=45 if many else 0, ha="right" if many else "center"
    )
    ax.set_xlabel("norm (layer.sublayer)")
    ax.set_ylabel("RMS over features")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_paired_losses(
    losses: pd.DataFrame, estimate: Estimate, tol: float, a: str = "rmsnorm", b: str = "layernorm"
):
    r"""Two panels for a paired comparison of final losses (``losses``: one row per
    seed, one column per side): left, each seed's pair joined by a line; right, the
    paired differences ``a - b``, their mean with ``estimate``'s interval, the band
    :math:`\pm` ``tol`` and the threshold ``+tol`` (dashed). Returns the figure."""
    import matplotlib.pyplot as plt

    from .plotting import NORM_COLORS, TEXT_WIDTH

    names = {"layernorm": "LayerNorm", "rmsnorm": "RMSNorm"}
    paired = losses[a] - losses[b]
    fig, axes = plt.subplots(1, 2, figsize=(TEXT_WIDTH, 3.5), gridspec_kw={"width_ratios": [3, 2]})
    for _, row in losses.iterrows():
        axes[0].plot([0, 1], [row[b], row[a]], color="0.7", lw=1, zorder=1)
    for k, norm in enumerate([b, a]):
        axes[0].scatter(
            np.full(len(losses), k), losses[norm], color=NORM_COLORS.get(norm), s=25, zorder=2
        )
    axes[0].set_xticks([0, 1], [names.get(b, b), names.get(a, a)])
    axes[0].set_xlim(-0.4, 1.4)
    axes[0].set_ylabel("final validation loss (nats)")
    axes[1].axhspan(-tol, tol, color="0.9", zorder=0)
    axes[1].axhline(0, color="0.5", lw=0.8)
    axes[1].axhline(tol, color="0.3", lw=1.0, ls="--")  # the one-sided threshold
    axes[1].scatter(np.zeros(len(paired)), paired, color=NORM_COLORS.get(a), s=25, zorder=2)
    axes[1].errorbar(
        [1],
        [estimate.value],
        yerr=[[estimate.value - estimate.lo], [estimate.hi - estimate.value]],
        fmt="D",
        color="0.2",
        capsize=3,
        ms=5,
    )
    axes[1].set_xticks([0, 1], ["per seed", "mean, 95% CI"])
    axes[1].set_xlim(-0.6, 1.6)
    axes[1].set_ylabel(f"{names.get(a, a)} − {names.get(b, b)} (nats)")
    fig.tight_layout()
    return fig
