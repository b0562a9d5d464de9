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
:math:`\beta_2` sweep; :func:`plot_setting_sweep` draws a sweep.

**Default against tuned Adam** (chapter 8). *Default* is :data:`ADAM_DEFAULTS`, PyTorch's
``torch.optim.Adam`` as it comes (:math:`\eta = 10^{-3}`, :math:`\beta = (0.9, 0.999)`, no
weight decay) with no warmup and a constant rate. *Tuned* is the pick of a small search
(:func:`adam_search_grids`, :func:`search_table`, :func:`pick_adam_setting`) on development
seeds: the setting with the lowest mean loss, but only if its paired difference from the
defaults over those seeds has a Student-*t* interval wholly below 0; otherwise the tie is
resolved toward the defaults, which are then the tuned setting. On confirmation seeds
:math:`s`, with final losses :math:`\ell^{D}_s` (default, LayerNorm), :math:`\ell^{T}_s`
(tuned, LayerNorm) and :math:`\ell^{R}_s` (tuned, RMSNorm), :func:`optimizer_contrast`
gives, each as a mean with its Student-*t* interval over seeds:

- the tuning gain :math:`G_s = \ell^{D}_s - \ell^{T}_s` (positive when tuning helps);
- the signed norm effect :math:`N_s = \ell^{R}_s - \ell^{T}_s` (positive when RMSNorm is worse);
- :math:`G_s - N_s = \ell^{D}_s - \ell^{R}_s` and :math:`G_s + N_s`. Tuning moves the loss
  more than the swap, whichever way the swap moves it, when :math:`\bar G > |\bar N|`,
  that is when both :math:`\bar G - \bar N > 0` and :math:`\bar G + \bar N > 0`: the two
  intervals, each at 95%, decide it together (an intersection-union test, which needs no
  correction for the two).

**When the search keeps the defaults** the tuned and default runs are the same runs and
:math:`G_s \equiv 0`, so the core above cannot hold: the claim's premise, a tuned setting
that beats the defaults, did not occur. Then the search itself decides
(:func:`tuning_measurements`): with :math:`u_j` the upper end of the Student-*t* interval of
setting :math:`j`'s paired gain over the defaults on the search seeds (:func:`search_gains`),
the claim is *not reproduced* if :math:`\max_j u_j` lies below the claim's magnitude, 0.02
nats (no setting searched can give the gain the claim asserts), and *inconclusive*
otherwise (the search could not rule that magnitude out).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .verdicts import Estimate, Prediction

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "ADAM_DEFAULTS",
    "OptimizerContrast",
    "TuningSummary",
    "adam_contrast_grids",
    "AdamPick",
    "adam_search_grids",
    "best_adam_setting",
    "pick_adam_setting",
    "optimizer_contrast",
    "best_setting",
    "miss_cost",
    "paired_gaps",
    "plot_adam_contrast",
    "plot_setting_sweep",
    "setting_curve",
    "search_table",
    "setting_effect",
    "setting_label",
    "search_gains",
    "tuning_measurements",
    "tuning_predictions",
    "tuning_summary",
    "TUNING_MAGNITUDE",
]

_VALUE = "final_val_loss"

#: "Default Adam": ``torch.optim.Adam``'s own defaults, no warmup, a constant learning rate
#: (the keyword arguments of :func:`~prenorm.train` that say so).
ADAM_DEFAULTS: dict[str, object] = {
    "optimizer": "adam",
    "lr": 1e-3,
    "betas": (0.9, 0.999),
    "weight_decay": 0.0,
    "warmup_steps": 0,
    "schedule": "constant",
}

#: The columns of a run's summary that identify its optimizer setting.
SETTING_COLUMNS = ("optimizer", "lr", "beta2", "warmup_steps", "weight_decay")


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


def adam_search_grids(
    lrs: Sequence[float],
    seeds: Sequence[int],
    steps: int,
    beta2: float = 0.95,
    warmup_frac: float = 0.1,
    weight_decay: float = 0.1,
) -> list[dict[str, list[object]]]:
    r"""The small search of chapter 8 as two :func:`~prenorm.sweep` grids over ``seeds``:
    every learning rate of ``lrs`` with Adam's other defaults (:data:`ADAM_DEFAULTS`), and
    every learning rate with the settings large models train with: AdamW (decoupled
    weight decay ``weight_decay``), :math:`\beta_2` = ``beta2`` and a linear warmup over
    :math:`\lfloor` ``warmup_frac`` :math:`\cdot` ``steps`` :math:`\rceil` steps (at
    least 1). ``2 len(lrs)`` settings in all."""
    if not lrs or any(not (isinstance(v, int | float) and v > 0) for v in lrs):
        raise ValueError(f"lrs must be a non-empty list of positive numbers, got {lrs!r}")
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not 0 <= beta2 < 1:
        raise ValueError(f"beta2 must be in [0, 1), got {beta2!r}")
    if not 0 < warmup_frac < 1:
        raise ValueError(f"warmup_frac must be in (0, 1), got {warmup_frac!r}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    seeds = list(seeds)
    base = {k: [v] for k, v in ADAM_DEFAULTS.items() if k != "lr"}
    recipe = {
        **base,
        "optimizer": ["adamw"],
        "betas": [(0.9, float(beta2))],
        "weight_decay": [float(weight_decay)],
        "warmup_steps": [max(1, round(warmup_frac * steps))],
    }
    lrs = [float(v) for v in lrs]
    return [{**base, "lr": lrs, "seed": seeds}, {**recipe, "lr": lrs, "seed": seeds}]


def setting_label(row: Mapping[str, object] | pd.Series) -> str:
    """An optimizer setting in words, from a run's summary (its :data:`SETTING_COLUMNS`):
    ``"adamw lr=0.003 b2=0.95 warmup=20 wd=0.1"``."""
    return (
        f"{row['optimizer']} lr={float(row['lr']):g} b2={float(row['beta2']):g} "
        f"warmup={int(row['warmup_steps'])} wd={float(row['weight_decay']):g}"
    )


def search_table(runs: pd.DataFrame, value: str = _VALUE) -> pd.DataFrame:
    """One row per optimizer setting of a search (the runs' :data:`SETTING_COLUMNS`), best
    first: the ``mean`` and ``sd`` of ``value`` over the seeds that trained, ``n`` of
    them and ``diverged``, the number that did not. A setting with a diverged run is
    ranked after every setting without one (its mean is over the others only)."""
    missing = [c for c in (*SETTING_COLUMNS, value, "diverged") if c not in runs.columns]
    if missing:
        raise KeyError(f"runs lack columns {missing}; columns: {list(runs.columns)}")
    cols = list(SETTING_COLUMNS)
    ok = _trained(runs)
    stats = ok.groupby(cols)[value].agg(mean="mean", sd="std", n="count")
    div = runs.groupby(cols)["diverged"].sum().astype(int).rename("diverged")
    table = pd.concat([stats, div], axis=1).reset_index()
    table["n"] = table["n"].fillna(0).astype(int)
    table["setting"] = [setting_label(r) for _, r in table.iterrows()]
    table = table.sort_values(["diverged", "mean"], na_position="last", kind="stable")
    return table.set_index("setting")


def best_adam_setting(runs: pd.DataFrame, value: str = _VALUE) -> dict[str, object]:
    """The :func:`~prenorm.train` keyword arguments of the best setting of a search
    (:func:`search_table`'s first row: the lowest mean loss among the settings none of
    whose runs diverged): ``optimizer``, ``lr``, ``betas``, ``weight_decay``,
    ``warmup_steps``, ``schedule``. Raises if every setting had a diverged run."""
    table = search_table(runs, value)
    clean = table[table["diverged"] == 0]
    if not len(clean):
        raise ValueError("every setting of the search had a diverged run: there is no best one")
    best = clean.iloc[0]
    beta1 = float(runs["beta1"].iloc[0]) if "beta1" in runs.columns else 0.9
    return {
        "optimizer": str(best["optimizer"]),
        "lr": float(best["lr"]),
        "betas": (beta1, float(best["beta2"])),
        "weight_decay": float(best["weight_decay"]),
        "warmup_steps": int(best["warmup_steps"]),
        "schedule": "constant",
    }


def _setting_key(setting: Mapping[str, object]) -> tuple[object, ...]:
    """A setting's :data:`SETTING_COLUMNS` values from :func:`~prenorm.train` keyword
    arguments, rounded as :func:`setting_label` writes them."""
    return (
        str(setting["optimizer"]),
        float(f"{float(setting['lr']):g}"),
        float(f"{float(setting['betas'][1]):g}"),
        int(setting["warmup_steps"]),
        float(f"{float(setting['weight_decay']):g}"),
    )


@dataclass(frozen=True)
class AdamPick:
    r"""What a search over Adam settings picked (:func:`pick_adam_setting`).

    ``setting``: the :func:`~prenorm.train` keyword arguments of the tuned setting, the
    defaults themselves when ``keeps_default``; ``best`` and ``best_label``: the setting
    with the lowest mean loss among those with no diverged run; ``default_label``: the
    defaults' label; ``vs_default``: the paired difference best minus defaults over the
    search seeds, mean and Student-*t* interval (NaN when the best is the defaults);
    ``runner_up``: the next best clean setting's label (``""`` if none) and
    ``vs_runner_up``, the paired difference runner-up minus best; ``keeps_default``: the
    defaults are the pick, because they were best or because the best did not beat them
    decidedly (interval not wholly below 0); ``edge``: the best setting's learning rate is
    the smallest or largest of the search, so the search has not bracketed its optimum."""

    setting: dict[str, object]
    best: dict[str, object]
    best_label: str
    default_label: str
    vs_default: Estimate
    runner_up: str
    vs_runner_up: Estimate
    keeps_default: bool
    edge: bool

    @property
    def resolved_tie(self) -> bool:
        """The best setting was not the defaults, but did not beat them decidedly."""
        return self.keeps_default and self.best_label != self.default_label

    def summary(self) -> str:
        """How the pick was made, in one or two sentences with its numbers (nats, 95%
        intervals over the search seeds), for the chapter's prose."""
        e, r = self.vs_default, self.vs_runner_up
        runner = (
            f" The runner-up, {self.runner_up}, ended {r.value:+.4f} nats from it "
            f"[{r.lo:+.4f}, {r.hi:+.4f}]."
            if self.runner_up
            else ""
        )
        if self.best_label == self.default_label:
            return (
                "Adam's defaults had the lowest mean loss of the search, so they are the tuned "
                "setting: the search found nothing better to tune them to." + runner
            )
        diff = f"{e.value:+.4f} nats from the defaults [{e.lo:+.4f}, {e.hi:+.4f}]"
        if self.keeps_default:
            return (
                f"The lowest mean loss was {self.best_label}'s, {diff}: an interval that does "
                "not lie below 0, a tie, resolved toward the defaults, which are therefore the "
                "tuned setting."
            )
        return f"{self.best_label} ended {diff}, wholly below 0: it is the tuned setting." + runner

    def table(self, digits: int = 4) -> pd.DataFrame:
        """The pick in one small table: the two paired differences behind it, in nats."""
        rows = {
            f"best ({self.best_label}) - defaults": self.vs_default,
            f"runner-up ({self.runner_up or 'none'}) - best": self.vs_runner_up,
        }
        return pd.DataFrame(
            {
                "mean": [e.value for e in rows.values()],
                "lo": [e.lo for e in rows.values()],
                "hi": [e.hi for e in rows.values()],
                "n": [e.n for e in rows.values()],
            },
            index=list(rows),
        ).round(digits)


def pick_adam_setting(
    runs: pd.DataFrame,
    defaults: Mapping[str, object] = ADAM_DEFAULTS,
    value: str = _VALUE,
    level: float = 0.95,
) -> AdamPick:
    r"""The tuned setting of a search (the runs of :func:`adam_search_grids`, which must
    include ``defaults``), decided with ties resolved toward the defaults: the setting
    :math:`b` with the lowest mean ``value`` among those none of whose runs diverged is
    the pick only if the paired differences :math:`\ell_s(b) - \ell_s(\text{defaults})`
    over the search seeds have a Student-*t* interval at ``level`` wholly below 0;
    otherwise the pick is ``defaults``. A search needs two seeds for an interval; with one,
    the pick is always the defaults. See :class:`AdamPick` for what else is returned."""
    from .stats import t_interval

    table = search_table(runs, value)
    clean = table[table["diverged"] == 0]
    if not len(clean):
        raise ValueError("every setting of the search had a diverged run: there is no best one")
    key = _setting_key(defaults)
    keys = {
        label: (
            str(r["optimizer"]),
            float(r["lr"]),
            float(r["beta2"]),
            int(r["warmup_steps"]),
            float(r["weight_decay"]),
        )
        for label, r in table.iterrows()
    }
    default_label = next((label for label, k in keys.items() if k == key), None)
    if default_label is None:
        raise ValueError(
            f"the search has no run with the defaults {dict(defaults)}; settings: {list(keys)}"
        )
    labelled = _trained(runs).assign(
        setting=[setting_label(r) for _, r in _trained(runs).iterrows()]
    )
    wide = labelled.pivot_table(index="seed", columns="setting", values=value)

    def paired(a: str, b: str) -> Estimate:
        if a == b or a not in wide or b not in wide:
            return Estimate(math.nan, math.nan, math.nan)
        d = (wide[a] - wide[b]).dropna()
        return t_interval(d.to_numpy(), level) if len(d) else Estimate(math.nan, math.nan, math.nan)

    best_label = str(clean.index[0])
    runner = str(clean.index[1]) if len(clean) > 1 else ""
    vs_default = paired(best_label, default_label)
    beats = best_label != default_label and vs_default.n >= 2 and vs_default.hi < 0
    row = clean.iloc[0]
    beta1 = float(runs["beta1"].iloc[0]) if "beta1" in runs.columns else 0.9
    best = {
        "optimizer": str(row["optimizer"]),
        "lr": float(row["lr"]),
        "betas": (beta1, float(row["beta2"])),
        "weight_decay": float(row["weight_decay"]),
        "warmup_steps": int(row["warmup_steps"]),
        "schedule": "constant",
    }
    lrs = runs["lr"].astype(float)
    return AdamPick(
        setting=dict(best) if beats else dict(defaults),
        best=best,
        best_label=best_label,
        default_label=default_label,
        vs_default=vs_default,
        runner_up=runner,
        vs_runner_up=paired(runner, best_label)
        if runner
        else Estimate(math.nan, math.nan, math.nan),
        keeps_default=not beats,
        edge=best["lr"] in (float(lrs.min()), float(lrs.max())),
    )


@dataclass(frozen=True)
class OptimizerContrast:
    r"""Default against tuned Adam next to a norm swap, on confirmation seeds (see the
    module's definitions), in nats, each an :class:`~prenorm.Estimate` over seeds:
    ``gain`` (:math:`G_s = \ell^D_s - \ell^T_s`), ``norm_effect`` (the signed
    :math:`N_s = \ell^R_s - \ell^T_s`), ``gain_minus_effect`` (:math:`G_s - N_s`) and
    ``gain_plus_effect`` (:math:`G_s + N_s`); ``per_seed``, one row per seed with the three
    losses and the four differences; ``dropped``, the seeds left out because a run
    diverged; ``tuned_is_default``, whether the tuned setting was the defaults (then
    :math:`G_s = 0` on every seed, by definition)."""

    gain: Estimate
    norm_effect: Estimate
    gain_minus_effect: Estimate
    gain_plus_effect: Estimate
    per_seed: pd.DataFrame
    dropped: tuple[int, ...]
    tuned_is_default: bool = False


def optimizer_contrast(
    runs: pd.DataFrame,
    arm: str = "arm",
    default: str = "default",
    tuned: str = "tuned",
    by: str = "norm",
    base: str = "layernorm",
    swap: str = "rmsnorm",
    value: str = _VALUE,
    level: float = 0.95,
    tuned_is_default: bool = False,
) -> OptimizerContrast:
    r"""The :class:`OptimizerContrast` of ``runs``: one row per run, with column ``arm``
    (``default`` or ``tuned``), ``by`` (``base`` or ``swap``), ``seed``, ``value`` and
    ``diverged``. Each seed needs the runs (``default``, ``base``), (``tuned``, ``base``)
    and (``tuned``, ``swap``); with ``tuned_is_default`` (the search kept the defaults,
    and :func:`adam_contrast_grids` trained them once) the tuned runs are the default
    arm's own, (``default``, ``base``) and (``default``, ``swap``). A seed with one of its
    runs diverged is dropped (and named in ``dropped``). Intervals are Student-*t* at
    ``level``."""
    from .stats import t_interval

    if not isinstance(tuned_is_default, bool):
        raise TypeError(f"tuned_is_default must be True or False, got {tuned_is_default!r}")
    for col in (arm, by, "seed", value, "diverged"):
        if col not in runs.columns:
            raise KeyError(f"runs lack column {col!r}; columns: {list(runs.columns)}")
    t_arm = default if tuned_is_default else tuned
    cells = {"D": (default, base), "T": (t_arm, base), "R": (t_arm, swap)}
    wide = {}
    bad: set[int] = set()
    for key, (a, n) in cells.items():
        part = runs[(runs[arm] == a) & (runs[by] == n)]
        if part["seed"].duplicated().any():
            raise ValueError(f"more than one run per seed for {arm}={a!r}, {by}={n!r}")
        if not len(part):
            raise ValueError(f"no run for {arm}={a!r}, {by}={n!r}")
        bad |= {int(s) for s in part.loc[part["diverged"].astype(bool), "seed"]}
        wide[key] = part.set_index("seed")[value]
    table = pd.DataFrame(wide).dropna()
    dropped = tuple(sorted(bad | (set(runs["seed"].astype(int)) - set(table.index.astype(int)))))
    table = table.drop(index=[s for s in dropped if s in table.index])
    if len(table) < 2:
        raise ValueError(f"fewer than two complete seeds (dropped: {dropped}): no interval")
    table["gain G"] = table["D"] - table["T"]
    table["norm effect N"] = table["R"] - table["T"]
    table["G - N"] = table["gain G"] - table["norm effect N"]
    table["G + N"] = table["gain G"] + table["norm effect N"]
    table = table.rename(
        columns={"D": f"{default}, {base}", "T": f"{tuned}, {base}", "R": f"{tuned}, {swap}"}
    )
    return OptimizerContrast(
        gain=t_interval(table["gain G"], level),
        norm_effect=t_interval(table["norm effect N"], level),
        gain_minus_effect=t_interval(table["G - N"], level),
        gain_plus_effect=t_interval(table["G + N"], level),
        per_seed=table,
        dropped=dropped,
        tuned_is_default=tuned_is_default,
    )


def adam_contrast_grids(
    default: Mapping[str, object],
    tuned: Mapping[str, object],
    seeds: Sequence[int],
    base: str = "layernorm",
    swap: str = "rmsnorm",
) -> tuple[list[dict[str, list[object]]], list[str]]:
    """The :func:`~prenorm.sweep` grids of the confirmation runs of
    :func:`optimizer_contrast` (``default`` and ``tuned`` are keyword arguments of
    :func:`~prenorm.train`, such as :data:`ADAM_DEFAULTS` and
    :attr:`AdamPick.setting`): ``default`` with norm ``base``, then ``tuned`` with ``base``
    and ``swap``, over ``seeds``; and the ``arm`` of each run in the order the sweep
    returns them (grid order: ``"default"`` for the first grid's runs, ``"tuned"`` for the
    second's). When ``tuned`` equals ``default`` nothing is trained twice: one grid,
    ``default`` with both norms, every run's arm ``"default"`` (pass
    ``tuned_is_default=True`` to :func:`optimizer_contrast`)."""
    seeds = list(seeds)
    if len(seeds) < 2:
        raise ValueError(f"a t-interval needs at least two seeds, got {seeds!r}")
    first = {k: [v] for k, v in default.items()}
    if dict(tuned) == dict(default):
        return [{**first, "norm": [base, swap], "seed": seeds}], ["default"] * (2 * len(seeds))
    second = {k: [v] for k, v in tuned.items()}
    grids = [
        {**first, "norm": [base], "seed": seeds},
        {**second, "norm": [base, swap], "seed": seeds},
    ]
    return grids, ["default"] * len(seeds) + ["tuned"] * (2 * len(seeds))


def plot_adam_contrast(search: pd.DataFrame, contrast: OptimizerContrast, value: str = _VALUE):
    r"""Two panels. Left, the search (``search``, the runs of :func:`adam_search_grids`):
    final loss against the learning rate, Adam's other defaults (solid, circles) and the
    large-model settings (dashed, squares), each seed a small point, the mean a line,
    diverged runs as crosses at the top. Right, the confirmation seeds of ``contrast``:
    each seed's default-LayerNorm, tuned-LayerNorm and tuned-RMSNorm losses joined by a
    grey line. Returns the figure."""
    import matplotlib.pyplot as plt

    from .plotting import NORM_COLORS, TEXT_WIDTH, mark_diverged

    fig, axes = plt.subplots(1, 2, figsize=(TEXT_WIDTH, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    ax = axes[0]
    recipes = (
        ("adam", "-", "o", "0.45", "Adam's defaults"),
        ("adamw", "--", "s", "#55a868", "AdamW, β₂, warmup, wd"),
    )
    for opt, ls, marker, color, label in recipes:
        runs = search[search["optimizer"] == opt]
        ok = _trained(runs)
        mean = ok.groupby("lr")[value].mean()
        ax.plot(mean.index, mean.values, ls, marker=marker, color=color, lw=1.6, label=label)
        ax.scatter(ok["lr"], ok[value], color=color, s=12, alpha=0.6, marker=marker)
        mark_diverged(ax, runs[runs["diverged"].astype(bool)]["lr"], color)
    lrs = sorted(search["lr"].unique())
    ax.set_xscale("log")
    ax.set_xticks(lrs, [f"{v:g}" for v in lrs])
    ax.minorticks_off()
    ax.set_xlabel("learning rate")
    ax.set_ylabel("final validation loss (nats/char)")
    ax.legend(fontsize=9, loc="best")
    ax = axes[1]
    table = contrast.per_seed
    cols = list(table.columns[:3])  # default/base, tuned/base, tuned/swap
    for _, row in table.iterrows():
        ax.plot([0, 1, 2], [row[c] for c in cols], color="0.75", lw=1, zorder=1)
    colours = ["0.45", NORM_COLORS["layernorm"], NORM_COLORS["rmsnorm"]]
    for k, (col, colour) in enumerate(zip(cols, colours, strict=True)):
        ax.scatter(np.full(len(table), k), table[col], color=colour, s=25, zorder=2)
    ticks = ["default\nLN", "tuned\nLN", "tuned\nRMSNorm"]
    if contrast.tuned_is_default:  # the search kept the defaults: the tuned runs are theirs
        ticks = ["default\nLN", "tuned = default\nLN", "default\nRMSNorm"]
    ax.set_xticks([0, 1, 2], ticks, fontsize=10)
    ax.set_xlim(-0.4, 2.4)
    ax.set_ylabel("final validation loss (nats/char)")
    fig.tight_layout()
    return fig


#: The size of tuning gain the post's "larger than most people expect" is read as, in nats:
#: chapter 7's tolerance for "no measurable loss".
TUNING_MAGNITUDE = 0.02


def search_gains(
    runs: pd.DataFrame,
    defaults: Mapping[str, object] = ADAM_DEFAULTS,
    value: str = _VALUE,
    level: float = 0.95,
) -> pd.DataFrame:
    r"""Each searched setting's paired gain over the defaults on the search seeds: one row
    per setting of ``runs`` (the runs of :func:`adam_search_grids`) other than
    ``defaults`` and none of whose runs diverged (a setting with a diverged run cannot be
    the tuned one, :func:`pick_adam_setting`), best first, with the ``mean``, ``lo`` and
    ``hi`` of the Student-*t* interval at ``level`` of :math:`\ell_s(\text{defaults}) -
    \ell_s(j)` over the seeds and ``n``, their number (NaN ends with fewer than two)."""
    from .stats import t_interval

    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    table = search_table(runs, value)
    key = _setting_key(defaults)
    default_label = next(
        (
            label
            for label, r in table.iterrows()
            if (
                str(r["optimizer"]),
                float(r["lr"]),
                float(r["beta2"]),
                int(r["warmup_steps"]),
                float(r["weight_decay"]),
            )
            == key
        ),
        None,
    )
    if default_label is None:
        raise ValueError(f"the search has no run with the defaults {dict(defaults)}")
    ok = _trained(runs)
    wide = ok.assign(setting=[setting_label(r) for _, r in ok.iterrows()]).pivot_table(
        index="seed", columns="setting", values=value
    )
    rows = {}
    for label in table.index[(table["diverged"] == 0) & (table.index != default_label)]:
        d = (wide[default_label] - wide[label]).dropna().to_numpy()
        e = t_interval(d, level) if len(d) >= 2 else Estimate(math.nan, math.nan, math.nan, len(d))
        rows[label] = {"mean": e.value, "lo": e.lo, "hi": e.hi, "n": e.n}
    return pd.DataFrame(rows, index=["mean", "lo", "hi", "n"]).T.astype({"n": int})


def tuning_predictions(magnitude: float = TUNING_MAGNITUDE) -> dict[str, Prediction]:
    r"""The predictions of C14 (chapter 8), stated before its runs, for
    :class:`~prenorm.ClaimTest`. Core, when the search picks a setting other than the
    defaults: ``over_cost``, :math:`\bar G - \bar N > 0`, and ``over_gain``,
    :math:`\bar G + \bar N > 0`, each by its 95% interval on the confirmation seeds. Core,
    when the search keeps the defaults: ``reach``, the largest upper end
    :math:`\max_j u_j` of the searched settings' gain intervals (:func:`search_gains`) is at
    least ``magnitude``. Secondary: ``measurable``, the gain :math:`G`'s interval lies above
    ``magnitude``. Which core applies is decided by :func:`tuning_measurements`."""
    if not (isinstance(magnitude, int | float) and magnitude > 0):
        raise ValueError(f"magnitude must be a positive number of nats, got {magnitude!r}")
    return {
        "over_cost": Prediction(
            "tuning gain minus norm effect, G - N, mean over seeds, 95% t-interval (nats; "
            "when the search picks a non-default setting)",
            ">",
            0.0,
        ),
        "over_gain": Prediction(
            "tuning gain plus norm effect, G + N, mean over seeds, 95% t-interval (nats; "
            "when the search picks a non-default setting)",
            ">",
            0.0,
        ),
        "reach": Prediction(
            "largest upper end of a searched setting's paired gain over the defaults, 95% "
            "t-interval on the search seeds (nats; when the search keeps the defaults)",
            ">=",
            float(magnitude),
        ),
        "measurable": Prediction(
            "tuning gain G, default minus tuned Adam, 95% t-interval (nats)",
            ">",
            float(magnitude),
            core=False,
        ),
    }


def tuning_measurements(
    keeps_default: bool, contrast: OptimizerContrast, upper_ends: Sequence[float]
) -> dict[str, Estimate | None]:
    r"""The measurements of :func:`tuning_predictions`, by id, for
    :meth:`~prenorm.ClaimTest.measure`; ``None`` marks the core that does not apply.

    The rule. When the search picked a setting other than the defaults
    (``keeps_default`` false), the premise of the claim occurred and the core is
    :math:`\bar G \pm \bar N` of ``contrast``: ``over_cost`` and ``over_gain`` decide, and
    ``reach`` does not apply. When the search kept the defaults, :math:`G_s \equiv 0` and the
    premise, a tuned setting that beats the defaults, did not occur: ``over_cost`` and
    ``over_gain`` do not apply, and ``reach`` is measured as the interval
    :math:`(-\infty, \max_j u_j]` of the gains the search leaves possible, ``upper_ends``
    being the :math:`u_j` (the ``hi`` column of :func:`search_gains`; a NaN end, a setting
    with no interval, counts as :math:`+\infty`). Against the threshold :math:`m` of
    ``reach`` this *fails* (the verdict *not reproduced*) when every :math:`u_j < m`, since
    no setting searched can then give the gain the claim asserts, and is *undecided* (the
    verdict *inconclusive*) otherwise: the search could not rule :math:`m` out. ``measurable``
    is the gain :math:`G` in both cases."""
    if not isinstance(keeps_default, bool):
        raise TypeError(f"keeps_default must be True or False, got {keeps_default!r}")
    if not isinstance(contrast, OptimizerContrast):
        raise TypeError(f"contrast must be an OptimizerContrast, got {type(contrast).__name__}")
    if keeps_default != contrast.tuned_is_default:
        raise ValueError(
            f"keeps_default={keeps_default} but the contrast was computed with "
            f"tuned_is_default={contrast.tuned_is_default}"
        )
    if not keeps_default:
        return {
            "over_cost": contrast.gain_minus_effect,
            "over_gain": contrast.gain_plus_effect,
            "reach": None,
            "measurable": contrast.gain,
        }
    ends = [math.inf if math.isnan(float(u)) else float(u) for u in upper_ends]
    if not ends:
        raise ValueError("no searched setting besides the defaults: upper_ends is empty")
    top = max(ends)
    return {
        "over_cost": None,
        "over_gain": None,
        "reach": Estimate(top, -math.inf, top, n=len(ends)),
        "measurable": contrast.gain,
    }
