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


def _block(placement, norm="layernorm"):
    torch.manual_seed(1)
    blk = Block(D, 4, placement=placement, norm=norm, alpha=1.7 if placement == "deepnorm" else 1.0)
    with torch.no_grad():  # non-trivial norm weights so the test would see a missing diag(gamma)
        for _, _, norm in blk.norms():
            for p in norm.parameters():
                p.add_(0.3 * torch.randn_like(p))
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
    ln = blk.norm(which, "after")
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
    ln = blk.norm("mlp", "after")
    j_ln = _token_block_diag(layernorm_jacobian(s, ln.weight.detach(), ln.eps))
    expected = _mat(j_ln) @ (1.7 * _mat(_eye()) + _mat(j_branch))
    assert (_mat(j_step) - expected).abs().max() <= 1e-5


def test_sandwich_branch_ends_in_a_norm():
    blk = _block("sandwich")
    x = torch.randn(1, T, D) * 5
    f = blk.branch("attn", x)
    ln = blk.norm("attn", "out")
    # output of the branch is a LayerNorm output: zero-mean before the affine part
    pre_affine = (f - ln.bias) / ln.weight
    assert pre_affine.mean(-1).abs().max() < 1e-4
    assert (
        block_jacobian(blk, x, "attn") - (_eye() + branch_jacobian(blk, x, "attn"))
    ).abs().max() <= 1e-5


@pytest.mark.parametrize("placement", list(PLACEMENTS))
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
    with pytest.raises(ValueError, match=r"'mid'.*'post', 'pre', 'sandwich', 'deepnorm'"):
        Block(D, 4, placement="mid")
    with pytest.raises(ValueError, match=r"'groupnorm'.*'layernorm', 'rmsnorm'"):
        Block(D, 4, norm="groupnorm")
    with pytest.raises(ValueError, match="d_model=16 is not divisible by n_heads=3"):
        Block(D, 3)
    with pytest.raises(ValueError, match="alpha=2.0 only applies"):
        Block(D, 4, placement="pre", alpha=2.0)
    blk = Block(D, 4)
    with pytest.raises(ValueError, match="'ffn'.*'attn', 'mlp'"):
        blk.branch("ffn", torch.randn(1, T, D))
    with pytest.raises(ValueError, match=r"shape \(T, 16\)"):
        block_jacobian(blk, torch.randn(2, T, D))
    with pytest.raises(ValueError, match="non-finite"):
        branch_jacobian(blk, torch.full((T, D), float("inf")), "mlp")
    with pytest.raises(TypeError, match="floating-point"):
        block_jacobian(blk, torch.ones(T, D, dtype=torch.long))


@pytest.mark.parametrize("placement", list(PLACEMENTS))
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
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


@pytest.mark.parametrize("placement", list(P.PLACEMENTS))
def test_step_is_the_placement_formula(placement):
    """Each step equals its placement's equation, written out with the named norms."""
    blk = _block(placement)
    x = torch.randn(1, T, D)
    for which in ("attn", "mlp"):
        f = blk.sublayer(which)
        n_in, n_out, n_after = (blk.norm(which, s) for s in ("in", "out", "after"))
        if placement == "post":
            expected = n_after(x + f(x))
        elif placement == "pre":
            expected = x + f(n_in(x))
        elif placement == "sandwich":
            expected = x + n_out(f(n_in(x)))
        else:
            expected = n_after(blk.alpha * x + f(x))
        assert torch.allclose(blk.step(which, x), expected, atol=1e-6), (placement, which)
        present = {s for s in P.SLOTS if blk.norm(which, s) is not None}
        spec = P.PLACEMENTS[placement]
        assert present == {s for s in P.SLOTS if spec.has(s)}


def test_norms_are_named_attributes_in_forward_order():
    blk = _block("sandwich")
    assert [(w, s) for w, s, _ in blk.norms()] == [
        ("attn", "in"),
        ("attn", "out"),
        ("mlp", "in"),
        ("mlp", "out"),
    ]
    assert blk.attn_norm_out is blk.norm("attn", "out") and blk.mlp_norm_after is None
    with pytest.raises(ValueError, match="unknown norm slot 'side'"):
        blk.norm("attn", "side")
