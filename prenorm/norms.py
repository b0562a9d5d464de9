"""Normalization layers written out by hand, and their closed-form Jacobians.

Both norms act on the last dimension of their input and are equal (up to float
rounding) to ``torch.nn.LayerNorm`` and ``torch.nn.RMSNorm`` with the same weights.
:class:`DyT` is the element-wise function proposed to replace them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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
    #: Compute the same function with ``F.layer_norm`` (see :func:`~prenorm.use_kernels`).
    fused = False

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
        if self.fused:
            return F.layer_norm(x, (self.d,), self.weight, self.bias, self.eps)
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
    #: Compute the same function with ``F.rms_norm`` (see :func:`~prenorm.use_kernels`).
    fused = False

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
        if self.fused:
            return F.rms_norm(x, (self.d,), self.weight, self.eps)
        return x * torch.rsqrt((x * x).mean(dim=-1, keepdim=True) + self.eps) * self.weight

    def scale(self, x: Tensor) -> Tensor:
        r"""The per-token :math:`r = \sqrt{\mathrm{mean}(x^2) + \epsilon}` this norm divides by, shape ``x.shape[:-1]``."""
        return _rms(x, self.eps).squeeze(-1)

    def jacobian(self, x: Tensor) -> Tensor:
        """Closed-form Jacobian at ``x`` with this module's weight: :func:`rmsnorm_jacobian`."""
        return rmsnorm_jacobian(x, self.weight.detach(), self.eps)

    def extra_repr(self) -> str:
        return f"{self.d}, eps={self.eps}"


class DyT(nn.Module):
    r"""Dynamic Tanh (Zhu, Chen, He, LeCun & Liu 2025, arXiv:2503.10622): an
    element-wise squashing function put where a norm would be.

    .. math:: \mathrm{DyT}(x) = \gamma \odot \tanh(\alpha x) + \beta ,

    with :math:`\alpha` a single learnable scalar that starts at ``alpha0`` (0.5, the
    paper's default; it tunes :math:`\alpha_0` for its large LMs), and :math:`\gamma`,
    :math:`\beta` per feature, starting at 1 and 0. The paper's observation is that a
    trained LayerNorm maps most inputs almost linearly and squashes the extreme ones
    in an S-shape; DyT keeps that shape and drops the statistics. It computes no mean
    or variance of the token: near 0 it is the linear map :math:`\alpha\gamma x`, and
    large entries saturate at :math:`\pm\gamma + \beta`, whatever the token's scale.

    ``scale(x)`` returns :math:`1/\alpha` for every token: the divisor DyT applies in
    its linear regime, and the one for which ``1/scale`` bounds its Jacobian's gain
    (with :math:`\gamma = 1`), as :math:`1/\sigma` does for LayerNorm. Unlike
    :math:`\sigma` it does not depend on the input, which is the point of the design.
    """

    has_bias = True
    #: DyT takes an initial :math:`\alpha_0` (``alpha0``), which the other norms do not.
    has_alpha0 = True
    default_alpha0 = 0.5

    def __init__(self, d: int, alpha0: float = default_alpha0, bias: bool = True) -> None:
        super().__init__()
        if d <= 0:
            raise ValueError(f"DyT needs a positive feature size d, got d={d}")
        self.d = d
        self.alpha0 = _check_alpha0(alpha0)
        self.alpha = nn.Parameter(torch.tensor(self.alpha0))
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if bias else None

    @torch.no_grad()
    def reset_parameters(self) -> None:
        r"""Back to :math:`\alpha = \alpha_0`, :math:`\gamma = 1`, :math:`\beta = 0`."""
        self.alpha.fill_(self.alpha0)
        self.weight.fill_(1.0)
        if self.bias is not None:
            self.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        _check_last_dim(x, self.d, "DyT")
        y = torch.tanh(self.alpha * x) * self.weight
        return y + self.bias if self.bias is not None else y

    def scale(self, x: Tensor) -> Tensor:
        r""":math:`1/\alpha` for every token, shape ``x.shape[:-1]`` (see the class docstring)."""
        return (1 / self.alpha.detach()).to(x.dtype).expand(x.shape[:-1])

    def jacobian(self, x: Tensor) -> Tensor:
        """Closed-form Jacobian at ``x`` with this module's parameters: :func:`dyt_jacobian`."""
        return dyt_jacobian(x, self.alpha.detach(), self.weight.detach())

    def extra_repr(self) -> str:
        return f"{self.d}, alpha0={self.alpha0}, bias={self.bias is not None}"


def _check_alpha0(alpha0: object) -> float:
    if (
        isinstance(alpha0, bool)
        or not isinstance(alpha0, int | float)
        or not math.isfinite(alpha0)
        or alpha0 <= 0
    ):
        raise ValueError(
            f"alpha0 must be a positive finite number (DyT's initial alpha), got {alpha0!r}"
        )
    return float(alpha0)


#: The norms by name; each entry is the class that builds it. A class with
#: ``has_bias = True`` takes a ``bias`` flag (LayerNorm's :math:`\beta`); one with
#: ``has_alpha0 = True`` (DyT) takes ``alpha0``.
NORMS: Registry[type[nn.Module]] = Registry(
    "norm", {"layernorm": LayerNorm, "rmsnorm": RMSNorm, "dyt": DyT}
)


def make_norm(name: str, d: int, bias: bool = True, alpha0: float | None = None) -> nn.Module:
    r"""Build the norm called ``name`` (a key of :data:`NORMS`) over ``d`` features.

    ``bias`` sets whether a norm that has a shift :math:`\beta` (LayerNorm, DyT) keeps
    it; RMSNorm has none. ``alpha0`` is DyT's initial :math:`\alpha` (``None``: its
    default); giving it for a norm without one is an error.
    """
    cls, kwargs = _norm_kwargs(name, bias, alpha0)
    return cls(d, **kwargs)


def _norm_kwargs(
    name: str, bias: bool = True, alpha0: float | None = None
) -> tuple[type[nn.Module], dict[str, object]]:
    """The class of norm ``name`` and the keyword arguments :func:`make_norm` gives it,
    checked: an unknown name, or an ``alpha0`` for a norm that has none, raises."""
    cls = NORMS[name]
    kwargs: dict[str, object] = {"bias": bias} if cls.has_bias else {}
    if alpha0 is not None:
        takes = [n for n, c in NORMS.items() if getattr(c, "has_alpha0", False)]
        if name not in takes:
            raise ValueError(f"alpha0={alpha0!r} only applies to norms {takes}, not norm={name!r}")
        kwargs["alpha0"] = _check_alpha0(alpha0)
    return cls, kwargs


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


def dyt_jacobian(x: Tensor, alpha: Tensor | float, weight: Tensor | None = None) -> Tensor:
    r"""Closed-form Jacobian of :class:`DyT` at ``x``, shape ``(..., d, d)``.

    DyT acts on each feature alone, so its Jacobian is diagonal:

    .. math::
        \frac{\partial\,\mathrm{DyT}(x)_i}{\partial x_j}
        = \delta_{ij}\,\gamma_i\,\alpha\,\big(1 - \tanh^2(\alpha x_i)\big).

    Every entry is at most :math:`\alpha|\gamma_i|`, reached at :math:`x_i = 0`; unlike
    a norm's, no direction is removed, and a large entry's derivative decays to 0
    (saturation) rather than the whole token's being divided by its scale. The bias
    does not enter. Returned as a full matrix, like :func:`layernorm_jacobian`, so the
    probes can use either; its diagonal is ``.diagonal(dim1=-2, dim2=-1)``.
    """
    _check_tensor(x, "x")
    d = x.shape[-1]
    a = torch.as_tensor(alpha, dtype=x.dtype, device=x.device)
    if a.numel() != 1:
        raise ValueError(f"alpha must be a scalar, got shape {tuple(a.shape)}")
    a = a.reshape(())
    jac = torch.diag_embed(a * (1 - torch.tanh(a * x) ** 2))
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
