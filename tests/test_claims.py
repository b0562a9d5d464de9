"""ClaimTest and the fourth verdict: each test names the result that would make it fail."""

import json
import math

import pytest

import prenorm as P


def _c13() -> P.ClaimTest:
    return P.ClaimTest(
        "C13",
        section="sec",
        predictions={
            "ci_end": P.Prediction("largest |end| of the interval", "<", 0.02),
            "seed": P.Prediction("mean / seed SD", "<", 1.0, core=False),
        },
        undecidable={"edge": "the best learning rate is on the edge of the range"},
    )


def test_estimate_straddling_the_threshold_is_undecided():
    p = P.Prediction("gap", "<", 0.02)
    assert p.outcome(P.Estimate(0.01, 0.0, 0.03)) == "undecided"  # 0.02 inside [0, 0.03]
    assert p.outcome(P.Estimate(0.01, 0.0, 0.015)) == "holds"
    assert p.outcome(P.Estimate(0.05, 0.03, 0.07)) == "fails"
    assert p.outcome(0.01) == "holds" and p.outcome(math.nan) == "fails"
    band = P.Prediction("saved", "within", 0.15, within=0.1)
    assert band.outcome(P.Estimate(0.15, 0.1, 0.2)) == "holds"
    assert band.outcome(P.Estimate(0.24, 0.2, 0.3)) == "undecided"  # reaches past 0.25
    assert band.outcome(P.Estimate(0.15, 0.0, 0.5)) == "undecided"  # covers the whole band
    assert band.outcome(P.Estimate(0.4, 0.3, 0.5)) == "fails"


def test_estimate_validates():
    with pytest.raises(ValueError, match="lo <= value <= hi"):
        P.Estimate(1.0, 2.0, 3.0)
    with pytest.raises(TypeError, match="Estimate.lo"):
        P.Estimate(1.0, "a", 3.0)


@pytest.mark.parametrize(
    ("ci_end", "seed", "edge", "expected"),
    [
        (0.01, 0.5, False, "confirmed"),
        (0.01, 2.0, False, "confirmed with qualification"),
        (0.05, 0.5, False, "not reproduced at this scale"),
        (P.Estimate(0.01, 0.0, 0.03), 0.5, False, "inconclusive"),  # core undecided
        (0.01, 0.5, True, "inconclusive"),  # a stated condition came true
        (0.05, 0.5, True, "inconclusive"),  # the test could not decide even a failure
        (0.01, P.Estimate(0.5, 0.1, 1.5), False, "confirmed"),  # secondary undecided
    ],
)
def test_verdict_rule(ci_end, seed, edge, expected):
    c = _c13().measure(ci_end=ci_end, seed=seed, edge=edge)
    assert c.verdict == expected
    assert expected in P.VERDICTS


def test_verdict_function_agrees_with_the_object():
    ps = [P.Prediction("a", ">", 0), P.Prediction("b", ">", 0, core=False)]
    assert P.verdict(ps, {"a": P.Estimate(0.1, -0.1, 0.3), "b": 1}) == "inconclusive"
    assert P.verdict(ps, {"a": 1, "b": -1}) == "confirmed with qualification"
    assert P.verdict(ps, {"a": 1, "b": 1}, undecidable=[True]) == "inconclusive"
    assert P.failed(ps, {"a": P.Estimate(0.1, -0.1, 0.3), "b": -1}) == ["b > 0"]


def test_measure_checks_ids_and_types():
    c = _c13()
    with pytest.raises(ValueError, match=r"missing: \['edge'\]"):
        c.measure(ci_end=0.1, seed=1.0)
    with pytest.raises(ValueError, match=r"unknown: \['nope'\]"):
        c.measure(ci_end=0.1, seed=1.0, edge=False, nope=1)
    with pytest.raises(TypeError, match="condition 'edge'"):
        c.measure(ci_end=0.1, seed=1.0, edge=1)
    with pytest.raises(TypeError, match="prediction 'seed'"):
        c.measure(ci_end=0.1, seed="x", edge=False)
    with pytest.raises(RuntimeError, match="measure"):
        _ = _c13().verdict


def test_construction_is_validated():
    p = P.Prediction("x", ">", 0)
    with pytest.raises(ValueError, match="claim"):
        P.ClaimTest("C99", "sec", {"x": p})
    with pytest.raises(ValueError, match="identifiers"):
        P.ClaimTest("C1", "sec", {"not an id": p})
    with pytest.raises(ValueError, match="core"):
        P.ClaimTest("C1", "sec", {"x": P.Prediction("x", ">", 0, core=False)})
    with pytest.raises(ValueError, match="both"):
        P.ClaimTest("C1", "sec", {"x": p}, undecidable={"x": "words"})
    with pytest.raises(TypeError, match="Prediction"):
        P.ClaimTest("C1", "sec", {"x": 3})


def test_tables_show_what_was_measured():
    c = _c13()
    before = c.predictions_table()
    assert list(before.id) == ["ci_end", "seed", "edge"]
    assert list(before.kind) == ["core", "secondary", "condition"]
    assert list(before.predicted[:2]) == ["< 0.02", "< 1"]
    c.measure(ci_end=P.Estimate(0.01, 0.0, 0.03), seed=2.0, edge=False)
    after = c.results_table()
    assert list(after.outcome) == ["undecided", "fails", "does not apply"]
    assert after.interval.iloc[0] == "[0, 0.03]"
    assert c.sentence("fails") == "mean / seed SD < 1" and c.sentence("holds") == "none"


def test_record_writes_the_computed_verdict(tmp_path, monkeypatch):
    monkeypatch.setenv("PRENORM_RESULTS", str(tmp_path))
    monkeypatch.setenv("PRENORM_SCALE", "ci")  # the ledger reads rows of the active preset
    c = _c13().measure(ci_end=0.05, seed=0.5, edge=False)
    row = c.record("gap 0.05", scale="ci")
    saved = json.loads((tmp_path / "C13.json").read_text())
    assert saved["verdict"] == row["verdict"] == "not reproduced at this scale"
    assert saved["section"] == "sec"
    assert "verdict-inconclusive" in P.ledger.to_html(
        P.ledger.read(directory=tmp_path, claims=["C13"]).assign(verdict="inconclusive")
    )


def test_glue_names(monkeypatch):
    glued = {}
    monkeypatch.setattr(P.plotting, "glue", lambda name, value: glued.setdefault(name, value))
    c = _c13().measure(ci_end=P.Estimate(0.01, 0.0, 0.015), seed=2.0, edge=False)
    assert c.glue() == "confirmed with qualification"
    assert glued["c13_verdict"] == "confirmed with qualification"
    assert glued["c13_ci_end"] == 0.01 and glued["c13_ci_end_hi"] == 0.015
    assert glued["c13_failed"] == "mean / seed SD < 1"
    assert glued["c13_held"] == "largest |end| of the interval < 0.02"


def _with_dev(seeds):
    return P.ClaimTest(
        "C13",
        section="sec",
        predictions={"d": P.Prediction("difference", "<", 0.02)},
        development_seeds=seeds,
    )


def test_confirmation_keeps_only_fresh_seeds_and_says_so(tmp_path, monkeypatch):
    # Fails if a development seed's rows reach the verdict, or if the ledger row and the
    # glue do not name the seeds the verdict rests on.
    import pandas as pd

    frame = pd.DataFrame({"seed": [0, 0, 1, 2, 3, 4], "loss": [9.0, 9.0, 9.0, 1.0, 1.0, 1.0]})
    c = _with_dev((0, 1))
    judged = c.confirmation(frame)
    assert sorted(judged.seed.unique()) == [2, 3, 4] and not c.judged_on_development
    assert c.seeds_note() == "judged on fresh seeds 2, 3, 4 (development seeds 0, 1 not used)"
    monkeypatch.setenv("PRENORM_RESULTS", str(tmp_path))
    row = c.measure(d=judged.loss.mean() - 1).record("gap", scale="ci")
    assert row["verdict"] == "confirmed" and "fresh seeds 2, 3, 4" in row["key"]
    row = c.record("gap", scale="ci", note="decided on search seeds 0, 1")
    assert row["key"] == "gap; decided on search seeds 0, 1"  # the note replaces the split's
    with pytest.raises(ValueError, match="note must be"):
        c.record("gap", scale="ci", note=" ")
    glued = {}
    monkeypatch.setattr(P.plotting, "glue", lambda name, value: glued.setdefault(name, value))
    c.glue()
    assert glued["c13_seeds_note"] == c.seeds_note()


def test_confirmation_falls_back_and_flags_it_when_too_few_fresh_seeds():
    import pandas as pd

    frame = pd.DataFrame({"seed": [0, 1, 2], "loss": [1.0, 2.0, 3.0]})
    c = _with_dev((0, 1))
    assert len(c.confirmation(frame)) == 3 and c.judged_on_development
    assert "development seeds included" in c.seeds_note()
    assert len(_with_dev(()).confirmation(frame)) == 3  # nothing was seen: every seed
    with pytest.raises(KeyError, match="no column 'run_seed'"):
        c.confirmation(frame, seed="run_seed")
    with pytest.raises(ValueError, match="min_seeds"):
        c.confirmation(frame, min_seeds=0)
    with pytest.raises(TypeError, match="development_seeds must be integers"):
        _with_dev(("0",))


def test_a_scoped_claim_glues_and_records_its_device_and_implementation(tmp_path, monkeypatch):
    monkeypatch.setenv("PRENORM_RESULTS", str(tmp_path))
    glued = {}
    monkeypatch.setattr(P.plotting, "glue", lambda name, value: glued.setdefault(name, value))
    c = _c13().measure(ci_end=0.05, seed=0.5, edge=False).scoped("cpu", "unfused F.rms_norm")
    assert c.verdict == "not reproduced at this scale"  # the ledger's word is unchanged
    c.glue()
    assert glued["c13_verdict"] == "not reproduced on cpu, with unfused F.rms_norm"
    row = c.record("gap", scale="cpu")
    assert (row["device"], row["implementation"]) == ("cpu", "unfused F.rms_norm")
    with pytest.raises(ValueError, match="implementation"):
        c.scoped("cpu", "")


def test_an_estimate_with_no_mean_is_judged_by_its_interval_or_not_at_all():
    """Fails if a measurement that could not be made (no runs, NaN everywhere) fails a core
    prediction (the ci preset's C17 and C18 read "not reproduced" on zero seeds that way),
    or if a censored mean (NaN centre, known bounds) ignores an interval that decides."""
    p = P.Prediction("gap", "<", 0.5)
    assert p.outcome(P.Estimate(math.nan, math.nan, math.nan, n=0)) == "undecided"
    assert p.outcome(P.Estimate(math.nan, 0.1, 0.3, n=2)) == "holds"
    assert p.outcome(P.Estimate(math.nan, 0.6, 0.9, n=2)) == "fails"
    assert p.outcome(P.Estimate(math.nan, 0.1, 0.9, n=2)) == "undecided"
    c = P.ClaimTest("C17", section="s", predictions={"d": p})
    assert c.measure(d=P.Estimate(math.nan, math.nan, math.nan, n=0)).verdict == "inconclusive"


def test_an_inconclusive_row_says_how_far_it_was_from_deciding(tmp_path, monkeypatch):
    """The ledger row of an undecided core names n, the t quantile and the planning n, and
    a decided row carries no such note. Fails if the planning figure is not the first n
    whose interval at the observed SD clears the threshold."""
    monkeypatch.setenv("PRENORM_RESULTS", str(tmp_path))
    monkeypatch.setenv("PRENORM_SCALE", "ci")
    est = P.t_interval([0.01, 0.04])  # mean 0.025, sd 0.0212; 0.02 lies inside its interval
    c = P.ClaimTest("C13", section="s", predictions={"d": P.Prediction("gap", ">", 0.02)})
    row = c.measure(d=est).record("gap", scale="ci")
    need = P.seeds_to_decide(est, 0.02)
    assert row["verdict"] == "inconclusive"
    assert f"d undecided at n = 2 (t = 12.7, 1 df); n ≈ {need} would decide" in row["key"]
    assert need is not None and need > 2
    decided = c.measure(d=P.t_interval([0.05, 0.06, 0.07])).record("gap", scale="ci")
    assert decided["verdict"] == "confirmed" and "undecided" not in decided["key"]


def test_a_post_hoc_or_conditional_verdict_says_so_in_the_glue_and_the_row(tmp_path, monkeypatch):
    """Fails if a verdict revised after its own object's results were seen could appear on
    the landing page without "(post hoc)", or a result of one init without naming it."""
    monkeypatch.setenv("PRENORM_RESULTS", str(tmp_path))
    monkeypatch.setenv("PRENORM_SCALE", "ci")
    c = P.ClaimTest("C20", section="s", predictions={"g": P.Prediction("gap", "<=", 0.05)})
    c.measure(g=0.8).under("GPT-2's init at GPT-2 small's gain").post_hoc("revised after seen")
    assert c.verdict == "not reproduced at this scale"
    assert c.verdict_text == "not reproduced under GPT-2's init at GPT-2 small's gain (post hoc)"
    row = c.record("gap 0.8", scale="ci")
    assert row["key"].endswith("; post hoc: revised after seen")
    html = P.ledger.to_html(P.ledger.read(directory=tmp_path, claims=["C20"]))
    assert "under GPT-2&#x27;s init at GPT-2 small&#x27;s gain (post hoc)" in html
    with pytest.raises(ValueError, match="reason"):
        c.post_hoc(" ")
    with pytest.raises(ValueError, match="condition"):
        c.under("")


def test_a_clipped_estimate_keeps_only_possible_values():
    """Fails if clipping moves the value, widens the interval, or hides a NaN."""
    e = P.t_interval([0.2, 1.1])  # a share over an equal value: the interval reaches below 0
    c = e.clipped(0.0, 1.75)
    assert e.lo < 0 and c.lo == 0.0 and c.hi == min(e.hi, 1.75) and c.value == e.value
    assert (c.n, c.sd) == (e.n, e.sd)
    nan = P.Estimate(math.nan, math.nan, math.nan, n=0).clipped(0, 1)
    assert math.isnan(nan.lo) and math.isnan(nan.hi)
    with pytest.raises(ValueError, match="outside"):
        P.Estimate(2.0, 1.0, 3.0).clipped(0, 1)
    with pytest.raises(ValueError, match="lower <= upper"):
        e.clipped(1, 0)


def test_no_t_planning_for_an_estimate_that_is_not_a_t_interval(tmp_path, monkeypatch):
    """Fails if a Wilson rate, a hull of readouts or a bound over settings (no SD) gets a
    Student-t planning figure, which would be meaningless (C6's and C14's rows once did)."""
    c = P.ClaimTest("C6", section="s", predictions={"need": P.Prediction("rate", ">", 0.5)})
    c.measure(need=P.rate_interval(["trained", "stalled"], "stalled"))
    assert c.verdict == "inconclusive" and c.power_note() == ""
    c.measure(need=P.Estimate(0.6, -math.inf, 0.9, n=5))
    assert c.power_note() == ""
    c.measure(need=P.Estimate(math.nan, math.nan, math.nan, n=0))
    assert c.power_note() == "need undecided: 0 observation(s), no spread to judge"
