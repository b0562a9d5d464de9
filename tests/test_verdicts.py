"""The one verdict rule, and the direction words."""

import math

import pytest

from prenorm import Prediction, compare, direction, verdict

CORE = Prediction("gain", "<", 0.5)
SIDE = Prediction("spread", "<=", 0.1, core=False)
EXACT = Prediction("exponent", "within", -0.5, within=0.2)


def test_the_rule_gives_each_of_the_three_verdicts():
    assert verdict([CORE, SIDE], {"gain": 0.2, "spread": 0.05}) == "confirmed"
    assert verdict([CORE, SIDE], {"gain": 0.2, "spread": 0.5}) == "confirmed with qualification"
    assert verdict([CORE, SIDE], {"gain": 0.9, "spread": 0.05}) == "not reproduced at this scale"
    assert verdict([EXACT], {"exponent": -0.44}) == "confirmed"
    assert verdict([EXACT], {"exponent": -0.1}) == "not reproduced at this scale"


def test_nan_never_confirms_and_thresholds_are_strict_where_stated():
    assert verdict([CORE], {"gain": math.nan}) == "not reproduced at this scale"
    assert verdict([CORE], {"gain": 0.5}) == "not reproduced at this scale"  # '<' is strict
    assert verdict([Prediction("gain", "<=", 0.5)], {"gain": 0.5}) == "confirmed"


def test_bad_predictions_are_refused():
    with pytest.raises(ValueError, match="unknown comparison '=='; valid comparisons are"):
        Prediction("x", "==", 1.0)
    with pytest.raises(ValueError, match="no measured value for \\['gain'\\]"):
        verdict([CORE], {"other": 1.0})
    with pytest.raises(ValueError, match="at least one core prediction"):
        verdict([SIDE], {"spread": 0.0})


def test_direction_words_follow_the_tolerance():
    assert direction(0.589, 0.589, rel_tol=0.1) == "stays flat"
    assert direction(1.0, 1.05, rel_tol=0.1) == "stays flat"
    assert direction(1.0, 1.2, rel_tol=0.1) == "grows"
    assert direction(1.0, 0.8, rel_tol=0.1) == "falls"
    assert compare(0.012, 0.012, rel_tol=0.2) == "about the same as"
    assert compare(2.0, 1.0, rel_tol=0.2) == "larger than"
    assert compare(0.5, 1.0, rel_tol=0.2) == "smaller than"
    with pytest.raises(ValueError, match="NaN"):
        direction(math.nan, 1.0, rel_tol=0.1)


def test_ratio_tolerance_is_symmetric_in_log_space():
    # a factor-of-2 tolerance: 0.1 of the start must fall, which a relative tolerance of 1 cannot say
    assert direction(1.0, 0.1, rel_tol=1.0) == "stays flat"
    assert direction(1.0, 0.1, rel_tol=1.0, ratio=True) == "falls"
    assert direction(1.0, 1.9, rel_tol=1.0, ratio=True) == "stays flat"
    assert direction(1.0, 2.1, rel_tol=1.0, ratio=True) == "grows"
    assert compare(0.4, 1.0, rel_tol=1.0, ratio=True) == "smaller than"
    with pytest.raises(ValueError, match="positive"):
        direction(0.0, 1.0, rel_tol=1.0, ratio=True)
