r"""Exact Jacobians and their spectral norms: functions that return tensors and numbers.

A Jacobian is a matrix, not a table, so these return tensors: the Jacobian of a
residual step, of its branch, the factors a placement predicts for the step, and
the spectral norm of any map's Jacobian by power iteration without forming it.
The per-layer probes that return DataFrames live in :mod:`prenorm.probes`.

Sections, in order: inputs; Jacobians of a step and its branch; the factorization
of a step; spectral norms.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import jacrev, jvp, vjp

from .blocks import Block
from .norms import _check_tensor


# ---- inputs ------------------------------------------------------------------------
def _width(block: Block) -> int:
    return block.attn.qkv.in_features


def _seq_input(x: Tensor, d: int) -> Tensor:
    _check_tensor(x, "x")
    if x.dim() == 3 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 2 or x.shape[-1] != d:
        raise ValueError(
            f"x must be one sequence of shape (T, {d}) or (1, T, {d}), got {tuple(x.shape)}"
        )
    return x


# ---- Jacobians of a step and its branch -------------------------------------
def block_jacobian(block: Block, x: Tensor, which: str | None = None) -> Tensor:
    r"""Exact Jacobian of a block (or of one residual step, ``which`` in
    ``("attn", "mlp")``) at one sequence ``x`` of shape ``(T, d)``.

    Returns :math:`\partial y_{t,i} / \partial x_{s,j}` as a ``(T, d, T, d)``
    tensor, computed with ``torch.func.jacrev``. For Pre-LN each step's Jacobian
    is :math:`I + J_F`; for Post-LN it is :math:`J_{LN}\,(I + J_F)`.
    """
    x = _seq_input(x, _width(block))
    if which is None:
        fn = block
    else:
        block.sublayer(which)  # validates the name

        def fn(h: Tensor) -> Tensor:
            return block.step(which, h)

    return jacrev(lambda h: fn(h.unsqueeze(0))[0])(x)


def branch_jacobian(block: Block, x: Tensor, which: str) -> Tensor:
    r"""Exact Jacobian :math:`J_F` of the residual branch ``which`` (``"attn"`` or
    ``"mlp"``) of ``block`` at one sequence ``x``; shape ``(T, d, T, d)``.

    The branch includes the norms inside it (Pre-LN: :math:`F(\mathrm{LN}(x))`).
    """
    x = _seq_input(x, _width(block))
    block.sublayer(which)
    return jacrev(lambda h: block.branch(which, h.unsqueeze(0))[0])(x)


# ---- the factorization of a step ---------------------------------------------
def step_jacobian_parts(block: Block, x: Tensor, which: str) -> dict[str, Tensor]:
    r"""The exact Jacobian of one residual step and the factors its placement predicts.

    For one sequence ``x`` of shape ``(T, d)`` returns ``(T·d, T·d)`` matrices:
    ``"step"`` (autograd, :func:`block_jacobian`), ``"branch"`` (:math:`J_F`, autograd),
    ``"skip"`` (:math:`\alpha I`) and ``"norm"``: the closed-form Jacobian
    (:func:`~prenorm.layernorm_jacobian` or :func:`~prenorm.rmsnorm_jacobian`) of the
    norm applied after the addition, evaluated at :math:`s = \alpha x + F(x)` and
    block-diagonal over tokens, or the identity when the placement has none. For
    every placement,

    .. math:: J_{\text{step}} = J_{\text{norm}}\,(\alpha I + J_F),

    which is :math:`I + J_F` for Pre-LN and :math:`J_{\mathrm{LN}}(I + J_F)` for Post-LN.
    """
    x = _seq_input(x, _width(block))
    T, d = x.shape
    n = T * d
    step = block_jacobian(block, x, which).reshape(n, n)
    branch = branch_jacobian(block, x, which).reshape(n, n)
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    norm = block.norm_at(which, "after")
    if norm is not None:
        with torch.no_grad():
            s = block.skip_scale * x + block.branch(which, x.unsqueeze(0))[0]
        norm_j = torch.block_diag(*norm.jacobian(s))
    else:
        norm_j = eye
    return {"step": step, "branch": branch, "skip": block.skip_scale * eye, "norm": norm_j}


# ---- spectral norms ----------------------------------------------------------------
def spectral_norm(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    iters: int = 100,
    tol: float = 1e-6,
    seed: int = 0,
) -> float:
    r"""Largest singular value :math:`\|J_f(x)\|_2` of the Jacobian of ``fn`` at ``x``.

    Power iteration on :math:`J^\top J`: each step is one Jacobian-vector product
    (forward mode) and one vector-Jacobian product (reverse mode), so the
    Jacobian is never formed and memory stays that of two passes. Stops when the
    estimate changes by less than ``tol`` (relative) or after ``iters`` steps.
    """
    _check_tensor(x, "x")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
    v = v / v.norm()
    x = x.detach()
    _, vjp_fn = vjp(fn, x)
    sigma = 0.0
    for _ in range(iters):
        _, jv = jvp(fn, (x,), (v,))
        (w,) = vjp_fn(jv)
        new_sigma = jv.norm().item()
        w_norm = w.norm()
        if w_norm == 0:
            return 0.0
        v = w / w_norm
        if abs(new_sigma - sigma) <= tol * max(new_sigma, 1e-30):
            return new_sigma
        sigma = new_sigma
    return sigma
