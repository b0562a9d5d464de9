import math

import pytest
import torch

from prenorm import INITS, LayerNorm, RMSNorm, TransformerLM

V, D, L, H, T = 11, 32, 4, 4, 8


def _model(**kw):
    args = dict(vocab_size=V, d_model=D, n_layers=L, n_heads=H, seq_len=T)
    args.update(kw)
    return TransformerLM(**args)


def test_forward_shapes_and_stream():
    m = _model()
    idx = torch.randint(V, (2, T))
    logits, loss, states = m(idx, idx, return_stream=True)
    assert logits.shape == (2, T, V)
    assert len(states) == L + 1
    assert torch.allclose(states[0], m.embed(idx))
    assert torch.allclose(logits, m.head(m.final_norm(states[-1])))
    assert math.isclose(
        loss.item(),
        torch.nn.functional.cross_entropy(logits.reshape(-1, V), idx.reshape(-1)).item(),
        rel_tol=1e-6,
    )


def test_final_norm_only_for_pre_ln_family():
    assert isinstance(_model(placement="pre").final_norm, LayerNorm)
    assert isinstance(_model(placement="peri", norm="rmsnorm").final_norm, RMSNorm)
    assert isinstance(_model(placement="post").final_norm, torch.nn.Identity)
    assert isinstance(_model(placement="deepnorm").final_norm, torch.nn.Identity)
    # OLMo 2 never normalizes the stream inside the stack, so it ends in a norm; so do
    # LNS and Mix-LN (Pre-LN on top); ReZero has no norm anywhere
    for placement in ("reorder", "lns", "mixln"):
        assert isinstance(_model(placement=placement).final_norm, LayerNorm), placement
    assert isinstance(_model(placement="rezero").final_norm, torch.nn.Identity)
    assert not any(isinstance(m, LayerNorm) for m in _model(placement="rezero").modules())


def test_post_ln_states_have_norm_sqrt_d():
    m = _model(placement="post")
    states = m.residual_stream(m.embed(torch.randint(V, (3, T))))
    for s in states[1:]:
        assert torch.allclose(s.norm(dim=-1), torch.full(s.shape[:2], D**0.5), rtol=1e-3)


def test_gpt2_init_statistics():
    torch.manual_seed(0)
    m = TransformerLM(V, 128, 8, 4, T, init="gpt2")
    fc1 = torch.cat([b.mlp.fc1.weight.flatten() for b in m.blocks])
    fc2 = torch.cat([b.mlp.fc2.weight.flatten() for b in m.blocks])
    assert abs(fc1.std().item() - 0.02) < 0.001
    assert abs(fc2.std().item() - 0.02 / math.sqrt(16)) < 0.0005
    assert all(b.attn.qkv.bias.abs().max() == 0 for b in m.blocks)


@pytest.mark.parametrize("width", [64, 256])
def test_gpt2_scaled_init_keeps_gpt2_smalls_gain_at_every_width(width):
    # Fails if the std is not 0.02*sqrt(768/d) (std*sqrt(d) = 0.02*sqrt(768) at any
    # width), if the residual projections lose their 1/sqrt(2L), or if biases are not 0.
    torch.manual_seed(0)
    m = TransformerLM(V, width, 6, 4, T, init="gpt2_scaled")
    fc1 = torch.cat([b.mlp.fc1.weight.flatten() for b in m.blocks])
    proj = torch.cat([b.attn.proj.weight.flatten() for b in m.blocks])
    gain = 0.02 * math.sqrt(768)
    assert fc1.std().item() * math.sqrt(width) == pytest.approx(gain, rel=0.02)
    assert proj.std().item() * math.sqrt(width) == pytest.approx(gain / math.sqrt(12), rel=0.05)
    assert m.tok_emb.weight.std().item() * math.sqrt(width) == pytest.approx(gain, rel=0.05)
    assert all(b.mlp.fc1.bias.abs().max() == 0 for b in m.blocks)


def test_gpt2_scaled_is_gpt2_at_gpt2_width():
    # At d = 768 the two schemes are the same function of the RNG state.
    kw = dict(vocab_size=V, d_model=768, n_layers=2, n_heads=4, seq_len=T)
    torch.manual_seed(3)
    a = TransformerLM(**kw, init="gpt2")
    torch.manual_seed(3)
    b = TransformerLM(**kw, init="gpt2_scaled")
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name


def test_xiong_init_has_uniform_attention():
    m = _model(init="xiong")
    for b in m.blocks:
        assert b.attn.qkv.weight[: 2 * D].abs().max() == 0
        assert b.attn.qkv.weight[2 * D :].abs().max() > 0


def test_xavier_and_pytorch_inits_differ():
    torch.manual_seed(0)
    a = _model(init="xavier").blocks[0].mlp.fc1.weight
    bound = math.sqrt(6 / (D + 4 * D))
    assert a.abs().max() <= bound and a.abs().max() > 0.9 * bound
    torch.manual_seed(0)
    b = _model(init="pytorch").blocks[0].mlp.fc1.weight
    assert b.abs().max() <= 1 / math.sqrt(D) + 1e-6


def test_deepnorm_constants():
    m = _model(placement="deepnorm", init="deepnorm")
    assert all(math.isclose(b.skip_scale, (2 * L) ** 0.25) for b in m.blocks)
    beta = (8 * L) ** -0.25
    w = torch.cat([b.mlp.fc2.weight.flatten() for b in m.blocks])
    expected_std = beta * math.sqrt(2 / (4 * D + D))
    assert abs(w.std().item() - expected_std) / expected_std < 0.1


def test_init_is_seeded():
    torch.manual_seed(3)
    a = _model()
    torch.manual_seed(3)
    b = _model()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_bad_model_arguments():
    with pytest.raises(ValueError, match=r"'he'.*" + ", ".join(f"'{i}'" for i in INITS)):
        _model(init="he")
    with pytest.raises(ValueError, match="unknown placement 'middle'"):
        _model(placement="middle")
    with pytest.raises(ValueError, match="d_model=32 is not divisible by n_heads=5"):
        _model(n_heads=5)
    with pytest.raises(ValueError, match="n_layers must be a positive integer, got 0"):
        _model(n_layers=0)
    m = _model()
    with pytest.raises(ValueError, match="dtype torch.long"):
        m(torch.randn(2, T))
    with pytest.raises(ValueError, match="exceeds the model's seq_len=8"):
        m(torch.zeros(1, T + 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 11\)"):
        m(torch.full((1, T), V, dtype=torch.long))


def test_describe_is_the_one_source_of_model_metadata(corpus):
    from prenorm import build_model, residual_norms, train

    m = build_model(
        seed=0,
        vocab_size=corpus.vocab_size,
        d_model=16,
        n_layers=2,
        n_heads=2,
        seq_len=8,
        placement="post",
        init="xavier",
    )
    meta = m.describe()
    assert meta == {
        "placement": "post",
        "norm": "layernorm",
        "init": "xavier",
        "n_layers": 2,
        "d_model": 16,
    }
    batch = corpus.batch("val", 2, 8, torch.Generator().manual_seed(0))
    probe = residual_norms(m, batch)
    assert all((probe[k] == v).all() for k, v in meta.items())
    result = train(m, corpus, steps=2, lr=1e-3, batch_size=2, device="cpu")
    assert {k: result.config[k] for k in meta} == meta


def test_reset_returns_a_trained_model_to_a_fresh_one(corpus):
    """Training moves every parameter, the norms' gamma and beta included; a reset under
    the same seed gives back exactly the model that seed builds."""
    from prenorm import build_model, train

    kw = dict(vocab_size=corpus.vocab_size, d_model=16, n_layers=2, n_heads=2, seq_len=8)
    for placement, init in (("pre", "gpt2"), ("post", "xavier"), ("peri", "pytorch")):
        fresh = build_model(seed=4, placement=placement, init=init, **kw)
        model = build_model(seed=4, placement=placement, init=init, **kw)
        train(model, corpus, steps=3, lr=1e-2, batch_size=2, device="cpu")
        norm_weight = model.blocks[0].norms()[0][2].weight
        assert (norm_weight != 1).any(), "training should have moved the norm's gamma"
        torch.manual_seed(4)
        model.reset_parameters()
        for (name, p), q in zip(model.named_parameters(), fresh.parameters(), strict=True):
            assert torch.equal(p, q), (placement, init, name)


def test_theory_setting_matches_xiong_section_3():
    """Shapes and init of Xiong et al.'s setting, and the energy each sublayer adds.

    With a d x d ReLU FFN of N(0, 1/d) weights, the FFN of a Pre-LN step adds d/2 to
    E||x||^2 (half the Gaussian energy survives the ReLU); uniform attention adds
    between 0 and d. The old 4d GELU MLP with a fused-QKV Xavier fan added about 0.24 d
    and would fail the first check.
    """
    from prenorm import THEORY_SETTING, build_model, gaussian_batch

    d = 256
    m = build_model(
        seed=0, vocab_size=V, d_model=d, n_layers=2, seq_len=8, placement="pre", **THEORY_SETTING
    )
    blk = m.blocks[0]
    assert blk.mlp.fc1.weight.shape == (d, d) and blk.mlp.activation == "relu"
    assert blk.attn.qkv.bias is None and blk.norm_at("mlp", "in").bias is None
    assert blk.attn.qkv.weight[: 2 * d].abs().max() == 0
    for w in (
        blk.attn.qkv.weight[2 * d :],
        blk.attn.proj.weight,
        blk.mlp.fc1.weight,
        blk.mlp.fc2.weight,
    ):
        assert abs(w.std().item() * d**0.5 - 1) < 0.02  # N(0, 1/d)
    x, _ = gaussian_batch(64, 8, d, V, seed=1)
    with torch.no_grad():
        mid = blk.step("attn", x)
        attn_gain = (mid.pow(2).sum(-1).mean() - x.pow(2).sum(-1).mean()).item() / d
        ffn_gain = (
            blk.step("mlp", mid).pow(2).sum(-1).mean() - mid.pow(2).sum(-1).mean()
        ).item() / d
    assert abs(ffn_gain - 0.5) < 0.05, ffn_gain
    assert 0.0 < attn_gain < 1.0, attn_gain


def test_rezero_blocks_are_the_identity_until_one_optimizer_step():
    """With every gate at 0 each block returns its input exactly, and only the gates get
    a gradient (the branch weights sit behind a zero). One Adam step moves every gate off
    0, and from then on no block is the identity."""
    torch.manual_seed(0)
    m = _model(placement="rezero")
    idx = torch.randint(V, (4, T))
    x = m.embed(idx).detach()
    for blk in m.blocks:
        assert blk.gate.item() == 0.0 and torch.equal(blk(x), x)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    m(idx, idx)[1].backward()
    for blk in m.blocks:
        assert blk.gate.grad.abs() > 0
        assert all(p.grad.abs().max() == 0 for p in blk.mlp.parameters())
    opt.step()
    for blk in m.blocks:
        assert blk.gate.item() != 0.0
        assert (blk(x) - x).abs().max() > 0  # tiny (g = ±lr, small gpt2 weights) but not 0


def test_reset_returns_the_new_designs_to_a_fresh_model(corpus):
    """As for part 1's placements: training moves every parameter, ReZero's gates and
    DyT's alpha included, and a reset under the build seed gives back exactly the fresh
    model (gates at 0, alpha at alpha0). A reset that forgot the gate or alpha fails."""
    from prenorm import DyT, build_model, train

    kw = dict(vocab_size=corpus.vocab_size, d_model=16, n_layers=4, n_heads=2, seq_len=8)
    for extra in (
        {"placement": "rezero"},
        {"placement": "pre", "norm": "dyt", "alpha0": 0.3},
        {"placement": "lns"},
        {"placement": "mixln", "mix_ratio": 0.5},
        {"placement": "reorder", "norm": "rmsnorm", "qk_norm": True},
    ):
        fresh = build_model(seed=4, **kw, **extra)
        model = build_model(seed=4, **kw, **extra)
        train(model, corpus, steps=3, lr=1e-2, batch_size=2, device="cpu")
        if extra["placement"] == "rezero":
            assert all(b.gate.item() != 0 for b in model.blocks), "the gates should have moved"
        if extra.get("norm") == "dyt":
            dyts = [mod for mod in model.modules() if isinstance(mod, DyT)]
            assert all(d.alpha.item() != 0.3 for d in dyts), "alpha should have moved"
        if extra.get("qk_norm"):
            assert (model.blocks[0].attn.q_norm.weight != 1).any()
        torch.manual_seed(4)
        model.reset_parameters()
        for (name, p), q in zip(model.named_parameters(), fresh.parameters(), strict=True):
            assert torch.equal(p, q), (extra, name)


def test_describe_names_the_new_options_only_where_they_apply():
    assert _model(placement="mixln").describe() == {
        "placement": "mixln",
        "norm": "layernorm",
        "init": "gpt2",
        "n_layers": L,
        "d_model": D,
        "mix_ratio": 0.25,
    }
    meta = _model(norm="dyt", alpha0=0.2, qk_norm=True).describe()
    assert meta["alpha0"] == 0.2 and meta["qk_norm"] is True and "mix_ratio" not in meta
    assert set(_model(placement="rezero").describe()) == {
        "placement",
        "norm",
        "init",
        "n_layers",
        "d_model",
    }


def test_norm_bias_false_drops_only_the_norms_beta():
    # Fails if norm_bias=False also drops the linear biases, leaves a beta on some norm
    # (block or final), or changes the draws of the shared parameters (the chapter 7
    # comparison with and without beta pairs the two models by seed).
    torch.manual_seed(5)
    with_beta = _model()
    torch.manual_seed(5)
    without = _model(norm_bias=False)
    names_with = dict(with_beta.named_parameters())
    names_without = dict(without.named_parameters())
    dropped = set(names_with) - set(names_without)
    norms = [n for n, m in with_beta.named_modules() if isinstance(m, LayerNorm)]
    assert dropped == {f"{n}.bias" for n in norms}
    assert len(norms) == 2 * L + 1  # two per block and the final norm
    assert all(torch.equal(names_with[k], v) for k, v in names_without.items())
    assert without.blocks[0].attn.qkv.bias is not None
    assert without.describe()["norm_bias"] is False
    assert "norm_bias" not in with_beta.describe()
    # at init beta = 0, so the two compute the same function
    idx = torch.randint(V, (2, T))
    assert torch.equal(with_beta(idx)[0], without(idx)[0])


def test_norm_bias_follows_bias_by_default_and_is_checked():
    no_bias = _model(bias=False)
    assert no_bias.final_norm.bias is None and no_bias.blocks[0].mlp.fc1.bias is None
    assert "norm_bias" not in no_bias.describe()  # nothing differs from bias=False
    assert _model(bias=False, norm_bias=True).final_norm.bias is not None
    with pytest.raises(ValueError, match="norm_bias"):
        _model(norm_bias="no")
