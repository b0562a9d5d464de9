"""DyT (Zhu et al. 2025): its formula, its diagonal Jacobian and alpha0 (the probes on a
DyT model are in test_probes.py)."""

import math

import pytest
import torch
from torch.func import jacrev

import prenorm as P
from prenorm import DyT, dyt_jacobian, make_norm


def _dyt(d=8, alpha0=0.5, bias=True):
    torch.manual_seed(3)
    m = DyT(d, alpha0=alpha0, bias=bias)
    with torch.no_grad():  # move every parameter off its init, so each one is tested
        m.alpha.fill_(0.8)
        m.weight.copy_(1 + 0.5 * torch.randn(d))
        if bias:
            m.bias.copy_(0.3 * torch.randn(d))
    return m


def test_dyt_is_gamma_tanh_alpha_x_plus_beta():
    m = _dyt()
    x = 3 * torch.randn(4, 5, 8)
    expected = m.weight * torch.tanh(0.8 * x) + m.bias
    assert torch.allclose(m(x), expected, atol=1e-6)
    no_bias = _dyt(bias=False)
    assert no_bias.bias is None
    assert torch.allclose(no_bias(x), no_bias.weight * torch.tanh(0.8 * x), atol=1e-6)
    # element-wise, no statistic of the token: scaling one feature leaves the others alone
    # (a LayerNorm would change every output)
    y = x.clone()
    y[..., 0] *= 100
    assert torch.equal(m(y)[..., 1:], m(x)[..., 1:])


def test_dyt_jacobian_matches_autograd_and_is_diagonal():
    m = _dyt().double()
    x = 2 * torch.randn(6, 8, dtype=torch.float64)
    closed = m.jacobian(x)
    assert closed.shape == (6, 8, 8)
    for t in range(6):
        auto = jacrev(m)(x[t])
        assert torch.allclose(closed[t], auto, atol=1e-12), t
    off_diag = closed - torch.diag_embed(closed.diagonal(dim1=-2, dim2=-1))
    assert off_diag.abs().max() == 0
    # the function form, with and without gamma
    assert torch.equal(dyt_jacobian(x, m.alpha.detach(), m.weight.detach()), closed)
    plain = dyt_jacobian(x, 0.8)
    assert torch.allclose(plain.diagonal(dim1=-2, dim2=-1), 0.8 / torch.cosh(0.8 * x) ** 2)


@pytest.mark.parametrize("alpha0", [0.05, 0.5, 2.0])
def test_alpha0_is_honoured_by_the_module_the_model_and_reset(alpha0):
    m = DyT(8, alpha0=alpha0)
    assert m.alpha.item() == pytest.approx(alpha0) and m.alpha.shape == ()
    assert torch.equal(m.weight, torch.ones(8)) and torch.equal(m.bias, torch.zeros(8))
    with torch.no_grad():
        m.alpha.fill_(9.0)
        m.weight.fill_(2.0)
        m.bias.fill_(1.0)
    m.reset_parameters()
    assert m.alpha.item() == pytest.approx(alpha0)
    assert torch.equal(m.weight, torch.ones(8)) and torch.equal(m.bias, torch.zeros(8))
    model = P.TransformerLM(
        11, 16, 2, 2, 8, placement="peri", norm="dyt", alpha0=alpha0, qk_norm=True
    )
    dyts = [mod for mod in model.modules() if isinstance(mod, DyT)]
    # 2 layers x (2 peri norms x 2 sublayers + q and k norms) + the final norm
    assert len(dyts) == 2 * (4 + 2) + 1
    assert all(d.alpha.item() == pytest.approx(alpha0) for d in dyts)
    assert model.describe()["alpha0"] == alpha0


def test_dyt_default_alpha0_is_the_papers():
    assert DyT(4).alpha.item() == 0.5 and make_norm("dyt", 4).alpha.item() == 0.5
    assert P.TransformerLM(11, 16, 1, 2, 8, norm="dyt").describe()["alpha0"] == 0.5
    assert "alpha0" not in P.TransformerLM(11, 16, 1, 2, 8).describe()


def test_dyt_scale_is_one_over_alpha_and_bounds_the_jacobian():
    m = DyT(8, alpha0=0.4)
    x = 5 * torch.randn(3, 7, 8)
    s = m.scale(x)
    assert s.shape == (3, 7) and torch.allclose(s, torch.full((3, 7), 2.5))
    # with gamma = 1 the largest Jacobian entry is alpha = 1/scale, reached only at x = 0
    assert m.jacobian(x).abs().max() <= 1 / 2.5
    assert m.jacobian(torch.zeros(1, 8)).abs().max() == pytest.approx(0.4)


def test_bad_alpha0_names_the_value_and_the_norms_that_take_it():
    for bad in (0, -1.0, math.nan, math.inf, True, "0.5"):
        with pytest.raises(
            ValueError, match=f"alpha0 must be a positive finite number.*got {bad!r}"
        ):
            DyT(8, alpha0=bad)
    with pytest.raises(
        ValueError, match=r"alpha0=0.3 only applies to norms \['dyt'\], not norm='layernorm'"
    ):
        make_norm("layernorm", 8, alpha0=0.3)
    with pytest.raises(
        ValueError, match=r"alpha0=0.3 only applies to norms \['dyt'\], not norm='rmsnorm'"
    ):
        P.TransformerLM(11, 16, 1, 2, 8, norm="rmsnorm", alpha0=0.3)
    with pytest.raises(ValueError, match="got -2"):
        P.TransformerLM(11, 16, 1, 2, 8, norm="dyt", alpha0=-2)
    with pytest.raises(ValueError, match=r"alpha must be a scalar, got shape \(2,\)"):
        dyt_jacobian(torch.randn(3, 4), torch.ones(2))


def test_emb_scale_is_one_learnable_scalar_at_sqrt_d_on_the_whole_embedding():
    # Zhu et al.'s LLaMA code for DyT multiplies the embedding by a learnable scalar
    # initialized to sqrt(d). Fails if the scalar is missing, starts elsewhere, scales only
    # the token table, is not trained, or survives a reset at its trained value.
    kw = dict(vocab_size=11, d_model=16, n_layers=2, n_heads=2, seq_len=8, norm="dyt")
    plain = P.build_model(seed=4, **kw)
    scaled = P.build_model(seed=4, emb_scale=True, **kw)
    assert plain.emb_scale is None and "emb_scale" not in plain.describe()
    assert scaled.describe()["emb_scale"] is True
    assert scaled.emb_scale.item() == pytest.approx(4.0)  # sqrt(16)
    assert scaled.emb_scale.requires_grad
    assert any(p is scaled.emb_scale for p in scaled.parameters())
    idx = torch.randint(0, 11, (3, 8))
    # same draws otherwise, so the embeddings differ by exactly the factor sqrt(d)
    assert torch.allclose(scaled.embed(idx), 4.0 * plain.embed(idx), atol=1e-6)
    _, loss = scaled(idx, idx)
    loss.backward()
    assert scaled.emb_scale.grad is not None and scaled.emb_scale.grad.abs() > 0
    with torch.no_grad():
        scaled.emb_scale.fill_(0.5)
    scaled.reset_parameters("gpt2_scaled")
    assert scaled.emb_scale.item() == pytest.approx(4.0)
    with pytest.raises(ValueError, match="emb_scale must be True or False, got 1"):
        P.TransformerLM(emb_scale=1, **kw)
