r"""Transformer blocks with the normalization in different places.

A block has two sublayers, ``"attn"`` and ``"mlp"``. Each sublayer is one
*residual step* :math:`x \mapsto x'`, built from a *branch* :math:`F` (the part
that is added to the residual stream) and the placement's norms:

=============  ==================================================================  ==========================
placement      residual step                                                       source
=============  ==================================================================  ==========================
``post``       :math:`x' = \mathrm{LN}(x + F(x))`                                  Vaswani et al. 2017
``pre``        :math:`x' = x + F(\mathrm{LN}(x))`                                  GPT-2, Xiong et al. 2020
``peri``       :math:`x' = x + \mathrm{LN}_o(F(\mathrm{LN}(x)))`                   Gemma 2, Kim et al. 2025
``deepnorm``   :math:`x' = \mathrm{LN}(\alpha x + F(x))`                           Wang et al. 2022
``reorder``    :math:`x' = x + \mathrm{LN}(F(x))`                                  OLMo 2
``mixln``      ``post`` in layers :math:`l < \lfloor\rho L\rfloor`, then ``pre``   Li et al. 2024 (Mix-LN)
``lns``        :math:`x' = x + F(\mathrm{LN}(x)/\sqrt{l})`                         Sun et al. 2025
``rezero``     :math:`x' = x + g\,F(x)`, :math:`g = 0` at init                     Bachlechner et al. 2020
=============  ==================================================================  ==========================

``Block.branch(which, x)`` evaluates the branch alone, *including* any norm, depth
scale or gate that sits inside it (so for Pre-LN it is :math:`F(\mathrm{LN}(x))`),
which is what the probes differentiate. A new placement is one more entry in
:data:`PLACEMENTS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .norms import NORMS, _norm_kwargs, make_norm
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

    .. math:: x' = \mathrm{N}_{after}\big(\alpha\,x + g\,\mathrm{N}_{out}(f(c\,\mathrm{N}_{in}(x)))\big),

    with :math:`f` the sublayer, each :math:`\mathrm{N}` either a norm or the identity,
    and :math:`\alpha`, :math:`c`, :math:`g` equal to 1 unless a flag says otherwise.
    ``norm_in``, ``norm_out``, ``norm_after``: which of the three norms exist;
    ``scaled_residual``: the skip path is multiplied by :math:`\alpha` (DeepNorm);
    ``depth_scaled``: the input norm's output is multiplied by :math:`c = 1/\sqrt{l}`,
    :math:`l` the 1-based index of the layer (LayerNorm Scaling); ``gated``: the branch
    is multiplied by a learnable scalar :math:`g`, one per block, that starts at 0
    (ReZero); ``final_norm``: the model needs a norm before its output head;
    ``formula``: the step in LaTeX; ``source``: where the placement comes from.

    ``mix`` makes the entry a rule over the stack rather than one step: a pair
    ``(first, rest)`` of placement names, ``first`` for the layers
    :math:`l < \lfloor\rho L\rfloor` and ``rest`` for the others, with :math:`\rho` the
    model's ``mix_ratio`` (Mix-LN). :func:`layer_placements` applies it; a
    :class:`Block` takes only single-step placements.
    """

    norm_in: bool = False
    norm_out: bool = False
    norm_after: bool = False
    scaled_residual: bool = False
    depth_scaled: bool = False
    gated: bool = False
    mix: tuple[str, str] | None = None
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
        "peri": Placement(
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
        # OLMo 2 (OLMo et al. 2024, "2 OLMo 2 Furious", arXiv:2501.00656): the norm moves
        # from the branch input to the branch output, still inside the residual; the
        # stream itself is never normalized until the final norm before the head.
        "reorder": Placement(
            norm_out=True,
            final_norm=True,
            formula=r"x' = x + \mathrm{LN}(F(x))",
            source="OLMo 2 (arXiv:2501.00656)",
        ),
        # Mix-LN (Li et al. 2024, arXiv:2412.13795): the paper finds that Pre-LN starves the
        # deep layers of gradient and Post-LN the early ones, and puts Post-LN in the first
        # floor(rho L) layers and Pre-LN in the rest to even the gradient norm over depth
        # (rho = 0.25 by default, e.g. 3 of 12 layers). The split is per layer, so this
        # entry is a rule that TransformerLM applies (layer_placements), not one step.
        "mixln": Placement(
            mix=("post", "pre"),
            final_norm=True,
            formula=r"x' = \mathrm{LN}(x + F(x)) \text{ for } l < \lfloor\rho L\rfloor,"
            r"\ x + F(\mathrm{LN}(x)) \text{ after}",
            source="Mix-LN (Li et al. 2024, arXiv:2412.13795)",
        ),
        # LayerNorm Scaling (Sun et al. 2025, arXiv:2502.05795): Pre-LN with each input
        # norm's output divided by sqrt(l), l = 1..L, both steps of a layer alike.
        "lns": Placement(
            norm_in=True,
            depth_scaled=True,
            final_norm=True,
            formula=r"x' = x + F(\mathrm{LN}(x)/\sqrt{l})",
            source="LayerNorm Scaling (Sun et al. 2025, arXiv:2502.05795)",
        ),
        # ReZero (Bachlechner et al. 2020, arXiv:2003.04887; SkipInit, De & Smith 2020,
        # arXiv:2002.10444): no norm anywhere; every block starts as the identity.
        "rezero": Placement(
            gated=True,
            final_norm=False,
            formula=r"x' = x + g_l\,F(x),\ g_l = 0 \text{ at init}",
            source="ReZero (Bachlechner et al. 2020, arXiv:2003.04887); SkipInit",
        ),
    },
)

#: Mix-LN's default :math:`\rho`: the share of layers, from the bottom, that use Post-LN
#: (the paper's choice, 0.25; e.g. 3 of 12 layers).
MIX_RATIO = 0.25


def layer_placements(placement: str, n_layers: int, mix_ratio: float | None = None) -> list[str]:
    r"""The single-step placement of each of ``n_layers`` layers.

    For a placement with a ``mix`` rule (``"mixln"``), the first
    :math:`k = \lfloor\rho L\rfloor` layers get ``mix[0]`` (Post-LN) and the rest
    ``mix[1]`` (Pre-LN), with :math:`\rho` = ``mix_ratio`` in (0, 1) (default
    :data:`MIX_RATIO`) and :math:`k \ge 1`; the floor forgives float error, so
    :math:`\rho = 0.3` gives 3 of 10 layers. Any other placement is the same at every
    layer and takes no ``mix_ratio``.
    """
    spec = PLACEMENTS[placement]
    if spec.mix is None:
        if mix_ratio is not None:
            raise ValueError(
                f"mix_ratio={mix_ratio!r} only applies to placements with a per-layer rule "
                f"({_mixed()}), not {placement!r}"
            )
        return [placement] * n_layers
    rho = MIX_RATIO if mix_ratio is None else mix_ratio
    if isinstance(rho, bool) or not isinstance(rho, int | float) or not 0 < rho < 1:
        raise ValueError(f"mix_ratio must lie strictly between 0 and 1, got {rho!r}")
    k = math.floor(rho * n_layers + 1e-9)
    first, rest = spec.mix
    if k == 0:
        raise ValueError(
            f"mix_ratio={rho} with n_layers={n_layers} puts no layer in {first!r} "
            f"(floor({rho} * {n_layers}) = 0), so {placement!r} would be {rest!r}: use "
            f"mix_ratio >= {1 / n_layers:.3g} or placement={rest!r}"
        )
    return [first] * k + [rest] * (n_layers - k)


def _check_norm_bias(norm_bias: bool | None, bias: bool) -> bool:
    """Whether the norms keep their shift: ``norm_bias``, or ``bias`` when it is ``None``."""
    if norm_bias is None:
        return bias
    if not isinstance(norm_bias, bool):
        raise ValueError(f"norm_bias must be True, False or None (follow bias), got {norm_bias!r}")
    return norm_bias


def _mixed() -> str:
    return ", ".join(repr(n) for n, s in PLACEMENTS.items() if s.mix is not None)


class CausalSelfAttention(nn.Module):
    r"""Multi-head causal self-attention, written out (no fused kernel).

    .. math::
        \mathrm{Attn}(x) = \big[\mathrm{softmax}\big(\tfrac{Q_hK_h^\top}{\sqrt{d_h}} + M\big)V_h\big]_{h} W_O,
        \quad Q,K,V = xW_Q, xW_K, xW_V,

    with :math:`M` the causal mask. The explicit form supports forward-mode
    autodiff, which :func:`prenorm.spectral_norm` needs.

    ``qk_norm=True`` normalizes each head's query and key before the dot product,
    :math:`Q_h \to \mathrm{N}_q(Q_h)`, :math:`K_h \to \mathrm{N}_k(K_h)`, over the
    :math:`d_h` features of the head, with two norms of type ``norm`` (a key of
    :data:`~prenorm.NORMS`) shared by all heads (QK-norm: Dehghani et al. 2023,
    arXiv:2302.05442; Wortsman et al. 2023, arXiv:2309.14322; per head as in Qwen 3
    and Gemma 3, whereas OLMo 2 normalizes the whole projection). With LayerNorm at
    :math:`\gamma = 1` each normalized head vector has norm at most :math:`\sqrt{d_h}`,
    so every logit is bounded by :math:`\sqrt{d_h}` however large the weights grow.

    With ``fused`` set (:func:`~prenorm.use_kernels`) the same function is computed by
    ``F.scaled_dot_product_attention`` with ``is_causal=True``; :meth:`logits` stays
    written out, so probes that hook it see the logits either way.
    """

    #: Compute the attention with ``F.scaled_dot_product_attention``.
    fused = False

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        bias: bool = True,
        qk_norm: bool = False,
        norm: str = "layernorm",
        alpha0: float | None = None,
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        if qk_norm and self.d_head < 2:
            raise ValueError(
                f"qk_norm needs at least 2 features per head, got d_head={self.d_head}"
            )
        self.q_norm = make_norm(norm, self.d_head, bias, alpha0) if qk_norm else None
        self.k_norm = make_norm(norm, self.d_head, bias, alpha0) if qk_norm else None

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values split into heads, each ``(B, n_heads, T, d_head)``;
        queries and keys normalized per head when the module has QK-norm."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)
        q, k, v = (t.view(B, T, self.n_heads, self.d_head).transpose(1, 2) for t in (q, k, v))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def logits(self, x: Tensor, q: Tensor | None = None, k: Tensor | None = None) -> Tensor:
        r"""The pre-softmax attention logits :math:`Q_hK_h^\top/\sqrt{d_h} + M`, shape
        ``(B, n_heads, T, T)``, with :math:`-\infty` at the masked (future) positions."""
        if q is None or k is None:
            q, k, _ = self.heads(x)
        T = q.shape[-2]
        att = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)
        mask = torch.ones(T, T, dtype=torch.bool, device=att.device).tril()
        return att.masked_fill(~mask, float("-inf"))

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.heads(x)
        if self.fused:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = self.logits(x, q, k).softmax(dim=-1) @ v
        y = y.transpose(1, 2).reshape(B, T, C)
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
    equations) with a single step (not a per-layer rule such as ``"mixln"``, which
    :class:`~prenorm.TransformerLM` resolves), ``norm`` a key of :data:`~prenorm.NORMS`.
    ``skip_scale`` (:math:`\alpha`) scales the skip path for ``placement="deepnorm"`` (:math:`(2N)^{1/4}` for
    an N-layer decoder; :class:`~prenorm.TransformerLM` sets it); ``activation`` is the
    MLP's. ``layer`` is the block's 0-based index in the stack (LayerNorm Scaling divides
    by :math:`\sqrt{\text{layer}+1}`); ``qk_norm`` adds QK-norm to the attention
    (:class:`CausalSelfAttention`); ``alpha0`` is DyT's initial :math:`\alpha` for
    ``norm="dyt"``. ``norm_bias`` sets whether the block's norms (not QK-norm) keep their
    shift :math:`\beta` (LayerNorm, DyT); ``None``, the default, follows ``bias``, which
    otherwise sets the linear layers' biases. With ``placement="rezero"`` the block owns ``gate``, the scalar
    :math:`g` that multiplies both branches, 0 at init and after
    :meth:`reset_parameters`.

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
        skip_scale: float = 1.0,
        activation: str = "gelu",
        *,
        layer: int = 0,
        qk_norm: bool = False,
        alpha0: float | None = None,
        norm_bias: bool | None = None,
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
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            raise ValueError(f"layer must be a 0-based index (an integer >= 0), got {layer!r}")
        self.placement = placement
        self.spec = PLACEMENTS[placement]
        if self.spec.mix is not None:
            first, rest = self.spec.mix
            raise ValueError(
                f"placement {placement!r} chooses a placement per layer ({first!r} first, "
                f"then {rest!r}); build the stack with TransformerLM(placement={placement!r}), "
                f"or give a Block one of {[n for n, s in PLACEMENTS.items() if s.mix is None]}"
            )
        self.norm_name = NORMS.check(norm)
        _norm_kwargs(norm, bias, alpha0)  # an alpha0 for a norm without one fails here
        if not self.spec.scaled_residual and skip_scale != 1.0:
            raise ValueError(
                f"skip_scale={skip_scale} only applies to placement='deepnorm', not {placement!r}"
            )
        self.skip_scale = float(skip_scale)
        self.layer = layer
        #: LayerNorm Scaling's factor on the input norm's output (1 for other placements).
        self.depth_scale = 1 / math.sqrt(layer + 1) if self.spec.depth_scaled else 1.0
        self.attn = CausalSelfAttention(d_model, n_heads, bias, qk_norm, norm, alpha0)
        self.mlp = MLP(d_model, mlp_ratio * d_model, bias=bias, activation=activation)
        self.gate = nn.Parameter(torch.zeros(())) if self.spec.gated else None

        shift = _check_norm_bias(norm_bias, bias)

        def slot_norm(slot: str) -> nn.Module | None:
            return make_norm(norm, d_model, shift, alpha0) if self.spec.has(slot) else None

        self.attn_norm_in = slot_norm("in")
        self.attn_norm_out = slot_norm("out")
        self.attn_norm_after = slot_norm("after")
        self.mlp_norm_in = slot_norm("in")
        self.mlp_norm_out = slot_norm("out")
        self.mlp_norm_after = slot_norm("after")

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The block's own parameter, ReZero's ``gate``, back to 0 (the attention, MLP
        and norms reset themselves)."""
        if self.gate is not None:
            self.gate.zero_()

    def sublayer(self, which: str) -> nn.Module:
        """The attention or MLP module of this block (``which`` in :data:`SUBLAYERS`)."""
        if which not in SUBLAYERS:
            raise unknown("sublayer", which, SUBLAYERS)
        return self.attn if which == "attn" else self.mlp

    def norm_at(self, which: str, slot: str) -> nn.Module | None:
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
            if (n := self.norm_at(which, slot)) is not None
        ]

    def branch(self, which: str, x: Tensor) -> Tensor:
        r"""The residual branch :math:`F(x) = g\,\mathrm{N}_{out}(f(c\,\mathrm{N}_{in}(x)))`
        of sublayer ``which`` at residual input ``x``, norms inside the branch included
        (Pre-LN: :math:`F(\mathrm{LN}(x))`), with LayerNorm Scaling's :math:`c` and
        ReZero's gate :math:`g` where the placement has them."""
        f = self.sublayer(which)
        n_in, n_out = self.norm_at(which, "in"), self.norm_at(which, "out")
        h = n_in(x) if n_in is not None else x
        if self.spec.depth_scaled:
            h = h * self.depth_scale
        h = f(h)
        h = n_out(h) if n_out is not None else h
        return self.gate * h if self.gate is not None else h

    def step(self, which: str, x: Tensor) -> Tensor:
        r"""One residual step, :math:`x' = \mathrm{N}_{after}(\alpha x + F(x))`:
        Post-LN :math:`\mathrm{LN}(x + F(x))`, Pre-LN :math:`x + F(\mathrm{LN}(x))`,
        peri :math:`x + \mathrm{LN}_o(F(\mathrm{LN}(x)))`, DeepNorm
        :math:`\mathrm{LN}(\alpha x + F(x))`, reorder :math:`x + \mathrm{LN}(F(x))`,
        LayerNorm Scaling :math:`x + F(\mathrm{LN}(x)/\sqrt{l})`, ReZero
        :math:`x + g\,F(x)`."""
        skip = x if self.skip_scale == 1.0 else self.skip_scale * x  # 1 * x is x: skip the multiply
        s = skip + self.branch(which, x)
        n_after = self.norm_at(which, "after")
        return n_after(s) if n_after is not None else s

    def forward(self, x: Tensor) -> Tensor:
        return self.step("mlp", self.step("attn", x))
