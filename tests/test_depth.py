"""prenorm.depth: each analysis against a computation done another way (by hand on
synthetic frames, or from exact Jacobians), so that a wrong formula fails."""

import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from torch.func import jacrev

import prenorm as P

matplotlib.use("Agg")

V, D, L, H, T = 13, 8, 3, 2, 4


def _model(placement="pre", init="xavier", n_layers=L):
    torch.manual_seed(0)
    return P.TransformerLM(V, D, n_layers, H, T, placement=placement, init=init)


def _tokens():
    return torch.randint(V, (1, T), generator=torch.Generator().manual_seed(1))


def test_step_jacobian_check_separates_pre_from_post():
    # Fails if identity_gap is not |J_step - (I + J_F)| (Pre-LN would not be ~0, or Post-LN
    # would be), if factor_err does not use the after-norm's Jacobian, or if branch_norm is
    # not the largest singular value of J_F (computed here from jacrev and svdvals).
    for placement in ("pre", "post"):
        m = _model(placement)
        check = P.step_jacobian_check(m, _tokens(), layer=1)
        assert list(check.sublayer) == list(P.SUBLAYERS)
        assert check.factor_err.max() < 1e-5
        if placement == "pre":
            assert check.identity_gap.max() < 1e-5
        else:
            assert check.identity_gap.min() > 1e-2
        x = m.residual_stream(m.embed(_tokens()))[1][0].detach()
        for which, got in zip(P.SUBLAYERS, check.branch_norm, strict=True):
            jf = jacrev(lambda h, w=which, b=m.blocks[1]: b.branch(w, h.unsqueeze(0))[0])(x)
            want = torch.linalg.svdvals(jf.reshape(T * D, T * D)).max().item()
            assert got == pytest.approx(want, rel=1e-4)
    with pytest.raises(ValueError, match="layer"):
        P.step_jacobian_check(_model(), _tokens(), layer=L)


def test_sequence_gains_estimates_the_exact_frobenius_gain():
    # Fails if the gain is not ||d x_L / d x_0||_F / sqrt(Td): the exact Jacobian of the
    # stack is formed here and the Hutchinson estimate with many samples must be close.
    m = _model("post")
    x0 = m.embed(_tokens()).detach()
    jac = jacrev(lambda h: m.residual_stream(h.unsqueeze(0))[-1][0])(x0[0])
    exact = jac.reshape(T * D, T * D).norm().item() / math.sqrt(T * D)
    batch = (_tokens(), torch.zeros(1, T, dtype=torch.long))
    got = P.sequence_gains(m, batch, layers=[0], samples=400)
    assert got.gain.iloc[0] == pytest.approx(exact, rel=0.1)


def test_attenuation_is_the_product_above_the_layer():
    # By hand: norms at positions 0..5 with 1/sigma = 2, 3, 0.5, 0.25, 4, 1; above x_1
    # (positions >= 2) the product is 0.5 * 0.25 * 4 * 1 = 0.5. Fails for a wrong cut-off
    # (including positions 0-1 gives 3.0) or a sum instead of a product.
    scales = pd.DataFrame(
        {"position": range(6), "inv_scale_mean": [2, 3, 0.5, 0.25, 4, 1.0]}
    ).assign(init="a", n_layers=3, seed=0)
    hidden = pd.DataFrame({"layer": [0, 1, 2], "relative": [0.9, 0.7, 0.8]}).assign(
        init="a", n_layers=3, seed=0
    )
    out = P.attenuation(hidden, scales, layer=1)
    assert out.predicted.item() == pytest.approx(0.5)
    assert out.measured.item() == pytest.approx(0.7)
    assert P.attenuation(hidden, scales, layer=2).predicted.item() == pytest.approx(4.0)


def test_step_variance_by_hand():
    # Steps (sigma, rho, residual gain, gain) = (1, 0, 1, 1) and (2, 1, 4, 4): means 1.5
    # and 0.5; sigma^2/(1+rho^2) = 1 and 2 (mean 1.5); residual gain/sigma = 1 and 2
    # (mean 1.5); geometric mean gain sqrt(1 * 4) = 2 (the arithmetic mean would be 2.5).
    steps = pd.DataFrame(
        {
            "init": ["a", "a"],
            "sigma": [1.0, 2.0],
            "branch_ratio": [0.0, 1.0],
            "residual_gain": [1.0, 4.0],
            "gain": [1.0, 4.0],
        }
    )
    row = P.step_variance(steps).loc["a"]
    assert row.sigma == pytest.approx(1.5)
    assert row.rho == pytest.approx(0.5)
    assert row.sigma_sq_over_1_plus_rho_sq == pytest.approx(1.5)
    assert row.residual_gain_over_sigma == pytest.approx(1.5)
    assert row.step_gain_geomean == pytest.approx(2.0)


def test_first_last_averages_seeds_and_takes_the_end_layers():
    # Two seeds per layer: means at layers 0, 1, 2 are 1, 5, 3 -> first 1, last 3, ratio 3.
    # Fails if it takes the largest value instead of the last layer, or does not average.
    frame = pd.DataFrame(
        {
            "g": ["x"] * 6,
            "layer": [0, 0, 1, 1, 2, 2],
            "v": [0.5, 1.5, 4.0, 6.0, 2.0, 4.0],
        }
    )
    out = P.first_last(frame, "v", "g").loc["x"]
    assert (out["first"], out["last"], out["last / first"]) == pytest.approx((1.0, 3.0, 3.0))
    assert P.first_last(frame, "v", ["g"], first=1, last=2).loc["x", "last / first"] == 0.6
    with pytest.raises(ValueError, match="not in the frame"):
        P.first_last(frame, "v", "g", last=7)


def test_inner_layers():
    frame = pd.DataFrame({"layer": [0, 1, 2, 3, 4, 2]})
    assert sorted(P.inner_layers(frame).layer) == [1, 2, 2, 3]
    assert list(P.inner_layers(pd.DataFrame({"layer": [0, 1]})).layer) == [1]


def test_depth_exponents_recover_power_laws():
    # y = 3 L^-0.5 and y = L^2 at L = 2, 4, 8 (two seeds, noise-free): exponents -0.5, 2.
    Ls = np.array([2, 4, 8, 2, 4, 8])
    frame = pd.concat(
        [
            pd.DataFrame({"p": "a", "n_layers": Ls, "y": 3 * Ls**-0.5}),
            pd.DataFrame({"p": "b", "n_layers": Ls, "y": Ls.astype(float) ** 2}),
        ]
    )
    k = P.depth_exponents(frame, "y", "p")
    assert k["a"] == pytest.approx(-0.5) and k["b"] == pytest.approx(2.0)


def test_labelled():
    s = pd.Series({"gpt2": 0.254, "pytorch": 0.3649})
    assert P.labelled(s) == "0.25 (gpt2), 0.36 (pytorch)"
    assert P.labelled({"a": 1.0}, ".1e") == "1.0e+00 (a)"


def test_train_and_probe_matches_a_run_by_hand(corpus):
    # The probe at init must be the probe of a freshly built model with the config's seed,
    # and the run the one P.train gives with that seed; fails if the seed or the model
    # arguments are not passed on, or the stages are swapped.
    kw = {"vocab_size": corpus.vocab_size, "d_model": 16, "n_heads": 2, "seq_len": 8}
    kw["n_layers"] = 2
    batch = corpus.batch("val", 2, 8, torch.Generator().manual_seed(1))
    sched = {"steps": 3, "lr": 1e-3, "batch_size": 2}
    configs = [{"placement": "pre", "seed": 1}, {"placement": "post", "seed": 2}]
    runs, probed = P.train_and_probe(
        corpus, configs, kw, batch, [P.residual_norms], [P.branch_ratios], **sched
    )
    assert list(runs.placement) == ["pre", "post"] and list(runs.seed) == [1, 2]
    fresh = P.build_model(seed=2, placement="post", **kw)
    want_init = P.branch_ratios(fresh, batch).ratio_mean.to_numpy()
    got_init = probed[(probed.stage == "at init") & (probed.placement == "post")]
    assert set(got_init.probe) == {"branch_ratios"}
    np.testing.assert_array_equal(got_init.ratio_mean.to_numpy(), want_init)
    r = P.train(fresh, corpus, seed=2, **sched)
    assert runs.final_val_loss.iloc[1] == r.final_val_loss
    got_trained = probed[(probed.stage == "trained") & (probed.placement == "post")]
    np.testing.assert_array_equal(
        got_trained.rms.to_numpy(), P.residual_norms(fresh, batch).rms.to_numpy()
    )
    none_runs, none_probed = P.train_and_probe(corpus, [], kw, batch, [P.residual_norms])
    assert none_runs.empty and none_probed.empty


def test_plots_draw_what_they_say():
    import matplotlib.pyplot as plt

    # plot_power_laws: the line through y0 at L0 with slope k, so y(8) = 2 * (8/2)^-0.5 = 1.
    frame = pd.DataFrame({"placement": "pre", "n_layers": [2, 2, 4, 8], "g": [1.0, 3.0, 9, 9]})
    fig, ax = plt.subplots()
    P.plot_power_laws(frame, "g", {"pre": -0.5}, ax=ax)
    x, y = ax.lines[0].get_data()
    assert list(x) == [2, 4, 8] and y[-1] == pytest.approx(1.0)
    # plot_stages: one line per (placement, stage); the trained one solid.
    prof = pd.DataFrame(
        {
            "placement": ["pre"] * 4,
            "stage": ["at init", "at init", "trained", "trained"],
            "layer": [0, 1, 0, 1],
            "v": [1.0, 2.0, 3.0, 4.0],
        }
    )
    fig, ax = plt.subplots()
    P.plot_stages(prof, "v", ax=ax)
    styles = {line.get_label(): line.get_linestyle() for line in ax.lines}
    assert styles == {"Pre-LN, at init": "--", "Pre-LN, trained": "-"}
    # plot_attenuation: measured and predicted per init, means over seeds.
    att = pd.DataFrame(
        {"init": "gpt2", "n_layers": [2, 2, 6], "measured": [1.0, 3.0, 1.0], "predicted": 0.5}
    )
    fig, ax = plt.subplots()
    P.plot_attenuation(att, ax=ax)
    assert list(ax.lines[0].get_ydata()) == [2.0, 1.0] and len(ax.lines) == 2
    # plot_variance: two panels, a diagonal on each.
    steps = pd.DataFrame(
        {"init": "gpt2", "sigma": [1.0, 1.2], "branch_ratio": [0.1, 0.6], "residual_gain": 1.1}
    )
    fig = P.plot_variance(steps)
    assert len(fig.axes) == 2 and all(len(a.lines) == 1 for a in fig.axes)
    plt.close("all")


def test_step_linearity_halving_ratio():
    # A tiny step is linear: each halving divides the change by 2 (fails if the ratio is
    # inverted, taken between the wrong rows, or if the lr is not halved). A step as large
    # as the weights is not, and the ratio must say so (fails if the column were constant).
    m = _model("post")
    batch = (_tokens(), torch.randint(V, (1, T), generator=torch.Generator().manual_seed(2)))
    small = P.step_linearity(m, batch, lr=1e-6, halvings=2)
    assert list(small.lr) == pytest.approx([1e-6, 5e-7, 2.5e-7])
    assert small.halving_ratio.iloc[:2].to_numpy() == pytest.approx([2.0, 2.0], rel=0.02)
    assert math.isnan(small.halving_ratio.iloc[-1])
    big = P.step_linearity(m, batch, lr=1.0, halvings=1)
    assert abs(big.halving_ratio.iloc[0] - 2.0) > 0.1
    with pytest.raises(ValueError, match="halvings"):
        P.step_linearity(m, batch, lr=1e-3, halvings=0)


def test_legend_below_moves_one_legend_off_the_axes():
    # Fails if a panel keeps its legend (on the data), if the figure gets no legend or gets
    # one per panel, or if placement keys are not printed as names.
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2)
    for ax in axes:
        ax.plot([0, 1], [0, 1], label="post")
        ax.plot([0, 1], [1, 0], label="pre")
        ax.legend()
    P.legend_below(fig, axes, ncol=2)
    assert all(ax.get_legend() is None for ax in axes)
    assert len(fig.legends) == 1
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["Post-LN", "Pre-LN"]
    with pytest.raises(ValueError, match="legend"):
        P.legend_below(fig, axes)
    plt.close(fig)


def test_linearity_summary_counts_linear_models_and_names_the_furthest():
    # Fails if a ratio of exactly 2 is not counted linear, if the furthest model is not the
    # one named, or if the second ratio's direction is misread.
    import pandas as pd

    idx = pd.MultiIndex.from_tuples(
        [("pre", "gpt2"), ("post", "xavier")], names=["placement", "init"]
    )
    change = pd.Series([0.2, 1.2], index=idx)
    half = pd.Series([0.1, 1.2 / 1.4], index=idx)  # ratios 2 and 1.4
    quarter = pd.Series([0.05, (1.2 / 1.4) / 1.8], index=idx)  # second ratio 1.8: closer to 2
    out = P.linearity_summary(change, half, quarter)
    assert (out.n_linear, out.n) == (1, 2)
    assert out.lin_min == pytest.approx(1.4) and out.lin_max == pytest.approx(2.0)
    assert "Post-LN under xavier (ratio 1.40)" in out.detail and "closer to 2" in out.detail
    assert "no closer" in P.linearity_summary(change, half, half / 1.3).detail
    every = P.linearity_summary(change, change / 2, change / 4)
    assert every.n_linear == 2 and every.detail.startswith("every step moves")
    with pytest.raises(ValueError, match="index of change"):
        P.linearity_summary(change, half.iloc[:1], quarter)
    with pytest.raises(ValueError, match="tol must be positive"):
        P.linearity_summary(change, half, quarter, tol=0)


def test_against_runs_calls_one_run_only_outside_the_prediction_interval():
    # Two runs 0.04 apart give t(0.975, 1) = 12.7 times a wide spread: a value 4% off is
    # inside (fails if the interval were the mean's t-interval without sqrt(1 + 1/n), or
    # the range); far outside it is named, on the right side (fails if the words swapped).
    word, lo, hi = P.against_runs(1.04, [0.98, 1.02])
    assert word == "not distinguishable from" and lo < 0.98 and hi > 1.04
    s = math.sqrt(2) * 0.02
    assert hi - 1.0 == pytest.approx(P.t_quantile(0.975, 1) * s * math.sqrt(1.5), rel=1e-4)
    assert P.against_runs(3.0, [0.98, 1.02, 1.0])[0] == "larger than"
    assert P.against_runs(-3.0, [0.98, 1.02, 1.0])[0] == "smaller than"
    assert P.against_runs(5.0, [1.0])[1:] == (-math.inf, math.inf)
    with pytest.raises(ValueError, match="runs"):
        P.against_runs(1.0, [])
    with pytest.raises(ValueError, match="level"):
        P.against_runs(1.0, [1.0, 2.0], level=1.0)


def test_against_runs_with_tol_calls_a_wide_interval_undecided():
    # The interval above has half-width 12.7 * 0.028 * 1.22 = 0.44: inside it, the word
    # needs a tol at least that large (fails if tol were ignored or compared with the
    # full width); outside it the tol changes nothing; one run (infinite interval) is
    # always undecided under a tol.
    half = P.t_quantile(0.975, 1) * math.sqrt(2) * 0.02 * math.sqrt(1.5)
    assert P.against_runs(1.04, [0.98, 1.02], tol=half * 1.01)[0] == "not distinguishable from"
    assert P.against_runs(1.04, [0.98, 1.02], tol=half * 0.99)[0] == "undecided"
    word = P.against_runs(1.04, [0.98, 1.02], tol=0.1, undecided="not resolved at n = 2")[0]
    assert word == "not resolved at n = 2"
    assert P.against_runs(3.0, [0.98, 1.02, 1.0], tol=1e-6)[0] == "larger than"
    assert P.against_runs(1.0, [1.0], tol=10.0)[0] == "undecided"
    with pytest.raises(ValueError, match="tol"):
        P.against_runs(1.0, [1.0, 2.0], tol=0.0)
    with pytest.raises(ValueError, match="undecided"):
        P.against_runs(1.0, [1.0, 2.0], undecided=" ")
