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


def test_design_colors_are_the_books_colours_in_design_order():
    from prenorm.plotting import NORM_COLORS, PLACEMENT_COLORS

    colors = P.design_colors()
    assert list(colors) == list(P.DESIGNS)
    assert colors["Pre-LN"] == PLACEMENT_COLORS["pre"]
    assert colors["ReZero"] == PLACEMENT_COLORS["rezero"]
    assert colors["DyT"] == NORM_COLORS["dyt"]
    assert len(set(colors.values())) == 4  # four lines told apart


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


def _alpha_runs():
    return pd.DataFrame(
        [
            ("Pre-LN", "gpt2", np.nan, 0.01, 3.40, "stalled"),
            ("Pre-LN", "pytorch", np.nan, 0.01, 3.41, "stalled"),
            ("DyT", "gpt2", 0.5, 0.01, 3.43, "stalled"),
            ("DyT", "gpt2", 2.0, 0.01, 3.44, "stalled"),
            ("DyT", "pytorch", 0.5, 0.01, 3.20, "trained"),
            ("DyT", "pytorch", 2.0, 0.01, 3.10, "trained"),
            ("DyT", "gpt2", 0.5, 0.001, 3.00, "trained"),  # another lr: ignored
            ("ReZero", "gpt2", np.nan, 0.01, 2.00, "trained"),  # another design: ignored
        ],
        columns=["design", "init", "alpha0", "lr", "final_val_loss", "outcome"],
    )


def test_alpha_sweep_sums_up_the_cells_at_one_learning_rate():
    a = P.alpha_sweep(_alpha_runs(), 0.01)
    assert a.values() == pytest.approx(
        {"ln_pt": 3.41, "dyt_pt": 3.20, "dyt_pt_best": 3.10, "dyt_gpt2_any": 3.43}
    )
    assert (a.n_rescued, a.n_alphas, a.pt_default_trained) == (0, 2, True)
    assert len(a.table) == 6 and set(a.table.design) == {"DyT", "Pre-LN"}
    assert a.table.init.tolist() == ["gpt2"] * 3 + ["pytorch"] * 3
    assert a.story(1, 3) == (
        "As a drop-in for LayerNorm in this book's recipe, DyT trained at 1 of the 3 "
        "learning rates. At the middle learning rate, 0 of the 2 values of α₀ trained with "
        "GPT-2's initialization, so one scalar did not make up the difference; with "
        "PyTorch's initialization and the default α₀ the same DyT trained."
    )
    # without the PyTorch cells: a NaN loss and "did not train either"
    b = P.alpha_sweep(_alpha_runs().query("init == 'gpt2'"), 0.01)
    assert math.isnan(b.dyt_pt) and not b.pt_default_trained
    assert b.story(0, 3).endswith("the same DyT did not train either.")


def _stream(end_gpt2, end_pt=2.0):
    rows = [
        ("DyT", "gpt2", 0.5, 0.01, 0, 0.03),
        ("DyT", "gpt2", 0.5, 0.01, 30, end_gpt2),
        ("DyT", "pytorch", 0.5, 0.01, 30, end_pt),
        ("DyT", "gpt2", 2.0, 0.01, 30, 1e6),  # another alpha0
        ("Pre-LN", "gpt2", np.nan, 0.01, 30, 1e6),  # another design
    ]
    frame = pd.DataFrame(rows, columns=["design", "init", "alpha0", "lr", "step", "rms"])
    frame = frame.assign(probe="residual_norms", layer=4, n_layers=4)
    lower = frame.assign(layer=1, rms=1e6)  # a layer inside the stack, not the head's input
    return pd.concat([frame, lower], ignore_index=True)


def test_dyt_stream_growth_words():
    g = P.dyt_stream_growth(_stream(100.0), 0.01, 30)
    assert (g["rms0_dyt"], g["rms_end_dyt_gpt2"], g["rms_end_dyt_pt"]) == (0.03, 100.0, 2.0)
    # 100 > 0.03 * 2: grows; 0.5 * 100 > 2: the tanh saturation sentence follows
    assert g["dyt_growth_word"] == "grows"
    assert g["dyt_growth_clause"].startswith(", so a stream that stays")
    assert "near ±1" in g["dyt_growth_clause"]
    # 3 grows but 0.5 * 3 < 2: no saturation sentence
    g = P.dyt_stream_growth(_stream(3.0), 0.01, 30)
    assert g["dyt_growth_word"] == "grows" and "±1" not in g["dyt_growth_clause"]
    # within a factor of 2 both ways: flat, and the clause is a full stop
    g = P.dyt_stream_growth(_stream(0.05), 0.01, 30)
    assert (g["dyt_growth_word"], g["dyt_growth_clause"]) == ("stays flat", ".")
    g = P.dyt_stream_growth(_stream(0.01), 0.01, 30)
    assert g["dyt_growth_word"] == "shrinks"
    # a run that never reached the last step
    short = _stream(100.0)
    short = short[~((short.init == "gpt2") & (short.step == 30))]
    g = P.dyt_stream_growth(short, 0.01, 30)
    assert math.isnan(g["rms_end_dyt_gpt2"])
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
    P.plot_alpha_sweep(P.alpha_sweep(_alpha_runs(), 0.01), [0.5, 2.0], 3.25, ax=ax3)
    # two DyT lines, two LayerNorm lines, the entropy
    assert len(ax3.lines) == 5
    plt.close("all")
