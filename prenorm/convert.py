r"""Exact rewrites of a trained model, and what its norms' affine parameters did.

In a Pre-LN transformer every norm on the residual stream feeds one linear layer (the
attention's :math:`W_{QKV}`, the MLP's :math:`W_1`, or the output head), so a norm's
shift :math:`\beta` can move into that layer's bias,

.. math:: W\big(c\,(\hat x \odot \gamma + \beta)\big) + b
          = W\big(c\,\hat x \odot \gamma\big) + (b + c\,W\beta),

with :math:`c` LayerNorm Scaling's :math:`1/\sqrt l` (1 elsewhere):
:func:`fold_norm_bias`. And since every read of the stream goes through a LayerNorm,
which removes the mean, the mean can be removed from the stream itself; with a
zero-mean input :math:`\mathrm{LN}(x) = \mathrm{RMSNorm}(x)` (same :math:`\gamma`,
:math:`\epsilon`, :math:`\beta` folded), which turns a Pre-LN model into a
Pre-RMSNorm one computing the same function (Jiang et al. 2023, arXiv:2305.14858):
:func:`pre_rmsnorm`. :func:`with_norm_params` and :func:`loss_with_norm_params` undo
what training did to the norms' :math:`\gamma` or :math:`\beta`;
:func:`norm_affine_drift` tabulates how far each moved.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import pandas as pd
import torch
from torch import Tensor, nn

from .model import TransformerLM
from .norms import LayerNorm, RMSNorm
from .training import evaluate

__all__ = [
    "fold_norm_bias",
    "loss_with_norm_params",
    "norm_affine_drift",
    "norms_feeding_linear",
    "pre_rmsnorm",
    "with_norm_params",
]


def norms_feeding_linear(model: TransformerLM) -> list[tuple[nn.Module, nn.Linear, float]]:
    r"""The norms of ``model`` whose output goes, times a constant :math:`c`, into one
    linear layer and nowhere else, as ``(norm, linear, c)``: every block's input norms
    (``attn_norm_in`` into ``attn.qkv``, ``mlp_norm_in`` into ``mlp.fc1``, with
    :math:`c` the block's ``depth_scale``: :math:`1/\sqrt l` for LayerNorm Scaling, 1
    otherwise), then the final norm into ``head``. The norms that write the residual
    stream (``out`` and ``after`` slots) and QK-norms are not among them."""
    pairs: list[tuple[nn.Module, nn.Linear, float]] = []
    for which, attr in (("attn", "qkv"), ("mlp", "fc1")):
        for blk in model.blocks:
            norm = blk.norm_at(which, "in")
            if norm is not None:
                pairs.append((norm, getattr(blk.sublayer(which), attr), blk.depth_scale))
    if not isinstance(model.final_norm, nn.Identity):
        pairs.append((model.final_norm, model.head, 1.0))
    return pairs


def _fold_into(norm: nn.Module, nxt: nn.Linear, scale: float) -> None:
    """``nxt.bias += scale * nxt.weight @ norm.bias`` and ``norm.bias = 0``, in place."""
    beta = getattr(norm, "bias", None)
    if beta is None:
        return
    if nxt.bias is None:
        nxt.bias = nn.Parameter(torch.zeros_like(nxt.weight[:, 0]))
    shift = nxt.weight @ beta
    nxt.bias += shift if scale == 1.0 else scale * shift
    beta.zero_()


@torch.no_grad()
def fold_norm_bias(model: TransformerLM) -> TransformerLM:
    r"""A copy of ``model`` in which the shift :math:`\beta` of every norm of
    :func:`norms_feeding_linear` (LayerNorm or DyT) is folded into the bias of the
    linear layer it feeds, :math:`b \leftarrow b + c\,W\beta` (a bias is added where
    the layer had none, e.g. the head), and set to 0. The copy computes the same
    function. Norms that write the stream (Post-LN, Peri-LN's output norms) keep their
    :math:`\beta`: no single layer could absorb it."""
    twin = copy.deepcopy(model)
    for norm, nxt, scale in norms_feeding_linear(twin):
        _fold_into(norm, nxt, scale)
    return twin


def _centre_output(linear: nn.Linear) -> None:
    """Make the layer's output zero-mean over its features: subtract from the weight its
    mean over output rows, and from the bias its mean."""
    linear.weight -= linear.weight.mean(dim=0, keepdim=True)
    if linear.bias is not None:
        linear.bias -= linear.bias.mean()


@torch.no_grad()
def pre_rmsnorm(model: TransformerLM, centre: bool = True) -> TransformerLM:
    r"""Jiang et al.'s conversion of a Pre-LN model (``placement`` ``"pre"`` or ``"lns"``,
    LayerNorm) into a Pre-RMSNorm one, on a copy.

    With ``centre=True`` the residual stream is made zero-mean over features: the token
    and position embeddings are centred, and so is the output of every branch (the
    attention's ``proj`` and the MLP's ``fc2``: :math:`W \leftarrow W -
    \mathbf 1\bar w^\top`, :math:`b \leftarrow b - \bar b`, :math:`\bar w` the mean of
    :math:`W`'s rows). Nothing downstream reads the mean, since every read of the stream
    starts with a LayerNorm. Then each LayerNorm is replaced by an RMSNorm with the same
    :math:`\gamma` and :math:`\epsilon`, its :math:`\beta` folded into the next layer's
    bias (:func:`fold_norm_bias`); on a zero-mean token
    :math:`\mathrm{LN}(x) = \mathrm{RMSNorm}(x)`, so the copy computes the same logits.

    ``centre=False`` swaps the norms without centring (the control): the RMSNorms then
    see the stream's mean, and the function changes. QK-norms, which read queries and
    keys rather than the stream, are left as they are. Raises ``ValueError`` for a model
    with a norm that writes the stream (Post-LN, Peri-LN, Mix-LN, ...) or without
    LayerNorm."""
    if model.norm != "layernorm":
        raise ValueError(f"pre_rmsnorm converts LayerNorm models, got norm={model.norm!r}")
    for blk in model.blocks:
        spec = blk.spec
        if not spec.norm_in or spec.norm_out or spec.norm_after or spec.gated:
            raise ValueError(
                f"pre_rmsnorm needs every read of the stream to go through a LayerNorm and "
                f"no norm on it (placement 'pre' or 'lns'); layer {blk.layer} is "
                f"{blk.placement!r}"
            )
    twin = copy.deepcopy(model)
    if centre:
        for emb in (twin.tok_emb, twin.pos_emb):
            emb.weight -= emb.weight.mean(dim=1, keepdim=True)
        for blk in twin.blocks:
            _centre_output(blk.attn.proj)
            _centre_output(blk.mlp.fc2)

    def to_rms(norm: LayerNorm, nxt: nn.Linear, scale: float) -> RMSNorm:
        rms = RMSNorm(norm.d, eps=norm.eps).to(norm.weight.device, norm.weight.dtype)
        rms.weight.copy_(norm.weight)
        _fold_into(norm, nxt, scale)
        return rms

    for blk in twin.blocks:
        blk.attn_norm_in = to_rms(blk.attn_norm_in, blk.attn.qkv, blk.depth_scale)
        blk.mlp_norm_in = to_rms(blk.mlp_norm_in, blk.mlp.fc1, blk.depth_scale)
        blk.norm_name = "rmsnorm"
    twin.final_norm = to_rms(twin.final_norm, twin.head, 1.0)
    twin.norm = "rmsnorm"
    return twin


@torch.no_grad()
def with_norm_params(
    model: TransformerLM,
    weight: float | None = None,
    bias: float | None = None,
    types: tuple[type[nn.Module], ...] = (LayerNorm,),
) -> TransformerLM:
    r"""A copy of ``model`` with every norm of one of ``types`` (default: every
    :class:`~prenorm.LayerNorm`, QK-norms included) given :math:`\gamma = ` ``weight``
    and/or :math:`\beta = ` ``bias`` in every feature (``None`` leaves it; a norm without
    a bias keeps none). ``weight=1, bias=0`` undoes what training did to the norms."""
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if isinstance(m, types):
            for name, value in (("weight", weight), ("bias", bias)):
                p = getattr(m, name, None)
                if value is not None and p is not None:
                    p.fill_(value)
    return twin


def loss_with_norm_params(
    model: TransformerLM,
    batches: Sequence[tuple[Tensor, Tensor]],
    weight: float | None = None,
    bias: float | None = None,
) -> float:
    r"""The mean loss over ``batches`` (:func:`~prenorm.evaluate`) of
    :func:`with_norm_params` ``(model, weight, bias)``: the validation loss with every
    LayerNorm's :math:`\gamma` and/or :math:`\beta` set to one value."""
    return evaluate(with_norm_params(model, weight=weight, bias=bias), batches)


@torch.no_grad()
def norm_affine_drift(model: TransformerLM) -> pd.DataFrame:
    r"""How far every norm's affine parameters are from their initial values, along the
    stack: one row per norm in forward order (each block's norms, then the final one),
    with ``position`` (0, 1, ...), ``layer`` (the block's index; ``n_layers`` for the
    final norm), ``sublayer`` (``"attn"``, ``"mlp"`` or ``"final"``), ``slot``,
    ``gamma_drift`` :math:`= \sqrt{\tfrac1d\sum_i(\gamma_i - 1)^2}` and ``beta_drift``
    :math:`= \sqrt{\tfrac1d\sum_i\beta_i^2}` (NaN for a norm without :math:`\beta`)."""
    norms = [(i, w, s, n) for i, blk in enumerate(model.blocks) for w, s, n in blk.norms()]
    if not isinstance(model.final_norm, nn.Identity):
        norms.append((len(model.blocks), "final", "final", model.final_norm))

    def rms(v: Tensor | None) -> float:
        return float("nan") if v is None else v.detach().cpu().pow(2).mean().sqrt().item()

    rows = [
        {
            "position": k,
            "layer": layer,
            "sublayer": which,
            "slot": slot,
            "gamma_drift": rms(n.weight - 1),
            "beta_drift": rms(getattr(n, "bias", None)),
        }
        for k, (layer, which, slot, n) in enumerate(norms)
    ]
    return pd.DataFrame(rows)
