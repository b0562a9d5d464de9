r"""How much an optimizer setting moves the loss, next to how much a design change does.

A sweep over one setting :math:`x` (the learning rate, Adam's :math:`\beta_2`) trains one
model per value and seed; with :math:`\ell_s(x)` the final validation loss of seed
:math:`s` (runs that diverged left out), the loss curve is the mean over seeds,
:math:`\bar\ell(x) = \frac1n\sum_s \ell_s(x)`, and when a design column (the norm, say)
takes several levels, the mean of the levels' curves, each level weighing the same.
From such sweeps:

- the **best setting** is :math:`x^* = \arg\min_x \bar\ell(x)` (:func:`best_setting`);
- the **cost of a miss** is how much worse the better of the two neighbours of
  :math:`x^*` on the grid is: :math:`\min(\bar\ell(x_{i^*-1}), \bar\ell(x_{i^*+1})) -
  \bar\ell(x^*)` (:func:`miss_cost`); on a grid spaced by a factor of 3 it is the cost of a
  setting about 3× off;
- the **gap** between two designs :math:`a` and :math:`b` at each :math:`x` is the mean of
  the paired differences :math:`d_s(x) = \ell_s^a(x) - \ell_s^b(x)` over seeds, with their
  standard deviation (:func:`paired_gaps`);
- a setting's **range** is :math:`\max_x \bar\ell(x) - \min_x \bar\ell(x)`, set beside the
  seed-to-seed spread: the mean over :math:`x` of the standard deviation over seeds
  (:func:`setting_effect`).

:func:`tuning_summary` computes all of them for a learning-rate sweep over two designs and a
:math:`\beta_2` sweep, the comparison of chapter 8; :func:`plot_setting_sweep` draws a sweep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "TuningSummary",
    "best_setting",
    "miss_cost",
    "paired_gaps",
    "plot_setting_sweep",
    "setting_curve",
    "setting_effect",
    "tuning_summary",
]

_VALUE = "final_val_loss"


def _trained(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that did not diverge."""
    if "diverged" not in runs.columns:
        raise KeyError(f"runs need a 'diverged' column; columns: {list(runs.columns)}")
    return runs[~runs["diverged"].astype(bool)]


def setting_curve(
    runs: pd.DataFrame, x: str, by: str | None = None, value: str = _VALUE
) -> pd.Series:
    r"""The loss curve :math:`\bar\ell(x)` of a sweep, indexed by the sorted values of
    column ``x``: the mean of ``value`` over the runs that did not diverge; with ``by``, the
    mean over the levels of ``by`` of each level's mean (so every level weighs the same,
    however many of its runs diverged). A value of ``x`` none of whose runs trained is
    left out."""
    ok = _trained(runs)
    if by is None:
        return ok.groupby(x)[value].mean()
    return ok.pivot_table(index=x, columns=by, values=value, aggfunc="mean").mean(axis=1)


def best_setting(runs: pd.DataFrame, x: str, by: str | None = None, value: str = _VALUE) -> float:
    r"""The value :math:`x^*` of column ``x`` at the minimum of :func:`setting_curve`."""
    curve = setting_curve(runs, x, by, value)
    if not len(curve):
        raise ValueError(f"no run of the sweep over {x!r} trained: there is no best setting")
    return float(curve.idxmin())


def miss_cost(curve: pd.Series, best: object | None = None) -> float:
    r"""How much the better neighbour of the best setting on the grid loses against it:
    :math:`\min(\bar\ell(x_{i-1}), \bar\ell(x_{i+1})) - \bar\ell(x_i)` for the position
    :math:`i` of ``best`` (default: the minimum) in ``curve``'s sorted index; a best
    setting at an end of the grid has one neighbour. NaN for a curve of one point."""
    curve = curve.sort_index()
    if best is None:
        best = curve.idxmin()
    index = list(curve.index)
    if best not in index:
        raise KeyError(f"{best!r} is not a setting of the curve; settings: {index}")
    i = index.index(best)
    neighbours = [curve.iloc[j] for j in (i - 1, i + 1) if 0 <= j < len(curve)]
    if not neighbours:
        return math.nan
    return float(min(neighbours) - curve.iloc[i])


def paired_gaps(
    runs: pd.DataFrame,
    x: str,
    by: str,
    a: object,
    b: object,
    value: str = _VALUE,
    pair: tuple[str, ...] = ("seed",),
) -> pd.DataFrame:
    r"""The gap between designs ``a`` and ``b`` (levels of column ``by``) at each value of
    ``x``: one row per value with ``mean`` and ``sd`` (``ddof=1``; NaN for one pair) of the
    paired differences :math:`d_s = \ell_s^a - \ell_s^b` over the runs paired by ``pair``,
    and ``n``, the number of complete pairs. Diverged runs are left out, and with them
    their pairs."""
    ok = _trained(runs)
    wide = ok.pivot_table(index=[x, *pair], columns=by, values=value)
    for level in (a, b):
        if level not in wide.columns:
            raise ValueError(f"{by!r} has no trained run at {level!r}")
    gaps = (wide[a] - wide[b]).groupby(x)
    return pd.DataFrame({"mean": gaps.mean(), "sd": gaps.std(ddof=1), "n": gaps.count()})


def setting_effect(runs: pd.DataFrame, x: str, value: str = _VALUE) -> pd.DataFrame:
    r"""One row per value of ``x``: the ``mean``, the standard deviation over seeds
    ``sd`` (``ddof=1``) and the number ``n`` of the runs that did not diverge. The setting's
    range is ``mean.max() - mean.min()``; its seed-to-seed spread, ``sd.mean()``."""
    g = _trained(runs).groupby(x)[value]
    return pd.DataFrame({"mean": g.mean(), "sd": g.std(ddof=1), "n": g.count()})


@dataclass(frozen=True)
class TuningSummary:
    r"""The numbers of a learning-rate sweep over two designs and a :math:`\beta_2` sweep,
    all in nats of final validation loss (see the module's definitions):

    ``best_lr``, :math:`x^*` of the learning-rate curve (both designs weighed equally);
    ``gap_best`` and ``gap_sd``, :math:`|` mean :math:`|` and SD of the paired design gap
    at ``best_lr``; ``norm_gap``, the largest :math:`|` mean gap :math:`|` at any learning
    rate; ``miss_cost``, the cost of a miss to a neighbouring learning rate;
    ``lr_full_range``, the range of the learning-rate curve; ``beta_range`` and
    ``beta_seed_sd``, the :math:`\beta_2` range and seed spread; ``best_beta2``, its best
    value; ``n_diverged``, the runs of both sweeps that diverged."""

    best_lr: float
    gap_best: float
    gap_sd: float
    norm_gap: float
    miss_cost: float
    lr_full_range: float
    beta_range: float
    beta_seed_sd: float
    best_beta2: float
    n_diverged: int

    @property
    def miss_ratio(self) -> float:
        r"""``miss_cost`` over ``norm_gap`` (the gap floored at :math:`10^{-12}`)."""
        return self.miss_cost / max(self.norm_gap, 1e-12)

    @property
    def beta_ratio(self) -> float:
        r"""``beta_range`` over ``norm_gap`` (the gap floored at :math:`10^{-12}`)."""
        return self.beta_range / max(self.norm_gap, 1e-12)

    def numbers(self) -> dict[str, float]:
        """Every field but ``best_lr`` and ``n_diverged``, by name (the numbers the
        chapter's prose quotes)."""
        skip = ("best_lr", "n_diverged")
        return {k: v for k, v in self.__dict__.items() if k not in skip}

    def table(self, digits: int = 4) -> pd.DataFrame:
        """The five sizes side by side, in nats, rounded to ``digits``."""
        return (
            pd.Series(
                {
                    "norm gap at the best lr": self.gap_best,
                    "norm gap, largest over lrs": self.norm_gap,
                    "cost of a 3x lr miss": self.miss_cost,
                    "whole lr range": self.lr_full_range,
                    "beta2 range": self.beta_range,
                }
            )
            .round(digits)
            .to_frame("nats")
        )


def tuning_summary(
    lr_runs: pd.DataFrame,
    beta_runs: pd.DataFrame,
    by: str = "norm",
    a: object = "layernorm",
    b: object = "rmsnorm",
    beta: str = "beta2",
    value: str = _VALUE,
) -> TuningSummary:
    r"""The :class:`TuningSummary` of a learning-rate sweep ``lr_runs`` over designs ``a``
    and ``b`` (levels of column ``by``, paired by seed) and a sweep ``beta_runs`` over column
    ``beta``. Both frames have one row per run with ``lr`` (or ``beta``), ``seed``,
    ``value`` and ``diverged``."""
    curve = setting_curve(lr_runs, "lr", by, value)
    if not len(curve):
        raise ValueError("no run of the learning-rate sweep trained")
    best = curve.idxmin()
    gaps = paired_gaps(lr_runs, "lr", by, a, b, value)
    effect = setting_effect(beta_runs, beta, value)
    return TuningSummary(
        best_lr=float(best),
        gap_best=float(np.abs(gaps["mean"].loc[best])),
        gap_sd=float(gaps["sd"].loc[best]),
        norm_gap=float(gaps["mean"].abs().max()),
        miss_cost=miss_cost(curve, best),
        lr_full_range=float(curve.max() - curve.min()),
        beta_range=float(effect["mean"].max() - effect["mean"].min()),
        beta_seed_sd=float(effect["sd"].mean()),
        best_beta2=float(effect["mean"].idxmin()),
        n_diverged=int(lr_runs["diverged"].sum() + beta_runs["diverged"].sum()),
    )


def plot_setting_sweep(
    runs: pd.DataFrame,
    x: str,
    hue: str = "norm",
    colors: dict[object, str] | None = None,
    ax: Axes | None = None,
    value: str = _VALUE,
    xscale: str = "log",
    xlabel: str | None = None,
    ticks_at_values: bool = False,
) -> Axes:
    r"""Final loss against a swept setting ``x``, one colour per level of ``hue``
    (:data:`~prenorm.NORM_COLORS` by default): the mean over seeds of the runs that did
    not diverge as a line, each such run as a point, and each diverged run as a cross at
    the top of the frame at its setting (its loss is the last before it blew up, not a
    result). ``xscale`` is the x axis's scale (``"logit"`` suits :math:`\beta_2`);
    ``ticks_at_values`` puts the ticks at the swept values."""
    import matplotlib.pyplot as plt

    from .plotting import NORM_COLORS, mark_diverged

    ax = ax or plt.gca()
    colors = colors or NORM_COLORS
    for level, g in runs.groupby(hue):
        color = colors[level]
        ok = _trained(g)
        mean = ok.groupby(x)[value].mean()
        ax.plot(mean.index, mean.values, color=color, lw=1.6, label=str(level))
        ax.scatter(ok[x], ok[value], color=color, s=18, alpha=0.7)
        mark_diverged(ax, g[g["diverged"].astype(bool)][x], color)
    ax.set_xscale(xscale)
    if ticks_at_values:
        values = sorted(runs[x].unique())
        ax.set_xticks(values, [f"{v:g}" for v in values])
        ax.minorticks_off()
    ax.set_xlabel(xlabel or x)
    return ax
