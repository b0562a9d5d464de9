"""prenorm: where the LayerNorm goes in a transformer, as code you can run.

Norms and their Jacobians (:mod:`prenorm.norms`), blocks with the norm in
different places (:mod:`prenorm.blocks`), a small character LM
(:mod:`prenorm.model`), probes of forward and backward scale
(:mod:`prenorm.probes`), an offline corpus (:mod:`prenorm.data`), training helpers
(:mod:`prenorm.training`), devices and scale presets (:mod:`prenorm.devices`), and
the book's plotting style (:mod:`prenorm.plotting`).
"""

from .blocks import MLP, PLACEMENTS, SUBLAYERS, Block, CausalSelfAttention, Placement, get_placement
from .data import CORPORA, Corpus, gaussian_batch, load_corpus
from .devices import PRESETS, SCALES, Scale, amp_dtype, device, scale, setup_cpu
from .model import INITS, TransformerLM, build_model
from .norms import NORMS, LayerNorm, RMSNorm, layernorm_jacobian, make_norm, rmsnorm_jacobian
from .plotting import (
    INIT_COLORS,
    NORM_COLORS,
    PLACEMENT_COLORS,
    PLACEMENT_LABELS,
    draw_placements,
    glue,
    label_placements,
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
    layer_ablation,
    norm_input_scales,
    param_grad_norms,
    probe_sweep,
    residual_norms,
    spectral_norm,
    step_jacobian_parts,
    update_sensitivity,
)
from .training import OPTIMIZERS, SCHEDULES, TrainResult, evaluate, lr_at, sweep, train

__version__ = "0.1.0"

__all__ = [
    "CORPORA",
    "INITS",
    "INIT_COLORS",
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
    "draw_placements",
    "end_to_end_spectral_norms",
    "evaluate",
    "gaussian_batch",
    "get_placement",
    "glue",
    "hidden_grad_norms",
    "label_placements",
    "layer_ablation",
    "layernorm_jacobian",
    "load_corpus",
    "lr_at",
    "make_norm",
    "norm_input_scales",
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
    "step_jacobian_parts",
    "sweep",
    "train",
    "update_sensitivity",
]
