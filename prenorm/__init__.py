"""prenorm: where the LayerNorm goes in a transformer, as code you can run.

Norms and their Jacobians (:mod:`prenorm.norms`), blocks with the norm in
different places (:mod:`prenorm.blocks`), a small character LM
(:mod:`prenorm.model`), probes of forward and backward scale
(:mod:`prenorm.probes`), an offline corpus (:mod:`prenorm.data`), training helpers
(:mod:`prenorm.training`), devices and scale presets (:mod:`prenorm.devices`), and
the book's plotting style (:mod:`prenorm.plotting`).
"""

from .blocks import MLP, PLACEMENTS, SUBLAYERS, Block, CausalSelfAttention, Placement, get_placement
from .data import CORPORA, Corpus, load_corpus
from .devices import PRESETS, SCALES, Scale, amp_dtype, device, scale, setup_cpu
from .model import INITS, TransformerLM, build_model
from .norms import NORMS, LayerNorm, RMSNorm, layernorm_jacobian, make_norm, rmsnorm_jacobian
from .plotting import (
    NORM_COLORS,
    PLACEMENT_COLORS,
    PLACEMENT_LABELS,
    glue,
    palette,
    plot_grid,
    plot_loss_curves,
    plot_per_layer,
    set_style,
)
from .probes import (
    block_jacobian,
    branch_jacobian,
    branch_ratios,
    end_to_end_spectral_norms,
    hidden_grad_norms,
    param_grad_norms,
    probe_sweep,
    residual_norms,
    spectral_norm,
    update_sensitivity,
)
from .training import OPTIMIZERS, SCHEDULES, TrainResult, evaluate, lr_at, sweep, train

__version__ = "0.1.0"

__all__ = [
    "CORPORA",
    "INITS",
    "MLP",
    "NORMS",
    "NORM_COLORS",
    "OPTIMIZERS",
    "PLACEMENTS",
    "PLACEMENT_COLORS",
    "PLACEMENT_LABELS",
    "PRESETS",
    "SCALES",
    "SCHEDULES",
    "SUBLAYERS",
    "Block",
    "CausalSelfAttention",
    "Corpus",
    "LayerNorm",
    "Placement",
    "RMSNorm",
    "Scale",
    "TrainResult",
    "TransformerLM",
    "amp_dtype",
    "block_jacobian",
    "build_model",
    "branch_jacobian",
    "branch_ratios",
    "device",
    "end_to_end_spectral_norms",
    "evaluate",
    "get_placement",
    "glue",
    "hidden_grad_norms",
    "layernorm_jacobian",
    "load_corpus",
    "lr_at",
    "make_norm",
    "palette",
    "param_grad_norms",
    "plot_grid",
    "plot_loss_curves",
    "plot_per_layer",
    "probe_sweep",
    "residual_norms",
    "rmsnorm_jacobian",
    "scale",
    "set_style",
    "setup_cpu",
    "spectral_norm",
    "sweep",
    "train",
    "update_sensitivity",
]
