r"""Grids of training runs sorted by outcome, and what chapter 5 reads from them: is
warmup load-bearing?

The runs come from :func:`~prenorm.sweep` (one row per run, :func:`~prenorm.runs_of`)
with an ``outcome`` column (:func:`~prenorm.outcome`: ``"trained"``, ``"stalled"`` or
``"diverged"``). A *cell* is one point of the grid without its seed, by default
:data:`CELL` = (depth, learning rate, warmup length). The functions here count and rate
outcomes per cell (:func:`outcome_counts`, :func:`rate_table`), find the cells that
one placement fails and the other trains (:func:`split_cells`), what warmup changes
(:func:`warmup_gain`, :func:`rescued_cells`), run the controls that would each do
warmup's job under another explanation of it (:func:`warmup_controls`,
:func:`trained_counts`, :func:`matches_treatment`), follow a model's gradient through
its first steps (:func:`first_steps`) and compare the placements where both trained
(:func:`trained_cells`, :func:`paired_t`). The plotting helpers import matplotlib on
first use.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .stats import paired_difference, rate, rate_interval, t_quantile
from .verdicts import Estimate

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .data import Corpus
    from .probes import Batch

__all__ = [
    "CELL",
    "CELL_WORDS",
    "PairedT",
    "cell_differences",
    "control_labels",
    "first_steps",
    "matches_treatment",
    "necessity_table",
    "diff_ranges",
    "escape_clause",
    "need_estimate",
    "need_rate",
    "outcome_counts",
    "paired_t",
    "plot_cell_differences",
    "plot_controls",
    "plot_first_steps",
    "plot_long_runs",
    "plot_stability_map",
    "plot_warmup_curves",
    "rate_table",
    "rescued_cells",
    "split_cells",
    "stall_escape",
    "trained_cells",
    "trained_counts",
    "largest_of",
    "warmup_controls",
    "warmup_gain",
    "warmup_gains",
    "warmup_changed_cells",
]

#: The columns that make a cell of a training grid: every run of a cell differs from the
#: others only in its seed (and, where it is a column, its placement).
CELL: tuple[str, ...] = ("n_layers", "lr", "warmup_steps")


def _need(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"columns {missing} are not in the frame; columns: {list(frame.columns)}")


def outcome_counts(runs: pd.DataFrame, by: Sequence[str]) -> pd.Series:
    """How the runs of each group (the columns ``by``) ended, in words: ``"2 trained,
    1 stalled"``, the outcomes from the most to the least frequent (ties in order of
    first appearance). One entry per group, indexed by ``by``."""
    _need(runs, [*by, "outcome"])
    return runs.groupby(list(by)).outcome.agg(
        lambda s: ", ".join(f"{n} {w}" for w, n in s.value_counts().items())
    )


def rate_table(
    runs: pd.DataFrame, by: Sequence[str], words: Sequence[str] = ("trained", "failed")
) -> pd.DataFrame:
    """The outcome rates of each group of runs (the columns ``by``): one row per group,
    with ``by``, the number of runs ``n`` and one column per word of ``words``, the
    fraction of the group's runs with that outcome (:func:`~prenorm.rate`; ``"failed"``
    is stalled or diverged)."""
    _need(runs, [*by, "outcome"])
    rows = [
        {
            **dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True)),
            "n": len(g),
            **{w: rate(g.outcome, w) for w in words},
        }
        for key, g in runs.groupby(list(by))
    ]
    return pd.DataFrame(rows, columns=[*by, "n", *words])


def split_cells(
    runs: pd.DataFrame,
    fails: object = "post",
    trains: object = "pre",
    by: str = "placement",
    cell: Sequence[str] = CELL,
) -> pd.Series:
    """For every cell (the columns ``cell``): whether the runs split by ``by``, every run
    with ``by == fails`` failing (stalled or diverged) and every run with
    ``by == trains`` training. A cell missing either side is not split. A boolean
    Series indexed by ``cell``."""
    _need(runs, [*cell, by, "outcome"])
    return runs.groupby(list(cell)).apply(
        lambda g: (
            rate(g.outcome[g[by] == fails], "failed") == 1
            and rate(g.outcome[g[by] == trains], "trained") == 1
        )
    )


def warmup_gain(
    runs: pd.DataFrame,
    warm: int,
    value: str = "final_val_loss",
    cell: Sequence[str] = ("n_layers", "lr"),
) -> pd.Series:
    r"""What a warmup of ``warm`` steps gains in each cell (the columns ``cell``):
    :math:`\bar y(T_w = 0) - \bar y(T_w = \text{warm})`, the mean of ``value`` over the
    cell's runs without warmup less its mean with it (positive: warmup lowered the loss).
    Indexed by ``cell``."""
    _need(runs, [*cell, "warmup_steps", value])
    means = runs.groupby([*cell, "warmup_steps"])[value].mean()
    return means.xs(0, level="warmup_steps") - means.xs(warm, level="warmup_steps")


def warmup_gains(
    runs: pd.DataFrame,
    warm: int,
    value: str = "final_val_loss",
    cell: Sequence[str] = ("n_layers", "lr"),
    level: float = 0.95,
) -> pd.DataFrame:
    r"""What a warmup of ``warm`` steps gains in each cell (the columns ``cell``), seed
    by seed, with an interval: the paired differences
    :math:`d_{ci} = y_{ci}(T_w = 0) - y_{ci}(T_w = \text{warm})` of ``value`` (positive:
    warmup lowered the loss) for the seeds :math:`i` with both runs finite, their mean
    :math:`\bar d_c` (``mean``, over ``n`` pairs) and a Student-t interval ``lo``, ``hi``
    at ``level`` built on the SD pooled over the cells,

    .. math:: s_p^2 = \frac{\sum_c \sum_i (d_{ci} - \bar d_c)^2}{\sum_c (n_c - 1)},
        \qquad \bar d_c \pm t_{(1+\text{level})/2,\ \sum_c (n_c - 1)}\, s_p/\sqrt{n_c},

    which assumes one spread of the seed-to-seed difference in every cell and, with two
    seeds a cell, gives far narrower intervals than one :math:`t` with one degree of
    freedom per cell. ``sd`` and ``df`` are :math:`s_p` and its degrees of freedom (the
    interval is infinite when ``df`` is 0). Pass one placement's runs. Indexed by
    ``cell``; a cell with no complete pair is left out."""
    _need(runs, [*cell, "warmup_steps", "seed", value])
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level!r}")
    sides = runs[runs.warmup_steps.isin([0, warm])]
    if sides.duplicated([*cell, "warmup_steps", "seed"]).any():
        raise ValueError(f"more than one run per cell {list(cell)}, warmup and seed")
    wide = sides.pivot_table(
        index=[*cell, "seed"], columns="warmup_steps", values=value, aggfunc="first"
    )
    if 0 not in wide.columns or warm not in wide.columns:
        raise ValueError(f"the runs need both warmup 0 and warmup {warm}")
    d = (wide[0] - wide[warm]).dropna()
    groups = d.groupby(level=list(cell))
    n, mean = groups.size(), groups.mean()
    df = int((n - 1).sum())
    ss = float(((d - groups.transform("mean")) ** 2).sum())
    sd = math.sqrt(ss / df) if df else math.nan
    half = t_quantile((1 + level) / 2, df) * sd / np.sqrt(n) if df else math.inf
    table = pd.DataFrame({"n": n, "mean": mean, "lo": mean - half, "hi": mean + half})
    return table.assign(sd=sd, df=df)


def largest_of(table: pd.DataFrame) -> Estimate:
    r"""The largest of several cell means (``table``: one row per cell with ``mean``,
    ``lo``, ``hi``, as :func:`warmup_gains` gives), judged with every cell's interval:
    value :math:`\max_c \bar d_c`, interval :math:`[\max_c lo_c, \max_c hi_c]`. A
    prediction "every cell is at most :math:`t`" then holds when every cell's interval
    lies below :math:`t`, fails when some cell's lies wholly above it, and is undecided
    otherwise; the maximum of noisy means alone would be biased upward. NaN for no
    cells."""
    _need(table, ["mean", "lo", "hi"])
    if not len(table):
        return Estimate(math.nan, math.nan, math.nan, 0)
    return Estimate(
        float(table["mean"].max()), float(table.lo.max()), float(table.hi.max()), len(table)
    )


def rescued_cells(
    runs: pd.DataFrame, warm: int, cell: Sequence[str] = ("n_layers", "lr")
) -> pd.DataFrame:
    """The cells (the columns ``cell``) where some run without warmup failed, each with
    ``rescued``: whether every run of the cell trained with a warmup of ``warm`` steps.
    Pass the runs of one placement. Indexed by ``cell``."""
    _need(runs, [*cell, "warmup_steps", "outcome"])
    all_trained = (
        runs.groupby([*cell, "warmup_steps"])
        .outcome.apply(lambda s: (s == "trained").all())
        .unstack("warmup_steps")
    )
    failing = all_trained[~all_trained[0].astype(bool)]
    return pd.DataFrame({"rescued": failing[warm].astype(bool)})


def warmup_changed_cells(
    runs: pd.DataFrame, warm: int, cell: Sequence[str] = ("placement", "n_layers", "lr")
) -> pd.Series:
    """For every cell (the columns ``cell``, placement included by default): whether a
    warmup of ``warm`` steps changed its outcomes, that is whether the counts of
    trained, stalled and diverged runs (:func:`outcome_counts`) differ between the runs
    without warmup and those with it. A boolean Series indexed by ``cell``; a cell
    missing either side raises."""
    _need(runs, [*cell, "warmup_steps", "outcome"])
    out = {}
    for key, g in runs.groupby(list(cell)):
        w, c = g[g.warmup_steps == warm].outcome, g[g.warmup_steps == 0].outcome
        if not (len(w) and len(c)):
            raise ValueError(f"cell {key} lacks runs with warmup {warm} or without warmup")
        out[key] = w.value_counts().to_dict() != c.value_counts().to_dict()
    index = pd.MultiIndex.from_tuples(list(out), names=list(cell)) if len(cell) > 1 else None
    return pd.Series(list(out.values()), index=index if index is not None else list(out))


def necessity_table(
    runs: pd.DataFrame, warm: int, cell: Sequence[str] = ("n_layers", "lr")
) -> pd.DataFrame:
    """What warmup does in each cell (the columns ``cell``) of one placement's runs: the
    number of runs with a warmup of ``warm`` steps (``n_warm``) and the fraction of them
    that trained (``trained_warm``), the number without warmup (``n_cold``) and the
    fraction of them that failed, stalled or diverged (``failed_cold``), and
    ``warmup_trains``: whether every run with warmup trained, the cells where the
    necessity of warmup can be tested. Indexed by ``cell``; a cell missing either side
    raises."""
    _need(runs, [*cell, "warmup_steps", "outcome"])
    rows = []
    for key, g in runs.groupby(list(cell)):
        w, c = g[g.warmup_steps == warm].outcome, g[g.warmup_steps == 0].outcome
        if not (len(w) and len(c)):
            raise ValueError(f"cell {key} lacks runs with warmup {warm} or without warmup")
        rows.append(
            {
                **dict(zip(cell, key if isinstance(key, tuple) else (key,), strict=True)),
                "n_warm": len(w),
                "trained_warm": rate(w, "trained"),
                "n_cold": len(c),
                "failed_cold": rate(c, "failed"),
            }
        )
    table = pd.DataFrame(rows).set_index(list(cell))
    table["warmup_trains"] = table.trained_warm == 1
    return table


def need_rate(table: pd.DataFrame) -> float:
    r"""The failure rate without warmup pooled over the cells of ``table``
    (:func:`necessity_table`) where every run with warmup trained:
    :math:`\sum_c n_c f_c / \sum_c n_c` over those cells, with :math:`n_c` the runs
    without warmup and :math:`f_c` the fraction of them that failed. 1 means that
    wherever warmup trains Post-LN, leaving it out failed every run; NaN when no cell
    qualifies (necessity cannot be tested)."""
    _need(table, ["n_cold", "failed_cold", "warmup_trains"])
    sub = table[table.warmup_trains]
    if not len(sub):
        return math.nan
    return float((sub.n_cold * sub.failed_cold).sum() / sub.n_cold.sum())


def need_estimate(
    runs: pd.DataFrame, warm: int, cell: Sequence[str] = ("n_layers", "lr")
) -> Estimate:
    """:func:`need_rate` with its 95% Wilson interval (:func:`~prenorm.rate_interval`):
    the failure rate of the runs without warmup in the cells of ``runs`` (one
    placement's, as for :func:`necessity_table`) where every run with ``warm`` warmup
    steps trained. A handful of runs gives a wide interval, so a threshold inside it
    leaves the prediction undecided rather than decided by two runs. NaN when no cell
    qualifies."""
    table = necessity_table(runs, warm, cell)
    cells = table.index[table.warmup_trains]
    key = pd.MultiIndex.from_frame(runs[list(cell)]) if len(cell) > 1 else runs[cell[0]]
    cold = runs[(runs.warmup_steps == 0) & key.isin(cells)]
    return rate_interval(cold.outcome, "failed")


def diff_ranges(diffs: pd.DataFrame, depths: Sequence[int], column: str = "mean") -> str:
    """The per-cell differences of ``diffs`` (:func:`cell_differences`: one row per cell,
    ``n_layers`` and the difference in ``column``) summed up per depth in words: "from
    -0.053 to +0.075 nats at L = 6"; a depth with one cell reads "+0.491 nats at L = 12
    (one cell)"; depths without cells are left out, and none at all gives "over no
    cell"."""
    _need(diffs, ["n_layers", column])
    parts = []
    for L in depths:
        d = diffs.loc[diffs.n_layers == L, column]
        if len(d) == 1:
            parts.append(f"{d.iloc[0]:+.3f} nats at L = {L} (one cell)")
        elif len(d):
            parts.append(f"from {d.min():+.3f} to {d.max():+.3f} nats at L = {L}")
    return "; ".join(parts) or "over no cell"


def stall_escape(
    hist: pd.DataFrame, at: int, entropy: float, margin: float, run: Sequence[str] = ("seed",)
) -> pd.DataFrame:
    """Whether runs that had failed after ``at`` steps recover when trained on: from the
    step-by-step history of longer runs (:func:`~prenorm.sweep` with ``history=True``,
    a constant learning rate after warmup, so that the first ``at`` steps are the
    shorter run's), one row per run (the columns ``run``) with the validation loss of
    the last evaluation at or before step ``at`` (``loss_at``) and its outcome
    (``outcome_at``, :func:`~prenorm.outcome` against ``entropy`` and ``margin``; a run
    whose history stops at or before ``at`` diverged there), the last validation loss
    (``loss_end``), its outcome (``outcome_end``), the last step run (``last_step``) and
    ``escaped``: failed at ``at`` and trained at the end."""
    from .training import outcome

    _need(hist, [*run, "step", "val_loss", "diverged"])
    rows = []
    for key, g in hist.groupby(list(run)):
        g = g.sort_values("step")
        diverged, last = bool(g.diverged.iloc[-1]), int(g.step.max())
        early = g[(g.step < at) & g.val_loss.notna()].val_loss
        late = g.val_loss.dropna()
        rows.append(
            {
                **dict(zip(run, key if isinstance(key, tuple) else (key,), strict=True)),
                "loss_at": float(early.iloc[-1]) if len(early) else math.nan,
                "diverged_at_end_of_short": diverged and last < at,
                "loss_end": float(late.iloc[-1]) if len(late) else math.nan,
                "diverged": diverged,
                "last_step": last + 1,
            }
        )
    table = pd.DataFrame(rows)
    at_end_of_short = pd.DataFrame(
        {"final_val_loss": table.loss_at, "diverged": table.diverged_at_end_of_short}
    )
    at_end = pd.DataFrame({"final_val_loss": table.loss_end, "diverged": table.diverged})
    table["outcome_at"] = outcome(at_end_of_short, entropy, margin)
    table["outcome_end"] = outcome(at_end, entropy, margin)
    table["escaped"] = (table.outcome_at != "trained") & (table.outcome_end == "trained")
    return table.drop(columns=["diverged_at_end_of_short"])


def escape_clause(escapes: pd.DataFrame) -> str:
    """What the long runs of :func:`stall_escape` (``escapes``: its ``outcome_at`` and
    ``escaped`` columns) say about stalled against slow, in words, for one run or
    several: no run had failed at the shorter horizon (they cannot tell), no failed run
    escaped (they stall), every one did (they were slow), or how many of them did."""
    _need(escapes, ["outcome_at", "escaped"])
    failed = int((escapes.outcome_at != "trained").sum())
    escaped = int(escapes.escaped.sum())
    if failed == 0:
        return "no run had failed by then, so the long runs cannot tell stalled from slow"
    if failed == 1:
        if escaped:
            return "the failed run escaped: at this horizon it was slow, not stalled"
        return "the failed run did not escape: it stalls rather than trains slowly"
    if escaped == 0:
        return f"none of the {failed} failed runs escaped: they stall rather than train slowly"
    if escaped == failed:
        return f"all {failed} failed runs escaped: at this horizon they were slow, not stalled"
    return f"{escaped} of the {failed} failed runs escaped"


def control_labels(warm: int) -> dict[str, str]:
    """The arms of the warmup controls (:func:`warmup_controls`), in the order they are
    shown: a short key (for glue names) -> the label of the arm."""
    return {
        "postln": "Post-LN (Adam)",
        "warmup": f"Post-LN + warmup {warm}",
        "clipping": "Post-LN + clipping",
        "radam": "Post-LN + RAdam",
        "deepnorm": "DeepNorm",
        "preln": "Pre-LN (Adam)",
    }


def warmup_controls(
    data: Corpus,
    runs: pd.DataFrame,
    model_kwargs: Mapping[str, object],
    train_kwargs: Mapping[str, object],
    entropy: float,
    margin: float,
    n_layers: int | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Three controls that would each do warmup's job under a different explanation of it,
    trained without warmup at depth ``n_layers`` (default: the deepest in ``runs``), at
    every learning rate and seed of ``runs``: Post-LN with the gradient norm clipped at 1,
    Post-LN with RAdam, and DeepNorm with its init (:func:`~prenorm.sweep`, one sweep).
    Returns one row per run, the controls' runs after ``runs``' own at that depth
    (Post-LN and Pre-LN without warmup, Post-LN with each warmup), with ``control`` (a
    label of :func:`control_labels`) and ``outcome`` (:func:`~prenorm.outcome` against
    ``entropy`` and ``margin``). Raises if a control run raised."""
    from .sweeps import sweep
    from .training import outcome

    _need(runs, ["placement", "n_layers", "lr", "warmup_steps", "seed", "outcome"])
    deep = int(runs.n_layers.max()) if n_layers is None else n_layers
    labels = control_labels(0)
    slice_ = {
        "n_layers": [deep],
        "lr": list(dict.fromkeys(runs.lr)),
        "warmup_steps": [0],
        "seed": list(dict.fromkeys(runs.seed)),
    }
    arms = {
        labels["clipping"]: {"placement": ["post"], "clip": [1.0], **slice_},
        labels["radam"]: {"placement": ["post"], "optimizer": ["radam"], **slice_},
        labels["deepnorm"]: {"placement": ["deepnorm"], "init": ["deepnorm"], **slice_},
    }
    controls = sweep(data, list(arms.values()), model_kwargs, train_kwargs, progress=progress)
    per_arm = len(controls) // len(arms)
    controls["control"] = np.repeat(list(arms), per_arm)
    if controls.error.notna().any():
        raise RuntimeError(f"control runs raised: {controls.error.dropna().tolist()}")
    controls["outcome"] = outcome(controls, entropy, margin)
    base = runs[runs.n_layers == deep].copy()
    base = base[(base.warmup_steps == 0) | (base.placement == "post")]
    names = {"post": "Post-LN", "pre": "Pre-LN"}
    base["control"] = [
        f"Post-LN + warmup {w}" if w else f"{names.get(p, p)} (Adam)"
        for p, w in zip(base.placement, base.warmup_steps, strict=True)
    ]
    return pd.concat([base, controls], ignore_index=True)


def trained_counts(
    table: pd.DataFrame, index: str = "control", columns: str = "lr", order: Sequence | None = None
) -> pd.DataFrame:
    """How many runs trained, per value of ``index`` (rows, in ``order`` if given) and of
    ``columns`` (columns): a table of integer counts, 0 where no run has that pair of
    values."""
    _need(table, [index, columns, "outcome"])
    counts = (table.outcome == "trained").groupby([table[index], table[columns]]).sum()
    wide = counts.unstack(columns, fill_value=0).astype(int)
    return wide.loc[list(order)] if order is not None else wide


def matches_treatment(
    counts: pd.DataFrame, treatment: object, candidates: Sequence[object]
) -> list[object]:
    """The ``candidates`` (rows of ``counts``, :func:`trained_counts`) that trained at
    least as many runs as ``treatment`` in every column: those that "do its job"."""
    return [c for c in candidates if bool((counts.loc[c] >= counts.loc[treatment]).all())]


def first_steps(
    data: Corpus,
    batch: Batch,
    model_kwargs: Mapping[str, object],
    train_kwargs: Mapping[str, object],
    lr: float,
    warmups: Sequence[int],
    steps: int,
    at: Sequence[int],
    seed: int = 0,
) -> pd.DataFrame:
    r"""Train the model of ``model_kwargs`` (seed ``seed``) for ``steps`` steps at
    learning rate ``lr``, once per warmup length in ``warmups`` (capped at ``steps``),
    and probe it on the fixed ``batch`` at each step in ``at`` (0: the initialization):
    one row per probe with ``step``, ``warmup_steps``,
    ``"gradient at x_1 / top"`` (:math:`\|\partial\mathcal L/\partial x_1\| /
    \|\partial\mathcal L/\partial x_L\|`, :func:`~prenorm.hidden_grad_norms`),
    ``"prod 1/sigma"`` (:math:`\prod 1/\sigma` over the norms of layers 1 and up, the
    product of their mean inverse scales, :func:`~prenorm.norm_input_scales`) and
    ``"mean sigma"`` (the mean :math:`\sigma` over every norm). ``train_kwargs`` go to
    :func:`~prenorm.train` (``steps`` is overridden); its ``device`` is the model's. The
    validation loss is not used here, so unless ``train_kwargs`` set ``eval_interval`` it
    is computed once, at the end: evaluating every tenth step cost about as much as the
    probes and the training together, and it changes nothing the probes see."""
    from .model import build_model
    from .probes import hidden_grad_norms, norm_input_scales
    from .training import train

    checkpoints = set(at)
    rows: list[dict[str, float]] = []
    for warmup in warmups:

        def probe(step: int, model: object, warmup: int = warmup) -> None:
            if step in checkpoints:
                g = hidden_grad_norms(model, batch)
                s = norm_input_scales(model, batch)
                above = s[s.layer >= 1]
                rows.append(
                    {
                        "step": step,
                        "warmup_steps": warmup,
                        "gradient at x_1 / top": float(g.relative[g.layer == 1].iloc[0]),
                        "prod 1/sigma": float(np.exp(np.log(above.inv_scale_mean).sum())),
                        "mean sigma": float(s.scale_mean.mean()),
                    }
                )

        model = build_model(seed=seed, device=train_kwargs.get("device"), **model_kwargs)
        train(
            model,
            data,
            **{"eval_interval": steps, **train_kwargs, "steps": steps},
            lr=lr,
            warmup_steps=min(warmup, steps),
            seed=seed,
            callback=probe,
        )
    return pd.DataFrame(rows)


def trained_cells(
    runs: pd.DataFrame, cell: Sequence[str] = CELL, value: str = "final_val_loss"
) -> pd.DataFrame:
    """The runs of the cells (the columns ``cell``, placements together) where every run
    trained: the runs on which two placements can be compared by their ``value``."""
    _need(runs, [*cell, "outcome", value])
    return runs.groupby(list(cell)).filter(lambda g: bool((g.outcome == "trained").all()))


@dataclass(frozen=True)
class PairedT:
    r"""A paired comparison: ``n`` pairs, the mean difference ``mean`` :math:`\bar d`, its
    standard deviation ``sd`` (``ddof=1``) and :math:`t = \bar d / (s/\sqrt n)`. With one
    pair ``sd`` and ``t`` are 0; with none all three are NaN."""

    n: int
    mean: float
    sd: float
    t: float


def paired_t(
    frame: pd.DataFrame,
    by: str,
    a: object,
    b: object,
    value: str = "final_val_loss",
    pair: Sequence[str] = (*CELL, "seed"),
) -> PairedT:
    r"""The paired difference :math:`d_i = y_i(a) - y_i(b)` of ``value`` (rows paired by
    the columns ``pair``, sides told apart by ``by``; :func:`~prenorm.paired_difference`)
    as a :class:`PairedT`: its mean, standard deviation and :math:`t` statistic."""
    if not len(frame):
        return PairedT(0, math.nan, math.nan, math.nan)
    est = paired_difference(frame, by, a, b, value=value, pair=pair)
    if est.n < 2:
        return PairedT(est.n, est.value, 0.0, 0.0)
    return PairedT(est.n, est.value, est.sd, est.value / (est.sd / math.sqrt(est.n)))


CELL_WORDS: tuple[str, str, str, str] = ("higher", "lower", "same within tol", "undecided")
"""The words of :func:`cell_differences`, in the order: interval above 0, below 0,
containing 0 inside ± tol, containing 0 and reaching past ± tol."""


def cell_differences(
    runs: pd.DataFrame,
    by: str = "placement",
    a: object = "post",
    b: object = "pre",
    cell: Sequence[str] = CELL,
    value: str = "final_val_loss",
    tol: float = 0.05,
) -> pd.DataFrame:
    r"""The comparison of ``a`` with ``b`` cell by cell (the columns ``cell``), over the
    cells where every run of both sides trained (:func:`trained_cells`): one row per
    cell with the number of seed pairs ``n``, the mean paired difference
    :math:`\bar d` of ``value`` (``a`` minus ``b``, :func:`~prenorm.paired_difference`
    over seeds) as ``mean``, its 95% Student-t interval ``lo``, ``hi`` (infinite
    with one pair) and ``word``: ``"higher"`` when the whole interval lies above
    0, ``"lower"`` when it lies below, ``"same within tol"`` when it contains 0 and lies
    inside :math:`[-\text{tol}, \text{tol}]` (an equivalence at that tolerance), else
    ``"undecided"``: the interval contains 0 but is too wide to rule out a difference
    larger than ``tol``, so ``n`` seeds do not resolve the comparison. Pooling unlike
    cells would hide a difference of one sign in some cells behind one of the other
    sign in others."""
    if not (isinstance(tol, (int, float)) and tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a positive finite number, got {tol!r}")
    _need(runs, [*cell, by, "seed", "outcome", value])
    both = trained_cells(runs[runs[by].isin([a, b])], cell, value)
    rows = []
    for key, g in both.groupby(list(cell)):
        est = paired_difference(g, by, a, b, value=value, pair=("seed",))
        lo, hi = est.lo, est.hi
        same = -tol <= lo and hi <= tol
        word = (
            CELL_WORDS[0] if lo > 0 else CELL_WORDS[1] if hi < 0 else CELL_WORDS[2 if same else 3]
        )
        rows.append(
            {
                **dict(zip(cell, key if isinstance(key, tuple) else (key,), strict=True)),
                "n": est.n,
                "mean": est.value,
                "lo": lo,
                "hi": hi,
                "word": word,
            }
        )
    return pd.DataFrame(rows, columns=[*cell, "n", "mean", "lo", "hi", "word"])


# ---- figures (matplotlib is imported on first use) --------------------------------------
def plot_warmup_curves(
    hist: pd.DataFrame, warm: int, entropy: float, smooth: int = 10, top: float = 1.2
) -> Figure:
    """Two panels of training loss against step (:func:`~prenorm.plot_loss_curves`, one
    line per run, colour by placement): without warmup and with ``warm`` warmup steps
    (shaded), the unigram entropy ``entropy`` dashed, the y axis cut at ``entropy +
    top``."""
    import matplotlib.pyplot as plt

    from .plotting import TEXT_WIDTH, one_legend, plot_loss_curves

    fig, axes = plt.subplots(1, 2, figsize=(TEXT_WIDTH, 3.6), sharey=True)
    for ax, w in zip(axes, [0, warm], strict=True):
        plot_loss_curves(hist[hist.warmup_steps == w], ax=ax, smooth=smooth)
        ax.axhline(entropy, color="0.3", ls="--", lw=1.2)
        if w:
            ax.axvspan(0, w, color="0.9", zorder=0)
        ax.set_title("no warmup" if w == 0 else f"warmup {w} steps", fontsize=12)
    axes[0].set_ylim(top=min(axes[0].get_ylim()[1], entropy + top))
    one_legend(axes)
    return fig


def plot_stability_map(
    runs: pd.DataFrame, entropy: float, placements: Sequence[str] = ("post", "pre")
) -> Figure:
    """The final validation loss of every cell (:func:`~prenorm.plot_grid`: learning rate
    by warmup), one panel per placement (rows) and depth (columns), on one colour scale
    from the lowest loss to the larger of ``entropy`` and the highest."""
    import matplotlib.pyplot as plt

    from .plotting import PLACEMENT_LABELS, TEXT_WIDTH, plot_grid

    depths = sorted(runs.n_layers.unique())
    fig, axes = plt.subplots(len(placements), len(depths), figsize=(TEXT_WIDTH, 5.6), squeeze=False)
    lo, hi = float(runs.final_val_loss.min()), float(runs.final_val_loss.max())
    for i, placement in enumerate(placements):
        for j, depth in enumerate(depths):
            ax = axes[i, j]
            sub = runs[(runs.placement == placement) & (runs.n_layers == depth)]
            plot_grid(
                sub, "final_val_loss", ax=ax, vmin=lo, vmax=max(entropy, hi), cbar=False, fmt=".2f"
            )
            ax.set_title(f"{PLACEMENT_LABELS[placement]}, $L$ = {depth}", fontsize=12)
            ax.set_xlabel("warmup steps" if i == len(placements) - 1 else "")
            ax.set_ylabel("learning rate" if j == 0 else "")
            ax.set_yticklabels([f"{lr:g}" for lr in sorted(sub.lr.unique())], rotation=0)
    fig.tight_layout()
    fig.colorbar(axes[0, 0].collections[0], ax=axes, shrink=0.8, label="final validation loss")
    return fig


_CONTROL_COLORS = ("#c44e52", "#8172b3", "#dd8452", "#937860", "#55a868", "#4c72b0")


def plot_controls(table: pd.DataFrame, order: Sequence[str], entropy: float, margin: float) -> Axes:
    """The final validation loss of every run of ``table`` (:func:`warmup_controls`), one
    column of points per control in ``order``, one marker per learning rate; a diverged
    run is drawn at ``entropy``, and the dashed line is ``entropy - margin``, the loss a
    run must beat to count as trained."""
    import matplotlib.pyplot as plt

    from .plotting import TEXT_WIDTH

    _, ax = plt.subplots(figsize=(TEXT_WIDTH, 3.6))
    shown = table.assign(loss=table.final_val_loss.where(~table.diverged.astype(bool), entropy))
    colors = dict(zip(order, _CONTROL_COLORS, strict=False))
    lrs = sorted(table.lr.unique())
    for k, (lr, marker) in enumerate(zip(lrs, ["o", "s", "D"], strict=False)):
        sub = shown[shown.lr == lr]
        for i, name in enumerate(order):
            y = sub[sub.control == name].loss
            ax.scatter(
                np.full(len(y), i + 0.12 * (k - 0.5)),
                y,
                color=colors[name],
                marker=marker,
                s=45,
                label=f"lr {lr:g}" if i == 0 else None,
            )
    ticks = [n.replace(" + ", "\n+ ").replace(" (", "\n(") for n in order]
    ax.set_xticks(range(len(order)), ticks, fontsize=10)
    ax.axhline(entropy - margin, color="0.3", ls="--", lw=1.2)
    ax.set_ylabel("final validation loss\n(nats/char)")
    ax.legend(fontsize=9, loc="lower left")
    return ax


def plot_first_steps(early: pd.DataFrame, threshold: float = 0.5) -> Figure:
    r"""Two panels from :func:`first_steps`, one line style per warmup length: the mean
    :math:`\sigma` against step (left); the measured gradient ratio at :math:`x_1` (with
    markers) and the post's factor :math:`\prod 1/\sigma` (grey) on a log scale, with
    ``threshold`` dotted (right)."""
    import matplotlib.pyplot as plt

    from .plotting import TEXT_WIDTH

    fig, axes = plt.subplots(1, 2, figsize=(TEXT_WIDTH, 4.2))
    for w, ls in zip(sorted(early.warmup_steps.unique()), ["-", "--", ":", "-."], strict=False):
        e = early[early.warmup_steps == w]
        axes[0].plot(e.step, e["mean sigma"], ls=ls, color="#c44e52", lw=1.5, label=f"warmup {w}")
        axes[1].plot(
            e.step,
            e["gradient at x_1 / top"],
            ls=ls,
            color="#c44e52",
            marker="o",
            ms=4,
            label=f"measured, warmup {w}",
        )
        axes[1].plot(
            e.step,
            e["prod 1/sigma"],
            ls=ls,
            color="0.45",
            lw=1.2,
            label=rf"$\prod 1/\sigma$, warmup {w}",
        )
    axes[0].set_ylabel(r"mean $\sigma$")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("ratio to the top")
    axes[1].axhline(threshold, color="0.6", lw=0.8, ls=":")
    for ax in axes:
        ax.set_xlabel("step")
    axes[0].legend(fontsize=9, loc="lower right")
    axes[1].legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    fig.tight_layout()
    return fig


def plot_cell_differences(diffs: pd.DataFrame, runs: pd.DataFrame) -> Axes:
    """The difference Post-LN minus Pre-LN in final validation loss of every cell of
    ``diffs`` (:func:`cell_differences`), one row per cell: each seed's difference
    (small markers, from ``runs``) and the cell's mean (large marker), colour by depth,
    marker by warmup, with 0 dashed."""
    import matplotlib.pyplot as plt

    from .plotting import TEXT_WIDTH

    _, ax = plt.subplots(figsize=(TEXT_WIDTH, 0.45 * len(diffs) + 1.2))
    depths = sorted(diffs.n_layers.unique())
    colors = dict(zip(depths, ["#4c72b0", "#c44e52", "#55a868", "#8172b3"], strict=False))
    markers = dict(zip(sorted(diffs.warmup_steps.unique()), ["o", "s", "D", "^"], strict=False))
    wide = runs.pivot_table(
        index=[*CELL, "seed"], columns="placement", values="final_val_loss", aggfunc="first"
    )
    per_seed = (wide["post"] - wide["pre"]).rename("d").reset_index()
    labels = []
    for i, row in enumerate(diffs.itertuples(index=False)):
        c, m = colors[row.n_layers], markers[row.warmup_steps]
        d = per_seed[
            (per_seed.n_layers == row.n_layers)
            & (per_seed.lr == row.lr)
            & (per_seed.warmup_steps == row.warmup_steps)
        ].d
        ax.scatter(d, np.full(len(d), i), color=c, marker=m, s=18, alpha=0.6)
        ax.scatter([row.mean], [i], color=c, marker=m, s=80, edgecolor="black", linewidth=0.6)
        labels.append(f"L={row.n_layers}, lr {row.lr:g}, warmup {row.warmup_steps}")
    ax.axvline(0, color="0.3", ls="--", lw=1.2)
    ax.set_yticks(range(len(diffs)), labels, fontsize=10)
    ax.invert_yaxis()
    ax.set_xlabel("Post-LN minus Pre-LN, final validation loss (nats/char)")
    return ax


def plot_long_runs(hist: pd.DataFrame, at: int, entropy: float, margin: float) -> Axes:
    """The validation loss of each long run in ``hist`` (one line and marker per seed)
    against step, with the short runs' length ``at`` dotted, the unigram entropy
    ``entropy`` dashed and the loss a run must beat to count as trained,
    ``entropy - margin``, dash-dotted."""
    import matplotlib.pyplot as plt

    from .plotting import TEXT_WIDTH

    _, ax = plt.subplots(figsize=(TEXT_WIDTH, 3.4))
    styles = zip(
        ["-", "--", ":", "-."],
        ["o", "s", "D", "^"],
        ["#c44e52", "#8172b3", "#dd8452", "#937860"],
        strict=True,
    )
    for (seed, g), (ls, marker, color) in zip(hist.groupby("seed"), styles, strict=False):
        v = g.dropna(subset=["val_loss"])
        ax.plot(
            v.step + 1, v.val_loss, ls=ls, marker=marker, ms=4, color=color, label=f"seed {seed}"
        )
    ax.axvline(at, color="0.5", ls=":", lw=1.2)
    ax.axhline(entropy, color="0.3", ls="--", lw=1.2)
    ax.axhline(entropy - margin, color="0.3", ls="-.", lw=1.0)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss\n(nats/char)")
    ax.legend(fontsize=9, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=4, frameon=False)
    return ax
