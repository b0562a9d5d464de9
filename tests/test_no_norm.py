"""prenorm.no_norm: chapter 10's designs and analyses, against values worked out by hand."""

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

import prenorm as P


def test_design_of_names_each_row_with_rezero_then_dyt_then_qk_norm_first():
    # Fails if the order of the rules changes (a ReZero run with qk_norm would read as
    # QK-norm) or a missing qk_norm counts as true.
    frame = pd.DataFrame(
        {
            "placement": ["pre", "pre", "rezero", "pre", "rezero", "pre"],
            "norm": ["layernorm", "layernorm", "layernorm", "dyt", "dyt", "layernorm"],
            "qk_norm": [False, True, True, True, np.nan, np.nan],
        }
    )
    assert P.design_of(frame).tolist() == [
        "Pre-LN",
        "Pre-LN + QK-norm",
        "ReZero",
        "DyT",
        "ReZero",
        "Pre-LN",
    ]
    # a sweep whose grids never set qk_norm has no such column
    assert P.design_of(frame.drop(columns="qk_norm")).tolist()[:2] == ["Pre-LN", "Pre-LN"]
    # the embedding scale names DyT's variant, and only DyT's (fails if a LayerNorm run
    # with the scale, or a DyT run without it, were read as DYT_EMB)
    emb = frame.assign(emb_scale=[True, False, True, True, np.nan, False])
    assert P.design_of(emb).tolist() == [
        "Pre-LN",
        "Pre-LN + QK-norm",
        "ReZero",
        P.DYT_EMB,
        "ReZero",
        "Pre-LN",
    ]


def test_design_colors_are_the_books_colours_in_design_order():
    from prenorm.plotting import NORM_COLORS, PLACEMENT_COLORS

    colors = P.design_colors()
    assert list(colors) == list(P.DESIGNS)
    assert colors["Pre-LN"] == PLACEMENT_COLORS["pre"]
    assert colors["ReZero"] == PLACEMENT_COLORS["rezero"]
    assert colors["DyT"] == NORM_COLORS["dyt"]
    assert len(set(colors.values())) == 4  # four lines told apart
    five = P.design_colors(emb_scale=True)
    assert list(five) == [*P.DESIGNS, P.DYT_EMB] and len(set(five.values())) == 5


def test_descent_targets_and_the_last_target_is_the_minimum_exactly():
    # 4 - 0.5 * (4 - 2) = 3; 4 - 0.75 * 2 = 2.5; the lowest loss is 2 (not the last, 2.2)
    assert P.descent_targets([4.0, 3.0, 2.0, 2.2], [0.5, 0.75, 1.0]) == [3.0, 2.5, 2.0]
    # 1 - (1 - 1e-17) rounds to 0 in floating point: the curve would never reach its own
    # lowest loss; fails if f = 1 is computed by the formula
    assert 1.0 - (1.0 - 1e-17) != 1e-17
    assert P.descent_targets([1.0, 1e-17], [1.0]) == [1e-17]
    with pytest.raises(ValueError):
        P.descent_targets([], [0.5])


def _curves():
    rows = []
    # the baseline falls by 0.1 a step from 4 to 2 over steps 0..20, logged every 4 steps
    # (and at 20): targets 3, 2.5, 2 are reached at steps 10, 15 and 20 by interpolation
    for s in [0, 4, 8, 12, 16, 20]:
        rows.append({"design": "A", "lr": 0.1, "step": s, "loss": 4 - s / 10})
    # the other design: 4, 3.5, 2.5, 2.2 at steps 0, 4, 8, 12; it reaches 3 at step 6
    # (halfway from 3.5 to 2.5), 2.5 at step 8, and never 2
    for s, v in zip([0, 4, 8, 12], [4.0, 3.5, 2.5, 2.2], strict=True):
        rows.append({"design": "B", "lr": 0.01, "step": s, "loss": v})
    # rows at a learning rate that lr_of does not name: reaching 2 at step 1
    for s, v in [(0, 4.0), (1, 1.0)]:
        rows.append({"design": "B", "lr": 0.1, "step": s, "loss": v})
    return pd.DataFrame(rows)


def test_speedup_table_reads_each_design_at_its_learning_rate():
    # Fails if the learning rate is ignored (B at lr 0.1 reaches every target by step 1),
    # the interpolation is wrong, or the ratio is inverted.
    table = P.speedup_table(_curves(), {"A": 0.1, "B": 0.01}, "A", "B")
    assert table.index.tolist() == [0.5, 0.75, 1.0]
    assert table.target.tolist() == pytest.approx([3.0, 2.5, 2.0])
    assert table.A.tolist() == pytest.approx([10.0, 15.0, 20.0])
    assert table.B.tolist()[:2] == pytest.approx([6.0, 8.0])
    assert math.isinf(table.B.iloc[2])
    # speed-ups 10/6 and 15/8; a target the other never reaches is 0
    assert table.speedup.tolist() == pytest.approx([10 / 6, 15 / 8, 0.0])


def test_speedup_table_with_given_targets_missing_designs_and_undefined_ratios():
    lr_of = {"A": 0.1, "B": 0.01, "C": 1.0}  # C was never run: it reaches nothing
    table = P.speedup_table(_curves(), lr_of, "C", "B", [0.2, 0.9], targets=[3.0, 1.0])
    assert table.target.tolist() == [3.0, 1.0]
    assert table.C.tolist() == [math.inf, math.inf]
    # inf / 6 = inf; inf / inf is undefined and counts as 0
    assert table.speedup.tolist() == [math.inf, 0.0]
    with pytest.raises(KeyError):
        P.speedup_table(_curves(), {"A": 0.1}, "A", "B")
    with pytest.raises(ValueError):
        P.speedup_table(_curves(), lr_of, "A", "B", [0.5], targets=[3.0, 2.0])


def test_worst_speedup_by_seed_uses_the_given_targets_on_each_seed():
    seed0 = _curves().assign(seed=0)
    # seed 1: B twice as fast as A (loss 4 - s / 5): 3, 2.5, 2 at steps 5, 7.5, 10
    seed1 = pd.concat(
        [
            seed0[seed0.design == "A"],
            pd.DataFrame({"design": "B", "lr": 0.01, "step": [0, 5, 10], "loss": [4.0, 3.0, 2.0]}),
        ]
    ).assign(seed=1)
    targets = pd.Series([3.0, 2.5, 2.0], index=[0.5, 0.75, 1.0])
    worst = P.worst_speedup_by_seed(
        pd.concat([seed1, seed0]), {"A": 0.1, "B": 0.01}, "A", "B", targets
    )
    # seed 0 never reaches 2: worst 0; seed 1: 10/5 = 15/7.5 = 20/10 = 2
    assert worst.index.tolist() == [0, 1]
    assert worst.tolist() == pytest.approx([0.0, 2.0])
    every = P.speedups_by_seed(pd.concat([seed1, seed0]), {"A": 0.1, "B": 0.01}, "A", "B", targets)
    assert every.columns.tolist() == [0.5, 0.75, 1.0] and every.index.tolist() == [0, 1]
    assert every.loc[0].tolist() == pytest.approx([10 / 6, 15 / 8, 0.0])
    assert every.loc[1].tolist() == pytest.approx([2.0, 2.0, 2.0])


def test_seed_estimate_is_the_t_interval_on_the_values_or_their_logs():
    # two seeds: t(0.975, 1) = 12.706; mean 1.5, s = 0.7071, half-width 12.706 * 0.5 = 6.353
    e = P.seed_estimate([1.0, 2.0])
    assert (e.value, e.n) == (1.5, 2)
    assert e.hi - e.value == pytest.approx(12.7062 * 0.5, rel=1e-4)
    # on the log scale: geometric mean 20 of 10 and 40; log10 40 - log10 10 = 0.60206, so
    # the half-width in log10 is 12.706 * 0.60206 / 2; fails if the log interval were not
    # carried back, or the arithmetic mean (25) were taken
    g = P.seed_estimate([10.0, 40.0], log=True)
    assert g.value == pytest.approx(20.0)
    assert g.hi == pytest.approx(20.0 * 10 ** (12.7062 * 0.30103), rel=1e-3)
    assert g.lo == pytest.approx(20.0 / 10 ** (12.7062 * 0.30103), rel=1e-3)
    # a spread that cannot be measured decides nothing: the interval is the whole line
    for values in ([3.0], [2.0, math.inf]):
        u = P.seed_estimate(values)
        assert (u.lo, u.hi) == (-math.inf, math.inf)
    assert P.seed_estimate([2.0, math.inf]).value == math.inf
    pred = P.Prediction("speed-up", ">", 1.0)
    assert pred.outcome(P.seed_estimate([2.0, math.inf])) == "undecided"
    assert pred.outcome(P.seed_estimate([3.0, 3.1])) == "holds"
    with pytest.raises(ValueError, match="one number per seed"):
        P.seed_estimate([1.0, math.nan])
    with pytest.raises(ValueError, match="positive values"):
        P.seed_estimate([1.0, 0.0], log=True)


def test_interval_word_needs_the_whole_interval_on_one_side_of_zero():
    # Fails if the point value alone decided (-0.5 with an interval reaching +0.1).
    assert P.interval_word(P.Estimate(-0.5, -0.9, -0.1)) == "lowered"
    assert P.interval_word(P.Estimate(-0.5, -1.1, 0.1)) == "did not measurably change"
    assert P.interval_word(P.Estimate(0.3, 0.1, 0.5)) == "raised"
    assert P.interval_word(P.seed_estimate([0.3])) == "did not measurably change"
    assert P.interval_word(P.Estimate(1, 0.5, 2), ("a", "b", "c")) == "c"


def test_cell_table_prints_a_diverged_cell_as_diverged_never_as_a_loss():
    # Fails if a cell in which one seed diverged shows its pooled loss (3.0 here: the
    # mean of 2.0 and the diverged seed's last loss 4.0).
    runs = pd.DataFrame(
        {
            "design": ["A", "A", "A", "A", "B", "B"],
            "lr": [0.1, 0.1, 1.0, 1.0, 0.1, 0.1],
            "seed": [2, 3, 2, 3, 2, 3],
            "final_val_loss": [2.0, 2.2, 2.0, 4.0, 1.5, 1.5],
            "diverged": [False, False, False, True, False, False],
        }
    )
    t = P.cell_table(runs, "design", "lr", order=["B", "A", "C"])
    assert t.index.tolist() == ["B", "A", "C"]
    assert t.loc["A", 0.1] == "2.100" and t.loc["B", 0.1] == "1.500"
    assert t.loc["A", 1.0] == "diverged (1 of 2)"
    assert t.loc["B", 1.0] == "" and t.loc["C"].tolist() == ["", ""]
    with pytest.raises(KeyError, match="diverged"):
        P.cell_table(runs.drop(columns="diverged"), "design", "lr")


def _alpha_runs():
    return pd.DataFrame(
        [
            ("Pre-LN", "gpt2_scaled", np.nan, 0.01, 3.40, "stalled", False),
            ("Pre-LN", "pytorch", np.nan, 0.01, 3.41, "stalled", False),
            ("DyT", "gpt2_scaled", 0.5, 0.01, 3.43, "stalled", False),
            ("DyT", "gpt2_scaled", 2.0, 0.01, 3.44, "stalled", False),
            ("DyT", "gpt2_scaled", 8.0, 0.01, 1.00, "diverged", True),  # last loss, not final
            ("DyT", "pytorch", 0.5, 0.01, 3.20, "trained", False),
            ("DyT", "pytorch", 2.0, 0.01, 3.10, "trained", False),
            ("DyT", "gpt2_scaled", 0.5, 0.001, 3.00, "trained", False),  # another lr
            ("DyT", "gpt2", 0.5, 0.01, 2.90, "trained", False),  # another init: ignored
            ("ReZero", "gpt2_scaled", np.nan, 0.01, 2.00, "trained", False),  # another design
        ],
        columns=["design", "init", "alpha0", "lr", "final_val_loss", "outcome", "diverged"],
    )


def test_alpha_sweep_sums_up_the_cells_at_one_learning_rate():
    # Fails if the diverged cell's last loss (1.00) counts as DyT's best, another
    # learning rate, init or design leaks in, or the story's words do not follow the counts.
    a = P.alpha_sweep(_alpha_runs(), 0.01)
    assert a.values() == pytest.approx(
        {
            "ln_base": 3.40,
            "ln_pt": 3.41,
            "dyt_pt": 3.20,
            "dyt_pt_best": 3.10,
            "dyt_base_best": 3.43,
            "best_alpha0": 0.5,
        }
    )
    assert (a.n_rescued, a.n_alphas, a.pt_default_trained) == (0, 3, True)
    assert len(a.table) == 7 and set(a.table.design) == {"DyT", "Pre-LN"}
    assert a.table.init.tolist() == ["gpt2_scaled"] * 4 + ["pytorch"] * 3
    assert a.table.final_val_loss.isna().sum() == 1  # the diverged cell has no loss
    assert a.points.empty
    assert a.story(1, 3) == (
        "As a drop-in for LayerNorm in this book's recipe, DyT trained at 1 of the 3 "
        "learning rates. At the middle learning rate it trained at 0 of the 3 values of α₀ "
        "tried with GPT-2's initialization at GPT-2 small's gain, so no value of that one "
        "scalar made up for the norm; with PyTorch's default initialization and the "
        "default α₀ it trained."
    )
    # without the PyTorch cells: a NaN loss and "did not train either"
    b = P.alpha_sweep(_alpha_runs().query("init != 'pytorch'"), 0.01)
    assert math.isnan(b.dyt_pt) and not b.pt_default_trained
    assert b.story(0, 3).endswith("it did not train either.")
    # one alpha0 trains under the base init: no "either", no "made up for"
    rescued = _alpha_runs()
    rescued.loc[3, "outcome"] = "trained"
    c = P.alpha_sweep(rescued.query("init != 'pytorch'"), 0.01)
    assert c.n_rescued == 1 and "made up" not in c.story(0, 3)
    assert c.story(0, 3).endswith("it did not train.")
    assert P.alpha_sweep(rescued, 0.01).story(0, 3).endswith("it trained as well.")
    # the seed rows are kept for the figure, filtered like the cells
    seeds = _alpha_runs().assign(seed=2)
    assert len(P.alpha_sweep(_alpha_runs(), 0.01, by_seed=seeds).points) == 7
    with pytest.raises(ValueError, match="base_init"):
        P.alpha_sweep(_alpha_runs(), 0.01, base_init="pytorch")


def _stream(end_gpt2, end_pt=2.0):
    rows = [
        ("DyT", "gpt2_scaled", 0.5, 0.01, 0, 0.03),
        ("DyT", "gpt2_scaled", 0.5, 0.01, 30, end_gpt2),
        ("DyT", "pytorch", 0.5, 0.01, 30, end_pt),
        ("DyT", "gpt2", 0.5, 0.01, 30, 1e6),  # another init
        ("DyT", "gpt2_scaled", 2.0, 0.01, 30, 1e6),  # another alpha0
        ("Pre-LN", "gpt2_scaled", np.nan, 0.01, 30, 1e6),  # another design
    ]
    frame = pd.DataFrame(rows, columns=["design", "init", "alpha0", "lr", "step", "rms"])
    frame = frame.assign(probe="residual_norms", layer=4, n_layers=4)
    lower = frame.assign(layer=1, rms=1e6)  # a layer inside the stack, not the head's input
    return pd.concat([frame, lower], ignore_index=True)


def test_dyt_stream_growth_words():
    g = P.dyt_stream_growth(_stream(100.0), 0.01, 30)
    assert (g["rms0_dyt"], g["rms_end_dyt_base"], g["rms_end_dyt_pt"]) == (0.03, 100.0, 2.0)
    # 100 > 0.03 * 2: grows; 0.5 * 100 > 2: the sentence with tanh(50) = 1.00 follows
    assert g["dyt_growth_word"] == "grows"
    assert g["dyt_growth_clause"].startswith(", so the stream does not stay")
    assert "tanh(α₀x) = 1.00, in the flat part" in g["dyt_growth_clause"]
    # 3 grows but 0.5 * 3 < 2: no tanh sentence; 5 gives tanh(2.5) = 0.99
    g = P.dyt_stream_growth(_stream(3.0), 0.01, 30)
    assert g["dyt_growth_word"] == "grows" and "tanh" not in g["dyt_growth_clause"]
    assert "= 0.99," in P.dyt_stream_growth(_stream(5.0), 0.01, 30)["dyt_growth_clause"]
    # another prefix names every key
    keys = P.dyt_stream_growth(_stream(5.0), 0.01, 30, prefix="emb")
    assert set(keys) == {
        "rms0_emb",
        "rms_end_emb_base",
        "rms_end_emb_pt",
        "emb_growth_word",
        "emb_growth_clause",
    }
    # within a factor of 2 both ways: flat, and the clause is a full stop
    g = P.dyt_stream_growth(_stream(0.05), 0.01, 30)
    assert (g["dyt_growth_word"], g["dyt_growth_clause"]) == ("stays flat", ".")
    g = P.dyt_stream_growth(_stream(0.01), 0.01, 30)
    assert g["dyt_growth_word"] == "shrinks"
    # a run that never reached the last step
    short = _stream(100.0)
    short = short[~((short.init == "gpt2_scaled") & (short.step == 30))]
    g = P.dyt_stream_growth(short, 0.01, 30)
    assert math.isnan(g["rms_end_dyt_base"])
    assert g["dyt_growth_word"] == "was not measured to the end"


def _logit_rows():
    rows = []
    # (design, lr, step, layer, max_logit); Pre-LN at lr 0.1 stops at step 2 (diverged)
    for design, lr, values in [
        ("Pre-LN", 0.01, {0: [0.1, 0.2], 5: [1.0, 3.0]}),
        ("Pre-LN", 0.1, {0: [0.1, 0.05], 2: [20.0, 40.0]}),
        ("Pre-LN + QK-norm", 0.1, {0: [3.0, 3.5], 5: [4.0, 2.0]}),
        ("ReZero", 0.1, {0: [0.0, 0.0], 5: [1.5, 0.5]}),
    ]:
        for step, per_layer in values.items():
            for layer, v in enumerate(per_layer):
                rows.append((design, lr, step, layer, v, "max_attention_logits"))
    rows.append(("Pre-LN", 0.1, 5, 0, 1e9, "batch_loss"))  # another probe's row
    return pd.DataFrame(rows, columns=["design", "lr", "step", "layer", "max_logit", "probe"])


def test_attention_logits_takes_the_largest_layer_at_each_cells_last_step():
    # Fails if other probes' rows leak in (1e9), the layers are averaged rather than
    # maximised, or a cell that stopped early is read at a step it never reached.
    lg = P.attention_logits(_logit_rows(), 0.1)
    assert lg.value("Pre-LN") == 40.0  # its last step is 2
    assert lg.value("Pre-LN + QK-norm") == 4.0
    assert lg.value("ReZero") == 1.5
    assert math.isnan(lg.value("DyT"))  # not run
    assert lg.ratio == 10.0
    assert lg.start == 0.2  # the largest over layers and learning rates at step 0
    assert lg.qk0 == 3.5
    wide = lg.wide()
    assert wide.index.tolist() == list(P.DESIGNS)
    assert wide.loc["Pre-LN", 0.01] == 3.0 and wide.loc["Pre-LN", 0.1] == 40.0
    assert lg.top.max_logit.max() == 40.0


def test_logit_table_and_phrase_show_a_diverged_cell_as_diverged():
    # Fails if the diverged Pre-LN cell at lr 0.1 shows its logit (40.0, read at step 2,
    # where it stopped) as if it were an end value.
    lg = P.attention_logits(_logit_rows(), 0.1)
    runs = pd.DataFrame(
        {
            "design": ["Pre-LN", "Pre-LN", "ReZero"],
            "lr": [0.01, 0.1, 0.1],
            "diverged": [False, True, False],
            "diverged_at": [np.nan, 2.0, np.nan],
        }
    )
    t = lg.table(runs)
    assert t.loc["Pre-LN", 0.1] == "diverged (step 2)"
    assert t.loc["Pre-LN", 0.01] == "3.0" and t.loc["ReZero", 0.1] == "1.5"
    assert t.loc["DyT", 0.1] == ""  # not run
    assert lg.end_phrase("Pre-LN", runs, 0.1) == (
        "Pre-LN diverged there (by step 2), so it has no end value"
    )
    assert lg.end_phrase("ReZero", runs, 0.1) == "ReZero's ends at 1.5"
    assert lg.end_phrase("DyT", runs, 0.1) == "DyT was not run"


def test_logit_ratio_by_seed_reads_each_seeds_own_rows():
    # seed 2 is _logit_rows (ratio 40 / 4 = 10); seed 3 doubles Pre-LN's logits (ratio 20).
    # Fails if the seeds were pooled (the largest over seeds would give 80 / 4 for both).
    two = _logit_rows().assign(seed=2)
    three = two.assign(seed=3)
    three.loc[three.design == "Pre-LN", "max_logit"] *= 2
    r = P.logit_ratio_by_seed(pd.concat([two, three]), 0.1)
    assert r.index.tolist() == [2, 3] and r.tolist() == pytest.approx([10.0, 20.0])


def test_glue_all_glues_every_key(monkeypatch):
    import prenorm.plotting

    seen = {}
    monkeypatch.setattr(prenorm.plotting, "glue", lambda k, v: seen.setdefault(k, v))
    P.glue_all({"a": 1, "b": "two"}, n={"pre": 3})
    assert seen == {"a": 1, "b": "two", "n_pre": 3}


def test_plots_draw_one_line_per_design():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    colors = {"A": "red", "B": "blue"}
    P.plot_speed_curves(_curves(), {"A": 0.1, "B": 0.01}, colors, [3.0, 2.5], ax=ax)
    assert len(ax.lines) == 2 + 2  # two curves, two target lines
    assert len(ax.lines[1].get_xdata()) == 4  # B at lr 0.01 only
    fig2 = P.plot_logits(P.attention_logits(_logit_rows(), 0.1), [0.01, 0.1], P.design_colors(), 6)
    assert len(fig2.axes) == 2
    fig3, ax3 = plt.subplots()
    runs = _alpha_runs()
    seeds = pd.concat([runs.assign(seed=2), runs.assign(seed=3)])
    emb = pd.DataFrame({"alpha0": [0.5, 0.5], "final_val_loss": [2.0, 2.2], "diverged": False})
    sweep = P.alpha_sweep(runs, 0.01, by_seed=seeds)
    P.plot_alpha_sweep(sweep, 3.25, ax=ax3, emb=emb)
    # two DyT mean lines, two LayerNorm lines, two crosses (the diverged alpha0 = 8 cell's
    # two seeds, above the frame: no loss), the embedding scale's mean, the entropy
    assert len(ax3.lines) == 2 + 2 + 2 + 1 + 1
    # seed points: the base init's 2 finished cells x 2 seeds, PyTorch's 2 x 2, emb's 2
    assert [len(c.get_offsets()) for c in ax3.collections] == [4, 4, 2]
    assert 1.0 not in np.concatenate([c.get_offsets()[:, 1] for c in ax3.collections])
    assert ax3.get_xscale() == "log" and ax3.get_xlabel().startswith("DyT's initial")
    assert [t.get_text() for t in ax3.get_xticklabels()] == ["0.5", "2", "8"]
    plt.close("all")


def test_presets_give_chapter_10_fresh_seeds_and_the_default_alpha0():
    # Fails if a preset reuses a development seed (design_seeds) for the verdicts, has
    # fewer than two seeds, or does not sweep Zhu et al.'s default alpha0 = 0.5.
    for name in ("ci", "cpu", "gpu"):
        scale = P.PRESETS[name]
        assert not set(scale.nonorm_seeds) & set(scale.design_seeds), name
        assert len(set(scale.nonorm_seeds)) == len(scale.nonorm_seeds) >= 2, name
        assert 0.5 in scale.nonorm_alphas, name


def test_speedup_bounds_treat_an_unreached_target_as_censored():
    # Fails if a run that never reached a target counts as infinitely slow (a speed-up of
    # 0 or inf) instead of bounding the speed-up by the run's length.
    steps = [0, 10, 20, 30, 40]
    curve = lambda seed, d, losses: [  # noqa: E731
        {"seed": seed, "design": d, "lr": 0.1, "step": s, "loss": v}
        for s, v in zip(steps, losses, strict=True)
    ]
    rows = (
        curve(0, "Pre-LN", [4, 3, 2, 1.5, 1.0])
        + curve(0, "ReZero", [4, 2, 1.0, 0.9, 0.8])  # reaches both targets first
        + curve(1, "Pre-LN", [4, 3.5, 3, 2.8, 2.6])  # never reaches 1.0
        + curve(1, "ReZero", [4, 3, 2, 1.5, 1.0])
    )
    targets = pd.Series([2.0, 1.0], index=[0.5, 1.0])
    b = P.speedup_bounds_by_seed(
        pd.DataFrame(rows), {"Pre-LN": 0.1, "ReZero": 0.1}, "Pre-LN", "ReZero", targets, 40
    )
    assert b.loc[0, "lo"] == b.loc[0, "hi"] == pytest.approx(2.0)  # 20/10 and 40/20
    assert b.loc[1, "last_lo"] == pytest.approx(1.0) and b.loc[1, "last_hi"] == math.inf
    assert b.loc[1, "censored"] == 2 and b.loc[0, "censored"] == 0
    assert b.loc[1, "lo"] == pytest.approx(1.0)  # the worst target's lower bound
    est = P.censored_interval(b.lo, b.hi)
    assert est.hi == math.inf
    with pytest.raises(ValueError, match="horizon"):
        P.speedup_bounds_by_seed(
            pd.DataFrame(rows), {"Pre-LN": 0.1, "ReZero": 0.1}, "Pre-LN", "ReZero", targets, 0
        )


def test_logit_growth_by_seed_is_last_over_first_per_seed():
    rows = [
        {
            "probe": "max_attention_logits",
            "seed": s,
            "design": "Pre-LN",
            "lr": 0.1,
            "step": st,
            "layer": 0,
            "max_logit": v * (s + 1),
        }
        for s in (0, 1)
        for st, v in ((0, 2.0), (10, 8.0))
    ]
    g = P.logit_growth_by_seed(pd.DataFrame(rows), 0.1, "Pre-LN")
    assert g.tolist() == [4.0, 4.0]
    assert P.logit_growth_by_seed(pd.DataFrame(rows), 0.2, "Pre-LN").isna().all()


def test_design_grids_are_the_inverse_of_design_of():
    # Fails if a design's grid keys would be run as another design.
    for name, grid in P.DESIGN_GRIDS.items():
        row = {"placement": "pre", "norm": "layernorm", **{k: v[0] for k, v in grid.items()}}
        assert P.design_of(pd.DataFrame([row])).iloc[0] == name
    assert set(P.DESIGN_GRIDS) == {*P.DESIGNS, P.DYT_EMB}


def test_part3_confirmation_seeds_are_fresh_at_the_real_presets():
    # Fails if chapters 9 and 10 judge on a seed that an earlier build showed (design_seeds,
    # design_confirm_seeds, nonorm_seeds) or on the development run's own seed, or on fewer
    # than two seeds (no interval).
    for name in ("cpu", "gpu"):
        s = P.PRESETS[name]
        seen = {*s.design_seeds, *s.design_confirm_seeds, *s.nonorm_seeds, *s.part3_dev_seeds}
        assert not set(s.part3_confirm_seeds) & seen, name
        assert len(set(s.part3_confirm_seeds)) == len(s.part3_confirm_seeds) >= 2, name
    for s in P.PRESETS.values():
        assert len(s.part3_dev_seeds) >= 1, s.name
