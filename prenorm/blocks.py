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
probes differentiate. A new placement is one more entry in :data:`PLACEMENTS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .norms import NORMS, make_norm
from .registry import Registry, unknown

#: The two residual steps of a block, in order: attention, then the MLP.
SUBLAYERS = ("attn", "mlp")
#: The three places a norm can sit in one residual step: on the branch input
#: (``"in"``), on the branch output before the addition (``"out"``), and on the sum
#: (``"after"``).
SLOTS = ("in", "out", "after")


@dataclass(frozen=True, kw_only=True)
class Placement:
    r"""Where the norms sit in one residual step, and the step's equation.

    Every placement is an instance of one residual step,

    .. math:: x' = \mathrm{N}_{after}\big(\alpha\,x + \mathrm{N}_{out}(f(\mathrm{N}_{in}(x)))\big),

    with :math:`f` the sublayer and each :math:`\mathrm{N}` either a norm or the
    identity. ``norm_in``, ``norm_out``, ``norm_after``: which of the three norms exist;
    ``scaled_residual``: the skip path is multiplied by :math:`\alpha` (DeepNorm);
    ``final_norm``: the model needs a norm before its output head; ``formula``: the
    step in LaTeX; ``source``: where the placement comes from.
    """

    norm_in: bool = False
    norm_out: bool = False
    norm_after: bool = False
    scaled_residual: bool = False
    final_norm: bool
    formula: str
    source: str

    def has(self, slot: str) -> bool:
        """Whether this placement puts a norm in ``slot`` (one of :data:`SLOTS`)."""
        if slot not in SLOTS:
            raise unknown("norm slot", slot, SLOTS)
        return getattr(self, f"norm_{slot}")


#: The placements by name. A new placement is one more entry.
PLACEMENTS: Registry[Placement] = Registry(
    "placement",
    {
        "post": Placement(
            norm_after=True,
            final_norm=False,
            formula=r"x' = \mathrm{LN}(x + F(x))",
            source="Vaswani et al. 2017",
        ),
        "pre": Placement(
            norm_in=True,
            final_norm=True,
            formula=r"x' = x + F(\mathrm{LN}(x))",
            source="GPT-2; Xiong et al. 2020",
        ),
        "sandwich": Placement(
            norm_in=True,
            norm_out=True,
            final_norm=True,
            formula=r"x' = x + \mathrm{LN}_o(F(\mathrm{LN}(x)))",
            source="Gemma 2; Peri-LN (Kim et al. 2025)",
        ),
        "deepnorm": Placement(
            norm_after=True,
            scaled_residual=True,
            final_norm=False,
            formula=r"x' = \mathrm{LN}(\alpha x + F(x))",
            source="DeepNet (Wang et al. 2022)",
        ),
    },
)


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


#: The MLP's activation functions by name.
ACTIVATIONS: Registry[Callable[[Tensor], Tensor]] = Registry(
    "activation", {"gelu": F.gelu, "relu": F.relu}
)


class MLP(nn.Module):
    r"""Position-wise feed-forward network :math:`\mathrm{MLP}(x) = W_2\,\phi(W_1x+b_1)+b_2`,
    with :math:`\phi` the ``activation`` (a key of :data:`ACTIVATIONS`; GELU by default,
    ReLU in Xiong et al.'s theory setting)."""

    def __init__(
        self, d_model: int, hidden: int, bias: bool = True, activation: str = "gelu"
    ) -> None:
        super().__init__()
        self.act = ACTIVATIONS[activation]
        self.activation = activation
        self.fc1 = nn.Linear(d_model, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    r"""One transformer block: an attention residual step, then an MLP residual step.

    ``placement`` is a key of :data:`PLACEMENTS` (see the module docstring for the
    equations), ``norm`` a key of :data:`~prenorm.NORMS`. ``alpha`` scales the skip
    path for ``placement="deepnorm"`` (:math:`(2N)^{1/4}` for an N-layer decoder;
    :class:`~prenorm.TransformerLM` sets it); ``activation`` is the MLP's.

    The norms are attributes named by sublayer and slot (``attn_norm_in``,
    ``mlp_norm_after``, ...), ``None`` where the placement has no norm;
    :meth:`norm` looks one up. The block's output is
    ``step("mlp", step("attn", x))``; ``branch(which, x)`` is the function
    :math:`F` that the step adds to its (scaled) input.
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
        activation: str = "gelu",
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
        self.spec = PLACEMENTS[placement]
        self.norm_name = NORMS.check(norm)
        if not self.spec.scaled_residual and alpha != 1.0:
            raise ValueError(
                f"alpha={alpha} only applies to placement='deepnorm', not {placement!r}"
            )
        self.alpha = float(alpha)
        self.attn = CausalSelfAttention(d_model, n_heads, bias=bias)
        self.mlp = MLP(d_model, mlp_ratio * d_model, bias=bias, activation=activation)

        def slot_norm(slot: str) -> nn.Module | None:
            return make_norm(norm, d_model, bias=bias) if self.spec.has(slot) else None

        self.attn_norm_in = slot_norm("in")
        self.attn_norm_out = slot_norm("out")
        self.attn_norm_after = slot_norm("after")
        self.mlp_norm_in = slot_norm("in")
        self.mlp_norm_out = slot_norm("out")
        self.mlp_norm_after = slot_norm("after")

    def sublayer(self, which: str) -> nn.Module:
        """The attention or MLP module of this block (``which`` in :data:`SUBLAYERS`)."""
        if which not in SUBLAYERS:
            raise unknown("sublayer", which, SUBLAYERS)
        return self.attn if which == "attn" else self.mlp

    def norm(self, which: str, slot: str) -> nn.Module | None:
        """The norm of sublayer ``which`` in ``slot`` (one of :data:`SLOTS`), or ``None``
        where the placement has none."""
        self.sublayer(which)
        self.spec.has(slot)
        return getattr(self, f"{which}_norm_{slot}")

    def norms(self) -> list[tuple[str, str, nn.Module]]:
        """Every norm of the block as ``(sublayer, slot, module)``, in forward order."""
        return [
            (which, slot, n)
            for which in SUBLAYERS
            for slot in SLOTS
            if (n := self.norm(which, slot)) is not None
        ]

    def branch(self, which: str, x: Tensor) -> Tensor:
        r"""The residual branch :math:`F(x) = \mathrm{N}_{out}(f(\mathrm{N}_{in}(x)))` of
        sublayer ``which`` at residual input ``x``, norms inside the branch included
        (Pre-LN: :math:`F(\mathrm{LN}(x))`)."""
        f = self.sublayer(which)
        n_in, n_out = self.norm(which, "in"), self.norm(which, "out")
        h = n_in(x) if n_in is not None else x
        h = f(h)
        return n_out(h) if n_out is not None else h

    def step(self, which: str, x: Tensor) -> Tensor:
        r"""One residual step, :math:`x' = \mathrm{N}_{after}(\alpha x + F(x))`:
        Post-LN :math:`\mathrm{LN}(x + F(x))`, Pre-LN :math:`x + F(\mathrm{LN}(x))`,
        sandwich :math:`x + \mathrm{LN}_o(F(\mathrm{LN}(x)))`, DeepNorm
        :math:`\mathrm{LN}(\alpha x + F(x))`."""
        s = self.alpha * x + self.branch(which, x)
        n_after = self.norm(which, "after")
        return n_after(s) if n_after is not None else s

    def forward(self, x: Tensor) -> Tensor:
        return self.step("mlp", self.step("attn", x))
