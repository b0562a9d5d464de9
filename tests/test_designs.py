"""Tests of prenorm.designs (chapter 9's analyses) and of ``lr_summary(by_seed=True)``."""

import math

import pandas as pd
import pytest

import prenorm as P


def test_lr_summary_by_seed_summarises_each_seed_apart():
    # Fails if by_seed pools the seeds (seed 1's best 2.0 would be reported for seed 0 too),
    # if the rows are not indexed by (design, seed) in order of appearance, or if a seed's
    # sensitivity mixes in the other seed's runs. Expected values are worked out by hand.
    from prenorm import lr_summary

    runs = pd.DataFrame(
        {
            "design": ["a"] * 4 + ["b"] * 4,
            "seed": [0, 0, 1, 1] * 2,
            "lr": [1e-3, 1e-2] * 4,
            "final_val_loss": [2.5, 2.2, 2.0, 3.0, 3.5, 3.1, 2.8, 9.0],
            "diverged": [False, False, False, False, False, True, False, True],
        }
    )
    table = lr_summary(runs, "design", cap=4.0, by_seed=True)
    assert list(table.index) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert table.index.names == ["design", "seed"]
    assert table.loc[("a", 0), "best_loss"] == 2.2 and table.loc[("a", 0), "best_lr"] == 1e-2
    assert table.loc[("a", 1), "best_loss"] == 2.0 and table.loc[("a", 1), "best_lr"] == 1e-3
    assert table.loc[("a", 0), "sensitivity"] == pytest.approx((2.5 + 2.2) / 2 - 2.2)
    assert table.loc[("a", 1), "sensitivity"] == pytest.approx((2.0 + 3.0) / 2 - 2.0)
    # b, seed 0: the lr=1e-2 run diverged, so only 3.5 counts as best; it is capped at 4.
    assert table.loc[("b", 0), "best_loss"] == 3.5
    assert table.loc[("b", 0), "sensitivity"] == pytest.approx((3.5 + 4.0) / 2 - 3.5)
    assert table.loc[("b", 1), "best_lr"] == 1e-3
    # the pooled default is unchanged: one row per design
    pooled = lr_summary(runs, "design", cap=4.0)
    assert list(pooled.index) == ["a", "b"] and pooled.loc["a", "best_loss"] == 2.0
    assert not math.isnan(pooled.loc["b", "sensitivity"])


def _ablation() -> pd.DataFrame:
    # Two cells of a 4-layer model (split 2) and one cell where no removal hurts.
    rows = []
    for (p, lr), deltas in {
        ("pre", 1e-3): [0.6, 0.2, 0.1, 0.1],
        ("pre", 1e-2): [0.5, -0.1, 0.3, 0.2],
        ("lns", 1e-3): [0.0, -0.2, 0.0, -0.1],
    }.items():
        rows += [
            {"placement": p, "lr": lr, "layer": i, "loss_increase": v} for i, v in enumerate(deltas)
        ]
    return pd.DataFrame(rows)


def test_deep_shares_count_only_harmful_removals_and_split_at_the_deep_half():
    # Fails if a negative loss increase is counted (the second cell's share would be
    # 0.5/0.9 instead of 0.5/1.0), if the deep half starts at the wrong layer, if the share
    # without layer 0 keeps layer 0 in its denominator, or if a cell whose removals never
    # hurt gets a share of 0 instead of NaN. Expected values are worked out by hand.
    from prenorm import deep_shares

    s = deep_shares(_ablation(), ["placement", "lr"], split=2).set_index(["placement", "lr"])
    assert list(s.columns) == [
        "deep_share",
        "without_first",
        "deep_increase",
        "first_share",
        "shallow_increase",
    ]
    a, b, c = s.loc[("pre", 1e-3)], s.loc[("pre", 1e-2)], s.loc[("lns", 1e-3)]
    assert a.deep_share == pytest.approx(0.2 / 1.0)
    assert a.without_first == pytest.approx(0.2 / 0.4)
    assert a.deep_increase == pytest.approx(0.2)
    assert a.first_share == pytest.approx(0.6)
    assert a.shallow_increase == pytest.approx(0.2)  # layer 1 only: layer 0 is left out
    assert b.deep_share == pytest.approx(0.5 / 1.0)
    assert b.without_first == pytest.approx(1.0)  # layer 1's -0.1 counts as 0
    assert b.first_share == pytest.approx(0.5)
    assert b.shallow_increase == 0  # layer 1's -0.1 counts as 0
    assert math.isnan(c.deep_share) and math.isnan(c.without_first) and c.deep_increase == 0
    empty = deep_shares(_ablation().iloc[:0], ["placement", "lr"], split=2)
    assert len(empty) == 0 and "deep_share" in empty.columns


def test_share_summary_reports_every_design_of_the_order():
    # Fails if a design without cells is dropped or gets a count other than 0, or if the
    # median is taken over the wrong column.
    from prenorm import share_summary

    shares = pd.DataFrame(
        {
            "placement": ["pre", "pre", "pre", "lns"],
            "deep_share": [0.1, 0.4, 0.2, 0.5],
            "without_first": [0.3, 0.6, 0.9, 0.5],
        }
    )
    t = share_summary(shares, "placement", ["pre", "lns", "mixln"])
    assert list(t.index) == ["pre", "lns", "mixln"]
    assert t.loc["pre", "median"] == pytest.approx(0.2)
    assert (t.loc["pre", "min"], t.loc["pre", "max"]) == (0.1, 0.4)
    assert t.loc["pre", "without_first"] == pytest.approx(0.6)
    assert list(t.cells) == [3, 1, 0]
    assert math.isnan(t.loc["mixln", "median"])


def test_paired_medians_pair_by_learning_rate():
    # Fails if designs are compared at learning rates only one of them has (lns's lone
    # 1e-1 would enter), if the median is of the values rather than of the differences,
    # or if a design with no rows is dropped. Expected: lns - pre at 1e-3, 1e-2, 3e-2 is
    # 0.3, 0.1, -0.2 (median 0.1); mixln at 1e-3 only: 0.5 - 0.2.
    from prenorm import paired_medians

    frame = pd.DataFrame(
        {
            "placement": ["pre"] * 3 + ["lns"] * 4 + ["mixln"],
            "lr": [1e-3, 1e-2, 3e-2, 1e-3, 1e-2, 3e-2, 1e-1, 1e-3],
            "v": [0.2, 0.4, 0.6, 0.5, 0.5, 0.4, 9.0, 0.5],
        }
    )
    t = paired_medians(frame, "placement", "pre", "v", levels=["pre", "lns", "mixln", "peri"])
    assert list(t.index) == ["lns", "mixln", "peri"]
    assert t.loc["lns", "median"] == pytest.approx(0.1) and t.loc["lns", "n"] == 3
    assert t.loc["mixln", "median"] == pytest.approx(0.3) and t.loc["mixln", "n"] == 1
    assert math.isnan(t.loc["peri", "median"]) and t.loc["peri", "n"] == 0
    assert list(paired_medians(frame, "placement", "pre", "v").index) == ["lns", "mixln"]


def _runs_by_seed() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "placement": ["pre"] * 4 + ["peri"] * 4,
            "seed": [0, 0, 1, 1] * 2,
            "lr": [1e-3, 1e-2] * 4,
            "final_val_loss": [3.0, 2.0, 2.8, 2.4, 2.5, 2.5, 2.6, 2.2],
            "diverged": [False] * 8,
        }
    )


def test_seed_values_and_lr_table_summarise_each_seed_and_the_pooled_cells():
    # Fails if seed_values mixes the seeds (pre, seed 0 has S = (3 + 2)/2 - 2 = 0.5 by
    # hand), if its rows do not follow the order, or if lr_table counts cells that did not
    # train or writes the per-seed sensitivities in another order or format.
    from prenorm import lr_table, mean_over_seeds, seed_values

    by_seed = _runs_by_seed()
    sv = seed_values(by_seed, "placement", cap=4.0, order=["pre", "peri"])
    assert list(sv.index) == ["pre", "peri"] and list(sv.columns) == [0, 1]
    assert sv.loc["pre", 0] == pytest.approx(0.5)
    assert sv.loc["pre", 1] == pytest.approx(0.2)
    assert sv.loc["peri", 0] == pytest.approx(0.0)
    assert sv.loc["peri", 1] == pytest.approx(0.2)

    runs = mean_over_seeds(by_seed, ["placement", "lr"])
    runs["outcome"] = ["trained", "trained", "stalled", "trained"]
    t = lr_table(runs, by_seed, "placement", cap=4.0, order=["peri", "pre"])
    assert list(t.index) == ["peri", "pre"]
    assert list(t.trained) == [1, 2]
    # pooled pre: losses 2.9, 2.2 -> best 2.2 at 1e-2, S = (2.9 + 2.2)/2 - 2.2 = 0.35
    assert t.loc["pre", "best_loss"] == pytest.approx(2.2) and t.loc["pre", "best_lr"] == 1e-2
    assert t.loc["pre", "sensitivity"] == pytest.approx(0.35)
    assert t.loc["pre", "seed_sensitivity"] == "0.500, 0.200"
    assert t.loc["peri", "seed_sensitivity"] == "0.000, 0.200"


def test_stream_rms_takes_the_stream_entering_the_head_at_one_step():
    # Fails if another layer or step is taken, or the table is not learning rate by design.
    from prenorm import stream_rms

    rows = [
        {
            "probe": "residual_norms",
            "placement": p,
            "lr": lr,
            "step": st,
            "layer": la,
            "n_layers": 2,
            "rms": 100 * st + 10 * la + (lr == 1e-2) + (p == "peri") / 10,
        }
        for p in ("pre", "peri")
        for lr in (1e-3, 1e-2)
        for st in (0, 5)
        for la in (0, 1, 2)
    ]
    rows.append(
        {
            "probe": "layer_ablation",
            "placement": "pre",
            "lr": 1e-3,
            "step": 5,
            "layer": 2,
            "n_layers": 2,
            "rms": -1.0,
        }
    )
    t = stream_rms(pd.DataFrame(rows), 5)
    assert list(t.index) == [1e-3, 1e-2] and set(t.columns) == {"pre", "peri"}
    assert t.loc[1e-3, "pre"] == pytest.approx(520)
    assert t.loc[1e-2, "peri"] == pytest.approx(521.1)
    assert stream_rms(pd.DataFrame(rows), 0, layer=0).loc[1e-2, "pre"] == pytest.approx(1)


def test_joined_compare_missing_and_glue_each(monkeypatch):
    # Fails if the numbers are formatted or joined differently, if compare's missing word
    # does not replace a NaN (without it compare raises) or changes the word otherwise, or if
    # glue_each names a value other than {prefix}_{key}.
    import prenorm.plotting
    from prenorm import compare, glue_all, joined

    assert joined([0.1, -0.02, float("nan")], "+.2f") == "+0.10, -0.02, +nan"
    assert joined(pd.Series([1.23456])) == "1.235"
    na = "not comparable with"
    assert compare(float("nan"), 1.0, 0.1, missing=na) == na
    assert compare(1.0, float("nan"), 0.1, missing="n/a") == "n/a"
    assert compare(3.0, 1.0, 1.0, ratio=True, missing=na) == compare(3.0, 1.0, 1.0, ratio=True)
    assert compare(1.05, 1.0, 0.1, missing=na) == "about the same as"
    with pytest.raises(ValueError, match="NaN"):
        compare(float("nan"), 1.0, 0.1)
    glued = {}
    monkeypatch.setattr(prenorm.plotting, "glue", lambda k, v: glued.setdefault(k, v))
    glue_all(S=pd.Series({"pre": 0.5, "peri": 0.25}), n={"pre": 3})
    assert glued == {"S_pre": 0.5, "S_peri": 0.25, "n_pre": 3}


def test_plots_draw_one_line_per_design():
    # Fails if a design's line is missing, lacks its legend label or its book colour, or
    # if a design without rows in the layer-removal plot is drawn.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    from prenorm import (
        PLACEMENT_COLORS,
        plot_layer_removal,
        plot_share_vs_lr,
        plot_stream_by_layer,
        plot_stream_growth,
    )

    designs, markers = ["pre", "peri"], {"pre": "o", "peri": "s"}
    labels = {"pre": "Pre-LN", "peri": "Peri-LN"}
    stream = pd.DataFrame(
        [
            {"placement": p, "lr": lr, "step": st, "layer": la, "rms": 1.0 + st + la}
            for p in designs
            for lr in (1e-3, 1e-2)
            for st in (0, 5)
            for la in (0, 1)
        ]
    )
    fig = plot_stream_growth(stream, designs, 1e-2, 5, markers, labels)
    left = fig.axes[0].get_lines()
    assert [ln.get_label() for ln in left] == ["Pre-LN", "Peri-LN"]
    assert to_hex(left[1].get_color()) == to_hex(PLACEMENT_COLORS["peri"])
    assert len(fig.axes[1].get_lines()) == 2
    fig = plot_stream_by_layer(stream[stream.step == 5], designs, [1e-3, 1e-2], markers, labels)
    assert [len(ax.get_lines()) for ax in fig.axes] == [2, 2]
    abl = _ablation()
    fig = plot_layer_removal(abl[abl.lr == 1e-3], designs, 2, markers | {"lns": "^"}, labels)
    assert [ln.get_label() for ln in fig.axes[0].get_lines() if ln.get_label()[0] != "_"] == [
        "Pre-LN"
    ]
    shares = pd.DataFrame(
        {
            "placement": ["pre", "pre", "pre", "peri"],
            "lr": [1e-3, 1e-3, 1e-2, 1e-3],
            "seed": [0, 1, 0, 0],
            "deep_share": [0.2, 0.4, 0.5, 0.6],
            "without_first": [0.1, 0.3, 0.5, 0.7],
        }
    )
    panels = {"deep_share": ("all layers", 0.5), "without_first": ("without layer 0", 0.4)}
    fig = plot_share_vs_lr(shares, designs, markers, labels, panels)
    assert len(fig.axes) == 2
    lines = [ln for ln in fig.axes[0].get_lines() if ln.get_label()[0] != "_"]
    # one line per design, through the mean over seeds: pre at 1e-3 is (0.2 + 0.4) / 2
    assert [ln.get_label() for ln in lines] == ["Pre-LN", "Peri-LN"]
    assert list(lines[0].get_xdata()) == [1e-3, 1e-2]
    assert list(lines[0].get_ydata()) == pytest.approx([0.3, 0.5])
    assert fig.axes[1].get_xscale() == "log"
    refs = [ln.get_ydata()[0] for ln in fig.axes[1].get_lines() if ln.get_linestyle() == "--"]
    assert refs == [0.4]
    empty = plot_share_vs_lr(shares.iloc[:0], designs, markers, labels, panels)
    empty.canvas.draw()  # no trained run: empty panels, no log-axis error
    plt.close("all")


def test_with_diverged_shows_a_diverged_cell_as_a_word_not_a_number():
    # Fails if a diverged cell keeps its (meaningless) last loss, if a trained cell is
    # masked, if the numbers are rounded otherwise, or if a missing cell reads as a number.
    from prenorm import with_diverged

    runs = pd.DataFrame(
        {
            "placement": ["pre", "pre", "mixln", "mixln"],
            "lr": [1e-3, 1e-2, 1e-3, 1e-2],
            "final_val_loss": [2.12345, 2.5, 2.2, 3.9],
            "diverged": [False, False, False, True],
        }
    )
    values = runs.pivot(index="lr", columns="placement", values="final_val_loss")
    values.loc[1e-1] = [float("nan"), 2.0]
    t = with_diverged(values, runs)
    assert t.loc[1e-2, "mixln"] == "diverged"
    assert t.loc[1e-3, "pre"] == "2.123" and t.loc[1e-2, "pre"] == "2.500"
    assert t.loc[1e-1, "mixln"] == "-"
    with pytest.raises(KeyError, match="diverged"):
        with_diverged(values, runs.drop(columns="diverged"))


def test_share_source_decides_only_outside_the_intervals():
    # Fails if an interval that reaches 0 decides (the "undecided" cases would name a
    # source), if a decided fall is reported as undecided (chapter 9's LNS, whose deep
    # layers' interval lay wholly below 0), if one decided part hides the other, or if a
    # non-Estimate is accepted.
    from prenorm import Estimate, share_source

    up, down, zero = Estimate(0.02, 0.01, 0.03), Estimate(-0.02, -0.03, -0.01), Estimate(0, -1, 1)
    assert share_source(up, zero) == "its deep layers doing more"
    assert share_source(up, down) == "its deep layers doing more and its shallow layers doing less"
    assert share_source(zero, down) == "its shallow layers doing less"
    assert share_source(down, zero) == "its deep layers doing less"  # a fall is decided too
    assert share_source(zero, up) == "its shallow layers doing more"
    assert share_source(zero, zero) == "undecided"
    assert share_source(Estimate(-0.02, -0.03, 0.001), zero) == "undecided"
    with pytest.raises(TypeError, match="Estimates"):
        share_source(0.1, down)


def test_paired_estimates_pair_seed_and_learning_rate_and_give_intervals():
    # Fails if runs are paired across seeds or learning rates (lns's lone (1e-1, 0) would
    # enter), if the difference is taken the wrong way round, if the interval is not the
    # t-interval of the differences, or if a design with no pair raises instead of giving
    # NaN with n = 0. By hand: lns - pre at (1e-3, 0), (1e-3, 1), (1e-2, 0) = 0.3, 0.1, 0.2.
    from prenorm import paired_estimates, t_interval

    frame = pd.DataFrame(
        {
            "placement": ["pre"] * 3 + ["lns"] * 4,
            "lr": [1e-3, 1e-3, 1e-2, 1e-3, 1e-3, 1e-2, 1e-1],
            "seed": [0, 1, 0, 0, 1, 0, 0],
            "v": [0.2, 0.4, 0.6, 0.5, 0.5, 0.8, 9.0],
        }
    )
    est = paired_estimates(frame, "placement", "pre", ["v"], ["pre", "lns", "mixln"])
    assert set(est) == {("v", "lns"), ("v", "mixln")}
    e = est["v", "lns"]
    assert e.value == pytest.approx(0.2) and e.n == 3
    ref = t_interval([0.3, 0.1, 0.2])
    assert (e.lo, e.hi) == pytest.approx((ref.lo, ref.hi))
    assert math.isnan(est["v", "mixln"].value) and est["v", "mixln"].n == 0


def test_interval_top_shared_lr_and_growth_word():
    # Fails if NaNs enter the interval, if an empty input raises, if the shared top rate
    # counts a rate where one design did not train, or if the growth words do not follow
    # the factor-of-2 rule and the baseline.
    from prenorm import growth_word, interval_or_nan, top_shared_lr
    from prenorm.designs import GROWTH_WORDS

    e = interval_or_nan([1.0, float("nan"), 3.0])
    assert e.value == pytest.approx(2.0) and e.n == 2
    assert math.isnan(interval_or_nan([]).value)
    runs = pd.DataFrame(
        {
            "placement": ["pre", "pre", "peri", "peri"],
            "lr": [1e-3, 1e-2, 1e-3, 1e-2],
            "outcome": ["trained", "diverged", "trained", "trained"],
        }
    )
    assert top_shared_lr(runs, ["pre", "peri"], default=9.0) == 1e-3
    assert top_shared_lr(runs, ["peri"], default=9.0) == 1e-2
    assert top_shared_lr(runs, ["pre", "lns"], default=9.0) == 9.0
    assert growth_word(1.5, 30.0) == GROWTH_WORDS[0]
    assert growth_word(5.0, 30.0) == GROWTH_WORDS[1]
    assert growth_word(40.0, 30.0) == GROWTH_WORDS[2]
    assert growth_word(float("nan"), 30.0, missing="n/a") == "n/a"


def test_share_source_sentence_one_clause_per_design():
    # Fails if a decided source is reported as undecided (or the reverse), if the labels
    # are not the book's, or if an unknown word passes silently.
    from prenorm import share_source_sentence

    text = share_source_sentence({"lns": "its deep layers doing more", "mixln": "undecided"})
    assert text.startswith("LN Scaling's change of share comes from its deep layers doing more.")
    assert "Whether Mix-LN's change of share comes from its deep or its shallow" in text
    with pytest.raises(ValueError, match="valid"):
        share_source_sentence({"lns": "deep"})


def test_growth_standard_reads_stop_limit_and_undecided_from_intervals():
    # Fails if "stops" is read from a point value (an interval reaching past the flat band
    # must not stop), if "limits" ignores the paired comparison with the reference, or if
    # the band is not FLAT_FACTOR.
    from prenorm.verdicts import Estimate

    E = Estimate
    stops, limits, no_limit, undecided, not_stopped = P.GROWTH_STANDARD
    assert P.FLAT_FACTOR == 2.0
    assert P.growth_standard(E(1.5, 1.1, 1.9), E(0.1, 0.05, 0.2)) == stops
    assert P.growth_standard(E(1.5, 1.1, 2.5), E(0.1, 0.05, 0.2)) == undecided
    assert P.growth_standard(E(5.0, 3.0, 8.0), E(0.1, 0.05, 0.2)) == limits
    assert P.growth_standard(E(5.0, 3.0, 8.0), E(0.9, 0.5, 1.5)) == not_stopped  # above flat
    assert P.growth_standard(E(5.0, 3.0, 8.0), E(1.5, 1.1, 2.0)) == no_limit
    assert P.growth_standard(E(5.0, 3.0, 8.0), E(1.5, 1.1, 2.0), flat=10.0) == stops
    with pytest.raises(TypeError):
        P.growth_standard(1.5, E(1, 1, 1))


def test_stream_rms_by_seed_reads_each_design_at_its_own_rate():
    # Fails if a design is read at another design's learning rate or seeds are pooled.
    rows = [
        {
            "probe": "residual_norms",
            "step": 10,
            "layer": 2,
            "n_layers": 2,
            "seed": s,
            "placement": d,
            "lr": lr,
            "rms": 100 * s + (1 if d == "pre" else 2) + lr,
        }
        for s in (4, 5)
        for d in ("pre", "peri")
        for lr in (0.1, 0.2)
    ]
    t = P.stream_rms_by_seed(pd.DataFrame(rows), 10, {"pre": 0.1, "peri": 0.2})
    assert t.loc[4, "pre"] == pytest.approx(401.1) and t.loc[5, "peri"] == pytest.approx(502.2)
    assert math.isnan(P.stream_rms_by_seed(pd.DataFrame(rows), 10, {"pre": 0.3}).loc[4, "pre"])


def test_ratio_estimate_is_a_geometric_mean_over_finite_seeds():
    # Fails if the ratio is an arithmetic mean, if a diverged seed (NaN) is not dropped,
    # or if one seed gets a finite interval.
    a, b = pd.Series({4: 10.0, 5: 40.0, 6: math.nan}), pd.Series({4: 1.0, 5: 1.0, 6: 1.0})
    e = P.ratio_estimate(a, b)
    assert e.value == pytest.approx(20.0) and e.n == 2 and e.lo < 20 < e.hi
    one = P.ratio_estimate(a.iloc[:1], b.iloc[:1])
    assert one.value == 10.0 and one.lo == -math.inf
    assert P.ratio_estimate(a.iloc[2:], b.iloc[2:]).n == 0


def test_confirmation_lrs_take_the_best_rate_and_the_extras():
    # Fails if a design's extra rates are lost or repeated, or a NaN best is run as NaN.
    got = P.confirmation_lrs({"pre": 0.01, "peri": math.nan}, 0.1, {"pre": [0.05, 0.01]})
    assert got == {"pre": [0.01, 0.05], "peri": [0.1]}
    with pytest.raises(KeyError, match="lns"):
        P.confirmation_lrs({"pre": 0.01}, 0.1, {"lns": [0.1]})


def test_stops_predictions_make_the_claims_word_the_core():
    # Fails if the core were still the ratio against the reference: a 335x ratio with a
    # growth wholly above the flat band must not confirm "stops", and a growth inside the
    # band confirms it even when the ratio misses its threshold.
    from prenorm.verdicts import Estimate as E

    preds = P.stops_predictions("g", "r", ratio_id="rms_ratio")
    assert [k for k, p in preds.items() if p.core] == ["growth"]
    assert preds["growth"].op == "<=" and preds["growth"].threshold == P.FLAT_FACTOR
    assert not preds["rms_ratio"].core and preds["rms_ratio"].threshold == 10.0

    def verdict(growth, ratio):
        c = P.ClaimTest("C21", section="nonorm-qk", predictions=P.stops_predictions("g", "r"))
        return c.measure(growth=growth, ratio=ratio).verdict

    assert verdict(E(5.0, 3.0, 8.0), E(335.0, 100.0, 1000.0)) == P.VERDICTS[2]
    assert verdict(E(2.3, 0.9, 5.8), E(335.0, 100.0, 1000.0)) == P.VERDICTS[3]
    assert verdict(E(1.4, 1.1, 1.8), E(3.0, 2.0, 4.0)).startswith("confirmed")
    assert verdict(E(1.4, 1.1, 1.8), E(30.0, 20.0, 40.0)) == P.VERDICTS[0]
    with pytest.raises(ValueError, match="ratio_id"):
        P.stops_predictions("g", "r", ratio_id="growth")
    with pytest.raises(ValueError, match="flat"):
        P.stops_predictions("g", "r", flat=0.5)
