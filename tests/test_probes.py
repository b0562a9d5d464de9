import pytest
import torch
from torch.func import jacrev

import prenorm as P
from prenorm import (
    TransformerLM,
    branch_ratios,
    end_to_end_spectral_norms,
    hidden_grad_norms,
    layer_ablation,
    norm_input_scales,
    param_grad_norms,
    probe_sweep,
    residual_norms,
    spectral_norm,
    update_sensitivity,
)

V, D, L, H, T = 13, 16, 3, 2, 6


def _model(placement="pre", init="gpt2"):
    torch.manual_seed(0)
    return TransformerLM(V, D, L, H, T, placement=placement, init=init)


def _batch(b=2):
    g = torch.Generator().manual_seed(1)
    return torch.randint(V, (b, T), generator=g), torch.randint(V, (b, T), generator=g)


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_spectral_norm_matches_full_jacobian(placement):
    m = _model(placement)
    x = m.embed(_batch(1)[0]).detach()

    def fn(h):
        return m.final_norm(m.residual_stream(h)[-1])

    j = jacrev(fn)(x).reshape(T * D, T * D)
    exact = torch.linalg.matrix_norm(j, 2).item()
    est = spectral_norm(fn, x, iters=500, tol=1e-9)
    assert abs(est - exact) / exact < 1e-3


def test_spectral_norm_of_linear_map():
    a = torch.randn(7, 5, dtype=torch.float64)
    est = spectral_norm(lambda v: a @ v, torch.randn(5, dtype=torch.float64), iters=1000, tol=1e-12)
    assert abs(est - torch.linalg.matrix_norm(a, 2).item()) < 1e-8


def test_hidden_grad_norms_match_autograd():
    m = _model("post")
    x, y = _batch()
    df = hidden_grad_norms(m, (x, y))
    assert list(df["layer"]) == list(range(L + 1))
    assert set(df["placement"]) == {"post"} and set(df["n_layers"]) == {L}
    # recompute the gradient at x_1 by hand
    states = m.residual_stream(m.embed(x))
    x1 = states[1].detach().requires_grad_(True)
    h = x1
    for blk in m.blocks[1:]:
        h = blk(h)
    loss = torch.nn.functional.cross_entropy(m.head(m.final_norm(h)).flatten(0, 1), y.flatten())
    (g,) = torch.autograd.grad(loss, x1)
    assert abs(df.loc[1, "grad_norm"] - g.norm().item()) < 1e-6
    assert df["relative"].iloc[-1] == 1.0
    assert abs(df.loc[1, "relative"] - g.norm().item() / df["grad_norm"].iloc[-1]) < 1e-6


def test_param_grad_norms_match_backward():
    m = _model("pre")
    x, y = _batch()
    df = param_grad_norms(m, (x, y))
    m.zero_grad()
    m(x, y)[1].backward()
    row = df[(df["layer"] == 2) & (df["param"] == "mlp.fc2.weight")].iloc[0]
    assert abs(row["grad_norm"] - m.blocks[2].mlp.fc2.weight.grad.norm().item()) < 1e-6
    assert set(df["sublayer"]) == {"attn", "mlp", "norm"}
    assert len(df) == L * len(list(m.blocks[0].parameters()))


def test_residual_norms_and_branch_ratios():
    m = _model("post")
    df = residual_norms(m, _batch())
    assert len(df) == L + 1
    assert (
        df["rms"].iloc[1:] - 1
    ).abs().max() < 1e-3  # Post-LN states have rms 1 (gamma=1, beta=0)
    br = branch_ratios(m, _batch())
    assert len(br) == 2 * L and set(br["sublayer"]) == {"attn", "mlp"}
    # the ratio is ||F(x)|| / ||x|| for the first step, checked by hand
    x0 = m.embed(_batch()[0])
    f = m.blocks[0].branch("attn", x0)
    expected = (f.norm(dim=-1) / x0.norm(dim=-1)).mean().item()
    assert abs(br.loc[0, "ratio_mean"] - expected) < 1e-5


def test_float_inputs_and_end_to_end():
    m = _model("pre", init="xiong")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, T, D, generator=g)
    y = torch.randint(V, (1, T), generator=g)
    assert len(hidden_grad_norms(m, (x, y))) == L + 1
    df = end_to_end_spectral_norms(m, x, iters=30)
    assert list(df["layer"]) == list(range(L)) and (df["spectral_norm"] > 0).all()


def test_probes_refuse_bad_input():
    m = _model()
    x, y = _batch()
    bad = torch.randn(2, T, D)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        hidden_grad_norms(m, (bad, y))
    with pytest.raises(ValueError, match=r"shape \(batch, time, 16\)"):
        residual_norms(m, (torch.randn(2, T, D + 1), y))
    with pytest.raises(ValueError, match="targets must be a long tensor"):
        param_grad_norms(m, (x, y.float()))
    with pytest.raises(ValueError, match="pair"):
        branch_ratios(m, x)
    with pytest.raises(ValueError, match="iters must be >= 1"):
        spectral_norm(lambda v: v, torch.randn(3), iters=0)
    with pytest.raises(ValueError, match=r"layers must lie in \[0, 3\]"):
        end_to_end_spectral_norms(m, x[:1], layers=[5])
    with pytest.raises(TypeError, match="TransformerLM"):
        residual_norms(torch.nn.Linear(2, 2), (x, y))


def test_probe_sweep_grid_and_seeding():
    kw = dict(vocab_size=V, d_model=D, n_heads=H, seq_len=T)
    df = probe_sweep(
        residual_norms,
        _batch(),
        {"placement": ["pre", "post"], "n_layers": [1, 2], "seed": [0, 1]},
        model_kwargs=kw,
    )
    assert len(df) == 2 * (2 + 3) * 2  # placements x (L+1 rows for L=1,2) x seeds
    assert set(df["seed"]) == {0, 1}
    again = probe_sweep(
        residual_norms, lambda s: _batch(), {"seed": [1]}, model_kwargs={**kw, "n_layers": 2}
    )
    same = df[(df["seed"] == 1) & (df["placement"] == "pre") & (df["n_layers"] == 2)]
    assert again["norm_mean"].tolist() == same["norm_mean"].tolist()


def test_update_sensitivity_restores_parameters_and_moves_output():
    m = _model("post")
    before = [p.detach().clone() for p in m.parameters()]
    small = update_sensitivity(m, _batch(), lr=1e-5)
    big = update_sensitivity(m, _batch(), lr=1e-3)
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), before, strict=True))
    assert 0 < small.loc[0, "rel_output_change"] < big.loc[0, "rel_output_change"]
    # in the linear regime the change is proportional to the step size
    tiny = update_sensitivity(m, _batch(), lr=1e-6)
    assert abs(small.loc[0, "rel_output_change"] / tiny.loc[0, "rel_output_change"] - 10) < 0.5
    with pytest.raises(ValueError, match="lr must be a positive finite number, got 0"):
        update_sensitivity(m, _batch(), lr=0)


def test_update_sensitivity_step_error_sees_float32_resolution():
    # A step of 1e-6 is many float32 ulps of weights of size ~0.1 and of gamma = 1, so the
    # step taken is the step intended to about 1%; a step of 1e-10 is below the resolution
    # of every weight and is lost. Fails if step_error compared the wrong tensors (it
    # would be 0 or 1 for both) or were not relative to the intended step.
    m = _model("post")
    fine = update_sensitivity(m, _batch(), lr=1e-6).loc[0, "step_error"]
    lost = update_sensitivity(m, _batch(), lr=1e-10).loc[0, "step_error"]
    assert 0 <= fine < 0.05
    assert lost > 0.5


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_norm_input_scales_match_the_norm_inputs(norm):
    torch.manual_seed(0)
    m = TransformerLM(V, D, L, H, T, placement="post", norm=norm)
    x, y = _batch()
    df = norm_input_scales(m, (x, y))
    assert len(df) == 2 * L and set(df["slot"]) == {"after"}
    # by hand: the input of the first block's attention norm is x0 + F(x0)
    x0 = m.embed(x)
    s = x0 + m.blocks[0].branch("attn", x0)
    if norm == "layernorm":
        expected = (s.var(-1, unbiased=False) + 1e-5).sqrt().mean().item()
    else:
        expected = (s.pow(2).mean(-1) + 1e-6).sqrt().mean().item()
    row = df[(df.layer == 0) & (df.sublayer == "attn")].iloc[0]
    assert abs(row["scale_mean"] - expected) < 1e-6
    pre = norm_input_scales(_model("pre"), (x, y))
    assert set(pre["slot"]) == {"in"} and not any(
        n for b in m.blocks for _, _, n in b.norms() if n._forward_pre_hooks
    )


def test_layer_ablation_skips_exactly_one_block():
    m = _model("pre")
    x, y = _batch()
    df = layer_ablation(m, (x, y))
    assert list(df["layer"]) == list(range(L))
    full = m(x, y)[1].item()
    assert abs(df.loc[0, "loss"] - full) < 1e-6
    h = m.embed(x)
    for blk in (m.blocks[0], m.blocks[2]):
        h = blk(h)
    by_hand = torch.nn.functional.cross_entropy(
        m.head(m.final_norm(h)).flatten(0, 1), y.flatten()
    ).item()
    assert abs(df.loc[1, "ablated_loss"] - by_hand) < 1e-6


def test_skip_path_against_autograd_with_the_branches_held_fixed():
    """The stack's skip path is the Jacobian of the stack with every branch's output held
    constant; for one token it is that token's d x d block. Pre-LN's is exactly I."""
    from prenorm import skip_path

    m = _model("post", init="xavier")
    x, y = _batch(1)
    df = skip_path(m, (x, y), chunk_tokens=5)  # chunks of 5 tokens: T is not a multiple
    assert list(df["position"]) == list(range(2 * L))
    x0 = m.embed(x).detach()

    def frozen_stack(h):  # branches evaluated at the real states, then held fixed
        with torch.no_grad():
            consts, hh = [], x0
            for blk in m.blocks:
                for which in ("attn", "mlp"):
                    f = blk.branch(which, hh)
                    consts.append(f)
                    hh = blk.norm_at(which, "after")(blk.skip_scale * hh + f)
        k = 0
        for blk in m.blocks:
            for which in ("attn", "mlp"):
                h = blk.norm_at(which, "after")(blk.skip_scale * h + consts[k])
                k += 1
        return h

    j = jacrev(frozen_stack)(x0)[0, :, :, 0, :, :]  # (T, d, T, d)
    blocks = torch.stack([j[t, :, t, :] for t in range(T)])
    eye = torch.eye(D)
    expected = ((blocks - eye).pow(2).sum((-2, -1)).mean() / D).sqrt().item()
    assert abs(df.loc[0, "stack_distance"] - expected) < 1e-4
    gain = (blocks.pow(2).sum((-2, -1)).mean() / D).sqrt().item()
    assert abs(df.loc[0, "stack_gain"] - gain) < 1e-4
    pre = skip_path(_model("pre"), (x, y))
    assert pre["step_distance"].max() == 0 and (pre["stack_gain"] - 1).abs().max() < 1e-6


def test_step_gradients_decompose_the_backward_pass():
    from prenorm import step_gradients

    m = _model("post", init="xavier")
    x, y = _batch()
    df = step_gradients(m, (x, y))
    hid = hidden_grad_norms(m, (x, y))
    # the gradient entering each layer's attention step is the hidden-state gradient
    attn = df[df.sublayer == "attn"].reset_index()
    assert (attn.grad_in - hid.grad_norm.iloc[:L].to_numpy()).abs().max() < 1e-6
    assert (df.gain - df.norm_gain * df.residual_gain).abs().max() < 1e-5
    assert df.sigma.notna().all() and df.cos.between(-1, 1).all()
    pre = step_gradients(_model("pre"), (x, y))
    assert (pre.norm_gain - 1).abs().max() < 1e-6 and pre.sigma.isna().all()
    # skip + branch terms rebuild the input gradient: |g|^2 = |u|^2 + |b|^2 + 2 cos |u||b|
    rebuilt = pre.grad_sum**2 + pre.branch_term**2 + 2 * pre.cos * pre.grad_sum * pre.branch_term
    assert ((rebuilt.pow(0.5) - pre.grad_in) / pre.grad_in).abs().max() < 1e-4


def test_end_to_end_gains_estimate_the_frobenius_norm():
    from prenorm import end_to_end_gains

    m = _model("post", init="xavier")
    x = m.embed(_batch(1)[0]).detach()
    exact_j = jacrev(lambda h: m.residual_stream(h)[-1])(x).reshape(T * D, T * D)
    exact = (exact_j.pow(2).sum() / (T * D)).sqrt().item()
    df = end_to_end_gains(m, x, layers=[0], samples=100, seed=1)
    est, sem = df.loc[0, "gain"], df.loc[0, "gain_sem"]
    assert abs(est - exact) < 4 * sem and sem < 0.05 * exact
    with pytest.raises(ValueError, match="samples must be >= 2"):
        end_to_end_gains(m, x, samples=1)


# ---- activation outliers and attention logits ------------------------------------
def test_activation_outliers_find_a_planted_outlier():
    """A ReZero model is the identity at init, so every residual state is the input we
    build. One entry planted at -500 must be found (by its absolute value: a signed max
    would miss it) and divided by the median |h| (a mean would be pulled up by it)."""
    from prenorm import activation_outliers

    torch.manual_seed(0)
    m = TransformerLM(V, D, L, H, T, placement="rezero")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, T, D, generator=g)
    x[1, 4, 7] = -500.0
    y = torch.randint(V, (2, T), generator=g)
    df = activation_outliers(m, (x, y))
    assert list(df["layer"]) == list(range(L + 1))
    a = x.abs().flatten().sort().values
    median = a[(a.numel() - 1) // 2].item()
    assert (df["max_abs"] == 500.0).all() and (df["median_abs"] == median).all()
    assert (df["ratio"] - 500.0 / median).abs().max() < 1e-3
    assert (df["feature"] == 7).all() and (df["position"] == 4).all()
    assert (df["ratio"] - 500.0 / x.abs().mean().item()).abs().min() > 100


def test_activation_outliers_match_the_stream_layer_by_layer():
    from prenorm import activation_outliers

    m = _model("pre")
    x, y = _batch()
    df = activation_outliers(m, (x, y))
    states = m.residual_stream(m.embed(x))
    for l, s in enumerate(states):
        a = s.detach().abs()
        assert abs(df.loc[l, "ratio"] - (a.max() / a.flatten().median()).item()) < 1e-4
    assert set(df["placement"]) == {"pre"}


@pytest.mark.parametrize(("placement", "qk_norm"), [("pre", False), ("lns", False), ("post", True)])
def test_max_attention_logits_match_a_direct_computation(placement, qk_norm):
    """By hand: the attention input of each layer (its input norm and LNS factor
    included), q and k per head (normalized for QK-norm), q.k/sqrt(d_h) over the pairs
    s <= t only. The unmasked maximum is larger in some layer here, so ignoring the mask
    fails; so does taking the logits before QK-norm or before the input norm."""
    from prenorm import max_attention_logits

    torch.manual_seed(0)
    m = TransformerLM(V, D, L, H, T, placement=placement, qk_norm=qk_norm)
    x, y = _batch()
    df = max_attention_logits(m, (x, y))
    assert list(df["layer"]) == list(range(L))
    states = m.residual_stream(m.embed(x))
    dh = D // H
    allowed = torch.ones(T, T).tril().bool()
    mask_mattered = False
    for l, blk in enumerate(m.blocks):
        h = states[l].detach()
        n_in = blk.norm_at("attn", "in")
        if n_in is not None:
            h = n_in(h) * blk.depth_scale
        q, k, _ = blk.attn.qkv(h).split(D, dim=-1)
        q, k = (t.view(2, T, H, dh).transpose(1, 2) for t in (q, k))
        if qk_norm:
            q, k = blk.attn.q_norm(q), blk.attn.k_norm(k)
        logits = q @ k.transpose(-2, -1) / dh**0.5
        per_head = logits[..., allowed].amax(dim=(0, 2))
        assert abs(df.loc[l, "max_logit"] - per_head.max().item()) < 1e-5
        assert df.loc[l, "head"] == int(per_head.argmax())
        assert abs(df.loc[l, "mean_head_max"] - per_head.mean().item()) < 1e-5
        mask_mattered |= logits.max().item() > per_head.max().item() + 1e-4
    assert mask_mattered
    if qk_norm:  # LayerNorm'd heads with gamma = 1: every logit is at most sqrt(d_h)
        assert (df["max_logit"] <= dh**0.5 + 1e-5).all() and df.loc[0, "qk_norm"]


def test_param_grad_norms_label_the_rezero_gate():
    m = _model("rezero")
    df = param_grad_norms(m, _batch())
    gate = df[df["param"] == "gate"]
    assert len(gate) == L and set(gate["sublayer"]) == {"gate"}
    assert (gate["grad_norm"] > 0).all()  # the gate learns from the first step


@pytest.mark.parametrize("placement", ["post", "pre", "peri"])
def test_every_probe_runs_on_a_dyt_model(placement):
    """The probes that call norm.scale() or norm.jacobian() (norm_input_scales, skip_path,
    step_gradients) get DyT's 1/alpha and its diagonal Jacobian; the rest never look."""
    torch.manual_seed(0)
    m = P.TransformerLM(13, 16, 2, 2, 6, placement=placement, norm="dyt", alpha0=0.25)
    g = torch.Generator().manual_seed(1)
    batch = (torch.randint(13, (2, 6), generator=g), torch.randint(13, (2, 6), generator=g))
    frames = [
        P.residual_norms(m, batch),
        P.branch_ratios(m, batch),
        P.norm_input_scales(m, batch),
        P.activation_outliers(m, batch),
        P.max_attention_logits(m, batch),
        P.hidden_grad_norms(m, batch),
        P.param_grad_norms(m, batch),
        P.step_gradients(m, batch),
        P.skip_path(m, batch),
        P.end_to_end_gains(m, batch[0][:1], samples=2),
        P.end_to_end_spectral_norms(m, batch[0][:1], iters=5),
        P.update_sensitivity(m, batch, lr=1e-3),
        P.layer_ablation(m, batch),
    ]
    for df in frames:
        assert len(df) and (df["alpha0"] == 0.25).all()
        numbers = df.drop(columns=["sigma"], errors="ignore").select_dtypes("number")
        assert numbers.notna().all().all()  # sigma is NaN by design without an after-norm
    scales = P.norm_input_scales(m, batch)
    assert (scales["scale_mean"] - 4.0).abs().max() < 1e-6  # 1/alpha0
    if placement == "post":
        sg = P.step_gradients(m, batch)
        assert (sg["sigma"] - 4.0).abs().max() < 1e-6
        assert P.skip_path(m, batch)["step_distance"].gt(0).all()  # a diagonal, not I


@pytest.mark.parametrize("placement", ["pre", "post", "rezero"])
def test_batch_loss_is_the_models_own_loss(placement):
    # Fails if the probe scores the wrong positions, skips the final norm or the head,
    # or averages differently from the model's forward pass.
    m = _model(placement)
    x, y = _batch()
    df = P.batch_loss(m, (x, y))
    assert len(df) == 1 and df.loc[0, "placement"] == placement
    assert df.loc[0, "loss"] == pytest.approx(m(x, y)[1].item(), rel=1e-6)
    y2 = y.roll(1, dims=1)
    assert P.batch_loss(m, (x, y2)).loc[0, "loss"] != pytest.approx(df.loc[0, "loss"])
