import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

import prenorm as P  # noqa: E402


def _visible_ytick_labels(fig, ax):
    """The y tick labels a reader sees: drawn, non-empty and inside the axis range."""
    fig.canvas.draw()
    lo, hi = ax.get_ylim()
    return [
        t.get_text()
        for t in ax.get_yticklabels()
        if t.get_text() and lo <= t.get_position()[1] <= hi
    ]


def _history():
    rows = []
    for placement, diverged in (("post", True), ("pre", False)):
        n = 5 if diverged else 10
        for step in range(n):
            rows.append(
                {
                    "step": step,
                    "train_loss": 4.0 - 0.1 * step,
                    "val_loss": float("nan"),
                    "placement": placement,
                    "seed": 0,
                    "diverged": diverged,
                }
            )
    return pd.DataFrame(rows)


def test_per_layer_uses_fixed_placement_colours():
    P.set_style()
    df = pd.DataFrame(
        {
            "layer": [0, 1, 0, 1],
            "y": [1.0, 2.0, 1.0, 1.0],
            "placement": ["post", "post", "pre", "pre"],
        }
    )
    fig, ax = plt.subplots()
    P.plot_per_layer(df, "y", ax=ax)
    colours = {to_hex(line.get_color()) for line in ax.get_lines() if len(line.get_xdata()) == 2}
    assert {P.PLACEMENT_COLORS["post"], P.PLACEMENT_COLORS["pre"]} <= colours
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Post-LN", "Pre-LN"]
    plt.close(fig)


def test_loss_curves_mark_the_diverged_run():
    fig, ax = plt.subplots()
    P.plot_loss_curves(_history(), ax=ax, smooth=1)
    crosses = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert len(crosses) == 1
    assert (
        crosses[0].get_xdata()[0] == 4
        and to_hex(crosses[0].get_color()) == P.PLACEMENT_COLORS["post"]
    )
    plt.close(fig)


def test_grid_annotates_diverged_cells():
    runs = pd.DataFrame(
        {
            "lr": [1e-3, 1e-3, 3e-3, 3e-3],
            "warmup_steps": [0, 100, 0, 100],
            "final_train_loss": [2.0, 1.9, 4.5, 2.1],
            "diverged": [False, False, True, False],
        }
    )
    fig, ax = plt.subplots()
    P.plot_grid(runs, ax=ax)
    texts = [t.get_text() for t in ax.texts]
    assert sum("div" in t for t in texts) == 1 and "1.90" in texts
    plt.close(fig)


def test_grid_counts_stalled_and_diverged_seeds_per_cell():
    runs = pd.DataFrame(
        {
            "lr": [1e-3] * 4 + [3e-3] * 4,
            "warmup_steps": [0, 0, 50, 50] * 2,
            "final_val_loss": [2.0, 2.2, 3.3, 2.1, float("nan"), 3.3, 3.2, 3.4],
            "diverged": [False] * 4 + [True, False, False, False],
            "outcome": ["trained", "trained", "stalled", "trained"]
            + ["diverged", "stalled", "stalled", "stalled"],
        }
    )
    fig, ax = plt.subplots()
    P.plot_grid(runs, "final_val_loss", ax=ax)
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == sorted(
        ["2.10", "2.70\n1/2 stalled", "3.30\n1/2 stalled\n1/2 diverged", "3.30\n2/2 stalled"]
    )
    hatched = sorted(p.get_edgecolor()[0] for p in ax.patches if p.get_hatch())
    assert len(hatched) == 3  # both stalled cells (grey) and the diverged one (red)
    plt.close(fig)


def test_diagram_draws_every_placement():
    fig = P.draw_placements(tuple(P.PLACEMENTS))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [P.PLACEMENT_LABELS[p] for p in P.PLACEMENTS]
    plt.close(fig)


def test_per_layer_points_and_short_log_axes():
    df = pd.DataFrame(
        {
            "layer": [0, 1, 0, 1],
            "y": [1.0, 1.2, 1.1, 1.3],
            "placement": ["pre"] * 4,
            "seed": [0, 0, 1, 1],
        }
    )
    fig, ax = plt.subplots()
    P.plot_per_layer(df, "y", ax=ax, logy=True, spread="points")
    assert len(ax.collections[-1].get_offsets()) == 4  # every seed drawn
    labels = _visible_ytick_labels(fig, ax)
    assert len(labels) >= 3  # a sub-decade log axis still has readable ticks
    plt.close(fig)


def test_depth_axis_and_one_legend():
    fig, axes = plt.subplots(1, 3)
    df = pd.DataFrame(
        {
            "n_layers": [3, 6, 12] * 2,
            "v": [1, 2, 3, 2, 3, 4],
            "placement": ["post"] * 3 + ["pre"] * 3,
        }
    )
    for ax in axes:
        P.plot_per_layer(df, "v", ax=ax, x="n_layers")
        P.depth_axis(ax, [3, 6, 12])
    assert axes[0].get_xscale() == "log"
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["3", "6", "12"]
    P.one_legend(axes, title="placement")
    legends = [ax.get_legend() for ax in axes]
    assert legends[0] is not None and legends[1] is None and legends[2] is None
    assert legends[0].get_title().get_text() == "placement"
    assert [t.get_text() for t in legends[0].get_texts()] == ["Post-LN", "Pre-LN"]
    plt.close(fig)


def test_glue_turns_numpy_scalars_into_python_numbers():
    import numpy as np

    v = P.glue("x", np.float64(1.25))
    assert type(v) is float and f"{v:.1f}" == "1.2"
    assert type(P.glue("n", np.int64(3))) is int


def test_log_axis_over_about_a_decade_prints_plain_numbers():
    fig, ax = plt.subplots()
    df = pd.DataFrame({"layer": [0, 1, 2, 3], "v": [0.6, 1.0, 3.0, 6.0], "placement": ["post"] * 4})
    P.plot_per_layer(df, "v", ax=ax, logy=True)
    labels = _visible_ytick_labels(fig, ax)
    assert labels and all("10^" not in t and "times" not in t for t in labels), labels
    assert {"1", "2", "5"} <= set(labels)
    plt.close(fig)


def test_loss_vs_lr_draws_finished_runs_and_crosses_for_diverged_ones():
    # Fails if a diverged run's last (pre-blow-up) loss is drawn as a point on its curve,
    # if its cross is missing, or if a design's line is drawn in another design's colour.
    runs = pd.DataFrame(
        {
            "design": ["a", "a", "a", "b", "b", "b"],
            "lr": [1e-3, 1e-2, 1e-1] * 2,
            "final_val_loss": [2.5, 2.4, 2.0, 3.0, 2.9, 2.8],
            "diverged": [False, False, True, False, False, False],
        }
    )
    fig, ax = plt.subplots()
    P.plot_loss_vs_lr(runs, "design", {"a": "#ff0000", "b": "#0000ff"}, ax=ax, entropy=3.2)
    lines = [ln for ln in ax.get_lines() if ln.get_marker() not in ("x", "None")]
    by_color = {to_hex(ln.get_color()): list(ln.get_ydata()) for ln in lines}
    assert by_color["#ff0000"] == [2.5, 2.4] and by_color["#0000ff"] == [3.0, 2.9, 2.8]
    crosses = [ln for ln in ax.get_lines() if ln.get_marker() == "x"]
    assert len(crosses) == 1 and crosses[0].get_xdata()[0] == 1e-1
    assert ax.get_xscale() == "log"
    plt.close(fig)


def test_loss_curves_draw_every_run_even_when_only_the_optimizer_differs():
    # Two runs with the same placement and seed, one with Adam and one with SGD, and losses
    # 1 apart. Fails if they are averaged into one line (the old grouping by a fixed list of
    # keys that left out the optimizer, clip, qk_norm, alpha0 and the betas).
    rows = [
        {
            "step": s,
            "train_loss": base - 0.1 * s,
            "placement": "pre",
            "seed": 0,
            "optimizer": opt,
            "clip": None if opt == "adam" else float("nan"),  # missing values, as sweeps give
            "diverged_at": float("nan"),
        }
        for opt, base in (("adam", 3.0), ("sgd", 4.0))
        for s in range(6)
    ]
    fig, ax = plt.subplots()
    P.plot_loss_curves(pd.DataFrame(rows), ax=ax, smooth=1)
    curves = sorted(
        tuple(line.get_ydata()) for line in ax.get_lines() if len(line.get_xdata()) == 6
    )
    assert curves == [
        tuple(3.0 - 0.1 * s for s in range(6)),
        tuple(4.0 - 0.1 * s for s in range(6)),
    ]
    plt.close(fig)


def test_mark_diverged_puts_a_cross_above_the_frame_at_each_x():
    # Fails if a cross lands inside the frame (where it would read as a loss), at the
    # wrong x, or is clipped away by the frame.
    import matplotlib.pyplot as plt

    import prenorm as P

    fig, ax = plt.subplots()
    ax.plot([1e-3, 1e-1], [2.0, 3.0])
    P.mark_diverged(ax, [3e-2, 1e-1], "red")
    crosses = [ln for ln in ax.get_lines() if ln.get_marker() == "x"]
    assert [float(c.get_xdata()[0]) for c in crosses] == [3e-2, 1e-1]
    assert all(float(c.get_ydata()[0]) > 1.0 and not c.get_clip_on() for c in crosses)
    plt.close(fig)
