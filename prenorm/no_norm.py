r"""Designs without a norm, or with a different one (chapter 10): ReZero, DyT and
QK-norm against Pre-LN, and the analyses that compare them.

- :func:`design_of` names each run's design; :data:`DESIGNS` and :func:`design_colors`
  fix their order and colours; :data:`DYT_EMB` names DyT with the learnable embedding
  scale of Zhu et al.'s LLaMA code (``emb_scale=True``).
- :func:`cell_table` prints a sweep's cells as losses pooled over seeds, a diverged cell
  as the word "diverged" (never as a loss).
- :func:`seed_estimate` turns one value per seed into an :class:`~prenorm.Estimate`
  (Student-t interval, optionally on a log scale), the form in which the chapter's
  verdicts read their measurements.
- :func:`descent_targets`, :func:`speedup_table` and :func:`worst_speedup_by_seed` read
  *speed*: the steps a loss curve needs to reach a target loss, and the ratio of two
  designs' steps; :func:`speedups_by_seed` reads them off each seed's own curves.
- :func:`alpha_sweep` and :func:`dyt_stream_growth` sum up DyT's sweep of :math:`\alpha_0`
  and the size of the residual stream it sees.
- :func:`attention_logits` sums up the growth of the largest attention logit, with and
  without QK-norm; :func:`logit_ratio_by_seed` gives its ratio seed by seed.

Plotting helpers (:func:`plot_speed_curves`, :func:`plot_alpha_sweep`,
:func:`plot_logits`) import matplotlib when called.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .designs import FLAT_FACTOR
from .stats import steps_to_reach, t_interval
from .verdicts import Estimate, direction

__all__ = [
    "DESIGNS",
    "DESIGN_GRIDS",
    "DYT_EMB",
    "INIT_LABELS",
    "AlphaSweep",
    "AttentionLogits",
    "alpha_sweep",
    "attention_logits",
    "cell_table",
    "descent_targets",
    "design_colors",
    "design_of",
    "plot_alpha_sweep",
    "plot_logits",
    "plot_speed_curves",
    "speedup_table",
    "dyt_stream_growth",
    "interval_word",
    "logit_growth_by_seed",
    "logit_ratio_by_seed",
    "seed_estimate",
    "speedup_bounds_by_seed",
    "speedups_by_seed",
    "worst_speedup_by_seed",
]

#: The four designs of chapter 10, in the order of its tables and legends.
DESIGNS: tuple[str, ...] = ("Pre-LN", "Pre-LN + QK-norm", "ReZero", "DyT")

#: DyT with one learnable scalar on the embeddings, initialized to :math:`\sqrt d`
#: (``emb_scale=True``), as in Zhu et al.'s LLaMA code.
DYT_EMB = "DyT + emb. scale"

#: The sweep keys that make each design of chapter 10 (with ``placement="pre"`` and the
#: base ``init`` as sweep defaults), the inverse of :func:`design_of`.
DESIGN_GRIDS: dict[str, dict[str, list[object]]] = {
    "Pre-LN": {"norm": ["layernorm"], "qk_norm": [False]},
    "Pre-LN + QK-norm": {"norm": ["layernorm"], "qk_norm": [True]},
    "ReZero": {"placement": ["rezero"]},
    "DyT": {"norm": ["dyt"], "alpha0": [0.5]},
    DYT_EMB: {"norm": ["dyt"], "alpha0": [0.5], "emb_scale": [True]},
}

#: The initializations of chapter 10 in words, for the prose.
INIT_LABELS: dict[str, str] = {
    "gpt2": "GPT-2's initialization (std 0.02 at every width)",
    "gpt2_scaled": "GPT-2's initialization at GPT-2 small's gain",
    "pytorch": "PyTorch's default initialization",
}


def design_colors(emb_scale: bool = False) -> dict[str, str]:
    """One colour per design of :data:`DESIGNS`: Pre-LN's and ReZero's placement colours,
    DyT's norm colour, and an orange for QK-norm; with ``emb_scale``, also a dark red for
    :data:`DYT_EMB`."""
    from .plotting import NORM_COLORS, PLACEMENT_COLORS

    colors = {
        "Pre-LN": PLACEMENT_COLORS["pre"],
        "Pre-LN + QK-norm": "#e9a03b",
        "ReZero": PLACEMENT_COLORS["rezero"],
        "DyT": NORM_COLORS["dyt"],
    }
    if emb_scale:
        colors[DYT_EMB] = "#8c1c13"
    return colors


def design_of(frame: pd.DataFrame) -> pd.Series:
    """The design of each row of a sweep's frame: ``"ReZero"`` where ``placement`` is
    ``"rezero"``, else :data:`DYT_EMB` where ``norm`` is ``"dyt"`` and ``emb_scale`` is
    true, else ``"DyT"`` where ``norm`` is ``"dyt"``, else ``"Pre-LN + QK-norm"`` where
    ``qk_norm`` is true, else ``"Pre-LN"``. A missing ``qk_norm`` or ``emb_scale`` (a
    grid that did not set it) counts as false."""

    def flag(col: str) -> pd.Series:
        return frame[col].eq(True) if col in frame else pd.Series(False, frame.index)

    dyt = frame["norm"].eq("dyt")
    design = np.select(
        [frame["placement"].eq("rezero"), dyt & flag("emb_scale"), dyt, flag("qk_norm")],
        ["ReZero", DYT_EMB, "DyT", "Pre-LN + QK-norm"],
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


def speedups_by_seed(
    curves: pd.DataFrame,
    lr_of: Mapping[str, float],
    baseline: str,
    other: str,
    targets: pd.Series,
    seed: str = "seed",
    by: str = "design",
) -> pd.DataFrame:
    """The speed-up of ``other`` over ``baseline`` at each of the ``targets`` (a
    :func:`speedup_table`'s ``target`` column: target losses indexed by fraction), read
    off each seed's own curves: one row per seed of ``curves`` (rows of every seed,
    unpooled; in order of the seeds), one column per fraction."""
    out = {
        s: speedup_table(g, lr_of, baseline, other, targets.index, targets, by).speedup
        for s, g in curves.groupby(seed)
    }
    return pd.DataFrame(out).T.rename_axis(seed)


def worst_speedup_by_seed(
    curves: pd.DataFrame,
    lr_of: Mapping[str, float],
    baseline: str,
    other: str,
    targets: pd.Series,
    seed: str = "seed",
    by: str = "design",
) -> pd.Series:
    """The smallest speed-up over the ``targets`` of :func:`speedups_by_seed`: one value
    per seed, in order of the seeds."""
    table = speedups_by_seed(curves, lr_of, baseline, other, targets, seed, by)
    return table.min(axis=1).rename("worst speed-up").astype(float)


def speedup_bounds_by_seed(
    curves: pd.DataFrame,
    lr_of: Mapping[str, float],
    baseline: str,
    other: str,
    targets: pd.Series,
    horizon: float,
    seed: str = "seed",
    by: str = "design",
) -> pd.DataFrame:
    r"""The speed-up :math:`s = n_\text{baseline} / n_\text{other}` of ``other`` at each of
    the ``targets`` (as in :func:`speedups_by_seed`), seed by seed, with a run that never
    reached a target treated as *censored* at the run's length ``horizon`` (it would need
    more than ``horizon`` steps), not as infinitely slow: bounds
    :math:`[\ell, u]` with :math:`\ell = u = s` when both reached it;
    :math:`[\text{horizon}/n_\text{other}, \infty)` when only ``other`` did;
    :math:`[0, n_\text{baseline}/\text{horizon}]` when only the baseline did; and
    :math:`[0, \infty)` when neither did. One row per seed: ``lo`` and ``hi``, the bounds
    of the worst (smallest) speed-up over the targets; ``last_lo`` and ``last_hi``, those
    of the last target's; ``censored``, how many of its targets a run missed."""
    if not (isinstance(horizon, int | float) and horizon > 0):
        raise ValueError(f"horizon must be a positive number of steps, got {horizon!r}")
    rows = {}
    for s, g in curves.groupby(seed):
        t = speedup_table(g, lr_of, baseline, other, targets.index, targets, by)
        nb, no = t[baseline].to_numpy(float), t[other].to_numpy(float)
        both = np.isfinite(nb) & np.isfinite(no)
        with np.errstate(divide="ignore", invalid="ignore"):
            lo = np.where(both, nb / no, np.where(np.isfinite(no), horizon / no, 0.0))
            hi = np.where(both, nb / no, np.where(np.isfinite(nb), nb / horizon, math.inf))
        rows[s] = {
            "lo": float(lo.min()),
            "hi": float(hi.min()),
            "last_lo": float(lo[-1]),
            "last_hi": float(hi[-1]),
            "censored": int((~both).sum()),
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(seed)


def logit_growth_by_seed(
    probes: pd.DataFrame, lr: float, design: str, seed: str = "seed"
) -> pd.Series:
    """How much ``design``'s largest attention logit (the largest over layers) grew at
    ``lr``: its value at the run's last probe step over its value at step 0, from each
    seed's own ``max_attention_logits`` rows. One value per seed (NaN if not run)."""
    out = {}
    for s, g in probes.groupby(seed):
        top = attention_logits(g, lr).top
        cell = top[(top.design == design) & (top.lr == lr)].sort_values("step")
        out[s] = (
            float(cell.max_logit.iloc[-1] / cell.max_logit.iloc[0])
            if len(cell) and cell.step.iloc[0] == 0
            else math.nan
        )
    return pd.Series(out, name="logit growth", dtype=float).rename_axis(seed)


def seed_estimate(
    values: Sequence[float] | pd.Series, level: float = 0.95, log: bool = False
) -> Estimate:
    r"""One value per seed as an :class:`~prenorm.Estimate`: the mean with its Student-t
    interval (:func:`~prenorm.t_interval`), :math:`\bar v \pm t_{(1+\text{level})/2,\,n-1}
    s/\sqrt n`. With ``log``, the interval is computed on :math:`\log_{10} v` and carried
    back, so the value is the geometric mean (for ratios, which multiply). Values that are
    not finite (a target never reached gives a speed-up of :math:`\infty`), or a single
    value, give the mean with the interval :math:`(-\infty, \infty)`: a spread that cannot
    be measured decides nothing."""
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or not len(v) or np.isnan(v).any():
        raise ValueError(f"seed_estimate needs one number per seed, got {values!r}")
    if log and (v <= 0).any():
        raise ValueError(f"log=True needs positive values, got {v.tolist()}")
    if not np.isfinite(v).all() or len(v) < 2:
        with np.errstate(invalid="ignore"):
            centre = float(np.exp(np.log(v).mean())) if log else float(v.mean())
        return Estimate(centre, -math.inf, math.inf, n=len(v))
    if not log:
        return t_interval(v, level)
    e = t_interval(np.log10(v), level)
    return Estimate(10**e.value, 10**e.lo, 10**e.hi, n=e.n, sd=e.sd, log10=True)


def interval_word(
    estimate: Estimate,
    words: tuple[str, str, str] = ("lowered", "did not measurably change", "raised"),
) -> str:
    """The word for a difference measured with its interval: ``words[0]`` when the whole
    interval lies below 0, ``words[2]`` when it lies above 0, else ``words[1]`` (0 is
    inside it, or the interval is not known)."""
    if estimate.hi < 0:
        return words[0]
    if estimate.lo > 0:
        return words[2]
    return words[1]


def cell_table(
    runs: pd.DataFrame,
    index: str,
    columns: str,
    order: Sequence[object] | None = None,
    value: str = "final_val_loss",
    digits: int = 3,
) -> pd.DataFrame:
    """A sweep's cells as text, one row per level of ``index`` (in ``order`` if given),
    one column per level of ``columns``: ``runs`` has one row per run (a ``seed`` column
    among them, and ``diverged``); a cell whose seeds all finished shows the mean of
    ``value`` over its seeds to ``digits`` decimals; a cell in which any seed diverged
    shows ``"diverged (k of n)"`` instead of a number, since a diverged run's last loss
    is the loss before it blew up, not a final loss; a cell not run is empty."""
    for col in (index, columns, value, "diverged"):
        if col not in runs.columns:
            raise KeyError(f"cell_table needs a {col!r} column; columns: {list(runs.columns)}")
    groups = runs.groupby([index, columns], dropna=False)
    cells = groups.agg(
        mean=(value, "mean"), k=("diverged", "sum"), n=("diverged", "size")
    ).reset_index()
    cells["text"] = [
        f"diverged ({int(k)} of {int(n)})" if k else f"{m:.{digits}f}"
        for m, k, n in zip(cells["mean"], cells.k, cells.n, strict=True)
    ]
    wide = cells.pivot(index=index, columns=columns, values="text").fillna("")
    return wide.reindex(list(order)).fillna("") if order is not None else wide


@dataclass(frozen=True)
class AlphaSweep:
    r"""DyT against LayerNorm at one learning rate, over DyT's initial :math:`\alpha_0`
    and two initializations, ``base_init`` and PyTorch's (:func:`alpha_sweep`). Losses
    are final validation losses, the mean over a cell's seeds; a cell in which a seed
    diverged has no loss (NaN) here, and does not count as trained."""

    table: pd.DataFrame  #: design, init, alpha0, final_val_loss, diverged, outcome; per cell
    points: pd.DataFrame  #: the same cells seed by seed (``seed`` column; empty if not given)
    base_init: str  #: the chapter's initialization, against PyTorch's
    ln_base: float  #: LayerNorm, base init
    ln_pt: float  #: LayerNorm, PyTorch init
    dyt_pt: float  #: DyT at the default alpha0, PyTorch init
    dyt_pt_best: float  #: DyT at its best alpha0, PyTorch init
    dyt_base_best: float  #: DyT at its best alpha0, base init
    best_alpha0: float  #: the alpha0 of ``dyt_base_best``
    n_rescued: int  #: values of alpha0 at which DyT trained with the base init
    n_alphas: int  #: values of alpha0 tried with the base init
    pt_default_trained: bool  #: DyT at the default alpha0 trained with PyTorch's init

    def story(self, n_trained: int, n_lrs: int) -> str:
        r"""The sweep in clauses that follow its numbers, given that DyT (default
        :math:`\alpha_0`, base init) trained at ``n_trained`` of the ``n_lrs`` learning
        rates of the first sweep. "Trained" is :func:`~prenorm.outcome`'s word."""
        base = INIT_LABELS.get(self.base_init, self.base_init)
        text = (
            f"As a drop-in for LayerNorm in this book's recipe, DyT trained at {n_trained} of "
            f"the {n_lrs} learning rates. At the middle learning rate it trained at "
            f"{self.n_rescued} of the {self.n_alphas} values of α₀ tried with {base}"
        )
        if self.n_rescued == 0:
            text += ", so no value of that one scalar made up for the norm"
        text += "; with PyTorch's default initialization and the default α₀ it "
        if self.pt_default_trained:
            text += "trained as well." if self.n_rescued else "trained."
        else:
            text += "did not train either." if self.n_rescued == 0 else "did not train."
        return text

    def values(self) -> dict[str, float]:
        """The losses by name (``ln_base``, ``ln_pt``, ``dyt_pt``, ``dyt_pt_best``,
        ``dyt_base_best``) and ``best_alpha0``."""
        return {
            "ln_base": self.ln_base,
            "ln_pt": self.ln_pt,
            "dyt_pt": self.dyt_pt,
            "dyt_pt_best": self.dyt_pt_best,
            "dyt_base_best": self.dyt_base_best,
            "best_alpha0": self.best_alpha0,
        }


def _min(frame: pd.DataFrame) -> float:
    ok = frame[~frame.diverged.astype(bool)]
    return float(ok.final_val_loss.min()) if len(ok) else math.nan


def alpha_sweep(
    runs: pd.DataFrame,
    lr: float,
    base_init: str = "gpt2_scaled",
    default_alpha0: float = 0.5,
    by_seed: pd.DataFrame | None = None,
) -> AlphaSweep:
    r"""Sum up DyT's :math:`\alpha_0` sweep at learning rate ``lr``: ``runs`` has one row
    per cell with ``design`` (``"DyT"`` and ``"Pre-LN"``; other designs are ignored),
    ``init`` (``base_init`` or ``"pytorch"``), ``alpha0``, ``lr``, ``final_val_loss``,
    ``diverged`` and ``outcome``; ``by_seed``, if given, the same runs seed by seed, kept
    for the figure. A cell that diverged has no loss (its best and its ``final_val_loss``
    in :attr:`AlphaSweep.table` are NaN); a loss of a cell that was not run is NaN."""
    if base_init == "pytorch":
        raise ValueError("base_init must differ from 'pytorch', the init it is compared with")
    inits = [base_init, "pytorch"]

    def at(frame: pd.DataFrame) -> pd.DataFrame:
        keep = frame.design.isin(["DyT", "Pre-LN"]) & frame.init.isin(inits)
        return frame[(frame.lr == lr) & keep]

    cells = at(runs)
    dyt, ln = cells[cells.design == "DyT"], cells[cells.design == "Pre-LN"]
    base, pt = dyt[dyt.init == base_init], dyt[dyt.init == "pytorch"]
    pt_default = pt[pt.alpha0 == default_alpha0]
    ok_base = base[~base.diverged.astype(bool)]
    table = cells[["design", "init", "alpha0", "final_val_loss", "diverged", "outcome"]].copy()
    table.loc[table.diverged.astype(bool), "final_val_loss"] = math.nan
    points = pd.DataFrame() if by_seed is None else at(by_seed).reset_index(drop=True)
    return AlphaSweep(
        table=table.sort_values(["init", "design", "alpha0"]).reset_index(drop=True),
        points=points,
        base_init=base_init,
        ln_base=_min(ln[ln.init == base_init]),
        ln_pt=_min(ln[ln.init == "pytorch"]),
        dyt_pt=_min(pt_default),
        dyt_pt_best=_min(pt),
        dyt_base_best=_min(base),
        best_alpha0=(
            float(ok_base.alpha0[ok_base.final_val_loss.idxmin()]) if len(ok_base) else math.nan
        ),
        n_rescued=int((base.outcome == "trained").sum()),
        n_alphas=len(base),
        pt_default_trained=bool(len(pt_default) and (pt_default.outcome == "trained").all()),
    )


def dyt_stream_growth(
    obs: pd.DataFrame,
    lr: float,
    step: int,
    alpha0: float = 0.5,
    design: str = "DyT",
    base_init: str = "gpt2_scaled",
    prefix: str = "dyt",
) -> dict[str, object]:
    r"""How the residual stream entering the head (``layer == n_layers`` of a
    ``residual_norms`` probe) of ``design`` at ``lr`` and ``alpha0`` changes over training.
    Returns, under keys that start with ``prefix``: ``rms0_{prefix}`` (its RMS at step 0,
    ``base_init``), ``rms_end_{prefix}_base`` and ``rms_end_{prefix}_pt`` (at ``step``,
    ``base_init`` and PyTorch's init; NaN if not reached), and two phrases:
    ``{prefix}_growth_word`` (:func:`~prenorm.direction` with a factor of
    :data:`~prenorm.FLAT_FACTOR` counting as flat) and ``{prefix}_growth_clause``. If the stream grows, the clause says so; if it
    grows so far that :math:`\alpha_0\,\mathrm{RMS} > 2`, it adds the value
    :math:`\tanh(\alpha_0\,\mathrm{RMS})` (above 0.96: an entry of that size sits in the
    flat part of tanh, unless :math:`\alpha` shrank in training, which is not recorded)."""
    rs = obs[
        (obs.probe == "residual_norms")
        & (obs.design == design)
        & (obs.layer == obs.n_layers)
        & (obs.lr == lr)
        & (obs.alpha0 == alpha0)
    ]
    rms0 = float(rs[(rs.step == 0) & (rs.init == base_init)].rms.mean())
    end = rs[rs.step == step]
    end_base = float(end[end.init == base_init].rms.mean())
    end_pt = float(end[end.init == "pytorch"].rms.mean())
    word = (
        direction(rms0, end_base, FLAT_FACTOR - 1, ("shrinks", "stays flat", "grows"), ratio=True)
        if np.isfinite(end_base)
        else "was not measured to the end"
    )
    clause = "."
    if word == "grows":
        clause = ", so the stream does not stay at the embeddings' size."
        if alpha0 * end_base > 2:
            clause += (
                f" An entry the size of that RMS would give tanh(α₀x) = "
                f"{math.tanh(alpha0 * end_base):.2f}, in the flat part of tanh, unless α "
                "shrank in training (α was not recorded)."
            )
    return {
        f"rms0_{prefix}": rms0,
        f"rms_end_{prefix}_base": end_base,
        f"rms_end_{prefix}_pt": end_pt,
        f"{prefix}_growth_word": word,
        f"{prefix}_growth_clause": clause,
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

    def table(self, runs: pd.DataFrame, order: Sequence[str] = DESIGNS) -> pd.DataFrame:
        """:meth:`wide` as text: a cell that diverged (``runs``: one row per cell with
        ``design``, ``lr``, ``diverged`` and ``diverged_at``) reads ``"diverged (step k)"``,
        ``k`` its earliest stop, instead of the logit at the last step it reached."""
        text = self.wide(order).map(lambda v: "" if pd.isna(v) else f"{v:.1f}")
        for r in runs[runs.diverged.astype(bool)].itertuples():
            if r.design in text.index and r.lr in text.columns:
                text.loc[r.design, r.lr] = f"diverged (step {int(r.diverged_at)})"
        return text

    def end_phrase(self, design: str, runs: pd.DataFrame, lr: float) -> str:
        """``"<design>'s ends at <value>"``, or, if ``design`` diverged at ``lr`` (``runs``
        as in :meth:`table`), ``"<design> diverged there (by step k), so it has no end
        value"``; the value is read at ``lr`` (:meth:`value` reads the largest learning
        rate)."""
        cell = runs[(runs.design == design) & (runs.lr == lr)]
        if len(cell) and cell.diverged.astype(bool).any():
            k = int(cell.diverged_at.min())
            return f"{design} diverged there (by step {k}), so it has no end value"
        v = self.end[(self.end.design == design) & (self.end.lr == lr)].max_logit
        return f"{design}'s ends at {float(v.iloc[0]):.1f}" if len(v) else f"{design} was not run"


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


def logit_ratio_by_seed(
    probes: pd.DataFrame,
    lr_top: float,
    without: str = "Pre-LN",
    with_: str = "Pre-LN + QK-norm",
    seed: str = "seed",
) -> pd.Series:
    """:attr:`AttentionLogits.ratio` seed by seed: the largest attention logit of
    ``without`` over that of ``with_`` at ``lr_top``, each at its own last probe step, from
    each seed's own ``max_attention_logits`` rows (unpooled). One value per seed."""
    out = {
        s: attention_logits(g, lr_top).value(without) / attention_logits(g, lr_top).value(with_)
        for s, g in probes.groupby(seed)
    }
    return pd.Series(out, name="logit ratio", dtype=float).rename_axis(seed)


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


def plot_alpha_sweep(sweep: AlphaSweep, entropy: float, ax=None, emb: pd.DataFrame | None = None):
    r"""DyT's final loss against :math:`\alpha_0` (log axis, one tick per value tried), one
    series per initialization (colour and marker): each seed as a small hollow point
    (:attr:`AlphaSweep.points`), the cell's mean as a filled one on a line; a seed that
    diverged as a cross above the frame (:func:`~prenorm.mark_diverged`), never as a loss.
    LayerNorm's loss under the same initialization is a dash-dotted line, the unigram
    ``entropy`` a dashed grey one. ``emb``, if given (runs of :data:`DYT_EMB` at the same
    learning rate, one row per seed), adds its seeds and mean as stars. Returns the axes."""
    import matplotlib.pyplot as plt

    from .plotting import INIT_COLORS, mark_diverged

    ax = ax or plt.gca()
    pts, t = sweep.points, sweep.table
    styles = {sweep.base_init: ("o", "-"), "pytorch": ("s", "--")}
    alphas = sorted(t[t.design == "DyT"].alpha0.dropna().unique())
    for k, (init, (marker, ls)) in enumerate(styles.items()):
        color = INIT_COLORS.get(init, "#1d5c63")
        label = {"pytorch": "PyTorch init"}.get(init, f"{init} init")
        shift = 1.06 ** (k - 0.5)  # the two inits' seeds side by side, not on top
        if len(pts):
            p = pts[(pts.design == "DyT") & (pts.init == init)]
            ok = p[~p.diverged.astype(bool)]
            ax.scatter(
                ok.alpha0 * shift,
                ok.final_val_loss,
                s=22,
                marker=marker,
                facecolors="none",
                edgecolors=color,
                linewidths=1.1,
                zorder=3,
            )
            mark_diverged(ax, list(p[p.diverged.astype(bool)].alpha0 * shift), color)
        g = t[(t.design == "DyT") & (t.init == init)].sort_values("alpha0")
        ax.plot(
            g.alpha0 * shift,
            g.final_val_loss,
            marker=marker,
            ls=ls,
            color=color,
            lw=1.6,
            ms=7,
            label=f"DyT, {label} (mean)",
            zorder=4,
        )
        ln = t[(t.design == "Pre-LN") & (t.init == init)].final_val_loss
        if len(ln) and np.isfinite(ln.iloc[0]):
            ax.axhline(float(ln.iloc[0]), color=color, lw=1.2, ls="-.", label=f"LayerNorm, {label}")
    if emb is not None and len(emb):
        red = "#8c1c13"
        ok = emb[~emb.diverged.astype(bool)]
        ax.scatter(
            ok.alpha0,
            ok.final_val_loss,
            s=60,
            marker="*",
            facecolors="none",
            edgecolors=red,
            linewidths=1.1,
            zorder=3,
        )
        if len(ok) == len(emb):
            ax.plot(
                [float(emb.alpha0.iloc[0])],
                [float(ok.final_val_loss.mean())],
                "*",
                color=red,
                ms=13,
                label=f"{DYT_EMB}, {sweep.base_init} init (mean)",
                zorder=5,
            )
        mark_diverged(ax, list(emb[emb.diverged.astype(bool)].alpha0), red)
    ax.axhline(entropy, ls="--", color="0.5", lw=1, label="unigram entropy")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(alphas), [f"{a:g}" for a in alphas])
    ax.minorticks_off()
    ax.set_xlabel(r"DyT's initial $\alpha_0$ (log scale)")
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
