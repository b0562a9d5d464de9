"""prenorm.tour: chapter 1 and 2's analyses, against values computed another way."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

import prenorm as P


def test_placement_table_says_where_the_norms_are():
    # the definitions of the two placements (Xiong et al. 2020): fails if a slot is misread
    t = P.placement_table(["post", "pre"])
    assert list(t.index) == ["post", "pre"]
    assert t.loc["post"].to_dict() == {
        "norm on branch input": False,
        "norm on branch output": False,
        "norm after the sum": True,
        "final norm": False,
    }
    assert t.loc["pre"].to_dict() == {
        "norm on branch input": True,
        "norm on branch output": False,
        "norm after the sum": False,
        "final norm": True,
    }
    assert set(P.placement_table().index) == set(P.PLACEMENTS)


def test_lemma2_band_in_standard_errors():
    ms = {0: [1.0, 1.2, 0.8], 1: [1.4, 1.6, 1.5], 2: [4.6, 4.8, 5.0]}
    states = pd.DataFrame([{"layer": l, "ms": v} for l, vs in ms.items() for v in vs])
    band = P.lemma2_band(states)
    for l, vs in ms.items():
        mean, sem = np.mean(vs), np.std(vs, ddof=1) / math.sqrt(len(vs))
        assert band.loc[l, "mean"] == pytest.approx(mean)
        assert band.loc[l, "sem"] == pytest.approx(sem)
        assert band.loc[l, "lo"] == 1 + l / 2 and band.loc[l, "hi"] == 1 + 3 * l / 2
        assert band.loc[l, "below"] == pytest.approx((1 + l / 2 - mean) / sem)
        assert band.loc[l, "above"] == pytest.approx((mean - 1 - 3 * l / 2) / sem)
    # layer 1 (mean 1.5) lies 0 SE below 1.5: inside; layer 2 (mean 4.8) is above 4 by 0.8/sem
    assert band.loc[1, "below"] == pytest.approx(0.0, abs=1e-12)
    assert band.loc[2, "above"] > 0


def test_stream_growth_is_top_over_embedding():
    rows = [
        {"init": "gpt2", "n_layers": 2, "seed": 0, "layer": 0, "rms": 2.0},
        {"init": "gpt2", "n_layers": 2, "seed": 0, "layer": 1, "rms": 3.0},
        {"init": "gpt2", "n_layers": 2, "seed": 0, "layer": 2, "rms": 5.0},
        {"init": "gpt2", "n_layers": 1, "seed": 0, "layer": 0, "rms": 4.0},
        {"init": "gpt2", "n_layers": 1, "seed": 0, "layer": 1, "rms": 1.0},
    ]
    g = P.stream_growth(pd.DataFrame(rows)).set_index("n_layers").growth
    assert g.loc[2] == pytest.approx(5.0 / 2.0)  # not the middle layer's 3/2
    assert g.loc[1] == pytest.approx(1.0 / 4.0)


def test_autograd_error_of_a_linear_map():
    # the Jacobian of x -> A x is A everywhere: a closed form off by delta in one entry has
    # error delta / max|A| exactly
    a = torch.tensor([[2.0, -1.0], [0.5, 4.0]], dtype=torch.float64)
    x = torch.randn(3, 2, dtype=torch.float64)
    exact = a.expand(3, 2, 2).clone()
    assert P.autograd_error(lambda v: a @ v, exact, x) == pytest.approx(0.0, abs=1e-15)
    off = exact.clone()
    off[1, 0, 1] += 0.2
    assert P.autograd_error(lambda v: a @ v, off, x) == pytest.approx(0.2 / 4.0)
    with pytest.raises(ValueError, match="jacobian"):
        P.autograd_error(lambda v: a @ v, exact[0], x)


def test_autograd_error_tells_a_wrong_layernorm_jacobian():
    d = 8
    ln = P.LayerNorm(d)
    with torch.no_grad():
        ln.weight.copy_(1 + 0.5 * torch.randn(d))
    x = torch.randn(4, d) + 3.0
    right = P.layernorm_jacobian(x, ln.weight.detach(), ln.eps)
    assert P.autograd_error(ln, right, x) < 1e-5
    wrong = P.layernorm_jacobian(x, None, ln.eps)  # without diag(gamma)
    assert P.autograd_error(ln, wrong, x) > 1e-2


@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_jacobian_spectrum_against_numpy(eps):
    x = 1.7 * torch.randn(12, dtype=torch.float64)
    xn = x.numpy()
    ln = P.jacobian_spectrum(x, "layernorm", eps)
    sigma = math.sqrt(np.var(xn) + eps)
    assert ln.scale.iloc[0] == pytest.approx(sigma)
    assert np.allclose(ln.singular_value, ln.predicted, rtol=1e-9, atol=1e-12)
    assert ln.predicted.iloc[0] == pytest.approx(1 / sigma)
    assert ln.predicted.iloc[-2:].tolist() == pytest.approx([eps / sigma**3, 0.0])
    rms = P.jacobian_spectrum(x, "rmsnorm", eps)
    r = math.sqrt(np.mean(xn**2) + eps)
    assert np.allclose(rms.singular_value, rms.predicted, rtol=1e-9, atol=1e-12)
    assert rms.predicted.iloc[-1] == pytest.approx(eps / r**3, abs=1e-15)
    # an independent check: numpy's SVD of the closed-form matrix
    sv = np.linalg.svd(P.layernorm_jacobian(x, eps=eps).numpy(), compute_uv=False)
    assert np.allclose(sv, ln.singular_value)
    with pytest.raises(ValueError, match="norm"):
        P.jacobian_spectrum(x, "dyt")


def test_sigma_summary_by_hand():
    rows = []
    for init, scales in {"a": [[1.0, 2.0], [1.0, 4.0]], "b": [[0.5, 0.5], [1.0, 1.0]]}.items():
        for seed, per_norm in enumerate(scales):
            for k, s in enumerate(per_norm):
                rows.append(
                    {
                        "init": init,
                        "seed": seed,
                        "position": k,
                        "scale_mean": s,
                        "inv_scale_mean": 1 / s,
                    }
                )
    s = P.sigma_summary(pd.DataFrame(rows))
    assert s.loc["a", "sigma_mean"] == pytest.approx(2.0)
    assert s.loc["a", "sigma_max"] == 4.0 and s.loc["b", "sigma_min"] == 0.5
    # products per seed: a -> 1/2, 1/4 (mean 3/8); b -> 4, 1 (mean 5/2)
    assert s.loc["a", "prod_inv_sigma"] == pytest.approx(3 / 8)
    assert s.loc["b", "prod_inv_sigma"] == pytest.approx(5 / 2)
    assert s.loc["a", "sigma_pct"] == pytest.approx(300.0)
    assert s.loc["b", "sigma_pct"] == pytest.approx(50.0)


def test_train_placements_matches_its_parts(corpus):
    kwargs = {"vocab_size": corpus.vocab_size, "d_model": 16, "n_heads": 2, "seq_len": 16}
    kwargs |= {"n_layers": 2, "init": "xavier"}
    gen = torch.Generator().manual_seed(0)
    batch = corpus.batch("val", 4, 16, gen)
    entropy = corpus.unigram_entropy()
    train = {"steps": 4, "lr": 1e-3, "batch_size": 4}
    demo = P.train_placements(corpus, ["post", "pre"], batch, entropy, 0.1, kwargs, **train)
    assert list(demo.table.index) == ["post", "pre"]
    for p in ("post", "pre"):
        # the same run, built and trained by hand
        model = P.build_model(seed=0, placement=p, **kwargs)
        rel = P.hidden_grad_norms(model, batch).set_index("layer").relative.loc[1]
        r = P.train(model, corpus, **train)
        assert demo.grad_at_init[p] == pytest.approx(rel)
        assert demo.results[p].final_val_loss == pytest.approx(r.final_val_loss)
        assert demo.table.loc[p, "outcome"] == P.outcome(r, entropy, 0.1)
        h = demo.histories[demo.histories.placement == p]
        assert len(h) == 4 and (h.seed == 0).all() and not h.diverged.any()


def _tiny_post(corpus, init="xavier"):
    kwargs = {"vocab_size": corpus.vocab_size, "d_model": 16, "n_heads": 2, "seq_len": 8}
    model = P.build_model(seed=0, placement="post", n_layers=2, init=init, **kwargs)
    batch = corpus.batch("val", 2, 8, torch.Generator().manual_seed(0))
    return model, batch


def test_norm_jacobian_scale_measures_one_over_sigma(corpus):
    model, batch = _tiny_post(corpus)
    got = P.norm_jacobian_scale(model, batch, tokens=4)
    ref = P.norm_input_scales(model, batch)
    # the same sigma as the existing probe, norm by norm (fails if inputs are misread)
    assert np.allclose(got.scale_mean, ref.scale_mean, rtol=1e-6)
    assert np.allclose(got.inv_scale_mean, ref.inv_scale_mean, rtol=1e-6)
    assert list(got.position) == list(ref.position)
    # gamma = 1: ||J||_2 = 1/sigma exactly (eps aside), so the ratio is 1
    assert np.allclose(got.ratio_min, 1.0, atol=1e-4) and np.allclose(got.ratio_max, 1.0, atol=1e-4)


def test_norm_jacobian_scale_with_gamma_against_the_closed_form(corpus):
    model, batch = _tiny_post(corpus)
    gen = torch.Generator().manual_seed(1)
    norms = [n for blk in model.blocks for _, _, n in blk.norms()]
    with torch.no_grad():
        for n in norms:
            n.weight.copy_(1 + 0.8 * torch.randn(n.weight.shape, generator=gen))
    got = P.norm_jacobian_scale(model, batch, tokens=3)
    # the closed form's spectral norm at the same inputs, recorded by hand
    inputs = []
    hooks = [n.register_forward_pre_hook(lambda m, a: inputs.append(a[0])) for n in norms]
    with torch.no_grad():
        x0 = model.embed(batch[0])
        model.residual_stream(x0)
    for h in hooks:
        h.remove()
    for row, n, s in zip(got.itertuples(), norms, inputs, strict=True):
        s = s.reshape(-1, s.shape[-1])[:3]
        spec = torch.linalg.matrix_norm(n.jacobian(s), ord=2)
        ratio = spec * n.scale(s) / n.weight.abs().max()
        assert row.ratio_min == pytest.approx(ratio.min().item(), rel=1e-4)
        assert row.ratio_max == pytest.approx(ratio.max().item(), rel=1e-4)
        assert row.ratio_max <= 1 + 1e-5  # ||diag(gamma) B|| <= max|gamma|
    with pytest.raises(ValueError, match="tokens"):
        P.norm_jacobian_scale(model, batch, tokens=0)


def test_sigma_deviation_by_hand():
    rows = []
    # init a: per-seed mean sigma 1.2 and 0.9 -> |dev| 0.2, 0.1; init b: 1.0, 1.0 -> 0, 0
    for init, per_seed in {"a": [[1.0, 1.4], [0.8, 1.0]], "b": [[1.0, 1.0], [1.0, 1.0]]}.items():
        for seed, scales in enumerate(per_seed):
            for k, s in enumerate(scales):
                rows.append({"init": init, "seed": seed, "position": k, "scale_mean": s})
    dev = P.sigma_deviation(pd.DataFrame(rows))
    assert float(dev["a"]) == pytest.approx(0.15)  # not |mean of signed deviations| = 0.05
    assert dev["a"].n == 2 and dev["a"].lo < 0.15 < dev["a"].hi
    assert float(dev["b"]) == pytest.approx(0.0)
    with pytest.raises(KeyError, match="scale_mean"):
        P.sigma_deviation(pd.DataFrame(rows).drop(columns="scale_mean"))


def test_plot_jacobian_spectra_puts_zeros_at_the_floor():
    import matplotlib

    matplotlib.use("Agg")
    x = torch.randn(8, dtype=torch.float64)
    spectra = pd.concat(
        [P.jacobian_spectrum(x, "layernorm", 0.0), P.jacobian_spectrum(x, "rmsnorm", 0.0)]
    )
    fig = P.plot_jacobian_spectra(spectra, floor=1e-12)
    ax = fig.axes[0]
    assert len(ax.get_yticks()) == 2  # one row per (norm, eps, token scale)
    xs = np.concatenate([c.get_offsets()[:, 0] for c in ax.collections if len(c.get_offsets())])
    # LayerNorm with eps = 0 has two exact zeros: drawn at the floor, not at ~1e-17
    assert (xs == 1e-12).sum() >= 2 and xs.min() == 1e-12
    assert xs.max() == pytest.approx(spectra.predicted.max())  # the shelf, 1/sigma or 1/r


def test_plot_stream_rms_growth_is_relative_to_the_embedding():
    import matplotlib

    matplotlib.use("Agg")
    rows = [
        {"placement": p, "init": "gpt2", "seed": s, "n_layers": 2, "layer": l, "rms": v}
        for p in ("pre", "post")
        for s in (0, 1)
        for l, v in enumerate([0.5, 1.0, 2.0] if p == "pre" else [0.5, 1.0, 1.0])
    ]
    fig = P.plot_stream_rms(pd.DataFrame(rows), n_layers=2)
    growth = fig.axes[1].get_lines()[0].get_ydata()
    assert np.allclose(growth, [1.0, 2.0, 4.0])  # RMS over the embedding's 0.5
    assert np.allclose(fig.axes[0].get_lines()[0].get_ydata(), [0.5, 1.0, 2.0])


def test_plot_layernorm_geometry_draws_the_circle_and_the_tangent():
    # Fails if the outputs are not on the circle |y| = sqrt(3) in the plane 1^T y = 0, or if
    # the Jacobian's images of a ring of perturbations do not collapse onto the tangent at xhat.
    import matplotlib

    matplotlib.use("Agg")
    fig = P.plot_layernorm_geometry((1.0, 2.0, 3.0), n_points=5)
    ax3, ax = fig.axes[:2]
    circle = np.array(ax3.lines[0].get_data_3d()).T
    assert np.allclose(np.linalg.norm(circle, axis=1), 3**0.5)
    assert np.allclose(circle.sum(axis=1), 0.0, atol=1e-12)
    lines = {ln.get_label(): np.array(ln.get_xydata()) for ln in ax.lines}
    after = lines[r"$\hat x + J\delta$"]
    xhat = np.array([-1.0, 0.0, 1.0]) * 1.5**0.5
    basis = np.array([[1, -1, 0], [1, 1, -2]]) / np.array([[2**0.5], [6**0.5]])
    h = basis @ xhat
    assert np.allclose((after - h) @ h, 0.0, atol=1e-9)  # no radial component left
    assert np.ptp(after @ np.array([-h[1], h[0]])) > 0.1  # but a tangential one
    matplotlib.pyplot.close(fig)


@pytest.mark.parametrize("bad", [(1.0, 1.0, 1.0), (1.0, 2.0), (1.0, float("nan"), 2.0)])
def test_plot_layernorm_geometry_rejects_bad_tokens(bad):
    with pytest.raises(ValueError, match="x must"):
        P.plot_layernorm_geometry(bad)
