"""prenorm.tuning: the sizes of an optimizer sweep, against numbers worked out by hand."""

import math

import numpy as np
import pandas as pd
import pytest

import prenorm as P


def _lr_runs():
    # two designs, three learning rates, two seeds; layernorm's seed 1 at lr 3 diverged
    rows = []
    loss = {
        ("layernorm", 1.0): (2.0, 2.2),
        ("layernorm", 3.0): (1.0, 9.0),
        ("layernorm", 10.0): (1.6, 1.8),
        ("rmsnorm", 1.0): (2.1, 2.1),
        ("rmsnorm", 3.0): (1.2, 1.4),
        ("rmsnorm", 10.0): (1.5, 1.5),
    }
    for (norm, lr), values in loss.items():
        for seed, v in enumerate(values):
            diverged = norm == "layernorm" and lr == 3.0 and seed == 1
            rows.append(
                {"norm": norm, "lr": lr, "seed": seed, "final_val_loss": v, "diverged": diverged}
            )
    return pd.DataFrame(rows)


def _beta_runs():
    loss = {0.9: (1.0, 1.2), 0.99: (1.3, 1.3), 0.999: (1.1, 1.5)}
    return pd.DataFrame(
        [
            {"norm": "layernorm", "beta2": b, "seed": s, "final_val_loss": v, "diverged": False}
            for b, values in loss.items()
            for s, v in enumerate(values)
        ]
    )


def test_setting_curve_weighs_each_design_equally():
    # by hand: lr 3 -> layernorm 1.0 (its diverged 9.0 left out), rmsnorm 1.3 -> 1.15; pooling
    # the three trained runs instead would give 1.2, so a pooled mean fails this test
    curve = P.setting_curve(_lr_runs(), "lr", by="norm")
    assert list(curve.index) == [1.0, 3.0, 10.0]
    assert curve.to_numpy() == pytest.approx([(2.1 + 2.1) / 2, (1.0 + 1.3) / 2, (1.7 + 1.5) / 2])
    pooled = P.setting_curve(_lr_runs(), "lr")
    assert pooled.loc[3.0] == pytest.approx((1.0 + 1.2 + 1.4) / 3)


def test_best_setting_is_the_argmin():
    assert P.best_setting(_lr_runs(), "lr", by="norm") == 3.0
    all_diverged = _lr_runs().assign(diverged=True)
    with pytest.raises(ValueError, match="no run"):
        P.best_setting(all_diverged, "lr")


def test_miss_cost_takes_the_better_neighbour():
    curve = pd.Series([0.5, 0.2, 0.4, 0.9], index=[1, 3, 10, 30])
    assert P.miss_cost(curve) == pytest.approx(0.4 - 0.2)  # not 0.5 - 0.2, the worse one
    assert P.miss_cost(curve, best=30) == pytest.approx(0.4 - 0.9)  # at the edge: one neighbour
    edge = pd.Series([0.1, 0.3, 0.6], index=[3, 1, 10])  # unsorted: 1 -> 0.3, 3 -> 0.1
    assert P.miss_cost(edge) == pytest.approx(0.3 - 0.1)
    assert math.isnan(P.miss_cost(pd.Series([1.0], index=[1])))
    with pytest.raises(KeyError):
        P.miss_cost(curve, best=7)


def test_paired_gaps_match_numpy():
    gaps = P.paired_gaps(_lr_runs(), "lr", "norm", "layernorm", "rmsnorm")
    d1 = np.array([2.0 - 2.1, 2.2 - 2.1])
    assert gaps.loc[1.0, "mean"] == pytest.approx(d1.mean())
    assert gaps.loc[1.0, "sd"] == pytest.approx(d1.std(ddof=1))
    # lr 3: seed 1 diverged, so one pair is left: no SD
    assert gaps.loc[3.0, "mean"] == pytest.approx(1.0 - 1.2)
    assert gaps.loc[3.0, "n"] == 1 and math.isnan(gaps.loc[3.0, "sd"])


def test_setting_effect_matches_numpy():
    eff = P.setting_effect(_beta_runs(), "beta2")
    assert eff["mean"].to_numpy() == pytest.approx([1.1, 1.3, 1.3])
    assert eff["sd"].to_numpy() == pytest.approx(
        [np.std([1.0, 1.2], ddof=1), 0.0, np.std([1.1, 1.5], ddof=1)]
    )
    assert list(eff["n"]) == [2, 2, 2]


def test_tuning_summary_by_hand():
    t = P.tuning_summary(_lr_runs(), _beta_runs())
    assert t.best_lr == 3.0
    # curve 2.1, 1.15, 1.6: the better neighbour of lr 3 is lr 10
    assert t.miss_cost == pytest.approx(1.6 - 1.15)
    assert t.lr_full_range == pytest.approx(2.1 - 1.15)
    assert t.gap_best == pytest.approx(0.2)
    assert math.isnan(t.gap_sd)
    # mean gaps: lr 1 -> 0.0, lr 3 -> -0.2, lr 10 -> +0.2: the largest |gap| is 0.2
    assert t.norm_gap == pytest.approx(0.2)
    assert t.beta_range == pytest.approx(1.3 - 1.1)
    assert t.best_beta2 == 0.9
    assert t.beta_seed_sd == pytest.approx(
        (np.std([1.0, 1.2], ddof=1) + np.std([1.1, 1.5], ddof=1)) / 3
    )
    assert t.n_diverged == 1
    assert t.miss_ratio == pytest.approx(0.45 / 0.2)
    assert t.beta_ratio == pytest.approx(0.2 / 0.2)
    assert "best_lr" not in t.numbers() and t.numbers()["norm_gap"] == t.norm_gap
    assert t.table().loc["cost of a 3x lr miss", "nats"] == pytest.approx(0.45)


def test_plot_setting_sweep_marks_diverged_runs_with_crosses():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    P.plot_setting_sweep(_lr_runs(), "lr", ax=ax)
    crosses = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [3.0]  # the one diverged run
    means = [line for line in ax.get_lines() if line.get_marker() != "x"]
    assert len(means) == 2 and ax.get_xscale() == "log"
    plt.close(fig)
