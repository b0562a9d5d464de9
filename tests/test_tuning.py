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


# ---- default against tuned Adam (chapter 8) ------------------------------------------


def _search_runs():
    # three settings over two seeds; the best mean (0.9) has a diverged run, so it is out
    rows = []
    settings = {
        ("adam", 1e-3, 0.999, 0, 0.0): ((1.5, False), (1.7, False)),
        ("adamw", 3e-3, 0.95, 20, 0.1): ((1.2, False), (1.4, False)),
        ("adamw", 1e-2, 0.95, 20, 0.1): ((0.9, False), (5.0, True)),
    }
    for (opt, lr, b2, w, wd), runs in settings.items():
        for seed, (v, div) in enumerate(runs):
            rows.append(
                {
                    "optimizer": opt,
                    "lr": lr,
                    "beta1": 0.9,
                    "beta2": b2,
                    "warmup_steps": w,
                    "weight_decay": wd,
                    "seed": seed,
                    "final_val_loss": v,
                    "diverged": div,
                }
            )
    return pd.DataFrame(rows)


def test_adam_defaults_are_torchs():
    # fails if "default Adam" drifts from torch.optim.Adam's own defaults
    import inspect

    import torch

    sig = inspect.signature(torch.optim.Adam).parameters
    assert P.ADAM_DEFAULTS["lr"] == sig["lr"].default
    assert P.ADAM_DEFAULTS["betas"] == sig["betas"].default
    assert P.ADAM_DEFAULTS["weight_decay"] == sig["weight_decay"].default
    assert P.ADAM_DEFAULTS["warmup_steps"] == 0


def test_adam_search_grids_pair_every_lr_with_both_recipes():
    grids = P.adam_search_grids([1e-3, 3e-3], [0, 1], steps=200)
    assert len(grids) == 2
    assert grids[0]["betas"] == [(0.9, 0.999)] and grids[0]["warmup_steps"] == [0]
    assert grids[1]["optimizer"] == ["adamw"] and grids[1]["betas"] == [(0.9, 0.95)]
    assert grids[1]["warmup_steps"] == [20] and grids[1]["weight_decay"] == [0.1]
    assert grids[0]["lr"] == grids[1]["lr"] == [1e-3, 3e-3]
    assert P.adam_search_grids([1e-3], [0], steps=4)[1]["warmup_steps"] == [1]  # at least 1
    with pytest.raises(ValueError, match="lrs"):
        P.adam_search_grids([], [0], steps=10)
    with pytest.raises(ValueError, match="warmup_frac"):
        P.adam_search_grids([1e-3], [0], steps=10, warmup_frac=1.5)


def test_search_ranks_diverged_settings_last_and_best_is_clean():
    table = P.search_table(_search_runs())
    # by hand: adamw 3e-3 mean 1.3, adam 1e-3 mean 1.6, adamw 1e-2 (0.9, one diverged) last
    assert list(table["mean"].round(6)) == [1.3, 1.6, 0.9]
    assert list(table["diverged"]) == [0, 0, 1]
    assert table.index[0] == "adamw lr=0.003 b2=0.95 warmup=20 wd=0.1"
    best = P.best_adam_setting(_search_runs())
    assert best == {
        "optimizer": "adamw",
        "lr": 3e-3,
        "betas": (0.9, 0.95),
        "weight_decay": 0.1,
        "warmup_steps": 20,
        "schedule": "constant",
    }
    with pytest.raises(ValueError, match="no best"):
        P.best_adam_setting(_search_runs().assign(diverged=True))


def _contrast_runs(diverge_seed=None):
    # per seed: default LN, tuned LN, tuned RMS
    losses = {0: (2.0, 1.5, 1.6), 1: (2.1, 1.7, 1.65), 2: (1.9, 1.5, 1.5)}
    rows = []
    for seed, (d, t, r) in losses.items():
        for arm, norm, v in (
            ("default", "layernorm", d),
            ("tuned", "layernorm", t),
            ("tuned", "rmsnorm", r),
        ):
            rows.append(
                {
                    "arm": arm,
                    "norm": norm,
                    "seed": seed,
                    "final_val_loss": v,
                    "diverged": seed == diverge_seed and norm == "rmsnorm",
                }
            )
    return pd.DataFrame(rows)


def test_optimizer_contrast_by_hand():
    c = P.optimizer_contrast(_contrast_runs())
    # G = D - T = (0.5, 0.4, 0.4); N = R - T = (0.1, -0.05, 0), signed
    assert c.gain.value == pytest.approx(1.3 / 3)
    assert c.norm_effect.value == pytest.approx(0.05 / 3)  # signed: sizes are not averaged
    gm = np.array([0.4, 0.45, 0.4])  # G - N = D - R
    gp = np.array([0.6, 0.35, 0.4])  # G + N
    assert c.gain_minus_effect.value == pytest.approx(gm.mean())
    assert c.gain_plus_effect.value == pytest.approx(gp.mean())
    half = P.t_quantile(0.975, 2) * gp.std(ddof=1) / math.sqrt(3)
    assert c.gain_plus_effect.lo == pytest.approx(gp.mean() - half)
    assert c.dropped == () and not c.tuned_is_default
    assert list(c.per_seed.index) == [0, 1, 2]


def test_optimizer_contrast_when_the_search_kept_the_defaults():
    # the defaults trained once with each norm: the gain is 0 on every seed, by definition
    runs = _contrast_runs().query("arm != 'tuned' or norm != 'layernorm'").copy()
    runs["arm"] = "default"
    c = P.optimizer_contrast(runs, tuned_is_default=True)
    assert c.tuned_is_default
    assert (c.gain.value, c.gain.lo, c.gain.hi) == (0.0, 0.0, 0.0)
    n = np.array([1.6 - 2.0, 1.65 - 2.1, 1.5 - 1.9])  # R - D
    assert c.norm_effect.value == pytest.approx(n.mean())
    assert c.gain_minus_effect.value == pytest.approx(-n.mean())
    assert c.gain_plus_effect.value == pytest.approx(n.mean())
    with pytest.raises(ValueError, match="no run for arm='tuned'"):
        P.optimizer_contrast(runs)  # without the flag the tuned arm is missing
    with pytest.raises(TypeError, match="tuned_is_default"):
        P.optimizer_contrast(runs, tuned_is_default="yes")


def test_optimizer_contrast_drops_a_seed_with_a_diverged_run():
    c = P.optimizer_contrast(_contrast_runs(diverge_seed=0))
    assert c.dropped == (0,)
    assert c.gain_minus_effect.n == 2
    assert c.gain_minus_effect.value == pytest.approx((0.45 + 0.4) / 2)
    with pytest.raises(ValueError, match="fewer than two"):
        P.optimizer_contrast(_contrast_runs().query("seed == 0"))


def test_pick_adam_setting_takes_a_decided_winner():
    pick = P.pick_adam_setting(_search_runs())
    # adamw 3e-3 beats the defaults by 0.3 on both seeds (interval [-0.3, -0.3])
    assert not pick.keeps_default and not pick.resolved_tie
    assert (
        pick.setting
        == pick.best
        == {
            "optimizer": "adamw",
            "lr": 3e-3,
            "betas": (0.9, 0.95),
            "weight_decay": 0.1,
            "warmup_steps": 20,
            "schedule": "constant",
        }
    )
    assert pick.vs_default.value == pytest.approx(-0.3) and pick.vs_default.hi < 0
    assert pick.runner_up == pick.default_label == "adam lr=0.001 b2=0.999 warmup=0 wd=0"
    assert pick.vs_runner_up.value == pytest.approx(0.3)
    assert not pick.edge  # 3e-3 lies between 1e-3 and 1e-2
    assert list(pick.table().columns) == ["mean", "lo", "hi", "n"]
    assert "wholly below 0: it is the tuned setting" in pick.summary()


def test_pick_adam_setting_resolves_a_tie_toward_the_defaults():
    runs = _search_runs()
    runs.loc[
        (runs.optimizer == "adamw") & (runs.lr == 3e-3) & (runs.seed == 1), "final_val_loss"
    ] = 1.8
    pick = P.pick_adam_setting(runs)
    # best mean 1.5 < 1.6, but the paired differences (-0.3, +0.1) do not decide it
    assert pick.best_label.startswith("adamw lr=0.003")
    assert pick.vs_default.lo < 0 < pick.vs_default.hi
    assert pick.keeps_default and pick.resolved_tie
    assert pick.setting == P.ADAM_DEFAULTS
    assert "a tie, resolved toward the defaults" in pick.summary()


def test_pick_adam_setting_keeps_defaults_that_are_best_and_flags_an_edge():
    runs = _search_runs()
    runs.loc[runs.optimizer == "adam", "final_val_loss"] = 1.0
    pick = P.pick_adam_setting(runs)
    assert pick.keeps_default and not pick.resolved_tie
    assert pick.best_label == pick.default_label and math.isnan(pick.vs_default.value)
    assert pick.edge  # 1e-3 is the smallest rate of this search
    assert pick.summary().startswith("Adam's defaults had the lowest mean loss")
    runs = _search_runs()
    runs.loc[runs.lr == 1e-2, ["final_val_loss", "diverged"]] = [0.9, False]
    pick = P.pick_adam_setting(runs)
    assert pick.best["lr"] == 1e-2 and pick.edge  # the largest rate searched: not bracketed
    with pytest.raises(ValueError, match="no run with the defaults"):
        P.pick_adam_setting(_search_runs().query("optimizer != 'adam'"))


def test_adam_contrast_grids_train_the_defaults_once_when_they_are_the_pick():
    grids, arms = P.adam_contrast_grids(P.ADAM_DEFAULTS, dict(P.ADAM_DEFAULTS), [3, 4])
    points = P.sweeps.grid_points(grids, P.sweeps.MODEL_KEYS + P.sweeps.TRAIN_KEYS)
    assert len(points) == len(arms) == 4 and set(arms) == {"default"}
    assert sorted(p["norm"] for p in points) == ["layernorm"] * 2 + ["rmsnorm"] * 2


def test_adam_contrast_grids_label_runs_in_grid_order():
    tuned = {**P.ADAM_DEFAULTS, "lr": 3e-3}
    grids, arms = P.adam_contrast_grids(P.ADAM_DEFAULTS, tuned, [3, 4])
    points = P.sweeps.grid_points(grids, P.sweeps.MODEL_KEYS + P.sweeps.TRAIN_KEYS)
    assert len(points) == len(arms) == 6
    for point, arm in zip(points, arms, strict=True):
        assert point["lr"] == (1e-3 if arm == "default" else 3e-3)
    assert (
        sorted(p["norm"] for p in points if p["lr"] == 3e-3) == ["layernorm"] * 2 + ["rmsnorm"] * 2
    )
    with pytest.raises(ValueError, match="two seeds"):
        P.adam_contrast_grids(P.ADAM_DEFAULTS, tuned, [3])


@pytest.mark.parametrize("name", ["ci", "cpu", "gpu"])
def test_coda_presets_confirm_on_seeds_the_search_never_saw(name):
    # fails if a preset judges C14 on a seed the tuned setting was chosen on, leaves fewer
    # than two confirmation seeds (no interval), or puts Adam's default rate at an end of the search
    s = P.PRESETS[name]
    assert not set(s.coda_search_seeds) & set(s.coda_confirm_seeds)
    assert len(set(s.coda_confirm_seeds)) >= 2
    assert min(s.coda_lrs) < P.ADAM_DEFAULTS["lr"] < max(s.coda_lrs)  # inside, not at an end


# ---- C14's rule when the search keeps the defaults ---------------------------------------


def test_search_gains_pairs_each_clean_setting_with_the_defaults():
    g = P.search_gains(_search_runs())
    # defaults (1.5, 1.7), adamw 3e-3 (1.2, 1.4): gain 0.3 on both seeds; 1e-2 diverged: out
    assert list(g.index) == ["adamw lr=0.003 b2=0.95 warmup=20 wd=0.1"]
    row = g.iloc[0]
    assert (row["mean"], row["lo"], row["hi"], row["n"]) == pytest.approx((0.3, 0.3, 0.3, 2))
    with pytest.raises(ValueError, match="no run with the defaults"):
        P.search_gains(_search_runs().query("optimizer != 'adam'"))


def _c14():
    return P.ClaimTest(
        "C14",
        section="coda-tuning",
        predictions=P.tuning_predictions(),
        undecidable={"edge": "the search's best learning rate is at an end of its range"},
    )


def _kept_contrast():
    # the defaults kept: RMSNorm minus LayerNorm (+0.1, -0.1, +0.05), an unresolved N, so the
    # old G +- N core would be undecided (inconclusive) whatever the search found
    rows = []
    for seed, d in enumerate((2.0, 2.1, 1.9)):
        for norm, v in (("layernorm", d), ("rmsnorm", d + (0.1, -0.1, 0.05)[seed])):
            rows.append(
                {
                    "arm": "default",
                    "norm": norm,
                    "seed": seed,
                    "final_val_loss": v,
                    "diverged": False,
                }
            )
    return P.optimizer_contrast(pd.DataFrame(rows), tuned_is_default=True)


def _verdict(keeps, contrast, ends):
    c = _c14().measure(**P.tuning_measurements(keeps, contrast, ends), edge=False)
    return c


def test_c14_defaults_kept_and_every_upper_end_below_the_magnitude_is_not_reproduced():
    c = _verdict(True, _kept_contrast(), [0.0147, -0.01, 0.019])
    assert c.verdict == "not reproduced at this scale"
    assert c.outcome("reach") == "fails"
    assert c.outcome("over_cost") == c.outcome("over_gain") == "does not apply"
    assert c.value("reach") == pytest.approx(0.019) and math.isnan(c.value("over_cost"))
    table = c.results_table()
    assert list(table.loc[table.id == "over_cost", "outcome"]) == ["does not apply"]


def test_c14_defaults_kept_and_one_upper_end_at_the_magnitude_is_inconclusive():
    assert _verdict(True, _kept_contrast(), [0.0147, 0.02]).verdict == "inconclusive"
    assert _verdict(True, _kept_contrast(), [0.0, float("nan")]).verdict == "inconclusive"
    # a resolved norm effect no longer decides: the old core would say "not reproduced"
    runs = _contrast_runs().query("arm != 'tuned' or norm != 'layernorm'").copy()
    runs["arm"] = "default"
    resolved = P.optimizer_contrast(runs, tuned_is_default=True)
    assert resolved.norm_effect.hi < 0
    assert _verdict(True, resolved, [0.05]).verdict == "inconclusive"


def test_c14_a_non_default_pick_is_decided_by_g_plus_minus_n():
    contrast = P.optimizer_contrast(_contrast_runs())
    # G +- N and G hold; the search's upper ends, all below 0.02, do not apply
    c = _verdict(False, contrast, [0.0])
    assert c.verdict == "confirmed" and c.outcome("reach") == "does not apply"
    runs = _contrast_runs()
    runs.loc[(runs.arm == "tuned") & (runs.norm == "rmsnorm"), "final_val_loss"] += 1.0
    c = _verdict(False, P.optimizer_contrast(runs), [0.5])  # G - N < 0 on every seed
    assert c.outcome("over_cost") == "fails" and c.verdict == "not reproduced at this scale"
    with pytest.raises(ValueError, match="tuned_is_default"):
        P.tuning_measurements(True, contrast, [0.0])
    with pytest.raises(ValueError, match="empty"):
        P.tuning_measurements(True, _kept_contrast(), [])


def test_claim_test_needs_a_core_prediction_that_applies():
    c = _c14().measure(over_cost=None, over_gain=None, reach=None, measurable=0.1, edge=False)
    with pytest.raises(ValueError, match="no core prediction applies"):
        _ = c.verdict
