r"""Transformer blocks with the normalization in different places.

A block has two sublayers, ``"attn"`` and ``"mlp"``. Each sublayer is one
*residual step* :math:`x \mapsto x'`, built from a *branch* :math:`F` (the part
that is added to the residual stream) and the placement's norms:

=============  ===================================================  ==========================
placement      residual step                                        source
=============  ===================================================  ==========================
``post``       :math:`x' = \mathrm{LN}(x + F(x))`                   Vaswani et al. 2017
``pre``        :math:`x' = x + F(\mathrm{LN}(x))`                   GPT-2, Xiong et al. 2020
``sandwich``   :math:`x' = x + \mathrm{LN}_o(F(\mathrm{LN}(x)))`    Gemma 2, Peri-LN
``deepnorm``   :math:`x' = \mathrm{LN}(\alpha x + F(x))`            Wang et al. 2022
=============  ===================================================  ==========================

``Block.branch(which, x)`` evaluates the branch alone, *including* any norm that
sits inside it (so for Pre-LN it is :math:`F(\mathrm{LN}(x))`), which is what the
probes differentiate. A new placement is one more row in :data:`PLACEMENTS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .norms import make_norm

SUBLAYERS = ("attn", "mlp")


@dataclass(frozen=True)
class Placement:
    """Where the norms sit in one residual step.

    ``norm_in``: normalize the branch input; ``norm_out``: normalize the branch
    output before the addition; ``norm_after``: normalize the sum (Post-LN);
    ``scaled_residual``: multiply the skip path by ``alpha`` (DeepNorm);
    ``final_norm``: the model needs a norm before its output head.
    """

    norm_in: bool
    norm_out: bool
    norm_after: bool
    scaled_residual: bool
    final_norm: bool


PLACEMENTS: dict[str, Placement] = {
    "post": Placement(False, False, True, False, False),
    "pre": Placement(True, False, False, False, True),
    "sandwich": Placement(True, True, False, False, True),
    "deepnorm": Placement(False, False, True, True, False),
}


def get_placement(name: str) -> Placement:
    """Look up a placement by name, with an error that lists the valid names."""
    try:
        return PLACEMENTS[name]
    except (KeyError, TypeError):
        valid = ", ".join(map(repr, PLACEMENTS))
        raise ValueError(f"unknown placement {name!r}; valid placements are {valid}") from None


class CausalSelfAttention(nn.Module):
    r"""Multi-head causal self-attention, written out (no fused kernel).

    .. math::
        \mathrm{Attn}(x) = \big[\mathrm{softmax}\big(\tfrac{Q_hK_h^\top}{\sqrt{d_h}} + M\big)V_h\big]_{h} W_O,
        \quad Q,K,V = xW_Q, xW_K, xW_V,

    with :math:`M` the causal mask. The explicit form supports forward-mode
    autodiff, which :func:`prenorm.spectral_norm` needs.
    """

    def __init__(self, d_model: int, n_heads: int, bias: bool = True) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)
        q, k, v = (t.view(B, T, self.n_heads, self.d_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    r"""Position-wise feed-forward network :math:`\mathrm{MLP}(x) = W_2\,\mathrm{GELU}(W_1x+b_1)+b_2`."""

    def __init__(self, d_model: int, hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    r"""One transformer block: an attention residual step, then an MLP residual step.

    ``placement`` is one of :data:`PLACEMENTS` (see the module docstring for the
    equations), ``norm`` one of ``"layernorm"``/``"rmsnorm"``. ``alpha`` scales
    the skip path for ``placement="deepnorm"`` (:math:`(2N)^{1/4}` for an
    N-layer decoder; :class:`~prenorm.TransformerLM` sets it).

    The block's output is ``step("mlp", step("attn", x))``; ``branch(which, x)``
    gives the function :math:`F` that the step adds to its residual.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        placement: str = "pre",
        norm: str = "layernorm",
        mlp_ratio: int = 4,
        bias: bool = True,
        alpha: float = 1.0,
    ) -> None:
        super().__init__()
        for name, value in (("d_model", d_model), ("n_heads", n_heads), ("mlp_ratio", mlp_ratio)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if d_model % n_heads:
            raise ValueError(
                f"d_model={d_model} is not divisible by n_heads={n_heads}; "
                f"choose n_heads among the divisors of {d_model}"
            )
        self.placement = placement
        self.spec = get_placement(placement)
        self.norm_name = norm
        if self.spec.scaled_residual:
            self.alpha = float(alpha)
        elif alpha != 1.0:
            raise ValueError(
                f"alpha={alpha} only applies to placement='deepnorm', not {placement!r}"
            )
        else:
            self.alpha = 1.0
        self.attn = CausalSelfAttention(d_model, n_heads, bias=bias)
        self.mlp = MLP(d_model, mlp_ratio * d_model, bias=bias)
        self.norms = nn.ModuleDict()
        for which in SUBLAYERS:
            for slot in ("in", "out", "after"):
                if getattr(self.spec, f"norm_{slot}"):
                    self.norms[f"{which}_{slot}"] = make_norm(norm, d_model, bias=bias)

    def _norm(self, which: str, slot: str, x: Tensor) -> Tensor:
        key = f"{which}_{slot}"
        return self.norms[key](x) if key in self.norms else x

    def sublayer(self, which: str) -> nn.Module:
        """The attention or MLP module of this block (``which`` in ``("attn", "mlp")``)."""
        if which not in SUBLAYERS:
            raise ValueError(f"unknown sublayer {which!r}; valid sublayers are 'attn', 'mlp'")
        return self.attn if which == "attn" else self.mlp

    def branch(self, which: str, x: Tensor) -> Tensor:
        r"""The residual branch :math:`F` of sublayer ``which`` at residual input ``x``,
        including the norms inside the branch (Pre-LN: :math:`F(\mathrm{LN}(x))`)."""
        h = self._norm(which, "in", x)
        h = self.sublayer(which)(h)
        return self._norm(which, "out", h)

    def step(self, which: str, x: Tensor) -> Tensor:
        r"""One residual step: :math:`\mathrm{N}_{after}(\alpha x + F(x))`, where
        :math:`\mathrm{N}_{after}` is the identity unless the placement normalizes the sum."""
        s = x * self.alpha if self.alpha != 1.0 else x
        return self._norm(which, "after", s + self.branch(which, x))

    def forward(self, x: Tensor) -> Tensor:
        return self.step("mlp", self.step("attn", x))
