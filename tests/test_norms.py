import pytest
import torch
from torch.func import jacrev

from prenorm import (
    LayerNorm,
    RMSNorm,
    layernorm_jacobian,
    layernorm_welford,
    make_norm,
    rmsnorm_jacobian,
)


def _copy_and_compare(ours, ref, x):
    with torch.no_grad():
        ours.weight.copy_(torch.randn_like(ours.weight))
        ref.weight.copy_(ours.weight)
        if getattr(ours, "bias", None) is not None:
            ours.bias.copy_(torch.randn_like(ours.bias))
            ref.bias.copy_(ours.bias)
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    y1, y2 = ours(x1), ref(x2)
    assert (y1 - y2).abs().max() <= 1e-5
    g = torch.randn_like(y1)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    assert (x1.grad - x2.grad).abs().max() <= 1e-5
    assert (ours.weight.grad - ref.weight.grad).abs().max() <= 1e-5
    if getattr(ours, "bias", None) is not None:
        assert (ours.bias.grad - ref.bias.grad).abs().max() <= 1e-5


@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_matches_torch(bias):
    d = 48
    x = torch.randn(3, 5, d) * 2.5 + 0.7
    _copy_and_compare(LayerNorm(d, bias=bias), torch.nn.LayerNorm(d, eps=1e-5, bias=bias), x)


def test_rmsnorm_matches_torch():
    d = 48
    x = torch.randn(3, 5, d) * 2.5 + 0.7
    _copy_and_compare(RMSNorm(d), torch.nn.RMSNorm(d, eps=1e-6), x)


@pytest.mark.parametrize("with_weight", [False, True])
def test_layernorm_jacobian_matches_autograd(with_weight):
    d = 16
    x = torch.randn(4, d, dtype=torch.float64) * 3 + 1
    w = torch.rand(d, dtype=torch.float64) + 0.5 if with_weight else None
    ln = LayerNorm(d).double()
    if w is not None:
        ln.weight.data.copy_(w)
    ref = torch.stack([jacrev(ln)(xi) for xi in x])
    ours = layernorm_jacobian(x, w)
    assert ours.shape == (4, d, d)
    assert (ours - ref).abs().max() <= 1e-5
    # and in float32, the dtype the book uses
    x32 = x.float()
    ref32 = torch.stack([jacrev(ln.float())(xi) for xi in x32])
    assert (layernorm_jacobian(x32, None if w is None else w.float()) - ref32).abs().max() <= 1e-5


@pytest.mark.parametrize("with_weight", [False, True])
def test_rmsnorm_jacobian_matches_autograd(with_weight):
    d = 16
    x = torch.randn(2, 3, d) * 2 + 0.5
    w = torch.rand(d) + 0.5 if with_weight else None
    rn = RMSNorm(d)
    if w is not None:
        rn.weight.data.copy_(w)
    ref = torch.stack([torch.stack([jacrev(rn)(xij) for xij in xi]) for xi in x])
    ours = rmsnorm_jacobian(x, w)
    assert ours.shape == (2, 3, d, d)
    assert (ours - ref).abs().max() <= 1e-5


def test_layernorm_jacobian_spectrum():
    """Bracket is a projector of rank d-2: two zero singular values, the rest 1/sigma."""
    d = 32
    x = torch.randn(d, dtype=torch.float64) * 4 + 2
    sigma = x.std(unbiased=False)
    s = torch.linalg.svdvals(layernorm_jacobian(x, eps=0.0))
    assert torch.allclose(
        s[: d - 2], 1 / sigma * torch.ones(d - 2, dtype=torch.float64), rtol=1e-10
    )
    assert s[d - 2 :].abs().max() < 1e-10


def test_rmsnorm_jacobian_spectrum():
    d = 32
    x = torch.randn(d, dtype=torch.float64) * 4 + 2
    r = x.pow(2).mean().sqrt()
    s = torch.linalg.svdvals(rmsnorm_jacobian(x, eps=0.0))
    assert torch.allclose(s[: d - 1], 1 / r * torch.ones(d - 1, dtype=torch.float64), rtol=1e-10)
    assert s[-1].abs() < 1e-10


def test_make_norm_and_bad_input():
    assert isinstance(make_norm("layernorm", 8), LayerNorm)
    assert isinstance(make_norm("rmsnorm", 8), RMSNorm)
    with pytest.raises(ValueError, match=r"'batchnorm'.*'layernorm', 'rmsnorm'"):
        make_norm("batchnorm", 8)
    with pytest.raises(ValueError, match="last dimension 8"):
        LayerNorm(8)(torch.randn(2, 7))
    with pytest.raises(ValueError, match="non-finite"):
        layernorm_jacobian(torch.tensor([1.0, float("nan"), 2.0]))
    with pytest.raises(TypeError, match="floating-point"):
        rmsnorm_jacobian(torch.arange(4))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        layernorm_jacobian(torch.randn(4), weight=torch.ones(3))
    with pytest.raises(ValueError, match="d=0"):
        RMSNorm(0)


def test_norm_modules_expose_scale_and_jacobian():
    x = torch.randn(3, 5, 16) * 2 + 1
    ln, rn = LayerNorm(16), RMSNorm(16)
    with torch.no_grad():
        ln.weight.mul_(1.5)
        rn.weight.mul_(0.5)
    assert torch.allclose(ln.scale(x), torch.sqrt(x.var(-1, unbiased=False) + 1e-5))
    assert torch.allclose(rn.scale(x), torch.sqrt(x.pow(2).mean(-1) + 1e-6))
    # the scale is what the module divides by: (x - mean) / scale * gamma is its output
    assert torch.allclose(
        ln(x), (x - x.mean(-1, keepdim=True)) / ln.scale(x)[..., None] * 1.5, atol=1e-5
    )
    assert torch.equal(ln.jacobian(x), layernorm_jacobian(x, ln.weight.detach(), ln.eps))
    assert torch.equal(rn.jacobian(x), rmsnorm_jacobian(x, rn.weight.detach(), rn.eps))


@pytest.mark.parametrize("block", [1, 5, 16, 48, 100])
def test_layernorm_welford_matches_torch(block):
    d = 48
    x = (torch.randn(3, 5, d) * 2.5 + 0.7).requires_grad_(True)
    w, b = torch.randn(d), torch.randn(d)
    ref = torch.nn.LayerNorm(d, eps=1e-5)
    with torch.no_grad():
        ref.weight.copy_(w)
        ref.bias.copy_(b)
    y = layernorm_welford(x, w, b, eps=1e-5, block=block)
    assert (y - ref(x)).abs().max() <= 1e-5
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    (gref,) = torch.autograd.grad(ref(x), x, g)
    assert (gx - gref).abs().max() <= 1e-4
    assert torch.allclose(
        layernorm_welford(x, block=block), torch.nn.functional.layer_norm(x, (d,)), atol=1e-5
    )


def test_layernorm_welford_is_accurate_where_the_one_pass_shortcut_is_not():
    """Tokens with mean 1e4 and spread 1 in float32: mean(x^2) - mean^2 cancels away."""
    x64 = 1e4 + torch.randn(8, 256, dtype=torch.float64)
    x = x64.float()
    ref = torch.nn.functional.layer_norm(x.double(), (256,))
    assert (layernorm_welford(x).double() - ref).abs().max() < 1e-2
    shortcut_var = (x * x).mean(-1) - x.mean(-1) ** 2
    assert (shortcut_var - x.double().var(-1, unbiased=False)).abs().max() > 0.5


def test_layernorm_welford_bad_input():
    with pytest.raises(ValueError, match="block must be a positive integer.*got 0"):
        layernorm_welford(torch.randn(2, 8), block=0)
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\), got \(7,\)"):
        layernorm_welford(torch.randn(2, 8), weight=torch.ones(7))
    with pytest.raises(TypeError, match="floating-point"):
        layernorm_welford(torch.arange(8))
