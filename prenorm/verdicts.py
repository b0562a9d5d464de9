"""Verdicts and direction words, computed from measured numbers, never typed.

A chapter states its predictions *before* the experiment runs, as
:class:`Prediction` objects (a quantity, a comparison and a threshold). After the
experiment, :func:`verdict` turns the measured values into one of the ledger's
four words by one rule:

- **inconclusive**: one of the conditions stated before the experiment for "this
  test cannot decide" holds (an optimum on the edge of the range searched, say), or
  no core prediction fails but one is *undecided*: its measured value came with a
  confidence interval (an :class:`Estimate`) that reaches both sides of the
  prediction's threshold;
- **not reproduced at this scale**: a core prediction fails (its value, and all of
  its interval if it has one, on the wrong side of the threshold);
- **confirmed with qualification**: every *core* prediction holds (the post's
  claim itself), but at least one secondary prediction (a scope or a mechanism
  the post states or implies) fails;
- **confirmed**: every prediction holds. An undecided secondary prediction does
  not qualify a verdict; the predictions table shows it as undecided.

:class:`~prenorm.ClaimTest` bundles a claim's predictions, conditions and
measurements, and is what the chapters use.

:func:`direction` and :func:`compare` give the words for a change or a
difference (grows / falls / stays flat; larger / smaller / about the same) with a
stated relative tolerance. Chapters glue the returned words into their prose.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .registry import Registry

#: The four verdicts of the claims ledger: three in order of strength, then the one for a
#: test that could not decide.
VERDICTS = (
    "confirmed",
    "confirmed with qualification",
    "not reproduced at this scale",
    "inconclusive",
)

#: How a prediction fared: the value satisfies it, does not, or (with an interval that
#: reaches both sides of the threshold) cannot tell.
OUTCOMES_OF_PREDICTION = ("holds", "fails", "undecided")


@dataclass(frozen=True)
class Estimate:
    r"""A measured value with a confidence interval :math:`[lo, hi]` (``lo <= value <= hi``),
    for instance the mean of paired differences with its Student-t interval
    (:func:`~prenorm.paired_difference`). ``float(estimate)`` is the value; ``n`` is the
    number of observations behind it and ``sd`` their standard deviation (NaN when not
    known). ``log10=True`` marks a geometric estimate: the interval was computed on
    :math:`\log_{10}` of the observations and carried back (:math:`10^{m \pm h}`), and
    ``sd`` is the standard deviation of those logarithms."""

    value: float
    lo: float
    hi: float
    n: int = 0
    sd: float = float("nan")
    log10: bool = False

    def __post_init__(self) -> None:
        for name in ("value", "lo", "hi", "sd"):
            try:
                object.__setattr__(self, name, float(getattr(self, name)))
            except (TypeError, ValueError):
                raise TypeError(
                    f"Estimate.{name} must be a number, got {getattr(self, name)!r}"
                ) from None
        object.__setattr__(self, "n", int(self.n))
        if not any(math.isnan(v) for v in (self.value, self.lo, self.hi)) and not (
            self.lo <= self.value <= self.hi
        ):
            raise ValueError(
                f"an Estimate needs lo <= value <= hi, got {self.lo} <= {self.value} <= {self.hi}"
            )

    def __float__(self) -> float:
        return float(self.value)

    @property
    def half_width(self) -> float:
        """Half the interval's width."""
        return (self.hi - self.lo) / 2

    def clipped(self, lower: float, upper: float) -> Estimate:
        r"""The estimate with its interval intersected with the range
        :math:`[\text{lower}, \text{upper}]` the quantity can take (a share in [0, 1], say):
        :math:`[\max(lo, \text{lower}), \min(hi, \text{upper})]`. A Student-t interval on
        few observations can reach past that range; the part outside holds no possible
        value, so removing it changes no decision against a threshold inside the range.
        The value, ``n``, ``sd`` and ``log10`` are kept; NaN ends stay NaN."""
        if not lower <= upper:
            raise ValueError(f"clipped needs lower <= upper, got {lower!r} and {upper!r}")
        if not lower <= self.value <= upper and not math.isnan(self.value):
            raise ValueError(f"the value {self.value} lies outside [{lower}, {upper}]")
        lo = self.lo if math.isnan(self.lo) else max(self.lo, lower)
        hi = self.hi if math.isnan(self.hi) else min(self.hi, upper)
        return Estimate(self.value, lo, hi, n=self.n, sd=self.sd, log10=self.log10)


#: The comparisons a prediction may make, by symbol.
COMPARISONS: Registry[Callable[[float, float], bool]] = Registry(
    "comparison",
    {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge},
)


@dataclass(frozen=True)
class Prediction:
    """A prediction stated before an experiment: ``quantity op threshold``.

    ``op`` is a key of :data:`COMPARISONS` or ``"within"``, which reads
    ``|quantity - threshold| <= within``. ``core=True`` marks the claim itself;
    ``core=False`` a secondary prediction whose failure qualifies, but does not
    overturn, the verdict.
    """

    quantity: str
    op: str
    threshold: float
    core: bool = True
    within: float | None = None

    def __post_init__(self) -> None:
        if self.op == "within":
            if self.within is None or not self.within >= 0:
                raise ValueError(f"op='within' needs a tolerance within >= 0, got {self.within}")
        else:
            COMPARISONS.check(self.op)

    def holds(self, value: float) -> bool:
        """Whether the measured ``value`` satisfies the prediction (a NaN never does). For an
        :class:`Estimate` this judges its central value; see :meth:`outcome`."""
        value = float(value)
        if math.isnan(value):
            return False
        if self.op == "within":
            return abs(value - self.threshold) <= self.within
        return COMPARISONS[self.op](value, self.threshold)

    def outcome(self, value: float | Estimate) -> str:
        """``"holds"``, ``"fails"`` or ``"undecided"`` (one of
        :data:`OUTCOMES_OF_PREDICTION`). A plain number holds or fails. An
        :class:`Estimate` is undecided when its interval reaches both values that satisfy
        the prediction and values that do not (the threshold, or an end of a ``within``
        band, lies inside it); otherwise its central value decides. An Estimate whose
        central value is NaN (a mean that could not be formed: no observations, or a seed
        known only within bounds) is judged by its interval alone, and is undecided when
        the interval is NaN too: no data decides nothing, so it cannot fail a prediction."""
        if isinstance(value, Estimate):
            centre, lo, hi = value.value, value.lo, value.hi
            if math.isnan(lo) or math.isnan(hi):
                if math.isnan(centre):
                    return OUTCOMES_OF_PREDICTION[2]
            else:
                if self.op == "within":
                    a, b = self.threshold - self.within, self.threshold + self.within
                    some_hold = lo <= b and hi >= a
                    some_fail = lo < a or hi > b
                else:
                    some_hold = self.holds(lo) or self.holds(hi)
                    some_fail = not self.holds(lo) or not self.holds(hi)
                if some_hold and some_fail:
                    return OUTCOMES_OF_PREDICTION[2]
                if math.isnan(centre):
                    return OUTCOMES_OF_PREDICTION[0] if some_hold else OUTCOMES_OF_PREDICTION[1]
        return OUTCOMES_OF_PREDICTION[0] if self.holds(value) else OUTCOMES_OF_PREDICTION[1]

    @property
    def predicted(self) -> str:
        """The prediction without its quantity: ``"> 0.05"`` or ``"within 0.1 of 0.15"``."""
        if self.op == "within":
            return f"within {self.within:g} of {self.threshold:g}"
        return f"{self.op} {self.threshold:g}"

    def __str__(self) -> str:
        if self.op == "within":
            return f"|{self.quantity} - {self.threshold:g}| <= {self.within:g}"
        return f"{self.quantity} {self.op} {self.threshold:g}"


def verdict(
    predictions: Iterable[Prediction],
    measured: Mapping[str, float | Estimate],
    undecidable: Iterable[bool] = (),
) -> str:
    """The ledger's verdict for ``predictions`` given the ``measured`` values (by
    quantity name; a value may be an :class:`Estimate`) and ``undecidable``, whether
    each condition stated before the experiment for "this test cannot decide" came true;
    see the module docstring for the rule. Every prediction's quantity must have been
    measured."""
    predictions = list(predictions)
    if not predictions:
        raise ValueError("a verdict needs at least one prediction")
    if not any(p.core for p in predictions):
        raise ValueError("a verdict needs at least one core prediction (the claim itself)")
    missing = sorted({p.quantity for p in predictions} - set(measured))
    if missing:
        raise ValueError(f"no measured value for {missing}; measured: {sorted(measured)}")
    return verdict_of([(p.core, p.outcome(measured[p.quantity])) for p in predictions], undecidable)


def verdict_of(outcomes: Iterable[tuple[bool, str]], undecidable: Iterable[bool] = ()) -> str:
    """The verdict from each prediction's ``(core, outcome)`` (an outcome is one of
    :data:`OUTCOMES_OF_PREDICTION`) and the undecidability conditions' truth values, by
    the rule of the module docstring."""
    outcomes = list(outcomes)
    bad = [o for _, o in outcomes if o not in OUTCOMES_OF_PREDICTION]
    if bad:
        raise ValueError(f"unknown outcomes {bad}; valid: {list(OUTCOMES_OF_PREDICTION)}")
    if not any(core for core, _ in outcomes):
        raise ValueError("a verdict needs at least one core prediction (the claim itself)")
    if any(bool(f) for f in undecidable):
        return VERDICTS[3]
    core = [o for c, o in outcomes if c]
    if "fails" in core:
        return VERDICTS[2]
    if "undecided" in core:
        return VERDICTS[3]
    return VERDICTS[1] if any(o == "fails" for _, o in outcomes) else VERDICTS[0]


def failed(
    predictions: Iterable[Prediction], measured: Mapping[str, float | Estimate]
) -> list[str]:
    """The predictions that the measured values do not satisfy, as readable strings (an
    undecided prediction is not among them)."""
    return [str(p) for p in predictions if p.outcome(measured[p.quantity]) == "fails"]


def direction(
    start: float,
    end: float,
    rel_tol: float,
    words: tuple[str, str, str] = ("falls", "stays flat", "grows"),
    ratio: bool = False,
    missing: str | None = None,
) -> str:
    """The word for a change from ``start`` to ``end``: ``words[2]`` ("grows") when
    ``end > start (1 + rel_tol)``, ``words[0]`` ("falls") when
    ``end < start (1 - rel_tol)``, else ``words[1]`` ("stays flat"). With
    ``ratio=True`` the tolerance is a factor both ways: "grows" when
    ``end > start (1 + rel_tol)`` and "falls" when ``end < start / (1 + rel_tol)`` (for
    positive quantities that span decades). ``rel_tol`` is stated before the experiment.
    A NaN on either side raises, unless ``missing`` gives the word to return then (a
    design that never trained has no number to compare)."""
    if not rel_tol >= 0:
        raise ValueError(f"rel_tol must be >= 0, got {rel_tol}")
    start, end = float(start), float(end)
    if missing is not None and not (math.isfinite(start) and math.isfinite(end)):
        return missing
    if math.isnan(start) or math.isnan(end):
        raise ValueError(f"cannot name the direction of a change with NaN ({start} -> {end})")
    if ratio:
        if not (start > 0 and end > 0):
            raise ValueError(f"ratio=True needs positive values, got {start} -> {end}")
        if end > start * (1 + rel_tol):
            return words[2]
        return words[0] if end < start / (1 + rel_tol) else words[1]
    scale = abs(start)
    if end > start + rel_tol * scale:
        return words[2]
    if end < start - rel_tol * scale:
        return words[0]
    return words[1]


def compare(
    value: float,
    reference: float,
    rel_tol: float,
    words: tuple[str, str, str] = ("smaller than", "about the same as", "larger than"),
    ratio: bool = False,
    missing: str | None = None,
) -> str:
    """The word for ``value`` against ``reference``: "larger than", "smaller than" or
    "about the same as", with the same tolerance rule as :func:`direction` (and its
    ``missing`` word for a value that is not a finite number)."""
    return direction(reference, value, rel_tol, words, ratio, missing)
