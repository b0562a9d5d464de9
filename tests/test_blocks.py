import pytest
import torch

import prenorm as P
from prenorm import (
    PLACEMENTS,
    Block,
    block_jacobian,
    branch_jacobian,
    layernorm_jacobian,
    rmsnorm_jacobian,
    step_jacobian_parts,
)

T, D = 5, 16
#: The placements a single Block takes (Mix-LN is a rule over the stack; see test_mixln_*).
STEP_PLACEMENTS = [p for p, spec in PLACEMENTS.items() if spec.mix is None]


def _block(placement, norm="layernorm", layer=3):
    """A block at depth ``layer`` (0-based; 3 makes LayerNorm Scaling's factor 1/2, so a
    missing factor would show), with non-default norm weights and ReZero gate."""
    torch.manual_seed(1)
    alpha = 1.7 if placement == "deepnorm" else 1.0
    blk = Block(D, 4, placement=placement, norm=norm, skip_scale=alpha, layer=layer)
    with torch.no_grad():  # non-trivial norm weights so the test would see a missing diag(gamma)
        for _, _, norm in blk.norms():
            for p in norm.parameters():
                p.add_(0.3 * torch.randn_like(p))
        if blk.gate is not None:  # a zero gate would hide the branch altogether
            blk.gate.fill_(0.7)
    return blk


def _eye():
    return torch.eye(T * D).reshape(T, D, T, D)


def _token_block_diag(j):
    """(T, d, d) per-token Jacobians -> (T, d, T, d) block diagonal."""
    out = torch.zeros(T, D, T, D)
    for t in range(T):
        out[t, :, t, :] = j[t]
    return out


def _mat(j):
    return j.reshape(T * D, T * D)


@pytest.mark.parametrize("which", ["attn", "mlp"])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_pre_ln_step_is_identity_plus_branch(which, norm):
    blk = _block("pre", norm)
    x = torch.randn(T, D) * 2
    j_step = block_jacobian(blk, x, which)
    j_branch = branch_jacobian(blk, x, which)
    assert (j_step - (_eye() + j_branch)).abs().max() <= 1e-5
    assert j_branch.abs().max() > 1e-3  # the branch is not trivially zero


@pytest.mark.parametrize("which", ["attn", "mlp"])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_post_ln_step_is_jln_times_identity_plus_branch(which, norm):
    blk = _block("post", norm)
    x = torch.randn(T, D) * 2
    j_step = block_jacobian(blk, x, which)
    j_branch = branch_jacobian(blk, x, which)
    with torch.no_grad():
        s = x + blk.branch(which, x.unsqueeze(0))[0]
    ln = blk.norm_at(which, "after")
    jac_fn = layernorm_jacobian if norm == "layernorm" else rmsnorm_jacobian
    j_ln = _token_block_diag(jac_fn(s, ln.weight.detach(), ln.eps))
    expected = _mat(j_ln) @ (_mat(_eye()) + _mat(j_branch))
    assert (_mat(j_step) - expected).abs().max() <= 1e-5
    # and it is *not* identity plus something small: the LN projection removes directions
    assert torch.linalg.matrix_rank(_mat(j_ln)) == T * (D - (2 if norm == "layernorm" else 1))


def test_deepnorm_step_scales_skip_path():
    blk = _block("deepnorm")
    x = torch.randn(T, D)
    j_step = block_jacobian(blk, x, "mlp")
    j_branch = branch_jacobian(blk, x, "mlp")
    with torch.no_grad():
        s = 1.7 * x + blk.branch("mlp", x.unsqueeze(0))[0]
    ln = blk.norm_at("mlp", "after")
    j_ln = _token_block_diag(layernorm_jacobian(s, ln.weight.detach(), ln.eps))
    expected = _mat(j_ln) @ (1.7 * _mat(_eye()) + _mat(j_branch))
    assert (_mat(j_step) - expected).abs().max() <= 1e-5


def test_peri_branch_ends_in_a_norm():
    blk = _block("peri")
    x = torch.randn(1, T, D) * 5
    f = blk.branch("attn", x)
    ln = blk.norm_at("attn", "out")
    # output of the branch is a LayerNorm output: zero-mean before the affine part
    pre_affine = (f - ln.bias) / ln.weight
    assert pre_affine.mean(-1).abs().max() < 1e-4
    assert (
        block_jacobian(blk, x, "attn") - (_eye() + branch_jacobian(blk, x, "attn"))
    ).abs().max() <= 1e-5


@pytest.mark.parametrize("placement", STEP_PLACEMENTS)
def test_whole_block_jacobian_is_product_of_steps(placement):
    blk = _block(placement)
    x = torch.randn(T, D)
    with torch.no_grad():
        mid = blk.step("attn", x.unsqueeze(0))[0]
    j = _mat(block_jacobian(blk, x))
    expected = _mat(block_jacobian(blk, mid, "mlp")) @ _mat(block_jacobian(blk, x, "attn"))
    assert (j - expected).abs().max() <= 1e-5


def test_attention_is_causal():
    blk = _block("pre")
    x = torch.randn(T, D)
    j = block_jacobian(blk, x, "attn")
    for t in range(T):
        for s in range(t + 1, T):
            assert j[t, :, s, :].abs().max() == 0  # no dependence on the future


def test_bad_block_arguments():
    with pytest.raises(ValueError, match=r"'mid'.*'post', 'pre', 'peri', 'deepnorm'"):
        Block(D, 4, placement="mid")
    with pytest.raises(ValueError, match=r"'mixln' chooses a placement per layer.*TransformerLM"):
        Block(D, 4, placement="mixln")
    with pytest.raises(ValueError, match="layer must be a 0-based index.*got -1"):
        Block(D, 4, layer=-1)
    with pytest.raises(ValueError, match=r"alpha0=0.5 only applies to norms \['dyt'\]"):
        Block(D, 4, norm="layernorm", alpha0=0.5)
    with pytest.raises(ValueError, match=r"'groupnorm'.*'layernorm', 'rmsnorm'"):
        Block(D, 4, norm="groupnorm")
    with pytest.raises(ValueError, match="d_model=16 is not divisible by n_heads=3"):
        Block(D, 3)
    with pytest.raises(ValueError, match="skip_scale=2.0 only applies"):
        Block(D, 4, placement="pre", skip_scale=2.0)
    blk = Block(D, 4)
    with pytest.raises(ValueError, match="'ffn'.*'attn', 'mlp'"):
        blk.branch("ffn", torch.randn(1, T, D))
    with pytest.raises(ValueError, match=r"shape \(T, 16\)"):
        block_jacobian(blk, torch.randn(2, T, D))
    with pytest.raises(ValueError, match="non-finite"):
        branch_jacobian(blk, torch.full((T, D), float("inf")), "mlp")
    with pytest.raises(TypeError, match="floating-point"):
        block_jacobian(blk, torch.ones(T, D, dtype=torch.long))


@pytest.mark.parametrize("placement", STEP_PLACEMENTS)
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm", "dyt"])
def test_step_jacobian_parts_factorize(placement, norm):
    blk = _block(placement, norm)
    x = torch.randn(T, D) * 1.5
    for which in ("attn", "mlp"):
        p = step_jacobian_parts(blk, x, which)
        assert (p["step"] - p["norm"] @ (p["skip"] + p["branch"])).abs().max() <= 1e-5
        has_after = placement in ("post", "deepnorm")
        assert torch.equal(p["norm"], torch.eye(T * D)) != has_after


def test_placement_is_built_with_keywords_and_says_its_formula():
    with pytest.raises(TypeError):
        P.Placement(True, False, False, False, True)  # positional booleans are refused
    for name, spec in P.PLACEMENTS.items():
        assert spec.formula.startswith("x' =") and spec.source, name
        with pytest.raises(ValueError, match="unknown norm slot 'middle'"):
            spec.has("middle")


@pytest.mark.parametrize("placement", STEP_PLACEMENTS)
def test_step_is_the_placement_formula(placement):
    """Each step equals its placement's equation, written out with the named norms. The
    block sits at layer index 3 (l = 4), so LayerNorm Scaling's factor is 1/2, and
    ReZero's gate is 0.7: a dropped factor or gate fails."""
    blk = _block(placement)
    x = torch.randn(1, T, D)
    for which in ("attn", "mlp"):
        f = blk.sublayer(which)
        n_in, n_out, n_after = (blk.norm_at(which, s) for s in ("in", "out", "after"))
        if placement == "post":
            expected = n_after(x + f(x))
        elif placement == "pre":
            expected = x + f(n_in(x))
        elif placement == "peri":
            expected = x + n_out(f(n_in(x)))
        elif placement == "deepnorm":
            expected = n_after(blk.skip_scale * x + f(x))
        elif placement == "reorder":
            expected = x + n_out(f(x))
        elif placement == "lns":
            expected = x + f(n_in(x) / 2.0)
        elif placement == "rezero":
            expected = x + 0.7 * f(x)
        else:
            pytest.fail(f"no equation written out for placement {placement!r}")
        assert torch.allclose(blk.step(which, x), expected, atol=1e-6), (placement, which)
        present = {s for s in P.SLOTS if blk.norm_at(which, s) is not None}
        spec = P.PLACEMENTS[placement]
        assert present == {s for s in P.SLOTS if spec.has(s)}


def test_norms_are_named_attributes_in_forward_order():
    blk = _block("peri")
    assert [(w, s) for w, s, _ in blk.norms()] == [
        ("attn", "in"),
        ("attn", "out"),
        ("mlp", "in"),
        ("mlp", "out"),
    ]
    assert blk.attn_norm_out is blk.norm_at("attn", "out") and blk.mlp_norm_after is None
    with pytest.raises(ValueError, match="unknown norm slot 'side'"):
        blk.norm_at("attn", "side")


# ---- LayerNorm Scaling, Mix-LN, ReZero ------------------------------------------
def test_lns_scales_each_layers_input_norm_by_one_over_sqrt_l():
    """Layer index i (0-based) divides its input norms' output by sqrt(i + 1): 1 for the
    first layer, then 1/sqrt(2), ... A 0-based sqrt(i) would divide by zero at the first
    layer and by 1 at the second; a missing factor would match Pre-LN everywhere."""
    model = P.build_model(
        seed=0, vocab_size=11, d_model=D, n_layers=4, n_heads=4, seq_len=T, placement="lns"
    )
    pre = P.build_model(
        seed=0, vocab_size=11, d_model=D, n_layers=4, n_heads=4, seq_len=T, placement="pre"
    )
    pre.load_state_dict(model.state_dict())  # the same weights, without the factor
    x = torch.randn(1, T, D)
    for i, (blk, pblk) in enumerate(zip(model.blocks, pre.blocks, strict=True)):
        assert blk.depth_scale == pytest.approx(1 / (i + 1) ** 0.5)
        for which in ("attn", "mlp"):
            f, n_in = blk.sublayer(which), blk.norm_at(which, "in")
            expected = f(n_in(x) / (i + 1) ** 0.5)
            assert torch.allclose(blk.branch(which, x), expected, atol=1e-6), (i, which)
            same_as_pre = torch.allclose(blk.branch(which, x), pblk.branch(which, x))
            assert same_as_pre == (i == 0), (i, which)


@pytest.mark.parametrize(
    ("n_layers", "ratio", "n_post"),
    [(8, None, 2), (12, 0.25, 3), (8, 0.5, 4), (10, 0.3, 3), (4, 0.25, 1), (5, 0.99, 4)],
)
def test_mixln_puts_post_ln_below_the_split_and_pre_ln_above(n_layers, ratio, n_post):
    """The first floor(rho L) layers are Post-LN, the rest Pre-LN (8 layers at the
    paper's 0.25: 2). A ceil, a round or an off-by-one at the boundary fails a case."""
    model = P.TransformerLM(11, D, n_layers, 4, T, placement="mixln", mix_ratio=ratio)
    expected = ["post"] * n_post + ["pre"] * (n_layers - n_post)
    assert model.layer_placements == expected
    assert P.layer_placements("mixln", n_layers, ratio) == expected
    assert [b.placement for b in model.blocks] == expected
    for blk, name in zip(model.blocks, expected, strict=True):
        assert blk.spec is P.PLACEMENTS[name]
        assert (blk.norm_at("attn", "after") is not None) == (name == "post")
        assert (blk.norm_at("attn", "in") is not None) == (name == "pre")
    assert isinstance(model.final_norm, P.LayerNorm)  # the Pre-LN top needs it
    assert model.describe()["placement"] == "mixln"
    assert model.describe()["mix_ratio"] == (0.25 if ratio is None else ratio)
    # the forward pass is the Post-LN steps, then the Pre-LN steps, layer by layer
    x = torch.randn(1, T, D)
    h = x
    for blk in model.blocks:
        h = blk.step("mlp", blk.step("attn", h))
    assert torch.equal(model.residual_stream(x)[-1], h)


def test_mixln_split_forgives_float_error():
    """0.58 * 50 is 28.999999999999996 in floats; the split is the 29 layers meant."""
    assert P.layer_placements("mixln", 50, 0.58).count("post") == 29
    assert P.layer_placements("pre", 3) == ["pre"] * 3


def test_mixln_bad_ratios_name_the_bad_value():
    for bad in (0, 1, 1.5, -0.1, True, "0.25"):
        with pytest.raises(
            ValueError, match=f"mix_ratio must lie strictly between 0 and 1, got {bad!r}"
        ):
            P.TransformerLM(11, D, 8, 4, T, placement="mixln", mix_ratio=bad)
    with pytest.raises(ValueError, match=r"mix_ratio=0.1 with n_layers=4 puts no layer in 'post'"):
        P.TransformerLM(11, D, 4, 4, T, placement="mixln", mix_ratio=0.1)
    with pytest.raises(ValueError, match=r"mix_ratio=0.5 only applies to .*'mixln'.*not 'pre'"):
        P.TransformerLM(11, D, 4, 4, T, placement="pre", mix_ratio=0.5)


def test_rezero_gate_multiplies_both_branches_and_resets_to_zero():
    blk = Block(D, 4, placement="rezero")
    assert blk.norms() == [] and blk.gate.item() == 0.0 and blk.gate.shape == ()
    x = torch.randn(1, T, D)
    assert torch.equal(blk(x), x)  # g = 0: the block is exactly the identity
    with torch.no_grad():
        blk.gate.fill_(0.5)
    for which in ("attn", "mlp"):
        assert torch.allclose(blk.branch(which, x), 0.5 * blk.sublayer(which)(x))
    blk.reset_parameters()
    assert blk.gate.item() == 0.0


# ---- QK-norm ----------------------------------------------------------------------
def _lopsided_attention(norm, qk_norm):
    """Attention whose heads have very different query/key scales (head 0 x50, head 2
    x0.02), so that a norm over the whole d_model would leave them unequal."""
    torch.manual_seed(2)
    attn = P.CausalSelfAttention(D, 4, qk_norm=qk_norm, norm=norm)
    dh = D // 4
    with torch.no_grad():
        for part in (0, 1):  # queries, keys
            w = attn.qkv.weight[part * D : (part + 1) * D]
            w[0:dh] *= 50
            w[2 * dh : 3 * dh] *= 0.02
    return attn


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_qk_norm_normalizes_each_head_before_the_dot_product(norm):
    attn = _lopsided_attention(norm, qk_norm=True)
    plain = _lopsided_attention(norm, qk_norm=False)
    plain.load_state_dict(attn.state_dict(), strict=False)  # same weights, no QK-norm
    assert attn.q_norm.d == attn.d_head == 4 and plain.q_norm is None
    x = torch.randn(2, T, D)
    q, k, _ = attn.heads(x)
    raw_q, raw_k, _ = plain.heads(x)
    fn = torch.nn.functional.layer_norm if norm == "layernorm" else torch.nn.functional.rms_norm
    by_hand = [
        fn(t, (attn.d_head,), eps=n.eps) for t, n in ((raw_q, attn.q_norm), (raw_k, attn.k_norm))
    ]
    assert torch.allclose(q, by_hand[0], atol=1e-5) and torch.allclose(k, by_hand[1], atol=1e-5)
    # per head: every head's vectors have mean square 1 (and mean 0 for LayerNorm).
    # Normalizing over all 16 features instead would leave head 0 near 4 and head 2 near 0.
    ms = q.pow(2).mean(-1)
    assert (ms - 1).abs().max() < 1e-3, ms.mean((0, 2))
    logits = attn.logits(x)
    d_model_wide = fn(plain.qkv(x)[..., :D], (D,)).view(2, T, 4, 4).transpose(1, 2)
    assert not torch.allclose(q, d_model_wide, atol=1e-2)
    # QK-norm changes the logits, and bounds them by sqrt(d_head) (gamma = 1)
    finite = torch.isfinite(logits)
    assert not torch.allclose(logits[finite], plain.logits(x)[finite], atol=1e-2)
    assert logits[finite].abs().max() <= attn.d_head**0.5 + 1e-5
    assert plain.logits(x)[finite].abs().max() > 10 * attn.d_head**0.5


def test_qk_norm_reaches_every_attention_of_the_model():
    m = P.TransformerLM(11, D, 3, 4, T, placement="reorder", norm="rmsnorm", qk_norm=True)
    for blk in m.blocks:
        assert isinstance(blk.attn.q_norm, P.RMSNorm) and blk.attn.k_norm.d == D // 4
    assert m.describe()["qk_norm"] is True
    assert "qk_norm" not in P.TransformerLM(11, D, 3, 4, T).describe()
    with pytest.raises(
        ValueError, match="qk_norm needs at least 2 features per head, got d_head=1"
    ):
        P.CausalSelfAttention(4, 4, qk_norm=True)
