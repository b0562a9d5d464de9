r"""The analyses that feed the verdicts: paired differences with Student-t intervals,
power-law exponents from log-log fits, steps to reach a target loss, and outcome
rates by cell. Each takes tidy data and returns numbers (or an
:class:`~prenorm.Estimate`), so a chapter calls it rather than writing it out.

Student's t quantile is computed here (scipy is not a dependency): the CDF
:math:`F(x) = \tfrac12 + \int_0^x f(u)\,du` with the density
:math:`f(u) = \frac{\Gamma((\nu+1)/2)}{\sqrt{\nu\pi}\,\Gamma(\nu/2)}(1 + u^2/\nu)^{-(\nu+1)/2}`
is integrated by the trapezoid rule on a fine grid and inverted by bisection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .verdicts import Estimate

__all__ = [
    "agreeing_estimate",
    "censored_interval",
    "depth_exponent",
    "paired_difference",
    "rate",
    "rate_interval",
    "seeds_to_decide",
    "steps_to_reach",
    "t_interval",
    "t_quantile",
]


def agreeing_estimate(*estimates: Estimate) -> Estimate:
    r"""One :class:`~prenorm.Estimate` that decides a prediction only where every one of
    ``estimates`` (two measurements of the same quantity, by different readouts, say)
    decides it the same way: the interval is the union hull
    :math:`[\min_i lo_i, \max_i hi_i]`, the value the mean of the values, ``n`` the
    smallest ``n``. If all intervals lie on one side of a threshold, so does the hull and
    the prediction holds or fails as each would; if they disagree (one holds, another
    fails) or any is undecided, the hull reaches both sides of the threshold and the
    prediction is undecided."""
    if len(estimates) < 2:
        raise ValueError(f"agreeing_estimate needs at least two estimates, got {len(estimates)}")
    for e in estimates:
        if not isinstance(e, Estimate):
            raise TypeError(f"agreeing_estimate takes Estimate objects, got {e!r}")
    return Estimate(
        value=float(np.mean([e.value for e in estimates])),
        lo=min(e.lo for e in estimates),
        hi=max(e.hi for e in estimates),
        n=min(e.n for e in estimates),
    )


def t_quantile(p: float, df: int) -> float:
    r"""The ``p``-quantile of Student's t with ``df`` degrees of freedom, for
    :math:`0.5 \le p < 1` (by symmetry, :math:`t_{1-p} = -t_p`). Accurate to about
    :math:`10^{-6}` for ``df >= 1`` and ``p <= 0.999``."""
    if not (isinstance(df, int | np.integer) and df >= 1):
        raise ValueError(f"df must be a positive integer, got {df!r}")
    if not 0.5 <= p < 1:
        raise ValueError(f"p must be in [0.5, 1), got {p!r}")
    logc = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float) -> float:
        u = np.linspace(0.0, x, 20_001)
        return 0.5 + float(np.trapezoid(np.exp(logc - (df + 1) / 2 * np.log1p(u * u / df)), u))

    lo, hi = 0.0, 1e3
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def t_interval(values: Sequence[float] | pd.Series | np.ndarray, level: float = 0.95) -> Estimate:
    r"""The mean of ``values`` with its two-sided Student-t interval at ``level``:
    :math:`\bar d \pm t_{(1+\text{level})/2,\,n-1}\, s/\sqrt n`, where :math:`s` is the
    sample standard deviation (``ddof=1``). With one value the interval is
    :math:`(-\infty, \infty)`: one observation says nothing about its spread."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    d = np.asarray(values, dtype=float)
    if d.ndim != 1 or len(d) == 0:
        raise ValueError(f"t_interval needs a non-empty 1-D sequence, got shape {d.shape}")
    if np.isnan(d).any():
        raise ValueError("t_interval got NaN values; drop the runs that did not finish first")
    mean = float(d.mean())
    if len(d) == 1:
        return Estimate(mean, -math.inf, math.inf, n=1)
    sd = float(d.std(ddof=1))
    half = t_quantile((1 + level) / 2, len(d) - 1) * sd / math.sqrt(len(d))
    return Estimate(mean, mean - half, mean + half, n=len(d), sd=sd)


def seeds_to_decide(
    estimate: Estimate, threshold: float, level: float = 0.95, max_n: int = 100_000
) -> int | None:
    r"""How many observations a mean like ``estimate`` would need for its Student-t
    interval at ``level`` to clear ``threshold``: the smallest :math:`n \ge 2` with

    .. math:: t_{(1+\text{level})/2,\,n-1}\; s/\sqrt n \;<\; |\bar d - \text{threshold}|,

    taking the observed mean :math:`\bar d` and standard deviation :math:`s`
    (``estimate.value`` and ``estimate.sd``) as if they held; for a geometric estimate
    (``estimate.log10``) both sides are on :math:`\log_{10}`, where its interval was
    computed. It is a planning figure for
    the next experiment, not a verdict: it says how far from deciding a test was, never
    which way it would go. ``None`` when it cannot be computed (no finite SD, a mean on
    the threshold, a NaN) or exceeds ``max_n``."""
    if not isinstance(estimate, Estimate):
        raise TypeError(f"seeds_to_decide takes an Estimate, got {estimate!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if not (isinstance(max_n, int) and max_n >= 2):
        raise ValueError(f"max_n must be an integer >= 2, got {max_n!r}")
    value, threshold = float(estimate.value), float(threshold)
    if estimate.log10:
        if not (value > 0 and threshold > 0):
            return None
        value, threshold = math.log10(value), math.log10(threshold)
    gap, sd = abs(value - threshold), float(estimate.sd)
    if not (math.isfinite(gap) and math.isfinite(sd)) or gap == 0:
        return None
    if sd == 0:
        return 2

    def clears(n: int) -> bool:
        return t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n) < gap

    if not clears(max_n):
        return None
    lo, hi = 1, 2  # clears(lo) is False (n = 1 never decides), clears(hi) unknown
    while not clears(hi):
        lo, hi = hi, min(2 * hi, max_n)
    while hi - lo > 1:  # the half-width falls with n, so bisection finds the first n
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if clears(mid) else (mid, hi)
    return hi


def paired_difference(
    frame: pd.DataFrame,
    by: str,
    a: object,
    b: object,
    value: str = "final_val_loss",
    pair: Sequence[str] = ("seed",),
    level: float = 0.95,
) -> Estimate:
    r"""The mean paired difference :math:`d_i = y_i(a) - y_i(b)` with its Student-t interval
    (:func:`t_interval`): rows of ``frame`` are paired by the columns ``pair`` (seeds, and
    grid cells if named), ``by`` says which side of the pair a row is on, ``value`` is the
    measurement. Pairs missing a side are dropped. Raises if no pair is complete or a
    pair has two rows on one side."""
    for col in (by, value, *pair):
        if col not in frame.columns:
            raise KeyError(f"column {col!r} is not in the frame; columns: {list(frame.columns)}")
    sides = frame[frame[by].isin([a, b])]
    if sides.duplicated(subset=[*pair, by]).any():
        raise ValueError(
            f"more than one row per pair {list(pair)} and {by!r}: pair by more columns"
        )
    wide = sides.pivot_table(index=list(pair), columns=by, values=value, aggfunc="first")
    if a not in wide.columns or b not in wide.columns:
        raise ValueError(f"{by!r} has no rows for both {a!r} and {b!r}")
    d = (wide[a] - wide[b]).dropna()
    if not len(d):
        raise ValueError(f"no complete pair of {a!r} and {b!r}")
    return t_interval(d.to_numpy(), level)


def depth_exponent(x: Sequence[float], y: Sequence[float]) -> float:
    r"""The exponent :math:`k` of a power law :math:`y \propto x^k`: the slope of the
    least-squares line through :math:`(\log x, \log y)`. Needs two or more distinct
    positive ``x`` and positive ``y``."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of one length, got {x.shape} and {y.shape}")
    if not (np.all(x > 0) and np.all(y > 0)):
        raise ValueError("a log-log fit needs positive x and y")
    if len(np.unique(x)) < 2:
        raise ValueError("a log-log fit needs at least two distinct x")
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def steps_to_reach(step: Sequence[float], loss: Sequence[float], target: float) -> float:
    r"""The first step at which a loss curve reaches ``target`` (``loss <= target``),
    interpolated linearly between the two logged steps around the crossing; ``inf`` if
    it never does. ``step`` must increase."""
    s, v = np.asarray(step, dtype=float), np.asarray(loss, dtype=float)
    if s.shape != v.shape or s.ndim != 1 or not len(s):
        raise ValueError(
            f"step and loss must be 1-D of one non-zero length, got {s.shape}, {v.shape}"
        )
    if np.any(np.diff(s) <= 0):
        raise ValueError("steps must increase")
    hit = np.flatnonzero(v <= target)
    if not len(hit):
        return math.inf
    i = int(hit[0])
    if i == 0:
        return float(s[0])
    f = (v[i - 1] - target) / (v[i - 1] - v[i])
    return float(s[i - 1] + f * (s[i] - s[i - 1]))


def rate(outcomes: pd.Series | Sequence[str], word: str) -> float:
    """The fraction of runs whose outcome (one of :data:`~prenorm.OUTCOMES`) is ``word``;
    ``word="failed"`` counts every run that did not train (stalled or diverged). NaN for
    no runs."""
    from .training import OUTCOMES

    if word not in (*OUTCOMES, "failed"):
        raise ValueError(f"unknown outcome {word!r}; valid: {[*OUTCOMES, 'failed']}")
    s = pd.Series(outcomes, dtype=object)
    if not len(s):
        return math.nan
    if word == "failed":
        return float((s != "trained").mean())
    return float((s == word).mean())


def rate_interval(outcomes: pd.Series | Sequence[str], word: str, level: float = 0.95) -> Estimate:
    r""":func:`rate` with its Wilson score interval: for :math:`k` of :math:`n` runs and
    :math:`z` the normal quantile of :math:`(1 + \mathrm{level})/2`,

    .. math:: \frac{\hat p + z^2/2n \pm z\sqrt{\hat p(1-\hat p)/n + z^2/4n^2}}{1 + z^2/n},
        \qquad \hat p = k/n.

    Unlike the normal approximation it stays inside [0, 1] and does not collapse to a
    point at :math:`\hat p = 0` or 1, so 0 of 2 runs gives [0, 0.66], not [0, 0]: a
    rate from a handful of runs decides a threshold only when the whole interval lies
    on one side. NaN for no runs."""
    from statistics import NormalDist

    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level!r}")
    p = rate(outcomes, word)
    n = len(pd.Series(outcomes, dtype=object))
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    z = NormalDist().inv_cdf((1 + level) / 2)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # min/max with p: at k = 0 or n, rounding can put an end a hair on the wrong side of p
    return Estimate(p, max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)), n)


def censored_interval(
    lower: Sequence[float] | pd.Series | np.ndarray,
    upper: Sequence[float] | pd.Series | np.ndarray,
    level: float = 0.95,
) -> Estimate:
    r"""A mean over seeds with its Student-t interval when some seeds' values are known
    only within bounds (censored): seed :math:`i`'s value lies in
    :math:`[\ell_i, u_i]`, equal ends for a value measured exactly. The interval runs from
    the lower end of :func:`t_interval` of the :math:`\ell_i` to the upper end of that of
    the :math:`u_i`, so it covers every set of values the bounds allow; an infinite bound
    (a run that never reached its target, say) or a single seed makes that end infinite.
    The value is the mean of the :math:`\ell_i` when every :math:`\ell_i` is finite (a
    lower bound on the mean when a seed is censored), else NaN. With no censored seed
    it is :func:`t_interval` of the values."""
    lo, hi = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
    if lo.shape != hi.shape or lo.ndim != 1 or not len(lo):
        raise ValueError(f"lower and upper must be 1-D of one length, got {lo.shape}, {hi.shape}")
    if np.isnan(lo).any() or np.isnan(hi).any() or (lo > hi).any():
        raise ValueError(f"each lower bound must be a number at most its upper: {lo}, {hi}")

    def end(v: np.ndarray, side: str) -> float:
        if not np.isfinite(v).all() or len(v) < 2:
            return -math.inf if side == "lo" else math.inf
        e = t_interval(v, level)
        return e.lo if side == "lo" else e.hi

    if np.array_equal(lo, hi) and np.isfinite(lo).all() and len(lo) >= 2:
        return t_interval(lo, level)
    value = float(lo.mean()) if np.isfinite(lo).all() else math.nan
    return Estimate(value, end(lo, "lo"), end(hi, "hi"), n=len(lo))
