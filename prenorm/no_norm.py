r"""Designs without a norm, or with a different one (chapter 10): ReZero, DyT and
QK-norm against Pre-LN, and the analyses that compare them.

- :func:`design_of` names each run's design; :data:`DESIGNS` and :func:`design_colors`
  fix their order and colours.
- :func:`descent_targets`, :func:`speedup_table` and :func:`worst_speedup_by_seed` read
  *speed*: the steps a loss curve needs to reach a target loss, and the ratio of two
  designs' steps.
- :func:`alpha_sweep` and :func:`dyt_stream_growth` sum up DyT's sweep of :math:`\alpha_0`
  and the size of the residual stream it sees.
- :func:`attention_logits` sums up the growth of the largest attention logit, with and
  without QK-norm.

Plotting helpers (:func:`plot_speed_curves`, :func:`plot_alpha_sweep`,
:func:`plot_logits`) import matplotlib when called.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .stats import steps_to_reach
from .verdicts import direction

__all__ = [
    "DESIGNS",
    "AlphaSweep",
    "AttentionLogits",
    "alpha_sweep",
    "attention_logits",
    "descent_targets",
    "design_colors",
    "design_of",
    "plot_alpha_sweep",
    "plot_logits",
    "plot_speed_curves",
    "speedup_table",
    "dyt_stream_growth",
    "worst_speedup_by_seed",
]

#: The four designs of chapter 10, in the order of its tables and legends.
DESIGNS: tuple[str, ...] = ("Pre-LN", "Pre-LN + QK-norm", "ReZero", "DyT")


def design_colors() -> dict[str, str]:
    """One colour per design of :data:`DESIGNS`: Pre-LN's and ReZero's placement colours,
    DyT's norm colour, and an orange for QK-norm."""
    from .plotting import NORM_COLORS, PLACEMENT_COLORS

    return {
        "Pre-LN": PLACEMENT_COLORS["pre"],
        "Pre-LN + QK-norm": "#e9a03b",
        "ReZero": PLACEMENT_COLORS["rezero"],
        "DyT": NORM_COLORS["dyt"],
    }


def design_of(frame: pd.DataFrame) -> pd.Series:
    """The design of each row of a sweep's frame: ``"ReZero"`` where ``placement`` is
    ``"rezero"``, else ``"DyT"`` where ``norm`` is ``"dyt"``, else ``"Pre-LN + QK-norm"``
    where ``qk_norm`` is true, else ``"Pre-LN"``. A missing ``qk_norm`` (a grid that did
    not set it) counts as false."""
    qk = frame["qk_norm"].eq(True) if "qk_norm" in frame else pd.Series(False, frame.index)
    design = np.select(
        [frame["placement"].eq("rezero"), frame["norm"].eq("dyt"), qk],
        ["ReZero", "DyT", "Pre-LN + QK-norm"],
        "Pre-LN",
    )
    return pd.Series(design, index=frame.index, name="design")


def descent_targets(loss: Sequence[float], fractions: Sequence[float]) -> list[float]:
    r"""Loss targets part of the way down a curve: for each fraction :math:`f`, the loss
    :math:`\ell_0 - f(\ell_0 - \ell_{\min})`, where :math:`\ell_0` is the curve's first loss
    and :math:`\ell_{\min}` its lowest. :math:`f = 1` gives :math:`\ell_{\min}` exactly (not
    the rounded :math:`\ell_0 - (\ell_0 - \ell_{\min})`), so the curve reaches its own last
    target."""
    v = np.asarray(loss, dtype=float)
    if v.ndim != 1 or not len(v):
        raise ValueError(f"loss must be a non-empty 1-D sequence, got shape {v.shape}")
    start, end = float(v[0]), float(np.nanmin(v))
    return [end if f == 1 else start - f * (start - end) for f in fractions]


def _curve(curves: pd.DataFrame, design: str, lr: float, by: str) -> pd.DataFrame:
    return curves[(curves[by] == design) & (curves.lr == lr)].sort_values("step")


def speedup_table(
    curves: pd.DataFrame,
    lr_of: Mapping[str, float],
    baseline: str,
    other: str,
    fractions: Sequence[float] = (0.5, 0.75, 1.0),
    targets: Sequence[float] | None = None,
    by: str = "design",
) -> pd.DataFrame:
    r"""Steps to reach each target loss, and the speed-up of ``other`` over ``baseline``.

    ``curves`` has rows ``by``, ``lr``, ``step`` and ``loss`` (a probe's loss curves);
    each design ``d`` of ``lr_of`` is read at its learning rate ``lr_of[d]``. The targets
    are ``targets`` if given, else :func:`descent_targets` of the baseline's curve at
    ``fractions``. One row per fraction: ``target``, the steps each design needs to reach
    it (:func:`~prenorm.steps_to_reach`: interpolated linearly; ``inf`` if never), and
    ``speedup`` :math:`= n_\text{baseline} / n_\text{other}` (above 1: ``other`` is
    faster; 0 where ``other`` never reaches it; an undefined ratio, such as
    :math:`\infty/\infty`, counts as 0)."""
    if baseline not in lr_of or other not in lr_of:
        raise KeyError(f"lr_of needs {baseline!r} and {other!r}; it has {list(lr_of)}")
    if targets is None:
        targets = descent_targets(_curve(curves, baseline, lr_of[baseline], by).loss, fractions)
    if len(targets) != len(fractions):
        raise ValueError(f"{len(targets)} targets for {len(fractions)} fractions")
    table = pd.DataFrame(
        {"target": list(targets)}, index=pd.Index(list(fractions), name="fraction")
    )
    for d, lr in lr_of.items():
        c = _curve(curves, d, lr, by)
        table[d] = [steps_to_reach(c.step, c.loss, t) if len(c) else math.inf for t in table.target]
    table["speedup"] = (table[baseline] / table[other]).replace(np.nan, 0.0)
    return table


def worst_speedup_by_seed(
    curves: pd.DataFrame,
    lr_of: Mapping[str, float],
    baseline: str,
    other: str,
    targets: pd.Series,
    seed: str = "seed",
    by: str = "design",
) -> pd.Series:
    """The smallest speed-up over the ``targets`` (a :func:`speedup_table`'s ``target``
    column: target losses indexed by fraction) read off each seed's own curves: one value
    per seed of ``curves`` (rows of every seed, unpooled), in order of the seeds."""
    out = {
        s: float(speedup_table(g, lr_of, baseline, other, targets.index, targets, by).speedup.min())
        for s, g in curves.groupby(seed)
    }
    return pd.Series(out, name="worst speed-up").rename_axis(seed)


@dataclass(frozen=True)
class AlphaSweep:
    r"""DyT against LayerNorm at one learning rate, over DyT's initial :math:`\alpha_0`
    and two initializations (:func:`alpha_sweep`). Losses are final validation losses."""

    table: pd.DataFrame  #: design, init, alpha0 and final_val_loss, one row per cell
    ln_pt: float  #: LayerNorm, PyTorch init
    dyt_pt: float  #: DyT at the default alpha0, PyTorch init
    dyt_pt_best: float  #: DyT at its best alpha0, PyTorch init
    dyt_gpt2_any: float  #: DyT at its best alpha0, GPT-2 init
    n_rescued: int  #: values of alpha0 at which DyT trained with GPT-2's init
    n_alphas: int  #: values of alpha0 tried with GPT-2's init
    pt_default_trained: bool  #: DyT at the default alpha0 trained with PyTorch's init

    def story(self, n_trained: int, n_lrs: int) -> str:
        """The sweep in three clauses, given that DyT trained at ``n_trained`` of the
        ``n_lrs`` learning rates of the first sweep."""
        return (
            f"As a drop-in for LayerNorm in this book's recipe, DyT trained at {n_trained} of "
            f"the {n_lrs} learning rates. At the middle learning rate, {self.n_rescued} of the "
            f"{self.n_alphas} values of α₀ trained with GPT-2's initialization"
            + (", so one scalar did not make up the difference;" if self.n_rescued == 0 else ";")
            + " with PyTorch's initialization and the default α₀ the same DyT "
            + ("trained." if self.pt_default_trained else "did not train either.")
        )

    def values(self) -> dict[str, float]:
        """The four losses by name (``ln_pt``, ``dyt_pt``, ``dyt_pt_best``, ``dyt_gpt2_any``)."""
        return {
            "ln_pt": self.ln_pt,
            "dyt_pt": self.dyt_pt,
            "dyt_pt_best": self.dyt_pt_best,
            "dyt_gpt2_any": self.dyt_gpt2_any,
        }


def alpha_sweep(runs: pd.DataFrame, lr: float, default_alpha0: float = 0.5) -> AlphaSweep:
    r"""Sum up DyT's :math:`\alpha_0` sweep at learning rate ``lr``: ``runs`` has one row
    per cell with ``design`` (``"DyT"`` and ``"Pre-LN"``), ``init``, ``alpha0``, ``lr``,
    ``final_val_loss`` and ``outcome``. A loss of a cell that was not run is NaN."""
    at = runs[(runs.lr == lr) & runs.design.isin(["DyT", "Pre-LN"])]
    dyt, ln = at[at.design == "DyT"], at[at.design == "Pre-LN"]
    gpt2, pt = dyt[dyt.init == "gpt2"], dyt[dyt.init == "pytorch"]
    pt_default = pt[pt.alpha0 == default_alpha0]
    return AlphaSweep(
        table=at[["design", "init", "alpha0", "final_val_loss"]]
        .sort_values(["init", "design", "alpha0"])
        .reset_index(drop=True),
        ln_pt=float(ln[ln.init == "pytorch"].final_val_loss.min()),
        dyt_pt=float(pt_default.final_val_loss.iloc[0]) if len(pt_default) else math.nan,
        dyt_pt_best=float(pt.final_val_loss.min()),
        dyt_gpt2_any=float(gpt2.final_val_loss.min()),
        n_rescued=int((gpt2.outcome == "trained").sum()),
        n_alphas=len(gpt2),
        pt_default_trained=bool(len(pt_default) and (pt_default.outcome == "trained").all()),
    )


def dyt_stream_growth(
    obs: pd.DataFrame, lr: float, step: int, alpha0: float = 0.5, design: str = "DyT"
) -> dict[str, object]:
    r"""How the residual stream entering the head (``layer == n_layers`` of a
    ``residual_norms`` probe) of ``design`` at ``lr`` and ``alpha0`` changes over training.
    Returns ``rms0_dyt`` (its RMS at step 0, GPT-2 init), ``rms_end_dyt_gpt2`` and
    ``rms_end_dyt_pt`` (at ``step``, GPT-2 and PyTorch init; NaN if not reached), and two
    phrases: ``dyt_growth_word`` (:func:`~prenorm.direction` with a factor of 2 counting as
    flat) and ``dyt_growth_clause``, which, if the stream grows so that
    :math:`\alpha_0\,\mathrm{RMS} > 2` (a typical :math:`|\tanh(\alpha x)| > 0.96`), says that
    most entries of :math:`\tanh(\alpha x)` would sit near :math:`\pm 1`."""
    rs = obs[
        (obs.probe == "residual_norms")
        & (obs.design == design)
        & (obs.layer == obs.n_layers)
        & (obs.lr == lr)
        & (obs.alpha0 == alpha0)
    ]
    rms0 = float(rs[(rs.step == 0) & (rs.init == "gpt2")].rms.mean())
    end = rs[rs.step == step]
    end_gpt2 = float(end[end.init == "gpt2"].rms.mean())
    end_pt = float(end[end.init == "pytorch"].rms.mean())
    word = (
        direction(rms0, end_gpt2, 1.0, ("shrinks", "stays flat", "grows"), ratio=True)
        if np.isfinite(end_gpt2)
        else "was not measured to the end"
    )
    clause = "."
    if word == "grows":
        clause = ", so a stream that stays at the embeddings' size is not, by itself, the story."
        if alpha0 * end_gpt2 > 2:
            clause += (
                " A stream that large would put most entries of tanh(αx) near ±1 unless α "
                "shrank in training, a second candidate this chapter does not measure (α was "
                "not recorded)."
            )
    return {
        "rms0_dyt": rms0,
        "rms_end_dyt_gpt2": end_gpt2,
        "rms_end_dyt_pt": end_pt,
        "dyt_growth_word": word,
        "dyt_growth_clause": clause,
    }


@dataclass(frozen=True)
class AttentionLogits:
    """The largest attention logit of each design (:func:`attention_logits`)."""

    top: pd.DataFrame  #: design, lr, step, max_logit: the largest over layers at each step
    end: pd.DataFrame  #: the rows of ``top`` at each (design, lr)'s last probe step
    at_top: pd.Series  #: the end value of each design at the largest learning rate
    start: float  #: Pre-LN's largest logit at step 0
    qk0: float  #: QK-norm's largest logit at step 0

    @property
    def ratio(self) -> float:
        """Pre-LN's end value over QK-norm's, at the largest learning rate."""
        return self.value("Pre-LN") / self.value("Pre-LN + QK-norm")

    def value(self, design: str) -> float:
        """The end value of ``design`` at the largest learning rate (NaN if not run)."""
        return float(self.at_top.get(design, math.nan))

    def wide(self, order: Sequence[str] = DESIGNS) -> pd.DataFrame:
        """The end values, one row per design (in ``order``), one column per learning rate."""
        return self.end.pivot(index="design", columns="lr", values="max_logit").reindex(list(order))


def attention_logits(probes: pd.DataFrame, lr_top: float) -> AttentionLogits:
    """Sum up ``max_attention_logits`` probe rows (``design``, ``lr``, ``step``,
    ``layer``, ``max_logit``; other probes' rows are ignored): the largest logit over the
    layers at each step, its value at each cell's last probe step (the last one every seed
    reached, when the rows pool seeds), and the values at step 0 and at ``lr_top``."""
    att = probes[probes.probe == "max_attention_logits"]
    top = att.groupby(["design", "lr", "step"]).max_logit.max().reset_index()
    end = top[top.step == top.groupby(["design", "lr"]).step.transform("max")]
    at_top = end[end.lr == lr_top].set_index("design").max_logit
    step0 = top[top.step == 0].groupby("design").max_logit.max()
    return AttentionLogits(
        top=top,
        end=end.reset_index(drop=True),
        at_top=at_top,
        start=float(step0.get("Pre-LN", math.nan)),
        qk0=float(step0.get("Pre-LN + QK-norm", math.nan)),
    )


def plot_speed_curves(
    curves: pd.DataFrame,
    lr_of: Mapping[str, float],
    colors: Mapping[str, str],
    targets: Sequence[float] = (),
    ax=None,
    by: str = "design",
):
    """Each design's loss curve at its learning rate ``lr_of[d]``, the ``targets`` as
    dotted lines. Returns the axes."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    for d, lr in lr_of.items():
        c = _curve(curves, d, lr, by)
        ax.plot(c.step, c.loss, marker="o", color=colors[d], lw=1.6, ms=3, label=f"{d} (lr {lr:g})")
    for t in targets:
        ax.axhline(t, ls=":", color="0.4", lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss on the probe batch")
    ax.legend(fontsize=9, ncol=2, loc="upper right")
    return ax


def plot_alpha_sweep(sweep: AlphaSweep, alphas: Sequence[float], entropy: float, ax=None):
    r"""DyT's final loss against :math:`\alpha_0` (log axis) for each initialization, with
    LayerNorm's loss under the same initialization as a dash-dotted line and the unigram
    ``entropy`` as a dashed one. Returns the axes."""
    import matplotlib.pyplot as plt

    from .plotting import INIT_COLORS

    ax = ax or plt.gca()
    t = sweep.table
    for init in ["gpt2", "pytorch"]:
        g = t[(t.design == "DyT") & (t.init == init)].sort_values("alpha0")
        color = INIT_COLORS[init]
        ax.plot(g.alpha0, g.final_val_loss, "o-", color=color, lw=1.6, label=f"DyT, {init} init")
        ln = t[(t.design == "Pre-LN") & (t.init == init)].final_val_loss
        if len(ln):
            ax.axhline(
                float(ln.iloc[0]), color=color, lw=1.2, ls="-.", label=f"LayerNorm, {init} init"
            )
    ax.axhline(entropy, ls="--", color="0.5", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(alphas), [f"{a:g}" for a in alphas])
    ax.set_xlabel(r"DyT's $\alpha_0$")
    ax.set_ylabel("final validation loss (nats/char)")
    ax.legend(fontsize=9, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.22), frameon=False)
    return ax


def plot_logits(
    logits: AttentionLogits, lrs: Sequence[float], colors: Mapping[str, str], width: float
):
    """The largest attention logit against the step (log axis), one panel per learning rate
    of ``lrs``, one line per design of ``colors``; values below 0.01 are drawn at 0.01.
    Returns the figure."""
    import matplotlib.pyplot as plt

    top = logits.top
    fig, axes = plt.subplots(1, len(lrs), figsize=(width, 3.3), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, lr in zip(axes, lrs, strict=True):
        for d, color in colors.items():
            g = top[(top.design == d) & (top.lr == lr)].sort_values("step")
            ax.plot(g.step, g.max_logit.clip(lower=1e-2), "o-", color=color, lw=1.6, ms=3, label=d)
        ax.set_yscale("log")
        ax.set_title(f"learning rate {lr:g}", fontsize=11)
        ax.set_xlabel("step")
    axes[0].set_ylabel("largest attention logit")
    fig.legend(
        *axes[0].get_legend_handles_labels(), ncol=4, fontsize=9, loc="lower center", frameon=False
    )
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig
