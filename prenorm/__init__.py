"""prenorm: where the LayerNorm goes in a transformer, as code you can run.

The package is flat, one module per idea, each laid on the ones before it:
norms and their Jacobians (:mod:`prenorm.norms`); blocks with the norm in
different places (:mod:`prenorm.blocks`); a small character LM
(:mod:`prenorm.model`); the training fast path through torch's fused kernels
(:mod:`prenorm.kernels`); exact Jacobians (:mod:`prenorm.jacobians`); per-layer
probes that return DataFrames (:mod:`prenorm.probes`); an offline corpus
(:mod:`prenorm.data`); training (:mod:`prenorm.training`); grids of runs and probes
(:mod:`prenorm.sweeps`); devices and scale presets (:mod:`prenorm.devices`); the
book's plotting style (:mod:`prenorm.plotting`); verdicts computed from measurements
(:mod:`prenorm.verdicts`); timing and pass counts of the norms against the
memory-bandwidth bound (:mod:`prenorm.benchmark`); the claims ledger the chapters write
and the landing page reads (:mod:`prenorm.ledger`); and the one-line chapter setup (:mod:`prenorm.book`). Every named choice is a :class:`Registry`.
"""

from . import ledger
from .benchmark import (
    IMPLEMENTATIONS,
    Implementation,
    compile_problem,
    count_passes,
    norm_module,
    time_norms,
)
from .blocks import (
    ACTIVATIONS,
    MIX_RATIO,
    MLP,
    PLACEMENTS,
    SLOTS,
    SUBLAYERS,
    Block,
    CausalSelfAttention,
    Placement,
    layer_placements,
)
from .claims import ClaimTest
from .data import CORPORA, Corpus, gaussian_batch, load_corpus
from .devices import PRESETS, Scale, amp_dtype, device, scale, setup_cpu
from .jacobians import block_jacobian, branch_jacobian, spectral_norm, step_jacobian_parts
from .kernels import FUSED_ON, KERNELS, check_kernels, use_kernels
from .model import INITS, THEORY_SETTING, TransformerLM, build_model
from .norms import (
    NORMS,
    DyT,
    LayerNorm,
    RMSNorm,
    dyt_jacobian,
    layernorm_jacobian,
    layernorm_welford,
    make_norm,
    rmsnorm_jacobian,
)
from .probes import (
    activation_outliers,
    batch_loss,
    branch_ratios,
    end_to_end_gains,
    end_to_end_spectral_norms,
    hidden_grad_norms,
    layer_ablation,
    max_attention_logits,
    norm_input_scales,
    param_grad_norms,
    residual_norms,
    skip_path,
    step_gradients,
    update_sensitivity,
)
from .registry import Registry, UnknownNameError
from .stats import depth_exponent, paired_difference, rate, steps_to_reach, t_interval, t_quantile
from .sweeps import (
    BACKENDS,
    SEED_POOLING,
    grid_points,
    mean_over_seeds,
    probe_sweep,
    runs_of,
    sweep,
)
from .training import (
    AMP_DTYPES,
    MIN_LOSS_SCALE,
    OPTIMIZERS,
    OUTCOMES,
    SCHEDULES,
    TrainResult,
    evaluate,
    lr_at,
    lr_sensitivity,
    lr_summary,
    outcome,
    resolve_amp,
    train,
)
from .verdicts import (
    COMPARISONS,
    OUTCOMES_OF_PREDICTION,
    VERDICTS,
    Estimate,
    Prediction,
    compare,
    direction,
    failed,
    verdict,
    verdict_of,
)

# Plotting (matplotlib, seaborn) is imported on first use, not here: sweep workers import
# prenorm to train and never plot, and each would pay about a second for it.
_LAZY_PLOTTING = (
    "INIT_COLORS",
    "NORM_COLORS",
    "PLACEMENT_COLORS",
    "PLACEMENT_LABELS",
    "TEXT_WIDTH",
    "depth_axis",
    "draw_placements",
    "glue",
    "label_placements",
    "one_legend",
    "palette",
    "plot_grid",
    "plot_loss_curves",
    "plot_loss_vs_lr",
    "plot_per_layer",
    "set_style",
)

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "COMPARISONS",
    "CORPORA",
    "IMPLEMENTATIONS",
    "INITS",
    "INIT_COLORS",
    "MIX_RATIO",
    "MLP",
    "NORMS",
    "NORM_COLORS",
    "OPTIMIZERS",
    "OUTCOMES",
    "OUTCOMES_OF_PREDICTION",
    "PLACEMENTS",
    "PLACEMENT_COLORS",
    "PLACEMENT_LABELS",
    "Prediction",
    "ClaimTest",
    "Estimate",
    "depth_exponent",
    "paired_difference",
    "rate",
    "runs_of",
    "steps_to_reach",
    "t_interval",
    "t_quantile",
    "verdict_of",
    "PRESETS",
    "SCHEDULES",
    "SLOTS",
    "SUBLAYERS",
    "THEORY_SETTING",
    "VERDICTS",
    "Block",
    "CausalSelfAttention",
    "Corpus",
    "DyT",
    "Implementation",
    "LayerNorm",
    "Placement",
    "RMSNorm",
    "Registry",
    "Scale",
    "TEXT_WIDTH",
    "TrainResult",
    "TransformerLM",
    "UnknownNameError",
    "activation_outliers",
    "batch_loss",
    "amp_dtype",
    "book",
    "block_jacobian",
    "branch_jacobian",
    "branch_ratios",
    "build_model",
    "compare",
    "compile_problem",
    "count_passes",
    "depth_axis",
    "device",
    "direction",
    "dyt_jacobian",
    "draw_placements",
    "end_to_end_gains",
    "end_to_end_spectral_norms",
    "evaluate",
    "failed",
    "gaussian_batch",
    "glue",
    "grid_points",
    "hidden_grad_norms",
    "label_placements",
    "layer_ablation",
    "layer_placements",
    "ledger",
    "layernorm_jacobian",
    "layernorm_welford",
    "load_corpus",
    "lr_at",
    "AMP_DTYPES",
    "FUSED_ON",
    "KERNELS",
    "check_kernels",
    "use_kernels",
    "MIN_LOSS_SCALE",
    "resolve_amp",
    "make_norm",
    "max_attention_logits",
    "norm_input_scales",
    "norm_module",
    "one_legend",
    "outcome",
    "lr_sensitivity",
    "lr_summary",
    "palette",
    "param_grad_norms",
    "plot_grid",
    "plot_loss_curves",
    "plot_loss_vs_lr",
    "plot_per_layer",
    "probe_sweep",
    "residual_norms",
    "rmsnorm_jacobian",
    "scale",
    "set_style",
    "setup_cpu",
    "skip_path",
    "spectral_norm",
    "step_gradients",
    "step_jacobian_parts",
    "time_norms",
    "sweep",
    "mean_over_seeds",
    "SEED_POOLING",
    "train",
    "update_sensitivity",
    "verdict",
]


def __getattr__(name: str) -> object:
    """Import :mod:`prenorm.plotting` and :mod:`prenorm.book` (which uses it) on first
    use, so that ``import prenorm`` does not load matplotlib."""
    import importlib

    if name in _LAZY_PLOTTING:
        return getattr(importlib.import_module(".plotting", __name__), name)
    if name in ("book", "plotting"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
