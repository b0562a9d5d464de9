"""Normalization layers written out by hand, and their closed-form Jacobians.

Both layers act on the last dimension of their input and are equal (up to float
rounding) to ``torch.nn.LayerNorm`` and ``torch.nn.RMSNorm`` with the same weights.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .registry import Registry


class LayerNorm(nn.Module):
    r"""Layer normalization over the last dimension (Ba et al. 2016).

    .. math::
        \mu = \tfrac1d \textstyle\sum_i x_i,\quad
        \sigma = \sqrt{\tfrac1d \textstyle\sum_i (x_i-\mu)^2 + \epsilon},\quad
        \mathrm{LN}(x) = \gamma \odot \frac{x-\mu}{\sigma} + \beta .

    The variance is the biased (population) one, as in ``torch.nn.LayerNorm``.
    ``bias=False`` drops :math:`\beta`.
    """

    has_bias = True

    def __init__(self, d: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        if d <= 0:
            raise ValueError(f"LayerNorm needs a positive feature size d, got d={d}")
        self.d = d
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if bias else None

    @torch.no_grad()
    def reset_parameters(self) -> None:
        r"""Back to the identity affine map: :math:`\gamma = 1`, :math:`\beta = 0`."""
        self.weight.fill_(1.0)
        if self.bias is not None:
            self.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        _check_last_dim(x, self.d, "LayerNorm")
        mu = x.mean(dim=-1, keepdim=True)
        xc = x - mu
        var = (xc * xc).mean(dim=-1, keepdim=True)
        y = xc * torch.rsqrt(var + self.eps) * self.weight
        return y + self.bias if self.bias is not None else y

    def scale(self, x: Tensor) -> Tensor:
        r"""The per-token :math:`\sigma = \sqrt{\mathrm{var}(x) + \epsilon}` this norm divides by, shape ``x.shape[:-1]``."""
        return _ln_sigma(x, self.eps).squeeze(-1)

    def jacobian(self, x: Tensor) -> Tensor:
        """Closed-form Jacobian at ``x`` with this module's weight: :func:`layernorm_jacobian`."""
        return layernorm_jacobian(x, self.weight.detach(), self.eps)

    def extra_repr(self) -> str:
        return f"{self.d}, eps={self.eps}, bias={self.bias is not None}"


class RMSNorm(nn.Module):
    r"""Root-mean-square normalization over the last dimension (Zhang & Sennrich 2019).

    .. math::
        r = \sqrt{\tfrac1d \textstyle\sum_i x_i^2 + \epsilon},\qquad
        \mathrm{RMSNorm}(x) = \gamma \odot \frac{x}{r} .

    No mean subtraction and no bias: only the learned scale :math:`\gamma` remains.
    """

    has_bias = False

    def __init__(self, d: int, eps: float = 1e-6) -> None:
        super().__init__()
        if d <= 0:
            raise ValueError(f"RMSNorm needs a positive feature size d, got d={d}")
        self.d = d
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        r"""Back to :math:`\gamma = 1`."""
        self.weight.fill_(1.0)

    def forward(self, x: Tensor) -> Tensor:
        _check_last_dim(x, self.d, "RMSNorm")
        return x * torch.rsqrt((x * x).mean(dim=-1, keepdim=True) + self.eps) * self.weight

    def scale(self, x: Tensor) -> Tensor:
        r"""The per-token :math:`r = \sqrt{\mathrm{mean}(x^2) + \epsilon}` this norm divides by, shape ``x.shape[:-1]``."""
        return _rms(x, self.eps).squeeze(-1)

    def jacobian(self, x: Tensor) -> Tensor:
        """Closed-form Jacobian at ``x`` with this module's weight: :func:`rmsnorm_jacobian`."""
        return rmsnorm_jacobian(x, self.weight.detach(), self.eps)

    def extra_repr(self) -> str:
        return f"{self.d}, eps={self.eps}"


#: The norms by name; each entry is the class that builds it. A class with
#: ``has_bias = True`` takes a ``bias`` flag (LayerNorm's :math:`\beta`).
NORMS: Registry[type[nn.Module]] = Registry("norm", {"layernorm": LayerNorm, "rmsnorm": RMSNorm})


def make_norm(name: str, d: int, bias: bool = True) -> nn.Module:
    """Build the norm called ``name`` (a key of :data:`NORMS`) over ``d`` features.

    ``bias`` sets whether a norm that has a shift :math:`\beta` (LayerNorm) keeps it;
    RMSNorm has none.
    """
    cls = NORMS[name]
    return cls(d, bias=bias) if cls.has_bias else cls(d)


def layernorm_jacobian(x: Tensor, weight: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    r"""Closed-form Jacobian of :class:`LayerNorm` at ``x``, shape ``(..., d, d)``.

    With :math:`\hat x = (x-\mu)/\sigma` and :math:`\sigma` including ``eps``,

    .. math::
        \frac{\partial\,\mathrm{LN}(x)}{\partial x}
        = \mathrm{diag}(\gamma)\,\frac{1}{\sigma}
          \Big(I - \tfrac1d \mathbf 1\mathbf 1^\top - \tfrac1d \hat x\hat x^\top\Big).

    When ``eps`` is 0 the bracket is the orthogonal projector that removes the
    directions :math:`\mathbf 1` and :math:`\hat x`, so with :math:`\gamma=1` the
    spectral norm is exactly :math:`1/\sigma`. The bias does not enter.
    """
    _check_tensor(x, "x")
    d = x.shape[-1]
    sigma = _ln_sigma(x, eps)
    xhat = (x - x.mean(dim=-1, keepdim=True)) / sigma
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    proj = eye - 1.0 / d - xhat.unsqueeze(-1) * xhat.unsqueeze(-2) / d
    jac = proj / sigma.unsqueeze(-1)
    return _scale_rows(jac, weight, d)


def rmsnorm_jacobian(x: Tensor, weight: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    r"""Closed-form Jacobian of :class:`RMSNorm` at ``x``, shape ``(..., d, d)``.

    With :math:`r = \sqrt{\mathrm{mean}(x^2)+\epsilon}` and :math:`\hat x = x/r`,

    .. math::
        \frac{\partial\,\mathrm{RMSNorm}(x)}{\partial x}
        = \mathrm{diag}(\gamma)\,\frac1r\Big(I - \tfrac1d \hat x\hat x^\top\Big).

    Only one direction (:math:`\hat x`) is removed; the mean direction survives.
    """
    _check_tensor(x, "x")
    d = x.shape[-1]
    r = _rms(x, eps)
    xhat = x / r
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    jac = (eye - xhat.unsqueeze(-1) * xhat.unsqueeze(-2) / d) / r.unsqueeze(-1)
    return _scale_rows(jac, weight, d)


def layernorm_welford(
    x: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    block: int = 16,
) -> Tensor:
    r"""LayerNorm over the last dimension with its statistics from **one pass** over ``x``.

    The textbook form reads :math:`x` twice before it can normalize: once for
    :math:`\mu`, once for :math:`\tfrac1d\sum_i (x_i-\mu)^2`. Here the features are
    visited once, in blocks of ``block``; each block :math:`B` (small enough to sit in
    cache) contributes its count :math:`n_B`, mean :math:`m_B` and sum of squared
    deviations :math:`M_B = \sum_{i\in B}(x_i - m_B)^2`, merged into the running
    :math:`(n, m, M)` by Chan et al.'s update (Welford's when ``block=1``):

    .. math::
        \delta = m_B - m,\quad n' = n + n_B,\quad
        m' = m + \delta\,\frac{n_B}{n'},\quad
        M' = M + M_B + \delta^2\,\frac{n\,n_B}{n'} .

    Then :math:`\mu = m`, :math:`\sigma^2 = M/d + \epsilon`, and the second pass writes
    :math:`\gamma\odot(x-\mu)/\sigma + \beta`, equal to :class:`LayerNorm` up to float
    rounding. Unlike the one-pass shortcut :math:`\mathrm{mean}(x^2) - \mu^2`, the
    update never subtracts two large nearly equal numbers, so it stays accurate for
    tokens whose mean is large against their spread. Written in plain tensor operations,
    as a reference for what fused kernels do, not for speed.
    """
    _check_tensor(x, "x")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive integer number of features, got {block!r}")
    d = x.shape[-1]
    n = 0
    mean = torch.zeros_like(x[..., :1])
    m2 = torch.zeros_like(x[..., :1])
    for start in range(0, d, block):
        xb = x[..., start : start + block]
        nb = xb.shape[-1]
        mb = xb.mean(dim=-1, keepdim=True)
        m2b = ((xb - mb) ** 2).sum(dim=-1, keepdim=True)
        delta = mb - mean
        total = n + nb
        mean = mean + delta * (nb / total)
        m2 = m2 + m2b + delta * delta * (n * nb / total)
        n = total
    y = (x - mean) * torch.rsqrt(m2 / d + eps)
    if weight is not None:
        y = y * _vector(weight, d, "weight")
    if bias is not None:
        y = y + _vector(bias, d, "bias")
    return y


def _vector(v: Tensor, d: int, name: str) -> Tensor:
    if v.shape != (d,):
        raise ValueError(f"{name} must have shape ({d},), got {tuple(v.shape)}")
    return v


def _ln_sigma(x: Tensor, eps: float) -> Tensor:
    """sqrt(population variance + eps) over the last dimension, kept as a size-1 dim."""
    return torch.sqrt(x.var(dim=-1, unbiased=False, keepdim=True) + eps)


def _rms(x: Tensor, eps: float) -> Tensor:
    """sqrt(mean(x^2) + eps) over the last dimension, kept as a size-1 dim."""
    return torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps)


def _scale_rows(jac: Tensor, weight: Tensor | None, d: int) -> Tensor:
    if weight is None:
        return jac
    if weight.shape != (d,):
        raise ValueError(f"weight must have shape ({d},), got {tuple(weight.shape)}")
    return weight.to(jac.dtype).unsqueeze(-1) * jac


def _check_tensor(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 1 or x.shape[-1] < 2:
        raise ValueError(
            f"{name} must have a feature dimension of size >= 2, got shape {tuple(x.shape)}"
        )
    if not torch.isfinite(x).all():
        bad = x[~torch.isfinite(x)].flatten()[0].item()
        raise ValueError(
            f"{name} contains non-finite values (e.g. {bad}); probes need finite input"
        )


def _check_last_dim(x: Tensor, d: int, who: str) -> None:
    if x.shape[-1] != d:
        raise ValueError(f"{who} expects last dimension {d}, got input of shape {tuple(x.shape)}")
