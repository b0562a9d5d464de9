r"""Per-layer probes of a model's forward and backward scales, returning tidy DataFrames.

A *batch* is ``(x, targets)``: ``x`` is either token ids, shape ``(B, T)`` and
dtype ``long``, or a residual-stream input, shape ``(B, T, d_model)`` and
floating point (for the Gaussian inputs of Xiong et al.'s theory setting);
``targets`` are token ids ``(B, T)``. Every DataFrame has one row per observation
and carries the model's :meth:`~prenorm.TransformerLM.describe` columns, so frames
from several models concatenate into one figure. Exact Jacobians, which are
tensors, live in :mod:`prenorm.jacobians`; :func:`~prenorm.probe_sweep` runs a
probe over a grid of models.

Sections, in order: inputs; the forward pass (stream, branches, norm scales,
outlier activations, attention logits); the backward pass (hidden-state and weight gradients, end-to-end Jacobians); the
response to a change (one optimizer step, removing a layer).
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor

from .blocks import SUBLAYERS
from .jacobians import spectral_norm
from .model import TransformerLM
from .norms import _check_tensor
from .pretrained import PretrainedLM

Batch = tuple[Tensor, Tensor]


# ---- inputs ---------------------------------------------------------------------
def _stream_input(model: TransformerLM, batch: Batch) -> tuple[Tensor, Tensor]:
    if not isinstance(model, TransformerLM | PretrainedLM):
        raise TypeError(
            f"model must be a prenorm.TransformerLM or PretrainedLM, got {type(model).__name__}"
        )
    if not (isinstance(batch, tuple | list) and len(batch) == 2):
        raise ValueError("batch must be a pair (x, targets)")
    x, y = batch
    param = next(model.parameters())
    _check_ids_or_floats(x)
    if x.dtype == torch.long:
        x0 = model.embed(x.to(param.device))
    else:
        _check_tensor(x, "x")
        if x.dim() != 3 or x.shape[-1] != model.d_model:
            raise ValueError(
                f"a float input must have shape (batch, time, {model.d_model}), got {tuple(x.shape)}"
            )
        x0 = x.to(param.device, param.dtype)
    if y.dtype != torch.long or y.shape != x0.shape[:2]:
        raise ValueError(
            f"targets must be a long tensor of shape {tuple(x0.shape[:2])}, "
            f"got {y.dtype} of shape {tuple(y.shape)}"
        )
    return x0, y.to(param.device)


def _check_ids_or_floats(x: object) -> None:
    """A probe input is token ids (``torch.long``) or a float residual input; say so for
    anything else (an ``int32`` batch, say), rather than blaming the float check."""
    if isinstance(x, Tensor) and x.dtype != torch.long and not x.is_floating_point():
        raise ValueError(
            "x must be token ids (torch.long), shape (batch, time), or a float residual "
            f"input, shape (batch, time, d_model); got {x.dtype}"
        )


def _loss(model: TransformerLM, x_last: Tensor, y: Tensor) -> Tensor:
    """The model's own scalar loss of its final state (a trained encoder's readout, a
    language model's cross-entropy)."""
    return model.loss_from_stream(x_last, y)


def _position(layer: int, which: str) -> int:
    """Index of a residual step along the stack: two steps (attention, MLP) per layer."""
    return 2 * layer + SUBLAYERS.index(which)


def _sequence_and_layers(
    model: TransformerLM, x: Tensor, layers: list[int] | None
) -> tuple[Tensor, list[int]]:
    """The residual input of one sequence (token ids are embedded) and the layers to
    probe (default: every layer), both checked."""
    _check_ids_or_floats(x)
    if x.dtype == torch.long:
        x0 = model.embed(x)
    else:
        _check_tensor(x, "x")
        x0 = x
    if x0.dim() != 3 or x0.shape[0] != 1:
        raise ValueError(f"x must hold one sequence (batch size 1), got shape {tuple(x0.shape)}")
    layers = list(range(model.n_layers)) if layers is None else layers
    bad = [l for l in layers if not 0 <= l <= model.n_layers]
    if bad:
        raise ValueError(f"layers must lie in [0, {model.n_layers}], got {bad}")
    return x0, layers


def _forward_with_hooks(model: TransformerLM, x0: Tensor, handles: list) -> None:
    """Run the residual stream on ``x0`` once, without gradients, for the forward hooks
    behind ``handles`` to record what they see; the hooks are removed afterwards."""
    try:
        with torch.no_grad():
            model.residual_stream(x0)
    finally:
        for h in handles:
            h.remove()


def _token_norms(t: Tensor) -> Tensor:
    return t.detach().norm(dim=-1).flatten()


# ---- the forward pass --------------------------------------------------------
def residual_norms(model: TransformerLM, batch: Batch) -> pd.DataFrame:
    r"""Per-token norm of the residual stream :math:`\|x_l\|` entering every layer
    :math:`l = 0..L` (row ``layer=L`` is the final state).

    Columns: ``layer``, ``norm_mean`` and ``norm_std`` (over tokens), ``rms``
    (:math:`\|x_l\|/\sqrt d`, averaged over tokens), ``ms`` (:math:`\|x_l\|^2/d`,
    averaged over tokens: the mean square that Xiong et al.'s lemma bounds), plus the model's :meth:`~prenorm.TransformerLM.describe` columns.
    """
    x0, _ = _stream_input(model, batch)
    with torch.no_grad():
        states = model.residual_stream(x0)
    rows = []
    for l, s in enumerate(states):
        n = _token_norms(s)
        rows.append(
            {
                "layer": l,
                "norm_mean": n.mean().item(),
                "norm_std": n.std().item() if n.numel() > 1 else 0.0,
                "rms": (n / model.d_model**0.5).mean().item(),
                "ms": (n.pow(2) / model.d_model).mean().item(),
            }
        )
    return pd.DataFrame(rows).assign(**model.describe())


def branch_ratios(model: TransformerLM, batch: Batch) -> pd.DataFrame:
    r"""How far each sublayer is from a zero map: :math:`\|F_l(x)\| / \|x\|` per token,
    where :math:`x` is the residual input of the step and :math:`F_l` its branch.

    One row per (layer, sublayer). Columns: ``layer``, ``sublayer``, ``position``
    (:math:`2l` for attention, :math:`2l+1` for the MLP),
    ``ratio_mean``, ``ratio_std`` (over tokens), ``branch_norm``, ``input_norm``.
    """
    x, _ = _stream_input(model, batch)
    rows = []
    with torch.no_grad():
        for l, blk in enumerate(model.blocks):
            for which in SUBLAYERS:
                f = blk.branch(which, x)
                r = _token_norms(f) / _token_norms(x)
                rows.append(
                    {
                        "layer": l,
                        "sublayer": which,
                        "position": _position(l, which),
                        "ratio_mean": r.mean().item(),
                        "ratio_std": r.std().item() if r.numel() > 1 else 0.0,
                        "branch_norm": _token_norms(f).mean().item(),
                        "input_norm": _token_norms(x).mean().item(),
                    }
                )
                x = blk.step(which, x)
    return pd.DataFrame(rows).assign(**model.describe())


def norm_input_scales(model: TransformerLM, batch: Batch) -> pd.DataFrame:
    r"""The scale each norm divides by, at every norm of every block.

    For a LayerNorm that is :math:`\sigma = \sqrt{\mathrm{var}(s) + \epsilon}` of its
    input :math:`s`; for an RMSNorm, :math:`\mathrm{RMS}(s)`. By chapter 2, a norm's
    Jacobian has spectral norm :math:`1/\sigma` (with :math:`\gamma = 1`). One row per
    (layer, norm): ``layer``, ``sublayer``, ``position`` (as in :func:`branch_ratios`), ``slot`` (``"in"``, ``"out"`` or
    ``"after"``), ``scale_mean`` and ``scale_std`` (over tokens), ``scale_sq_mean`` (the mean of
    :math:`\sigma^2`), ``inv_scale_mean``.
    """
    rows = []
    for l, which, slot, mod, x in _norm_inputs(model, batch):
        scale = mod.scale(x).flatten()
        rows.append(
            {
                "layer": l,
                "sublayer": which,
                "position": _position(l, which),
                "slot": slot,
                "scale_mean": scale.mean().item(),
                "scale_std": scale.std().item() if scale.numel() > 1 else 0.0,
                "scale_sq_mean": scale.pow(2).mean().item(),
                "inv_scale_mean": (1 / scale).mean().item(),
            }
        )
    return pd.DataFrame(rows).assign(**model.describe())


def _norm_inputs(
    model: TransformerLM, batch: Batch
) -> list[tuple[int, str, str, torch.nn.Module, Tensor]]:
    """The input every norm of every block sees on ``batch``, in one forward pass:
    ``(layer, sublayer, slot, norm module, input)`` in the order the norms run, each input
    detached with its leading dimensions kept."""
    x0, _ = _stream_input(model, batch)
    seen: list[tuple[int, str, str, torch.nn.Module, Tensor]] = []
    handles = []
    for l, blk in enumerate(model.blocks):
        for which, slot, norm in blk.norms():

            def hook(
                mod: torch.nn.Module,
                args: tuple[Tensor, ...],
                l: int = l,
                which: str = which,
                slot: str = slot,
            ) -> None:
                seen.append((l, which, slot, mod, args[0].detach()))

            handles.append(norm.register_forward_pre_hook(hook))
    _forward_with_hooks(model, x0, handles)
    return seen


def activation_outliers(model: TransformerLM, batch: Batch) -> pd.DataFrame:
    r"""How far the largest entry of the residual stream stands above a typical one, per
    layer: :math:`\max|x_l| / \mathrm{median}|x_l|`, over every token and feature of the
    batch, for :math:`l = 0..L` (row ``layer=L`` is the final state).

    Sun, Chen, Kolter & Liu 2024 ("Massive activations in large language models",
    arXiv:2402.17762) find a few entries of the hidden state of trained LLMs about
    :math:`10^3`-:math:`10^4` times the median magnitude, in fixed feature dimensions
    and at few tokens (often the first); this ratio is their measure. Columns:
    ``layer``, ``max_abs``, ``median_abs`` (the lower middle value for an even count),
    ``ratio`` (``max_abs / median_abs``), ``feature`` and ``position`` (the feature
    index and time step of the largest entry), plus the model's
    :meth:`~prenorm.TransformerLM.describe` columns.
    """
    x0, _ = _stream_input(model, batch)
    with torch.no_grad():
        states = model.residual_stream(x0)
    rows = []
    for l, s in enumerate(states):
        a = s.detach().abs()
        top = int(a.argmax())
        _, t, f = torch.unravel_index(torch.tensor(top), a.shape)
        med = a.flatten().median()
        rows.append(
            {
                "layer": l,
                "max_abs": a.max().item(),
                "median_abs": med.item(),
                "ratio": (a.max() / med).item(),
                "feature": int(f),
                "position": int(t),
            }
        )
    return pd.DataFrame(rows).assign(**model.describe())


def max_attention_logits(model: TransformerLM, batch: Batch) -> pd.DataFrame:
    r"""The largest pre-softmax attention logit of every layer,
    :math:`\max_{h,\,t,\,s \le t} q_{h,t}\cdot k_{h,s}/\sqrt{d_h}`, over the batch, the
    heads and every query-key pair the causal mask allows (a masked pair never counts).

    Wortsman et al. 2023 (arXiv:2309.14322; after Dehghani et al. 2023,
    arXiv:2302.05442) trace one instability of small and large models alike to these
    logits growing during training until the softmax collapses onto one key; QK-norm
    bounds them. The logits are those the model computes: of the attention's input
    (after any input norm and depth scale) and after QK-norm where the model has it.
    One row per layer: ``layer``, ``max_logit``, ``head`` (the head where it occurs),
    ``mean_head_max`` (each head's maximum, averaged over heads), plus the model's
    :meth:`~prenorm.TransformerLM.describe` columns.
    """
    x0, _ = _stream_input(model, batch)
    found: dict[int, Tensor] = {}
    handles = []
    for l, blk in enumerate(model.blocks):

        def hook(mod: torch.nn.Module, args: tuple[Tensor, ...], l: int = l) -> None:
            logits = mod.logits(args[0].detach())  # (B, H, T, T), -inf where masked
            found[l] = logits.amax(dim=(0, 2, 3))  # per head

        handles.append(blk.attn.register_forward_pre_hook(hook))
    _forward_with_hooks(model, x0, handles)
    rows = [
        {
            "layer": l,
            "max_logit": per_head.max().item(),
            "head": int(per_head.argmax()),
            "mean_head_max": per_head.mean().item(),
        }
        for l, per_head in sorted(found.items())
    ]
    return pd.DataFrame(rows).assign(**model.describe())


# ---- the backward pass -------------------------------------------------------
def hidden_grad_norms(model: TransformerLM, batch: Batch) -> pd.DataFrame:
    r"""Gradient of the loss with respect to every residual state,
    :math:`\|\partial \mathcal L / \partial x_l\|` for :math:`l = 0..L`.

    Columns: ``layer``, ``grad_norm`` (Frobenius norm over the whole batch),
    ``grad_norm_token`` (mean per-token norm), ``relative`` (``grad_norm`` over its
    value at the top, :math:`l = L`), plus the model's :meth:`~prenorm.TransformerLM.describe` columns.
    The loss is the mean cross-entropy, so absolute values scale with 1/(B·T);
    compare layers, not batch sizes.
    """
    x0, y = _stream_input(model, batch)
    x0 = x0.detach().requires_grad_(True)
    states = model.residual_stream(x0)
    loss = _loss(model, states[-1], y)
    grads = torch.autograd.grad(loss, states)
    rows = [
        {
            "layer": l,
            "grad_norm": g.norm().item(),
            "grad_norm_token": _token_norms(g).mean().item(),
        }
        for l, g in enumerate(grads)
    ]
    df = pd.DataFrame(rows)
    df["relative"] = df["grad_norm"] / df["grad_norm"].iloc[-1]
    return df.assign(**model.describe())


def param_grad_norms(model: TransformerLM, batch: Batch) -> pd.DataFrame:
    r"""Frobenius norm of :math:`\partial\mathcal L/\partial W` for every weight
    matrix and norm parameter of every block, at the current parameters.

    One row per (layer, parameter). Columns: ``layer``, ``sublayer``
    (``"attn"``, ``"mlp"``, ``"norm"``, or ``"gate"`` for ReZero's gate), ``param`` (e.g. ``"mlp.fc2.weight"``),
    ``grad_norm``, ``weight_norm``, plus the model's :meth:`~prenorm.TransformerLM.describe` columns.
    """
    x0, y = _stream_input(model, batch)
    states = model.residual_stream(x0)
    loss = _loss(model, states[-1], y)
    named = [
        (l, name, p)
        for l, blk in enumerate(model.blocks)
        for name, p in blk.named_parameters()
        if p.requires_grad
    ]
    grads = torch.autograd.grad(loss, [p for _, _, p in named], allow_unused=True)
    rows = []
    for (l, name, p), g in zip(named, grads, strict=True):
        sub = name.split(".")[0]
        rows.append(
            {
                "layer": l,
                "sublayer": sub if sub in (*SUBLAYERS, "gate") else "norm",
                "param": name,
                "grad_norm": 0.0 if g is None else g.norm().item(),
                "weight_norm": p.detach().norm().item(),
            }
        )
    return pd.DataFrame(rows).assign(**model.describe())


def end_to_end_spectral_norms(
    model: TransformerLM,
    x: Tensor,
    layers: list[int] | None = None,
    include_final_norm: bool = True,
    iters: int = 50,
    tol: float = 1e-4,
    seed: int = 0,
) -> pd.DataFrame:
    r"""Spectral norm of the map from the residual state :math:`x_l` to the model's
    output features, :math:`\|\partial\, \mathrm{N}_{final}(x_L)/\partial x_l\|_2`,
    for each ``l`` in ``layers`` (default: every layer), at one sequence.

    ``x`` is token ids ``(1, T)`` or a residual input ``(1, T, d)``. With
    ``include_final_norm=False`` the output is :math:`x_L` itself. Uses
    :func:`spectral_norm` (``iters``, ``tol`` and ``seed`` are passed through), so it
    scales to wide and deep models.
    Columns: ``layer``, ``spectral_norm``, plus the model's :meth:`~prenorm.TransformerLM.describe` columns.
    """
    x0, layers = _sequence_and_layers(model, x, layers)
    with torch.no_grad():
        states = model.residual_stream(x0.detach())
    rows = []
    for l in layers:

        def tail(h: Tensor, start: int = l) -> Tensor:
            for blk in model.blocks[start:]:
                h = blk(h)
            return model.final_norm(h) if include_final_norm else h

        rows.append({"layer": l, "spectral_norm": spectral_norm(tail, states[l], iters, tol, seed)})
    return pd.DataFrame(rows).assign(**model.describe(), final_norm=include_final_norm)


def skip_path(model: TransformerLM, batch: Batch, chunk_tokens: int = 256) -> pd.DataFrame:
    r"""How far each residual step's *skip path* is from an identity path.

    The Jacobian of a step :math:`x' = \mathrm{N}_{after}(\alpha x + F(x))` splits into a
    branch part and a skip part, :math:`J_{skip} = \alpha J_{after}(s)` with
    :math:`s = \alpha x + F(x)` (the identity for Pre-LN; :math:`J_{\mathrm{LN}}(s)` for
    Post-LN). Per token it is a :math:`d \times d` matrix (norms act token by token), so
    the skip path from step :math:`k` to the top is the product of those matrices.

    One row per step: ``layer``, ``sublayer``, ``position``; ``step_distance``,
    :math:`\|J_{skip} - I\|_F / \sqrt d` (root mean square over tokens); and, for the
    product from this step's input to the top of the stack, ``stack_distance``
    (:math:`\|\prod J_{skip} - I\|_F/\sqrt d`) and ``stack_gain``
    (:math:`\|\prod J_{skip}\|_F/\sqrt d`, the skip path's typical gain on a random
    vector). A LayerNorm with :math:`\sigma = 1` and :math:`\gamma = 1` is the identity
    minus a rank-2 projection, at distance :math:`\sqrt{2/d}`.

    Every token of every sequence counts, each at the state the model computes for it:
    the stream runs on the batch as it is, so no token attends across sequences, and the
    result does not depend on the order of the sequences. ``chunk_tokens`` only bounds
    memory: that many tokens' :math:`d \times d` products are held at once.
    """
    x0, _ = _stream_input(model, batch)
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be a positive integer, got {chunk_tokens!r}")
    d = x0.shape[-1]
    eye = torch.eye(d, dtype=x0.dtype, device=x0.device)
    steps = []  # (layer, sublayer, alpha, after-norm or None, its input s for every token)
    with torch.no_grad():
        h = x0.detach()
        for l, blk in enumerate(model.blocks):
            for which in SUBLAYERS:
                s = blk.skip_scale * h + blk.branch(which, h)  # (B, T, d), sequence by sequence
                norm = blk.norm_at(which, "after")
                steps.append((l, which, blk.skip_scale, norm, s.reshape(-1, d)))
                h = norm(s) if norm is not None else s
        n = steps[0][4].shape[0]
        # Sums over tokens of the squared Frobenius norms, accumulated chunk by chunk.
        step_sq, stack_sq, gain_sq = [0.0] * len(steps), [0.0] * len(steps), [0.0] * len(steps)
        for start in range(0, n, chunk_tokens):
            prod = None
            for k in reversed(range(len(steps))):
                _, _, alpha, norm, s_all = steps[k]
                s = s_all[start : start + chunk_tokens]
                j = alpha * (norm.jacobian(s) if norm is not None else eye.expand(len(s), d, d))
                prod = j if prod is None else prod @ j
                step_sq[k] += (j - eye).pow(2).sum().item()
                stack_sq[k] += (prod - eye).pow(2).sum().item()
                gain_sq[k] += prod.pow(2).sum().item()
    rows = [
        {
            "layer": l,
            "sublayer": which,
            "position": _position(l, which),
            "step_distance": (step_sq[k] / (n * d)) ** 0.5,
            "stack_distance": (stack_sq[k] / (n * d)) ** 0.5,
            "stack_gain": (gain_sq[k] / (n * d)) ** 0.5,
        }
        for k, (l, which, *_) in enumerate(steps)
    ]
    return pd.DataFrame(rows).assign(**model.describe())


def step_gradients(model: TransformerLM, batch: Batch) -> pd.DataFrame:
    r"""The backward pass through each residual step, taken apart.

    For a step :math:`x' = \mathrm{N}_{after}(s)`, :math:`s = \alpha x + F(x)`, with
    :math:`g' = \partial\mathcal L/\partial x'`, the gradient at the sum is
    :math:`u = J_{after}^\top g'` (:math:`u = g'` without an after-norm), and the
    gradient at the step's input is :math:`g = \alpha u + J_F^\top u`: a skip term and a
    branch term. One row per step: ``layer``, ``sublayer``, ``position``; the norms
    ``grad_out`` :math:`\|g'\|`, ``grad_sum`` :math:`\|u\|`, ``grad_in`` :math:`\|g\|`,
    ``branch_term`` :math:`\|J_F^\top u\|`; ``gain`` :math:`\|g\|/\|g'\|` (the step's
    effect on the gradient), ``norm_gain`` :math:`\|u\|/\|g'\|`, ``residual_gain``
    :math:`\|g\|/\|u\|` (the factor :math:`\alpha I + J_F^\top`); ``cos`` the cosine
    between the skip and branch terms (negative when the branch cancels the skip);
    ``branch_ratio`` :math:`\|F(x)\|/\|x\|` and ``sigma``, the mean scale the
    after-norm divides by (NaN without one). Norms are over the whole batch.
    """
    x0, y = _stream_input(model, batch)
    h = x0.detach().requires_grad_(True)
    ins, sums, outs, meta = [], [], [], []
    for l, blk in enumerate(model.blocks):
        for which in SUBLAYERS:
            f = blk.branch(which, h)
            s = blk.skip_scale * h + f
            norm = blk.norm_at(which, "after")
            out = norm(s) if norm is not None else s
            ratio = (_token_norms(f) / _token_norms(h)).mean().item()
            sigma = norm.scale(s.detach()).mean().item() if norm is not None else float("nan")
            ins.append(h)
            sums.append(s)
            outs.append(out)
            meta.append((l, which, ratio, sigma, blk.skip_scale))
            h = out
    loss = _loss(model, h, y)
    g_in = torch.autograd.grad(loss, ins, retain_graph=True)
    g_sum = torch.autograd.grad(loss, sums, retain_graph=True)
    g_out = torch.autograd.grad(loss, outs)
    rows = []
    for (l, which, ratio, sigma, alpha), gi, gs, go in zip(meta, g_in, g_sum, g_out, strict=True):
        skip, branch = alpha * gs, gi - alpha * gs
        rows.append(
            {
                "layer": l,
                "sublayer": which,
                "position": _position(l, which),
                "grad_out": go.norm().item(),
                "grad_sum": gs.norm().item(),
                "grad_in": gi.norm().item(),
                "branch_term": branch.norm().item(),
                "gain": (gi.norm() / go.norm()).item(),
                "norm_gain": (gs.norm() / go.norm()).item(),
                "residual_gain": (gi.norm() / gs.norm()).item(),
                "cos": torch.nn.functional.cosine_similarity(
                    skip.flatten(), branch.flatten(), dim=0
                ).item(),
                "branch_ratio": ratio,
                "sigma": sigma,
            }
        )
    return pd.DataFrame(rows).assign(**model.describe())


def end_to_end_gains(
    model: TransformerLM,
    x: Tensor,
    layers: list[int] | None = None,
    samples: int = 8,
    seed: int = 0,
) -> pd.DataFrame:
    r"""Typical gain of the block stack from :math:`x_l` to :math:`x_L`,
    :math:`\|\partial x_L/\partial x_l\|_F / \sqrt{Td}`, for each ``l`` in ``layers``
    (default: every layer), at one sequence.

    Hutchinson's estimator: for :math:`u \sim N(0, I)`,
    :math:`E\|J^\top u\|^2 = \|J\|_F^2`, so the gain is
    :math:`\sqrt{\mathrm{mean}\|J^\top u_i\|^2/(Td)}` over ``samples``
    vector-Jacobian products: random gradients at :math:`x_L` carried down to
    :math:`x_l` by one forward and ``samples`` backward passes; the Jacobian is never
    formed. Unlike the spectral norm, it is the root-mean-square gain over all
    directions, and it can come out below or above 1 for any placement: a Pre-LN
    stack is not held at or above 1 by the per-token constant shifts that pass it
    unchanged. Columns: ``layer``, ``gain``, ``gain_sem`` (standard error over samples,
    propagated to the gain), plus the model's describe columns.
    """
    x0, layers = _sequence_and_layers(model, x, layers)
    if samples < 2:
        raise ValueError(f"samples must be >= 2 for an error estimate, got {samples}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    h = x0.detach().requires_grad_(True)
    states = model.residual_stream(h)
    us = [torch.randn(h.shape, generator=gen, dtype=h.dtype).to(h.device) for _ in range(samples)]
    sq: dict[int, list[float]] = {l: [] for l in layers}
    for u in us:
        grads = torch.autograd.grad(states[-1], [states[l] for l in layers], u, retain_graph=True)
        for l, g in zip(layers, grads, strict=True):
            sq[l].append(g.pow(2).sum().item() / h.numel())
    rows = []
    for l in layers:
        m = sum(sq[l]) / samples
        sem = (sum((q - m) ** 2 for q in sq[l]) / (samples - 1) / samples) ** 0.5
        rows.append({"layer": l, "gain": m**0.5, "gain_sem": sem / (2 * m**0.5)})
    return pd.DataFrame(rows).assign(**model.describe())


# ---- the response to a change ------------------------------------------------
def update_sensitivity(model: TransformerLM, batch: Batch, lr: float) -> pd.DataFrame:
    r"""How much one optimizer-sized step moves the model's output (Liu et al. 2020).

    Takes Adam's first step on every block parameter, which for
    :math:`\epsilon \to 0` is :math:`\theta \leftarrow \theta - \eta\,\mathrm{sign}(\nabla_\theta\mathcal L)`,
    measures the logits and the loss, and restores the parameters. Returns one
    row with ``lr``, ``rel_output_change``
    (:math:`\|f(\theta') - f(\theta)\| / \|f(\theta)\|` over the batch's logits),
    ``loss_before``, ``loss_after`` and ``loss_change``, ``step_error``, the relative
    error of the step the parameters' precision actually took,
    :math:`\|(\theta' - \theta) + \eta\,\mathrm{sign}(\nabla\mathcal L)\| /
    \|\eta\,\mathrm{sign}(\nabla\mathcal L)\|` (near 0 unless :math:`\eta` is close to the
    resolution of the weights' floating-point format), plus the model's
    :meth:`~prenorm.TransformerLM.describe` columns.
    """
    if not (lr > 0 and torch.isfinite(torch.tensor(lr))):
        raise ValueError(f"lr must be a positive finite number, got {lr}")
    x0, y = _stream_input(model, batch)
    params = list(model.blocks.parameters())
    logits = model.logits_from_stream(model.residual_stream(x0)[-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
    grads = torch.autograd.grad(loss, params)
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            err_sq, step_sq = 0.0, 0.0
            for p, g, s in zip(params, grads, saved, strict=True):
                p.sub_(lr * torch.sign(g))
                intended = lr * torch.sign(g).double()
                err_sq += ((p.double() - s.double()) + intended).pow(2).sum().item()
                step_sq += intended.pow(2).sum().item()
            new_logits = model.logits_from_stream(model.residual_stream(x0)[-1])
            new_loss = torch.nn.functional.cross_entropy(new_logits.flatten(0, 1), y.flatten())
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
    row = {
        "lr": lr,
        "rel_output_change": ((new_logits - logits).norm() / logits.norm()).item(),
        "loss_before": loss.item(),
        "loss_after": new_loss.item(),
        "loss_change": (new_loss - loss).item(),
        "step_error": (err_sq / step_sq) ** 0.5 if step_sq > 0 else 0.0,
    }
    return pd.DataFrame([row]).assign(**model.describe())


def batch_loss(model: TransformerLM, batch: Batch) -> pd.DataFrame:
    r"""The model's loss on ``batch``: the mean cross-entropy of the next token,
    :math:`-\frac{1}{BT}\sum_{b,t}\log p(y_{b,t} \mid x_{b,\le t})` in nats per token,
    evaluated without gradients in fp32. With :func:`~prenorm.sweep`'s ``probes`` it gives
    a learning curve on one fixed batch. One row: ``loss``, plus the model's
    :meth:`~prenorm.TransformerLM.describe` columns.
    """
    x0, y = _stream_input(model, batch)
    with torch.no_grad():
        loss = _loss(model, model.residual_stream(x0)[-1], y).item()
    return pd.DataFrame([{"loss": loss}]).assign(**model.describe())


def layer_ablation(model: TransformerLM, batch: Batch) -> pd.DataFrame:
    r"""How much each layer contributes: the loss increase when block ``l`` is
    skipped (:math:`x_{l+1} := x_l`) and every other block runs as usual.

    One row per layer: ``layer``, ``loss`` (the full model's), ``ablated_loss``,
    ``loss_increase``, plus the model's :meth:`~prenorm.TransformerLM.describe` columns. Evaluated without gradients.
    """
    x0, y = _stream_input(model, batch)
    with torch.no_grad():
        full = _loss(model, model.residual_stream(x0)[-1], y).item()
        rows = []
        for skip in range(model.n_layers):
            h = x0
            for l, blk in enumerate(model.blocks):
                if l != skip:
                    h = blk(h)
            ablated = _loss(model, h, y).item()
            rows.append(
                {
                    "layer": skip,
                    "loss": full,
                    "ablated_loss": ablated,
                    "loss_increase": ablated - full,
                }
            )
    return pd.DataFrame(rows).assign(**model.describe())
