"""Chapter 5's analyses (prenorm.warmup), each against numbers worked out by hand or by
another route."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import prenorm as P  # noqa: E402
import prenorm.sweeps  # noqa: E402


def _runs(spec):
    """Runs from {(placement, n_layers, lr, warmup_steps): [(outcome, loss), ...]}."""
    rows = []
    for (placement, depth, lr, warm), outs in spec.items():
        for seed, (word, loss) in enumerate(outs):
            rows.append(
                {
                    "placement": placement,
                    "n_layers": depth,
                    "lr": lr,
                    "warmup_steps": warm,
                    "seed": seed,
                    "outcome": word,
                    "diverged": word == "diverged",
                    "final_val_loss": loss,
                }
            )
    return pd.DataFrame(rows)


T, S, D = "trained", "stalled", "diverged"


def test_outcome_counts_words_per_cell():
    # Fails if counts are wrong, the most frequent outcome is not first, or cells merge.
    runs = _runs(
        {
            ("post", 2, 0.1, 0): [(S, 3.0), (T, 2.0), (S, 3.0)],
            ("pre", 2, 0.1, 0): [(T, 2.0), (T, 2.0), (D, 9.0)],
        }
    )
    got = P.outcome_counts(runs, ["placement", "n_layers"])
    assert got.to_dict() == {
        ("post", 2): "2 stalled, 1 trained",
        ("pre", 2): "2 trained, 1 diverged",
    }


def test_rate_table_counts_fractions_by_group():
    # 4 runs at depth 2 (1 trained, 2 stalled, 1 diverged), 2 at depth 4 (both trained):
    # fails if "failed" is not stalled-or-diverged or a group's n is wrong.
    runs = _runs(
        {
            ("post", 2, 0.1, 0): [(T, 1.0), (S, 1.0), (S, 1.0), (D, 1.0)],
            ("post", 4, 0.1, 0): [(T, 1.0), (T, 1.0)],
        }
    )
    table = P.rate_table(runs, ["n_layers"], words=("trained", "failed", "diverged"))
    assert list(table.columns) == ["n_layers", "n", "trained", "failed", "diverged"]
    assert table.n.tolist() == [4, 2]
    assert table.trained.tolist() == [0.25, 1.0]
    assert table.failed.tolist() == [0.75, 0.0]
    assert table.diverged.tolist() == [0.25, 0.0]


def test_split_cells_needs_every_seed_on_both_sides():
    # Fails if one trained Post-LN seed, one stalled Pre-LN seed or a missing side still
    # counts as a split.
    spec = {
        ("post", 2, 0.1, 0): [(S, 3.0), (D, 9.0)],  # split
        ("pre", 2, 0.1, 0): [(T, 2.0), (T, 2.0)],
        ("post", 2, 0.1, 5): [(S, 3.0), (T, 2.0)],  # one Post-LN seed trained
        ("pre", 2, 0.1, 5): [(T, 2.0), (T, 2.0)],
        ("post", 4, 0.1, 0): [(S, 3.0), (S, 3.0)],  # one Pre-LN seed stalled
        ("pre", 4, 0.1, 0): [(T, 2.0), (S, 3.0)],
        ("post", 4, 0.1, 5): [(S, 3.0), (S, 3.0)],  # no Pre-LN runs at all
    }
    split = P.split_cells(_runs(spec), fails="post", trains="pre")
    assert split.to_dict() == {
        (2, 0.1, 0): True,
        (2, 0.1, 5): False,
        (4, 0.1, 0): False,
        (4, 0.1, 5): False,
    }


def test_warmup_gain_is_mean_without_minus_mean_with():
    # Cell (2, 0.1): means 3.0 without warmup, 2.5 with 10 steps -> +0.5 (warmup helped);
    # cell (2, 0.2): 2.0 vs 2.25 -> -0.25. A 5-step warmup is ignored.
    spec = {
        ("pre", 2, 0.1, 0): [(T, 3.1), (T, 2.9)],
        ("pre", 2, 0.1, 5): [(T, 0.0), (T, 0.0)],
        ("pre", 2, 0.1, 10): [(T, 2.4), (T, 2.6)],
        ("pre", 2, 0.2, 0): [(T, 2.0), (T, 2.0)],
        ("pre", 2, 0.2, 5): [(T, 0.0), (T, 0.0)],
        ("pre", 2, 0.2, 10): [(T, 2.5), (T, 2.0)],
    }
    gain = P.warmup_gain(_runs(spec), 10)
    assert gain[(2, 0.1)] == pytest.approx(0.5)
    assert gain[(2, 0.2)] == pytest.approx(-0.25)
    assert gain.idxmax() == (2, 0.1)


def test_rescued_cells_lists_failing_cells_and_whether_warmup_fixed_them():
    # (2, 0.1) trains without warmup (not listed); (2, 0.2) fails without and trains with
    # (rescued); (4, 0.2) has one seed that still stalls with warmup (not rescued).
    spec = {
        ("post", 2, 0.1, 0): [(T, 2.0), (T, 2.0)],
        ("post", 2, 0.1, 10): [(T, 2.0), (T, 2.0)],
        ("post", 2, 0.2, 0): [(D, 9.0), (T, 2.0)],
        ("post", 2, 0.2, 10): [(T, 2.0), (T, 2.0)],
        ("post", 4, 0.2, 0): [(S, 3.0), (S, 3.0)],
        ("post", 4, 0.2, 10): [(T, 2.0), (S, 3.0)],
    }
    got = P.rescued_cells(_runs(spec), 10)
    assert got.rescued.to_dict() == {(2, 0.2): True, (4, 0.2): False}


def test_trained_counts_and_matches_treatment():
    table = pd.DataFrame(
        {
            "control": ["a", "a", "a", "b", "b", "b", "w", "w", "w"],
            "lr": [1, 1, 2, 1, 1, 2, 1, 1, 2],
            "outcome": [T, T, S, T, S, T, T, T, D],
        }
    )
    counts = P.trained_counts(table, order=["w", "a", "b"])
    # w trains 2 at lr 1, 0 at lr 2; a: 2, 0; b: 1, 1. Fails on a wrong count or order.
    assert counts.index.tolist() == ["w", "a", "b"]
    assert counts.to_numpy().tolist() == [[2, 0], [2, 0], [1, 1]]
    # a ties w everywhere (does its job); b falls short at lr 1.
    assert P.matches_treatment(counts, "w", ["a", "b"]) == ["a"]


def test_trained_cells_keeps_only_cells_where_every_run_trained():
    spec = {
        ("post", 2, 0.1, 0): [(T, 2.0)],
        ("pre", 2, 0.1, 0): [(T, 2.1)],
        ("post", 2, 0.2, 0): [(S, 3.0)],
        ("pre", 2, 0.2, 0): [(T, 2.0)],
    }
    kept = P.trained_cells(_runs(spec))
    assert sorted(kept.lr.unique()) == [0.1] and len(kept) == 2


def test_paired_t_by_hand():
    # Differences post - pre over three cells: 1, 2, 3 -> mean 2, sd 1, t = 2 * sqrt(3).
    spec = {}
    for i, d in enumerate([1.0, 2.0, 3.0]):
        spec[("post", 2, 0.1, i)] = [(T, 5.0 + d)]
        spec[("pre", 2, 0.1, i)] = [(T, 5.0)]
    got = P.paired_t(_runs(spec), "placement", "post", "pre")
    assert got.n == 3
    assert got.mean == pytest.approx(2.0)
    assert got.sd == pytest.approx(1.0)
    assert got.t == pytest.approx(2 * math.sqrt(3))
    one = P.paired_t(
        _runs({k: v for k, v in spec.items() if k[3] == 0}), "placement", "post", "pre"
    )
    assert (one.n, one.mean, one.sd, one.t) == (1, pytest.approx(1.0), 0.0, 0.0)
    none = P.paired_t(_runs(spec).iloc[:0], "placement", "post", "pre")
    assert none.n == 0 and all(math.isnan(v) for v in (none.mean, none.sd, none.t))


def test_first_steps_probes_the_model_as_built_and_as_it_trains(corpus):
    mk = {
        "vocab_size": corpus.vocab_size,
        "d_model": 16,
        "n_heads": 2,
        "seq_len": 16,
        "n_layers": 3,
        "placement": "post",
    }
    tk = {"steps": 99, "batch_size": 4, "device": "cpu"}
    batch = corpus.batch("val", 4, 16, torch.Generator().manual_seed(0))
    early = P.first_steps(corpus, batch, mk, tk, lr=1e-2, warmups=[0, 3], steps=3, at=[0, 3])
    assert early.step.tolist() == [0, 3, 0, 3]
    assert early.warmup_steps.tolist() == [0, 0, 3, 3]
    # Step 0 is the model as built: compare with the probes run on a fresh copy.
    fresh = P.build_model(seed=0, **mk)
    g = P.hidden_grad_norms(fresh, batch)
    s = P.norm_input_scales(fresh, batch)
    ratio = g.grad_norm[g.layer == 1].iloc[0] / g.grad_norm.iloc[-1]
    inv = s[s.layer >= 1].inv_scale_mean.to_numpy()
    for w in (0, 3):
        row = early[(early.step == 0) & (early.warmup_steps == w)].iloc[0]
        assert row["gradient at x_1 / top"] == pytest.approx(ratio, rel=1e-6)
        assert row["prod 1/sigma"] == pytest.approx(float(np.prod(inv)), rel=1e-6)
        assert row["mean sigma"] == pytest.approx(float(s.scale_mean.mean()), rel=1e-6)
    # Training moved the weights (a probe that ignored the callback's model would not).
    last = early[early.warmup_steps == 0].iloc[-1]
    assert last["mean sigma"] != pytest.approx(float(s.scale_mean.mean()), rel=1e-6)


def test_warmup_controls_labels_arms_and_keeps_the_grids_own_runs(monkeypatch):
    seen = {}

    def fake_sweep(data, grids, model_kwargs, train_kwargs, progress=False):
        seen["grids"] = grids
        points = prenorm.sweeps.grid_points(
            grids, prenorm.sweeps.MODEL_KEYS + prenorm.sweeps.TRAIN_KEYS
        )
        rows = pd.DataFrame(points)
        rows["final_val_loss"] = [1.0 if p.get("optimizer") == "radam" else 5.0 for p in points]
        rows["diverged"] = False
        rows["error"] = None
        return rows

    monkeypatch.setattr(prenorm.sweeps, "sweep", fake_sweep)
    runs = _runs(
        {
            ("post", 2, 0.1, 0): [(S, 5.0)],
            ("pre", 2, 0.1, 0): [(T, 1.0)],
            ("post", 2, 0.1, 10): [(T, 1.0)],
            ("pre", 2, 0.1, 10): [(T, 1.0)],  # Pre-LN with warmup is not an arm
            ("post", 4, 0.1, 0): [(S, 5.0)],
            ("pre", 4, 0.1, 0): [(T, 1.0)],
            ("post", 4, 0.1, 10): [(T, 1.0)],
            ("post", 4, 0.3, 0): [(S, 5.0)],
            ("pre", 4, 0.3, 0): [(T, 1.0)],
            ("post", 4, 0.3, 10): [(S, 5.0)],
        }
    )
    table = P.warmup_controls(None, runs, {}, {}, entropy=3.0, margin=0.1)
    # Three arms at the deepest depth, no warmup, every lr and seed of the grid.
    assert [g["placement"] for g in seen["grids"]] == [["post"], ["post"], ["deepnorm"]]
    assert seen["grids"][0]["clip"] == [1.0] and seen["grids"][1]["optimizer"] == ["radam"]
    assert seen["grids"][2]["init"] == ["deepnorm"]
    assert all(g["n_layers"] == [4] and g["lr"] == [0.1, 0.3] for g in seen["grids"])
    assert all(g["warmup_steps"] == [0] for g in seen["grids"])
    labels = P.control_labels(10)
    counts = table.groupby("control").size()
    assert set(counts.index) == set(labels.values())
    assert (counts == 2).all()  # one run per lr in each arm
    # Outcomes against H - margin = 2.9: the RAdam runs (loss 1.0) trained, the others stalled.
    arm = table.set_index("control").outcome
    assert (arm[labels["radam"]] == T).all() and (arm[labels["clipping"]] == S).all()
    assert (arm[labels["preln"]] == T).all()
    assert table[table.control == labels["warmup"]].outcome.tolist() == [T, S]


def test_plots_draw_their_panels():
    spec = {}
    for p in ("post", "pre"):
        for d in (2, 4):
            for lr in (0.1, 0.3):
                for w in (0, 10):
                    spec[(p, d, lr, w)] = [(T, 2.0), (S, 3.2)]
    runs = _runs(spec)
    fig = P.plot_stability_map(runs, entropy=3.0)
    assert len([a for a in fig.axes if a.get_title()]) == 4
    plt.close("all")
    table = runs.assign(control=np.resize(["A", "B"], len(runs)))
    ax = P.plot_controls(table, ["A", "B"], entropy=3.0, margin=0.1)
    assert len(ax.collections) == 4  # 2 controls x 2 learning rates
    plt.close("all")
    early = pd.DataFrame(
        {
            "step": [0, 1, 0, 1],
            "warmup_steps": [0, 0, 5, 5],
            "gradient at x_1 / top": [1.0, 0.3, 1.0, 0.8],
            "prod 1/sigma": [1.0, 0.2, 1.0, 0.6],
            "mean sigma": [1.0, 1.3, 1.0, 1.1],
        }
    )
    fig = P.plot_first_steps(early)
    assert len(fig.axes[0].lines) == 2 and len(fig.axes[1].lines) == 5  # + the threshold
    plt.close("all")
    hist = pd.DataFrame(
        {
            "step": [0, 1, 0, 1] * 2,
            "train_loss": [3.0, 2.5] * 4,
            "placement": ["post", "post", "pre", "pre"] * 2,
            "warmup_steps": [0] * 4 + [10] * 4,
            "seed": [0] * 8,
            "run": [0, 0, 1, 1, 2, 2, 3, 3],
            "diverged": [False] * 8,
        }
    )
    fig = P.plot_warmup_curves(hist, 10, entropy=3.0)
    assert [a.get_title() for a in fig.axes] == ["no warmup", "warmup 10 steps"]
    plt.close("all")


def _post_cells(spec):
    """Post-LN runs from {(n_layers, lr, warmup_steps): [outcome, ...]}."""
    return _runs({("post", *k): [(w, 1.0) for w in v] for k, v in spec.items()})


def test_necessity_pools_only_cells_where_warmup_trains_every_run():
    # Cell (2, .1): warmup trains both, no warmup fails 1 of 2. Cell (4, .1): warmup
    # trains 1 of 2, so it cannot test necessity; no warmup fails 3 of 3 there. Cell
    # (2, .3): warmup trains both, no warmup fails 2 of 2. Pooled over the two testable
    # cells: (1 + 2) / (2 + 2) = 0.75. Fails if the untestable cell is counted (6/7), if
    # cells are averaged unweighted by runs, or if "failed" misses stalled or diverged.
    runs = _post_cells(
        {
            (2, 0.1, 50): [T, T],
            (2, 0.1, 0): [S, T],
            (4, 0.1, 50): [T, D],
            (4, 0.1, 0): [S, D, S],
            (2, 0.3, 50): [T, T],
            (2, 0.3, 0): [D, S],
        }
    )
    table = P.necessity_table(runs, 50)
    assert table.loc[(2, 0.1)].failed_cold == 0.5
    assert table.loc[(4, 0.1)].trained_warm == 0.5
    assert table.warmup_trains.to_dict() == {(2, 0.1): True, (2, 0.3): True, (4, 0.1): False}
    assert P.need_rate(table) == pytest.approx(0.75)
    # The same rate with its Wilson interval over the 4 qualifying no-warmup runs (3 of 4
    # failed: [0.301, 0.954] by hand); fails if the untestable cell's runs are counted.
    est = P.need_estimate(runs, 50)
    assert est.value == pytest.approx(0.75) and est.n == 4
    assert (est.lo, est.hi) == (pytest.approx(0.301, abs=1e-3), pytest.approx(0.954, abs=1e-3))


def test_need_rate_is_nan_when_warmup_trains_no_cell():
    # Fails if an untestable grid reads as 0 (a failed prediction) instead of "cannot tell".
    runs = _post_cells({(2, 0.1, 50): [S, T], (2, 0.1, 0): [S, S]})
    assert math.isnan(P.need_rate(P.necessity_table(runs, 50)))
    assert math.isnan(P.need_estimate(runs, 50).value)


def test_necessity_table_names_a_cell_missing_a_side():
    runs = _post_cells({(2, 0.1, 50): [T], (2, 0.1, 0): [S], (4, 0.1, 0): [S]})
    with pytest.raises(ValueError, match="lacks runs"):
        P.necessity_table(runs, 50)


def _history(seed, losses, every, diverged=False):
    rows = []
    for step in range(len(losses) * every):
        val = losses[(step + 1) // every - 1] if (step + 1) % every == 0 else math.nan
        rows.append({"seed": seed, "step": step, "val_loss": val, "diverged": diverged})
    return rows


def test_stall_escape_reads_the_short_horizon_from_the_long_history():
    # H = 3.0, margin 0.1: trained below 2.9. Seed 0 evaluates 3.0 at step 10 and 2.5 at
    # step 20: stalled, then escaped. Seed 1: 3.0, then 2.95: stalled twice. Seed 2 stops at
    # step 5 having diverged. Fails if the short outcome uses an evaluation after step 10,
    # if a stop before step 10 is not a divergence there, or if escaped counts seed 1.
    hist = pd.DataFrame(
        _history(0, [3.0, 2.5], 10)
        + _history(1, [3.0, 2.95], 10)
        + [{"seed": 2, "step": s, "val_loss": math.nan, "diverged": True} for s in range(5)]
    )
    got = P.stall_escape(hist, 10, entropy=3.0, margin=0.1).set_index("seed")
    assert got.loc[0, "loss_at"] == 3.0 and got.loc[0, "loss_end"] == 2.5
    assert got.outcome_at.tolist() == ["stalled", "stalled", "diverged"]
    assert got.outcome_end.tolist() == ["trained", "stalled", "diverged"]
    assert got.escaped.tolist() == [True, False, False]
    assert got.last_step.tolist() == [20, 20, 5]


def test_cell_differences_compare_per_cell_and_skip_cells_with_a_failed_run():
    # Cell A (L=2): Post-LN higher by 0.50 and 0.52 in two seeds: interval above 0,
    # "higher". Cell B (L=4): -0.1 and +0.1: the interval (half-width 1.27) contains 0
    # and reaches far past the tol of 0.05: "undecided". Cell C (L=6): a Post-LN seed
    # stalled, so it is not compared. Cell D (L=8): +0.010 and +0.012, interval about
    # [-0.002, +0.024], inside +-0.05: "same within tol". Fails if cells are pooled (one
    # row), if a cell with a failed run is kept, if the sign is Pre minus Post, or if a
    # wide interval is read as the same.
    runs = _runs(
        {
            ("post", 2, 0.1, 0): [(T, 2.50), (T, 2.52)],
            ("pre", 2, 0.1, 0): [(T, 2.00), (T, 2.00)],
            ("post", 4, 0.1, 0): [(T, 2.00), (T, 2.20)],
            ("pre", 4, 0.1, 0): [(T, 2.10), (T, 2.10)],
            ("post", 6, 0.1, 0): [(S, 3.00), (T, 2.00)],
            ("pre", 6, 0.1, 0): [(T, 2.00), (T, 2.00)],
            ("post", 8, 0.1, 0): [(T, 2.010), (T, 2.012)],
            ("pre", 8, 0.1, 0): [(T, 2.00), (T, 2.00)],
        }
    )
    got = P.cell_differences(runs).set_index("n_layers")
    assert list(got.index) == [2, 4, 8]
    assert got.loc[2, "mean"] == pytest.approx(0.51)
    assert got.loc[4, "mean"] == pytest.approx(0.0, abs=1e-12)
    assert got.word.tolist() == ["higher", "undecided", "same within tol"]
    assert got.loc[8, "lo"] < 0 < got.loc[8, "hi"] <= 0.05
    assert (got.n == 2).all()
    assert P.cell_differences(runs, tol=0.01).loc[:, "word"].tolist()[-1] == "undecided"
    assert set(got.word) <= set(P.CELL_WORDS)
    with pytest.raises(ValueError, match="tol"):
        P.cell_differences(runs, tol=-1.0)


def test_new_figures_draw_one_row_per_cell_and_one_line_per_seed():
    # Fails if a cell or a seed is dropped from its figure.
    runs = _runs(
        {
            ("post", 2, 0.1, 0): [(T, 2.5), (T, 2.6)],
            ("pre", 2, 0.1, 0): [(T, 2.0), (T, 2.1)],
            ("post", 4, 0.1, 50): [(T, 2.0), (T, 2.2)],
            ("pre", 4, 0.1, 50): [(T, 2.1), (T, 2.1)],
        }
    )
    ax = P.plot_cell_differences(P.cell_differences(runs), runs)
    assert len(ax.get_yticklabels()) == 2
    plt.close("all")
    hist = pd.DataFrame(_history(0, [3.0, 2.5], 10) + _history(1, [3.0, 2.9], 10))
    ax = P.plot_long_runs(hist, 10, 3.0, 0.1)
    assert [line.get_label() for line in ax.get_lines()][:2] == ["seed 0", "seed 1"]
    plt.close("all")


def test_diff_ranges_says_one_cell_once_and_skips_empty_depths():
    # Fails if a depth with one cell reads "from x to x" (chapter 5's L = 12 did), if an
    # empty depth is printed, or if the range is not min to max.
    diffs = pd.DataFrame({"n_layers": [6, 6, 12], "mean": [0.075, -0.053, 0.491]})
    text = P.diff_ranges(diffs, [6, 12, 24])
    assert text == "from -0.053 to +0.075 nats at L = 6; +0.491 nats at L = 12 (one cell)"
    assert P.diff_ranges(diffs.iloc[:0], [6]) == "over no cell"


def test_warmup_gains_pairs_by_seed_and_pools_the_sd_over_cells():
    # Cell (2, .1): pairs 3.0-2.5 = 0.5 and 2.8-2.5 = 0.3 -> mean 0.4, deviations +-0.1.
    # Cell (2, .2): pairs 2.0-2.2 = -0.2 and 2.0-1.8 = 0.2 -> mean 0.0, deviations +-0.2.
    # Pooled: s^2 = (0.01 + 0.01 + 0.04 + 0.04) / 2 = 0.05 on 2 df, so each half-width is
    # t(0.975, 2) sqrt(0.05 / 2) = 4.303 * 0.158. Fails if pairs are not matched by seed
    # (the means would stay but the SD would change), or the SD is not pooled.
    spec = {
        ("pre", 2, 0.1, 0): [(T, 3.0), (T, 2.8)],
        ("pre", 2, 0.1, 10): [(T, 2.5), (T, 2.5)],
        ("pre", 2, 0.2, 0): [(T, 2.0), (T, 2.0)],
        ("pre", 2, 0.2, 10): [(T, 2.2), (T, 1.8)],
        ("pre", 2, 0.2, 5): [(T, 0.0), (T, 0.0)],  # another warmup: ignored
    }
    table = P.warmup_gains(_runs(spec), 10)
    half = P.t_quantile(0.975, 2) * math.sqrt(0.05 / 2)
    assert table.loc[(2, 0.1), "mean"] == pytest.approx(0.4)
    assert table.loc[(2, 0.2), "mean"] == pytest.approx(0.0)
    assert table.loc[(2, 0.1), "hi"] - table.loc[(2, 0.1), "mean"] == pytest.approx(half)
    assert table.sd.iloc[0] == pytest.approx(math.sqrt(0.05))
    assert table.df.iloc[0] == 2
    best = P.largest_of(table)
    assert best.value == pytest.approx(0.4)
    assert best.lo == pytest.approx(0.4 - half) and best.hi == pytest.approx(0.4 + half)
    # "at most 0.05 in every cell" is undecided here; a cell wholly above decides it.
    assert P.Prediction("gain", "<=", 0.05).outcome(best) == "undecided"
    assert P.Prediction("gain", "<=", 5.0).outcome(best) == "holds"
    assert P.Prediction("gain", "<=", -0.5).outcome(best) == "fails"


def test_warmup_gains_drops_unfinished_pairs_and_is_infinite_without_df():
    # A diverged run has no loss: its pair is dropped. One pair a cell leaves no degree of
    # freedom, so the interval is infinite and cannot decide anything.
    spec = {
        ("pre", 2, 0.1, 0): [(T, 3.0), (D, math.nan)],
        ("pre", 2, 0.1, 10): [(T, 2.5), (T, 2.5)],
    }
    table = P.warmup_gains(_runs(spec), 10)
    assert table.n.tolist() == [1]
    assert table.df.iloc[0] == 0 and math.isinf(table.hi.iloc[0])
    assert P.Prediction("gain", "<=", 0.05).outcome(P.largest_of(table)) == "undecided"
    with pytest.raises(ValueError, match="warmup 7"):
        P.warmup_gains(_runs(spec), 7)
    assert math.isnan(P.largest_of(table.iloc[:0]).value)


@pytest.mark.parametrize(
    ("at", "escaped", "words"),
    [
        (["trained", "trained"], [False, False], "cannot tell stalled from slow"),
        (["stalled"], [False], "the failed run did not escape"),
        (["stalled"], [True], "the failed run escaped"),
        (["stalled", "diverged", "trained"], [False, False, False], "none of the 2 failed"),
        (["stalled", "stalled"], [True, True], "all 2 failed runs escaped"),
        (["stalled", "stalled", "trained"], [True, False, False], "1 of the 2 failed runs"),
    ],
)
def test_escape_clause_counts_failed_runs_and_their_escapes(at, escaped, words):
    # A run that trained at the short horizon is not a failed run, whatever it did later.
    esc = pd.DataFrame({"outcome_at": at, "escaped": escaped})
    assert words in P.escape_clause(esc)


def test_warmup_changed_cells_compares_outcome_counts_per_placement():
    # (post, 2, 0.1): same outcomes with and without warmup (unchanged); (post, 2, 0.2): one
    # diverged run becomes trained (changed); (pre, 2, 0.2): the same counts in another seed
    # order (unchanged: counts, not seeds). Fails if placement were pooled, or if the
    # comparison were by seed order or by the first outcome only.
    spec = {
        ("post", 2, 0.1, 0): [(T, 2.0), (S, 3.0)],
        ("post", 2, 0.1, 10): [(T, 2.0), (S, 3.0)],
        ("post", 2, 0.2, 0): [(D, 9.0), (T, 2.0)],
        ("post", 2, 0.2, 10): [(T, 2.0), (T, 2.0)],
        ("pre", 2, 0.2, 0): [(T, 2.0), (S, 3.0)],
        ("pre", 2, 0.2, 10): [(S, 3.0), (T, 2.0)],
    }
    got = P.warmup_changed_cells(_runs(spec), 10)
    assert got.to_dict() == {
        ("post", 2, 0.1): False,
        ("post", 2, 0.2): True,
        ("pre", 2, 0.2): False,
    }
    with pytest.raises(ValueError, match="lacks runs"):
        P.warmup_changed_cells(_runs({("post", 2, 0.1, 0): [(T, 2.0)]}), 10)
