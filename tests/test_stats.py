"""The analyses behind the verdicts, against values computed another way."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

import prenorm as P


@pytest.mark.parametrize(
    ("p", "df", "tabulated"),
    [
        (0.975, 1, 12.7062),
        (0.975, 2, 4.3027),
        (0.975, 4, 2.7764),
        (0.95, 10, 1.8125),
        (0.995, 30, 2.7500),
        (0.5, 3, 0.0),
    ],
)
def test_t_quantile_matches_tables(p, df, tabulated):
    assert P.t_quantile(p, df) == pytest.approx(tabulated, abs=1e-3)


def test_t_quantile_inverts_torchs_cdf():
    # torch's StudentT has no icdf, but its log_prob integrates to the CDF independently
    x = P.t_quantile(0.9, 5)
    u = torch.linspace(-60.0, x, 400_001, dtype=torch.float64)
    cdf = torch.trapezoid(torch.distributions.StudentT(5.0).log_prob(u).exp(), u).item()
    assert cdf == pytest.approx(0.9, abs=1e-4)


def test_t_quantile_validates():
    with pytest.raises(ValueError, match="df"):
        P.t_quantile(0.975, 0)
    with pytest.raises(ValueError, match="p must"):
        P.t_quantile(0.2, 3)


def test_t_interval_is_the_textbook_formula():
    d = np.array([0.3, -0.1, 0.2, 0.4, 0.0])
    e = P.t_interval(d)
    half = 2.7764 * d.std(ddof=1) / math.sqrt(5)
    assert e.value == pytest.approx(d.mean())
    assert (e.lo, e.hi) == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-4)
    assert e.n == 5 and e.sd == pytest.approx(d.std(ddof=1))
    one = P.t_interval([0.3])
    assert one.lo == -math.inf and one.hi == math.inf
    with pytest.raises(ValueError, match="NaN"):
        P.t_interval([0.1, float("nan")])


def test_paired_difference_pairs_by_seed_not_by_order():
    frame = pd.DataFrame(
        {
            "norm": ["a", "a", "a", "b", "b", "b"],
            "seed": [0, 1, 2, 2, 1, 0],  # b's rows in the other order
            "final_val_loss": [1.0, 2.0, 3.0, 2.5, 2.2, 1.1],
        }
    )
    e = P.paired_difference(frame, "norm", "a", "b")
    d = np.array([1.0 - 1.1, 2.0 - 2.2, 3.0 - 2.5])
    assert e.value == pytest.approx(d.mean()) and e.n == 3
    assert e.sd == pytest.approx(d.std(ddof=1))
    with pytest.raises(ValueError, match="both"):
        P.paired_difference(frame, "norm", "a", "c")
    with pytest.raises(ValueError, match="more than one row"):
        P.paired_difference(pd.concat([frame, frame]), "norm", "a", "b")
    with pytest.raises(KeyError, match="lr"):
        P.paired_difference(frame, "norm", "a", "b", pair=("lr",))


def test_depth_exponent_recovers_a_power_law():
    x = np.array([2, 4, 8, 16])
    assert P.depth_exponent(x, 3.0 * x**-0.5) == pytest.approx(-0.5)
    assert P.depth_exponent(x, 7.0 * x**1.25) == pytest.approx(1.25)
    with pytest.raises(ValueError, match="positive"):
        P.depth_exponent(x, -x)
    with pytest.raises(ValueError, match="distinct"):
        P.depth_exponent([2, 2], [1, 2])


def test_steps_to_reach_interpolates():
    step, loss = [0, 10, 20, 30], [4.0, 3.0, 2.0, 1.5]
    assert P.steps_to_reach(step, loss, 2.5) == pytest.approx(15.0)
    assert P.steps_to_reach(step, loss, 3.0) == 10.0  # reached exactly at a logged step
    assert P.steps_to_reach(step, loss, 5.0) == 0.0
    assert P.steps_to_reach(step, loss, 1.0) == math.inf
    with pytest.raises(ValueError, match="increase"):
        P.steps_to_reach([0, 0], [1, 1], 1)


def test_rate_counts_failures_as_not_trained():
    outcomes = ["trained", "stalled", "diverged", "trained"]
    assert P.rate(outcomes, "failed") == 0.5
    assert P.rate(outcomes, "trained") == 0.5
    assert P.rate(outcomes, "diverged") == 0.25
    assert math.isnan(P.rate([], "trained"))
    with pytest.raises(ValueError, match="valid"):
        P.rate(outcomes, "exploded")


def test_runs_of_gives_one_row_per_run(corpus):
    kw = {
        "vocab_size": corpus.vocab_size,
        "d_model": 16,
        "n_heads": 2,
        "n_layers": 1,
        "seq_len": 16,
    }
    tk = {"steps": 4, "batch_size": 2, "lr": 1e-3, "warmup_steps": 2}
    hist = P.sweep(
        corpus,
        {"placement": ["pre", "post"], "seed": [0, 1]},
        kw,
        tk,
        history=True,
        progress=False,
        workers=1,
    )
    plain = P.sweep(
        corpus, {"placement": ["pre", "post"], "seed": [0, 1]}, kw, tk, progress=False, workers=1
    )
    runs = P.runs_of(hist[hist.step >= 0])  # filtering keeps the sweep's run columns
    assert list(runs.run) == [0, 1, 2, 3]
    assert "train_loss" not in runs.columns and "step" not in runs.columns
    assert list(runs.final_val_loss) == list(plain.final_val_loss)
    assert list(runs.lr) == [1e-3] * 4  # the configured rate, not the warmup's per-step rate
    glued = pd.concat([hist, hist.assign(run=hist.run + 4)])  # concat loses the attrs
    assert len(P.runs_of(glued)) == 8
    with pytest.raises(KeyError, match="run"):
        P.runs_of(hist.drop(columns="run"))


def test_rate_interval_is_wilsons_and_does_not_collapse_at_zero():
    # Fails if the interval is the normal approximation (which gives [0, 0] at 0 of n), if
    # it leaves [0, 1], or if the centre is not the observed rate. Reference values: the
    # Wilson score interval worked out by hand, 0/2 -> [0, 0.658], 3/10 -> [0.108, 0.603].
    e = P.rate_interval(["stalled", "diverged"], "trained")
    assert (e.value, e.n) == (0.0, 2) and e.lo == 0.0 and e.hi == pytest.approx(0.658, abs=1e-3)
    e = P.rate_interval(["trained"] * 3 + ["stalled"] * 7, "trained")
    assert e.value == pytest.approx(0.3)
    assert (e.lo, e.hi) == (pytest.approx(0.108, abs=1e-3), pytest.approx(0.603, abs=1e-3))
    assert P.rate_interval(["trained"] * 4, "failed").hi < 0.5  # 0 of 4 failed
    assert math.isnan(P.rate_interval([], "trained").value)
    with pytest.raises(ValueError, match="level"):
        P.rate_interval(["trained"], "trained", level=1.0)


def test_rate_interval_at_zero_and_all_for_every_n_and_level():
    # Failed for 0 of 1 run at level 0.9 (and others): rounding put the lower end at 3e-17,
    # above the rate 0, and building the Estimate raised. Found by the exercise checker.
    for n in range(1, 60):
        for level in (0.8, 0.9, 0.95, 0.99):
            none = P.rate_interval(["trained"] * n, "failed", level)
            every = P.rate_interval(["stalled"] * n, "failed", level)
            assert none.lo == 0.0 <= none.value < none.hi
            assert every.lo < every.value == 1.0 == every.hi


def test_censored_interval_covers_what_the_bounds_allow():
    # Fails if a censored seed is read as its bound (a t-interval of the lower ends), if an
    # unbounded seed leaves a finite end, or if uncensored values stop being a t-interval.
    exact = P.censored_interval([1.2, 1.6], [1.2, 1.6])
    assert exact == P.t_interval([1.2, 1.6])
    cens = P.censored_interval([1.2, 1.5], [1.2, math.inf])
    assert cens.hi == math.inf and cens.lo == P.t_interval([1.2, 1.5]).lo
    assert cens.value == pytest.approx(1.35)
    upper = P.censored_interval([0.0, 0.8], [0.5, 0.8])
    assert upper.hi == P.t_interval([0.5, 0.8]).hi and upper.lo == P.t_interval([0.0, 0.8]).lo
    assert P.censored_interval([2.0], [2.0]).lo == -math.inf
    with pytest.raises(ValueError, match="at most its upper"):
        P.censored_interval([2.0, 1.0], [1.0, 1.0])


@pytest.mark.parametrize(
    ("first", "second", "outcome"),
    [
        ((0.8, 0.7, 0.9), (0.85, 0.78, 0.92), "holds"),  # both readouts below 1: agree
        ((1.99, 1.67, 2.32), (1.5, 1.2, 1.8), "fails"),  # both above: agree
        ((1.99, 1.67, 2.32), (0.85, 0.78, 0.92), "undecided"),  # they disagree
        ((0.8, 0.7, 0.9), (0.98, 0.9, 1.1), "undecided"),  # one is undecided
    ],
)
def test_a_prediction_on_two_readouts_is_decided_only_when_they_agree(first, second, outcome):
    # fails if one readout could decide the core against the other
    est = P.agreeing_estimate(*(P.Estimate(*v, n=5) for v in (first, second)))
    assert P.Prediction("ratio", "<", 1.0).outcome(est) == outcome
    assert est.lo == min(first[1], second[1]) and est.hi == max(first[2], second[2])
    with pytest.raises(ValueError, match="two"):
        P.agreeing_estimate(est)
    with pytest.raises(TypeError, match="Estimate"):
        P.agreeing_estimate(est, 1.0)


def test_seeds_to_decide_is_the_first_n_whose_interval_clears_the_threshold():
    """Fails if the returned n is not minimal, or does not decide, at the observed mean and
    SD; or if a geometric estimate is planned on the linear scale."""
    est = P.Estimate(0.03, 0.0, 0.06, n=3, sd=0.02)
    n = P.seeds_to_decide(est, 0.02)
    half = [P.t_quantile(0.975, k - 1) * 0.02 / math.sqrt(k) for k in (n - 1, n)]
    assert half[1] < 0.01 <= half[0]
    geo = P.Estimate(10**0.5, 10**0.0, 10**1.0, n=4, sd=0.2, log10=True)
    m = P.seeds_to_decide(geo, 1.0)  # the gap is 0.5 in log10 units
    assert P.t_quantile(0.975, m - 1) * 0.2 / math.sqrt(m) < 0.5
    assert P.t_quantile(0.975, m - 2) * 0.2 / math.sqrt(m - 1) >= 0.5
    assert P.seeds_to_decide(P.Estimate(0.02, 0.0, 0.04, n=3, sd=0.01), 0.02) is None
    assert P.seeds_to_decide(P.Estimate(0.5, 0.0, 1.0, n=3), 0.2) is None  # sd unknown
    assert P.seeds_to_decide(P.Estimate(0.03, 0.0, 0.06, n=3, sd=10.0), 0.02, max_n=50) is None
    with pytest.raises(TypeError, match="Estimate"):
        P.seeds_to_decide(0.5, 0.2)
    with pytest.raises(ValueError, match="max_n"):
        P.seeds_to_decide(est, 0.02, max_n=1)
