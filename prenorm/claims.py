"""One object per claim a chapter tests: :class:`ClaimTest`.

A chapter states, *before* its experiment, the predictions that would confirm a
claim of the post (:class:`~prenorm.Prediction`, keyed by short ids) and the
conditions under which the experiment could not decide it. After the experiment it
gives the measurements by the same ids; from them the object computes, each in one
place, the verdict (:func:`~prenorm.verdict`), the tables the reader sees, the
values glued into the prose and the claims ledger's row::

    c14 = P.ClaimTest(
        "C14",
        section="coda-sweeps",
        predictions={
            "miss": P.Prediction("cost of a 3x learning-rate miss / norm gap", ">=", 3.0),
            "beta": P.Prediction("beta2 range / norm gap", ">", 1.0, core=False),
        },
        undecidable={"edge": "the best learning rate is the smallest or largest tried"},
    )
    c14.predictions_table()            # shown before the experiment
    ...                                # the experiment
    c14.measure(miss=4.2, beta=0.3, edge=False)
    c14.glue()                         # c14_verdict, c14_miss, c14_beta, ...
    c14.results_table()                # what the reader sees after it
    c14.record("3x lr miss costs ...", scale=ch.scale.name)

A prediction stated or revised after some seeds' results were seen names those seeds as
``development_seeds``; :meth:`ClaimTest.confirmation` keeps only the other seeds' rows of
a sweep, so that the verdict rests on data the prediction did not see. Where a preset has
too few fresh seeds (the ``ci`` smoke test), it falls back to every seed and says so in
the glue and the ledger row.

A measurement may be an :class:`~prenorm.Estimate` (a value with a confidence
interval); a prediction whose threshold lies inside that interval is *undecided*,
which makes the verdict *inconclusive* when the prediction is a core one. A measurement
of ``None`` says that the prediction *does not apply* to what happened (a claim whose
core, stated before the runs, depends on a branch of the experiment, such as C14's
:func:`~prenorm.tuning_measurements`): it is shown, but left out of the verdict, which
needs at least one core prediction that applies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

from . import ledger
from .verdicts import Estimate, Prediction, verdict_of

__all__ = ["ClaimTest"]

#: The outcome of a prediction measured as ``None``: it does not apply, and is left out of
#: the verdict.
_DOES_NOT_APPLY = "does not apply"


def _check_id(kind: str, key: str) -> None:
    if not (isinstance(key, str) and key.isidentifier()):
        raise ValueError(
            f"{kind} ids must be Python identifiers (they name glue keys), got {key!r}"
        )


@dataclass
class ClaimTest:
    """The test of one claim of the ledger (``claim``, a key of
    :data:`~prenorm.ledger.CLAIMS`), measured in the section labelled ``section``.

    ``predictions`` maps short ids to the :class:`~prenorm.Prediction` objects stated
    before the experiment; ``undecidable`` maps short ids to conditions, in words, under
    which the experiment cannot decide the claim (each is later measured as ``True`` or
    ``False``). ``development_seeds`` are the seeds whose results were seen when a
    prediction was stated or revised; :meth:`confirmation` selects the others.
    :meth:`measure` takes a value for every id; the verdict follows the rule of
    :mod:`prenorm.verdicts`: a condition that came true, or an undecided core prediction
    with none failing, gives ``"inconclusive"``.
    """

    claim: str
    section: str
    predictions: Mapping[str, Prediction]
    undecidable: Mapping[str, str] = field(default_factory=dict)
    development_seeds: tuple[int, ...] = ()
    measured: dict[str, float | Estimate | bool | None] = field(default_factory=dict, init=False)
    judged_seeds: tuple[int, ...] | None = field(default=None, init=False)
    judged_on_development: bool = field(default=False, init=False)
    device: str | None = field(default=None, init=False)
    implementation: str | None = field(default=None, init=False)
    model: str | None = field(default=None, init=False)
    condition: str | None = field(default=None, init=False)
    post_hoc_reason: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        ledger.CLAIMS.check(self.claim)
        if not self.predictions:
            raise ValueError(f"claim {self.claim}: a test needs at least one prediction")
        for key, p in self.predictions.items():
            _check_id("prediction", key)
            if not isinstance(p, Prediction):
                raise TypeError(f"prediction {key!r} of {self.claim} is not a Prediction: {p!r}")
        if not any(p.core for p in self.predictions.values()):
            raise ValueError(f"claim {self.claim}: at least one prediction must be core")
        for key, text in self.undecidable.items():
            _check_id("condition", key)
            if key in self.predictions:
                raise ValueError(f"{key!r} names both a prediction and a condition of {self.claim}")
            if not (isinstance(text, str) and text.strip()):
                raise ValueError(f"condition {key!r} of {self.claim} needs a statement in words")
        seeds = tuple(self.development_seeds)
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise TypeError(
                f"claim {self.claim}: development_seeds must be integers, got {seeds!r}"
            )
        self.development_seeds = seeds

    def confirmation(
        self, frame: pd.DataFrame, seed: str = "seed", min_seeds: int = 2
    ) -> pd.DataFrame:
        """The rows of ``frame`` whose ``seed`` column is not a development seed: the
        confirmation data the verdict rests on. With fewer than ``min_seeds`` such seeds
        (a small preset) it returns every row, and :attr:`judged_on_development` becomes
        ``True`` so that the glue and the ledger row say the verdict saw its own
        development data. Records the judged seeds in :attr:`judged_seeds`."""
        if seed not in frame.columns:
            raise KeyError(
                f"claim {self.claim}: no column {seed!r} to split seeds by; "
                f"columns: {list(frame.columns)}"
            )
        if not (isinstance(min_seeds, int) and min_seeds >= 1):
            raise ValueError(f"min_seeds must be a positive integer, got {min_seeds!r}")
        fresh = frame[~frame[seed].isin(self.development_seeds)]
        self.judged_on_development = bool(
            self.development_seeds and fresh[seed].nunique() < min_seeds
        )
        judged = frame if self.judged_on_development else fresh
        self.judged_seeds = tuple(sorted(int(s) for s in judged[seed].unique()))
        return judged

    def seeds_note(self) -> str:
        """In words, which seeds the verdict rests on ("" when no seeds were split)."""
        if self.judged_seeds is None:
            return ""
        seeds = ", ".join(str(s) for s in self.judged_seeds)
        if self.judged_on_development:
            return f"judged on seeds {seeds}, development seeds included (too few fresh seeds)"
        if not self.development_seeds:
            return f"judged on seeds {seeds}"
        dev = ", ".join(str(s) for s in self.development_seeds)
        return f"judged on fresh seeds {seeds} (development seeds {dev} not used)"

    def scoped(self, device: str, implementation: str) -> ClaimTest:
        """Say that the result is a property of a ``device`` and an ``implementation``, not of
        scale: the glued verdict (:meth:`glue`) and the ledger row (:meth:`record`) then
        name both (:func:`prenorm.ledger.verdict_text`). Returns the test itself."""
        for name, value in (("device", device), ("implementation", implementation)):
            if not (isinstance(value, str) and value.strip()):
                raise ValueError(
                    f"claim {self.claim}: {name} must be a non-empty string, got {value!r}"
                )
        self.device, self.implementation = device, implementation
        return self

    def in_model(self, model: str) -> ClaimTest:
        """Say that the result is a property of one trained checkpoint, ``model``, not of
        scale: the glued verdict and the ledger row then read "... in {model}"
        (:func:`prenorm.ledger.verdict_text`). Returns the test itself."""
        if not (isinstance(model, str) and model.strip()):
            raise ValueError(f"claim {self.claim}: model must be a non-empty string, got {model!r}")
        self.model = model
        return self

    def under(self, condition: str) -> ClaimTest:
        """Say that the result holds only under one ``condition`` (an initialization, say)
        that the experiment did not vary enough to generalize over: the glued verdict and
        the ledger row then read "... under {condition}". Returns the test itself."""
        if not (isinstance(condition, str) and condition.strip()):
            raise ValueError(
                f"claim {self.claim}: condition must be a non-empty string, got {condition!r}"
            )
        self.condition = condition
        return self

    def post_hoc(self, reason: str) -> ClaimTest:
        """Mark the verdict as post hoc: its prediction was revised after results of the
        same object had been seen (a fixed checkpoint, whose fresh windows re-sample text
        but not the model), so nothing fresh confirms it. The glued verdict and the ledger
        row end in "(post hoc)", and the row's key number gives the ``reason``. Returns the
        test itself."""
        if not (isinstance(reason, str) and reason.strip()):
            raise ValueError(
                f"claim {self.claim}: a post hoc verdict needs a reason in words, got {reason!r}"
            )
        self.post_hoc_reason = reason
        return self

    @property
    def verdict_text(self) -> str:
        """The verdict as the reader sees it: :attr:`verdict`, scoped to the device and the
        implementation when :meth:`scoped` named them, and to the model of :meth:`in_model`."""
        return ledger.verdict_text(
            self.verdict,
            self.device,
            self.implementation,
            self.model,
            self.condition,
            self.post_hoc_reason,
        )

    @property
    def prefix(self) -> str:
        """The prefix of this claim's glue keys: ``"c14"`` for C14, ``"c4_t"`` for C4-T."""
        return self.claim.lower().replace("-", "_")

    def measure(self, **values: float | Estimate | bool | None) -> ClaimTest:
        """Record the measurements: one value (a number or an :class:`~prenorm.Estimate`,
        or ``None`` for a prediction that does not apply) per prediction id and one
        ``bool`` per condition id, all of them, by keyword. Returns the test itself."""
        expected = set(self.predictions) | set(self.undecidable)
        unknown, missing = sorted(set(values) - expected), sorted(expected - set(values))
        if unknown or missing:
            raise ValueError(
                f"claim {self.claim}: measure() takes exactly the ids {sorted(expected)}; "
                + "; ".join(
                    s
                    for s in (
                        f"unknown: {unknown}" if unknown else "",
                        f"missing: {missing}" if missing else "",
                    )
                    if s
                )
            )
        checked: dict[str, float | Estimate | bool | None] = {}
        for key, value in values.items():
            if key in self.undecidable:
                if not isinstance(value, bool):
                    raise TypeError(
                        f"condition {key!r} of {self.claim} is True or False, got {value!r}"
                    )
                checked[key] = value
            elif value is None or isinstance(value, Estimate):
                checked[key] = value
            else:
                try:
                    checked[key] = float(value)
                except (TypeError, ValueError):
                    raise TypeError(
                        f"prediction {key!r} of {self.claim} needs a number or an Estimate, "
                        f"got {value!r}"
                    ) from None
        self.measured = checked
        return self

    def _need_measured(self) -> None:
        if not self.measured:
            raise RuntimeError(f"claim {self.claim}: call measure() before asking for results")

    @property
    def verdict(self) -> str:
        """The ledger's verdict, computed from the measurements."""
        self._need_measured()
        outcomes = [(p.core, self.outcome(k)) for k, p in self.predictions.items()]
        applied = [(core, o) for core, o in outcomes if o != _DOES_NOT_APPLY]
        if not any(core for core, _ in applied):
            raise ValueError(f"claim {self.claim}: no core prediction applies (all measured None)")
        return verdict_of(applied, [self.measured[k] for k in self.undecidable])

    def outcome(self, key: str) -> str:
        """How prediction ``key`` fared: ``"holds"``, ``"fails"`` or ``"undecided"``, or
        ``"does not apply"`` when it was measured as ``None``."""
        self._need_measured()
        if key not in self.predictions:
            raise KeyError(
                f"{key!r} is not a prediction of {self.claim}; valid: {list(self.predictions)}"
            )
        if self.measured[key] is None:
            return _DOES_NOT_APPLY
        return self.predictions[key].outcome(self.measured[key])

    def ids(self, outcome: str) -> list[str]:
        """The ids of the predictions with this ``outcome``."""
        return [k for k in self.predictions if self.outcome(k) == outcome]

    @property
    def conditions_met(self) -> list[str]:
        """The ids of the undecidability conditions that came true."""
        self._need_measured()
        return [k for k in self.undecidable if self.measured[k]]

    def value(self, key: str) -> float:
        """The measured value of prediction ``key`` as a float (an Estimate's centre; NaN
        for a prediction that does not apply)."""
        self._need_measured()
        v = self.measured[key]
        return math.nan if v is None else float(v)

    def sentence(self, outcome: str = "fails") -> str:
        """The predictions with this ``outcome``, in words, joined by semicolons
        (``"none"`` if there are none)."""
        found = [str(self.predictions[k]) for k in self.ids(outcome)]
        return "; ".join(found) if found else "none"

    def power_note(self) -> str:
        r"""Why an undecided core prediction could not decide, in numbers: for each core
        prediction whose Estimate straddles its threshold, the number of observations
        :math:`n`, the Student-t quantile its interval used (:math:`n - 1` degrees of
        freedom), and :func:`~prenorm.seeds_to_decide`'s planning figure: about how many
        observations would put the interval clear of the threshold at the observed SD.
        The t quantile and the planning figure are given only for a Student-t interval on
        observations (``n >= 2`` and a finite ``sd``): a Wilson rate, a hull of two
        readouts or a bound over settings has no SD to plan with, and gets no note unless
        it rests on fewer than two observations. ``""`` when there is nothing to say."""
        from .stats import seeds_to_decide, t_quantile

        parts = []
        for k, p in self.predictions.items():
            m = self.measured.get(k) if self.measured else None
            if not (p.core and isinstance(m, Estimate) and self.outcome(k) == "undecided"):
                continue
            if m.n < 2:
                parts.append(f"{k} undecided: {m.n} observation(s), no spread to judge")
                continue
            if not math.isfinite(m.sd):  # not a t-interval on observations: nothing to plan
                continue
            text = (
                f"{k} undecided at n = {m.n} (t = {t_quantile(0.975, m.n - 1):.1f}, {m.n - 1} df)"
            )
            if p.op != "within":
                need = seeds_to_decide(m, p.threshold)
                text += (
                    f"; n ≈ {need} would decide at the observed SD"
                    if need is not None
                    else "; no feasible n decides at the observed mean and SD"
                )
            parts.append(text)
        return "; ".join(parts)

    def predictions_table(self) -> pd.DataFrame:
        """The predictions and conditions as stated before the experiment: one row each,
        with its id, the quantity, what is predicted and its kind (core, secondary, or a
        condition under which the test cannot decide)."""
        rows = [
            {
                "claim": self.claim,
                "id": k,
                "quantity": p.quantity,
                "predicted": p.predicted,
                "kind": "core" if p.core else "secondary",
            }
            for k, p in self.predictions.items()
        ]
        rows += [
            {
                "claim": self.claim,
                "id": k,
                "quantity": text,
                "predicted": "inconclusive if true",
                "kind": "condition",
            }
            for k, text in self.undecidable.items()
        ]
        return pd.DataFrame(rows)

    def results_table(self, digits: int = 3) -> pd.DataFrame:
        """The predictions table with the measurements: the measured value, its interval
        (for an Estimate) and the outcome; conditions show whether they came true."""
        self._need_measured()
        table = self.predictions_table()
        measured, interval, outcome = [], [], []
        for k in table.id:
            v = self.measured[k]
            if k in self.undecidable:
                measured.append(str(v))
                interval.append("")
                outcome.append("inconclusive" if v else "does not apply")
                continue
            if v is None:
                measured.append("")
                interval.append("")
                outcome.append(_DOES_NOT_APPLY)
                continue
            measured.append(f"{float(v):.{digits}g}" if not math.isnan(float(v)) else "nan")
            interval.append(
                f"[{v.lo:.{digits}g}, {v.hi:.{digits}g}]" if isinstance(v, Estimate) else ""
            )
            outcome.append(self.outcome(k))
        table["measured"] = measured
        if any(interval):
            table["interval"] = interval
        table["outcome"] = outcome
        return table

    def glue(self) -> str:
        """Glue, under this claim's :attr:`prefix`: ``{prefix}_verdict`` (the
        :attr:`verdict_text`); the failed, held
        and undecided predictions in words (``{prefix}_failed``, ``{prefix}_held``,
        ``{prefix}_undecided``); and each prediction's measured value as
        ``{prefix}_{id}`` (an Estimate's ends as ``{prefix}_{id}_lo`` and ``_hi``; none for
        a prediction that does not apply); after
        :meth:`confirmation`, ``{prefix}_seeds_note``.
        Returns the verdict."""
        from .plotting import glue as _glue  # plotting is imported on first use

        v = self.verdict
        p = self.prefix
        _glue(f"{p}_verdict", self.verdict_text)
        for outcome, word in (("fails", "failed"), ("holds", "held"), ("undecided", "undecided")):
            _glue(f"{p}_{word}", self.sentence(outcome))
        for k in self.predictions:
            m = self.measured[k]
            if m is None:  # does not apply: no value to glue
                continue
            _glue(f"{p}_{k}", float(m))
            if isinstance(m, Estimate):
                _glue(f"{p}_{k}_lo", m.lo)
                _glue(f"{p}_{k}_hi", m.hi)
        if self.judged_seeds is not None:
            _glue(f"{p}_seeds_note", self.seeds_note())
        return v

    def record(self, key: str, scale: str, note: str | None = None) -> dict[str, str]:
        """Write the claims ledger's row (:func:`prenorm.ledger.record`) with the computed
        verdict, the ``key`` number as text (followed by :meth:`seeds_note` when seeds were
        split, or by ``note`` when given: the seeds a verdict rests on when they are not the
        split's, C14's search seeds say; and, for an inconclusive verdict, by
        :meth:`power_note`), this test's section, the device and implementation
        of :meth:`scoped` and the model of :meth:`in_model`. Returns the row."""
        if note is not None and not (isinstance(note, str) and note.strip()):
            raise ValueError(f"claim {self.claim}: note must be a non-empty string, got {note!r}")
        note = self.seeds_note() if note is None else note
        text = f"{key}; {note}" if note else key
        if self.verdict == "inconclusive" and (power := self.power_note()):
            text = f"{text}; {power}"
        if self.post_hoc_reason:
            text = f"{text}; post hoc: {self.post_hoc_reason}"
        return ledger.record(
            self.claim,
            self.verdict,
            text,
            section=self.section,
            scale=scale,
            device=self.device,
            implementation=self.implementation,
            model=self.model,
            condition=self.condition,
            post_hoc=self.post_hoc_reason,
        )
