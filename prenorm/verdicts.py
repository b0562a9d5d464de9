"""Verdicts and direction words, computed from measured numbers, never typed.

A chapter states its predictions *before* the experiment runs, as
:class:`Prediction` objects (a quantity, a comparison and a threshold). After the
experiment, :func:`verdict` turns the measured values into one of the ledger's
three words by one rule:

- **confirmed**: every prediction holds;
- **confirmed with qualification**: every *core* prediction holds (the post's
  claim itself), but at least one secondary prediction (a scope or a mechanism
  the post states or implies) fails;
- **not reproduced at this scale**: a core prediction fails.

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

#: The three verdicts of the claims ledger, in order of strength.
VERDICTS = ("confirmed", "confirmed with qualification", "not reproduced at this scale")

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
        """Whether the measured ``value`` satisfies the prediction (a NaN never does)."""
        value = float(value)
        if math.isnan(value):
            return False
        if self.op == "within":
            return abs(value - self.threshold) <= self.within
        return COMPARISONS[self.op](value, self.threshold)

    def __str__(self) -> str:
        if self.op == "within":
            return f"|{self.quantity} - {self.threshold:g}| <= {self.within:g}"
        return f"{self.quantity} {self.op} {self.threshold:g}"


def verdict(predictions: Iterable[Prediction], measured: Mapping[str, float]) -> str:
    """The ledger's verdict for ``predictions`` given the ``measured`` values (by
    quantity name); see the module docstring for the rule. Every prediction's
    quantity must have been measured."""
    predictions = list(predictions)
    if not predictions:
        raise ValueError("a verdict needs at least one prediction")
    if not any(p.core for p in predictions):
        raise ValueError("a verdict needs at least one core prediction (the claim itself)")
    missing = sorted({p.quantity for p in predictions} - set(measured))
    if missing:
        raise ValueError(f"no measured value for {missing}; measured: {sorted(measured)}")
    results = [(p, p.holds(measured[p.quantity])) for p in predictions]
    if not all(ok for p, ok in results if p.core):
        return VERDICTS[2]
    return VERDICTS[0] if all(ok for _, ok in results) else VERDICTS[1]


def failed(predictions: Iterable[Prediction], measured: Mapping[str, float]) -> list[str]:
    """The predictions that the measured values do not satisfy, as readable strings."""
    return [str(p) for p in predictions if not p.holds(measured[p.quantity])]


def direction(
    start: float,
    end: float,
    rel_tol: float,
    words: tuple[str, str, str] = ("falls", "stays flat", "grows"),
    ratio: bool = False,
) -> str:
    """The word for a change from ``start`` to ``end``: ``words[2]`` ("grows") when
    ``end > start (1 + rel_tol)``, ``words[0]`` ("falls") when
    ``end < start (1 - rel_tol)``, else ``words[1]`` ("stays flat"). With
    ``ratio=True`` the tolerance is a factor both ways: "grows" when
    ``end > start (1 + rel_tol)`` and "falls" when ``end < start / (1 + rel_tol)`` (for
    positive quantities that span decades). ``rel_tol`` is stated before the experiment."""
    if not rel_tol >= 0:
        raise ValueError(f"rel_tol must be >= 0, got {rel_tol}")
    start, end = float(start), float(end)
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
) -> str:
    """The word for ``value`` against ``reference``: "larger than", "smaller than" or
    "about the same as", with the same tolerance rule as :func:`direction`."""
    return direction(reference, value, rel_tol, words, ratio)
