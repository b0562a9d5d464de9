r"""The training fast path: the same functions, computed by torch's fused kernels.

The norms of :mod:`prenorm.norms` and the attention of :mod:`prenorm.blocks` are
written out operation by operation, because the chapters show them and the Jacobian
probes differentiate them. Training needs only their values and gradients, and torch
has kernels that compute the same functions in fewer passes over memory:

- :class:`~prenorm.LayerNorm`,
  :math:`\gamma\odot(x-\mu)/\sqrt{\sigma^2+\epsilon}+\beta`: ``F.layer_norm``;
- :class:`~prenorm.RMSNorm`, :math:`\gamma\odot x/\sqrt{\overline{x^2}+\epsilon}`:
  ``F.rms_norm``;
- the attention, :math:`\mathrm{softmax}(QK^\top/\sqrt{d_h}+M)\,V`:
  ``F.scaled_dot_product_attention``,

with the same :math:`\epsilon`, the biased variance, and the causal mask :math:`M`
(``is_causal=True``; QK-norm, where the model has it, is applied to :math:`Q` and
:math:`K` before the kernel, as in the written-out form). The results agree to float
rounding, not bit for bit: the kernels sum in another order.

A module uses its kernel while its ``fused`` flag is set, and :func:`use_kernels` sets
the flags of a whole model for the length of a ``with`` block. :data:`FUSED_ON` says,
per device type, which modules switch. On the CPU each was measured
(``benchmarks/train_speed.py`` times whole training steps on both paths): RMSNorm keeps
its written-out form there, where chapter 7 measured ``F.rms_norm`` slower than the
written-out form at its sizes. The CUDA and MPS entries are torch's fused kernels on
those devices, not measured here (no GPU was at hand). DyT and ReZero have no kernel to
swap: they are element-wise already. The optimizer's fused step is chosen by
:func:`~prenorm.train` (``kernels="fused"``), not here.

**Mixed precision.** Under fp16 autocast (a T4) the two paths are not the same numbers:
``F.layer_norm`` and the attention kernel accumulate in fp32, while the written-out forms
compute :math:`(x-\mu)^2` and :math:`QK^\top` in fp16, which overflow above about 256
and 65504 respectively. The fused path is then the more accurate one, and an fp16 run
that the written-out path would lose to an overflow may train on the fused path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .blocks import CausalSelfAttention
from .norms import LayerNorm, RMSNorm

#: The two ways to run the model: ``"reference"``, the written-out operations the
#: chapters show; ``"fused"``, torch's kernels where :data:`FUSED_ON` lists them.
KERNELS = ("reference", "fused")

#: Per device type, the module classes whose fused kernel is used on the fast path.
FUSED_ON: dict[str, tuple[type[nn.Module], ...]] = {
    "cpu": (LayerNorm, CausalSelfAttention),
    "cuda": (LayerNorm, RMSNorm, CausalSelfAttention),
    "mps": (LayerNorm, CausalSelfAttention),
}


def check_kernels(kernels: object) -> str:
    """``kernels`` if it is one of :data:`KERNELS`; otherwise a ``ValueError`` naming it."""
    if not isinstance(kernels, str) or kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {list(KERNELS)}, got {kernels!r}")
    return kernels


@contextlib.contextmanager
def use_kernels(
    model: nn.Module, kernels: str = "fused", device: torch.device | str | None = None
) -> Iterator[nn.Module]:
    """Run ``model``'s norms and attention through torch's fused kernels
    (``kernels="fused"``, for the modules :data:`FUSED_ON` lists for ``device``, by
    default the device of the model's first parameter) or through their written-out
    operations (``"reference"``) inside the ``with`` block; every module's flag is put
    back as it was on exit, so blocks nest. Yields the model."""
    check_kernels(kernels)
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    swap = FUSED_ON.get(torch.device(device).type, ())
    before = [(m, m.fused) for m in model.modules() if hasattr(m, "fused")]
    try:
        for m, _ in before:
            m.fused = kernels == "fused" and isinstance(m, swap)
        yield model
    finally:
        for m, flag in before:
            m.fused = flag
