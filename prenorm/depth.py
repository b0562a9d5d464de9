r"""Depth-scaling analyses of gradients and of the residual stream: how a quantity
measured per layer (by the probes of :mod:`prenorm.probes`) changes along a stack and
with its depth.

Each function takes the tidy frames the probes return and gives back a small table:
the factorization of one residual step checked against its exact Jacobian
(:func:`step_jacobian_check`), the gradient at a layer against the product of the
:math:`1/\sigma` of the norms above it (:func:`attenuation`), the variance argument
step by step (:func:`step_variance`), a per-layer profile's first and last values
(:func:`first_last`), power-law exponents in depth per group (:func:`depth_exponents`);
and :func:`train_and_probe`, which trains a few models and probes each at
initialization and after training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .blocks import SUBLAYERS
from .data import Corpus
from .jacobians import step_jacobian_parts
from .model import TransformerLM, build_model
from .probes import end_to_end_gains, update_sensitivity
from .stats import depth_exponent, t_quantile
from .training import train

__all__ = [
    "against_runs",
    "attenuation",
    "depth_exponents",
    "first_last",
    "inner_layers",
    "labelled",
    "legend_below",
    "linearity_summary",
    "plot_attenuation",
    "plot_power_laws",
    "plot_stages",
    "plot_variance",
    "sequence_gains",
    "step_jacobian_check",
    "step_linearity",
    "step_variance",
    "train_and_probe",
]

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Batch = tuple[Tensor, Tensor]


def step_jacobian_check(model: TransformerLM, tokens: Tensor, layer: int) -> pd.DataFrame:
    r"""Check the factorization of both residual steps of block ``layer`` at its residual
    input for one sequence ``tokens`` (token ids, shape ``(1, T)``), with the exact
    Jacobians of :func:`~prenorm.step_jacobian_parts`.

    One row per sublayer: ``factor_err``
    :math:`\max|J_{\text{step}} - J_{\text{norm}}(\alpha I + J_F)|` (zero up to float
    error for every placement: it checks the code), ``identity_gap``
    :math:`\max|J_{\text{step}} - (I + J_F)|` (zero up to float error exactly when no norm
    sits on the sum and :math:`\alpha = 1`: Pre-LN) and ``branch_norm``
    :math:`\|J_F\|_2`, the branch Jacobian's spectral norm."""
    if not 0 <= layer < model.n_layers:
        raise ValueError(f"layer must lie in [0, {model.n_layers}), got {layer}")
    x = model.residual_stream(model.embed(tokens))[layer][0].detach()
    rows = []
    for which in SUBLAYERS:
        parts = step_jacobian_parts(model.blocks[layer], x, which)
        eye = torch.eye(parts["step"].shape[0])
        factored = parts["norm"] @ (parts["skip"] + parts["branch"])
        rows.append(
            {
                "sublayer": which,
                "factor_err": (parts["step"] - factored).abs().max().item(),
                "identity_gap": (parts["step"] - (eye + parts["branch"])).abs().max().item(),
                "branch_norm": torch.linalg.matrix_norm(parts["branch"], 2).item(),
            }
        )
    return pd.DataFrame(rows)


def sequence_gains(
    model: TransformerLM,
    batch: Batch,
    layers: list[int] | None = None,
    samples: int = 8,
    seed: int = 0,
) -> pd.DataFrame:
    r""":func:`~prenorm.end_to_end_gains` as a probe of a batch ``(x, targets)`` holding one
    sequence, so that :func:`~prenorm.probe_sweep` can run it: the typical gain
    :math:`\|\partial x_L/\partial x_l\|_F/\sqrt{Td}` of the stack from each of ``layers``
    to the top, from ``samples`` random vector-Jacobian products."""
    return end_to_end_gains(model, batch[0], layers=layers, samples=samples, seed=seed)


def step_linearity(
    model: TransformerLM, batch: Batch, lr: float, halvings: int = 2
) -> pd.DataFrame:
    r"""Is one Adam-sized step (:func:`~prenorm.update_sensitivity`) in the linear regime?
    The step :math:`-\eta\,\mathrm{sign}(\nabla\mathcal L)` is exactly proportional to
    :math:`\eta`, so the output change :math:`\Delta(\eta) = a\eta + b\eta^2 + \dots`
    halves with :math:`\eta` exactly when the higher-order terms are negligible.

    Measures :math:`\Delta` at :math:`\eta_k = \mathrm{lr}/2^k`, :math:`k = 0, \dots,`
    ``halvings``. One row per :math:`\eta_k`: ``lr``, ``rel_output_change`` and
    ``halving_ratio`` :math:`\Delta(\eta_k)/\Delta(\eta_{k+1})` (2 in the linear
    regime; NaN for the last :math:`k`), plus the model's
    :meth:`~prenorm.TransformerLM.describe` columns. A ratio that approaches 2 as
    :math:`k` grows locates the departure in the second- and higher-order terms."""
    if not (isinstance(halvings, int) and halvings >= 1):
        raise ValueError(f"halvings must be a positive integer, got {halvings!r}")
    frames = [update_sensitivity(model, batch, lr=lr / 2**k) for k in range(halvings + 1)]
    out = pd.concat(frames, ignore_index=True)
    change = out.rel_output_change.to_numpy()
    out["halving_ratio"] = np.append(change[:-1] / change[1:], np.nan)
    return out


@dataclass(frozen=True)
class LinearitySummary:
    r"""What :func:`linearity_summary` found: the ``table`` (one row per model: the output
    change at :math:`\eta` and the two halving ratios), the smallest and largest first
    ratio, how many of the ``n`` models are within ``tol`` of 2 (``n_linear``) and
    ``detail``, the clause the prose glues."""

    table: pd.DataFrame
    lin_min: float
    lin_max: float
    n_linear: int
    n: int
    detail: str


def linearity_summary(
    change: pd.Series, half: pd.Series, quarter: pd.Series, tol: float = 0.1
) -> LinearitySummary:
    r"""Whether each model's one-step output change :math:`\Delta(\eta)` (``change``) is in
    the linear regime, from the changes at :math:`\eta/2` (``half``) and :math:`\eta/4`
    (``quarter``), all indexed by ``(placement, init)``. The first ratio
    :math:`\Delta(\eta)/\Delta(\eta/2)` is 2 when the higher-order terms of
    :math:`\Delta = a\eta + b\eta^2 + \dots` are negligible; a model counts as linear
    when it is within ``tol`` of 2. For the model furthest from 2, ``detail`` also says
    whether the second ratio :math:`\Delta(\eta/2)/\Delta(\eta/4)` is closer to 2, as
    it must be when the departure comes from those terms."""
    from .plotting import PLACEMENT_LABELS

    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol!r}")
    for name, s in (("half", half), ("quarter", quarter)):
        if not s.index.equals(change.index):
            raise ValueError(f"{name} must have the index of change ({list(change.index)})")
    first, second = change / half, half / quarter
    linear = (first - 2).abs() <= tol
    if linear.all():
        detail = f"every step moves the logits by at most {change.max():.2g} of their norm"
    else:
        w = (first - 2).abs().idxmax()  # the model furthest from the linear regime
        closer = abs(second[w] - 2) < abs(first[w] - 2)
        moved = change[linear].max() if linear.any() else math.nan
        label = PLACEMENT_LABELS.get(w[0], w[0])
        detail = (
            f"their steps move the logits by at most {moved:.2f} of their norm, the "
            f"others' by at least {change[~linear].min():.2f}. The furthest from 2, "
            f"{label} under {w[1]} (ratio {first[w]:.2f}), moves its logits by "
            f"{change[w]:.2f} of their own norm in one step: a step that large is not small, "
            "and the second- and higher-order terms are a large part of the output change. "
            f"Halving once more, its ratio is {second[w]:.2f}, "
            + (
                "closer to 2, as it must be when those terms shrink faster than the linear one"
                if closer
                else "no closer to 2"
            )
            + ". At the deepest depth some of the changes above are therefore past the linear "
            "regime, which bends those curves down and lowers their fitted exponents"
        )
    table = pd.DataFrame(
        {"change at eta": change, "eta / (eta/2)": first, "(eta/2) / (eta/4)": second}
    )
    return LinearitySummary(
        table, float(first.min()), float(first.max()), int(linear.sum()), len(linear), detail
    )


def against_runs(
    value: float,
    runs: Sequence[float] | pd.Series | np.ndarray,
    level: float = 0.95,
    words: tuple[str, str, str] = ("smaller than", "not distinguishable from", "larger than"),
    tol: float | None = None,
    undecided: str = "undecided",
) -> tuple[str, float, float]:
    r"""Whether one run's ``value`` lies outside the spread of other ``runs``: the
    Student-t prediction interval at ``level`` for one more run,
    :math:`\bar r \pm t_{(1+\text{level})/2,\,n-1}\, s \sqrt{1 + 1/n}` over the ``n``
    values of ``runs`` (:math:`s` their SD, ``ddof=1``). Returns ``(word, lo, hi)`` with
    ``words[0]`` below the interval, ``words[2]`` above it and ``words[1]`` inside, so a
    single run is called larger or smaller only when it differs by more than the runs'
    own seed-to-seed spread allows. With one run in ``runs`` the spread is unknown and
    the interval is :math:`(-\infty, \infty)`. With a ``tol``, ``words[1]`` is kept only
    for an interval whose half-width is at most ``tol`` (then "inside" means within
    ``tol`` of the runs' mean); a value inside a wider interval gets ``undecided``: the
    runs are too few to resolve the comparison."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if not (isinstance(words, tuple) and len(words) == 3):
        raise ValueError(
            f"words must be a tuple of 3 strings (below, inside, above), got {words!r}"
        )
    if tol is not None and not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol must be None or a positive number, got {tol!r}")
    if not (isinstance(undecided, str) and undecided.strip()):
        raise ValueError(f"undecided must be a non-empty string, got {undecided!r}")
    r = np.asarray(runs, dtype=float)
    if r.ndim != 1 or len(r) == 0 or np.isnan(r).any():
        raise ValueError(f"runs must be a non-empty 1-D sequence without NaN, got {runs!r}")
    if not math.isfinite(value):
        raise ValueError(f"value must be finite, got {value!r}")
    if len(r) == 1:
        lo, hi = -math.inf, math.inf
    else:
        half = t_quantile((1 + level) / 2, len(r) - 1) * r.std(ddof=1) * math.sqrt(1 + 1 / len(r))
        lo, hi = float(r.mean() - half), float(r.mean() + half)
    inside = words[1] if tol is None or (hi - lo) / 2 <= tol else undecided
    word = words[0] if value < lo else words[2] if value > hi else inside
    return word, lo, hi


def attenuation(
    hidden: pd.DataFrame,
    scales: pd.DataFrame,
    layer: int = 1,
    by: Sequence[str] = ("init", "n_layers", "seed"),
) -> pd.DataFrame:
    r"""The gradient at :math:`x_l` (``l = layer``) relative to the top of the stack,
    against the compounding prediction, per model.

    ``hidden`` is :func:`~prenorm.hidden_grad_norms` output (``layer``, ``relative``),
    ``scales`` :func:`~prenorm.norm_input_scales` output, each with the columns ``by``
    naming one model. ``measured`` is :math:`\|g_l\|/\|g_L\|`; ``predicted`` is
    :math:`\prod 1/\sigma` over every norm at step position :math:`\ge 2l` (the norms
    between :math:`x_l` and the top), each :math:`1/\sigma` its mean over tokens."""
    by = list(by)
    predicted = (
        scales[scales.position >= 2 * layer].groupby(by).inv_scale_mean.prod().rename("predicted")
    )
    measured = hidden[hidden.layer == layer].set_index(by).relative.rename("measured")
    return pd.concat([predicted, measured], axis=1).reset_index()


def step_variance(steps: pd.DataFrame, by: str = "init") -> pd.DataFrame:
    r"""The variance argument, step by step, from :func:`~prenorm.step_gradients` rows of
    steps with an after-norm (Post-LN), averaged per group ``by``.

    With :math:`\rho = \|F(x)\|/\|x\|` and :math:`\sigma` the after-norm's scale, the argument
    predicts :math:`\sigma^2 \approx 1 + \rho^2` and a residual-factor gain
    :math:`\|(I + J_F)^\top u\|/\|u\| \approx \sigma`, hence a per-step gradient gain near 1.
    Columns: ``sigma`` and ``rho`` (means), ``sigma_sq_over_1_plus_rho_sq`` (mean of
    :math:`\sigma^2/(1+\rho^2)`), ``residual_gain_over_sigma`` (mean of the residual gain
    over :math:`\sigma`) and ``step_gain_geomean``,
    :math:`\exp(\mathrm{mean}\,\log \text{gain})`."""
    s = steps.assign(
        sigma_sq_over_1_plus_rho_sq=steps.sigma**2 / (1 + steps.branch_ratio**2),
        residual_gain_over_sigma=steps.residual_gain / steps.sigma,
    )
    return s.groupby(by).agg(
        sigma=("sigma", "mean"),
        rho=("branch_ratio", "mean"),
        sigma_sq_over_1_plus_rho_sq=("sigma_sq_over_1_plus_rho_sq", "mean"),
        residual_gain_over_sigma=("residual_gain_over_sigma", "mean"),
        step_gain_geomean=("gain", _geomean),
    )


def _geomean(values: pd.Series) -> float:
    return float(np.exp(np.log(values).mean()))


def first_last(
    frame: pd.DataFrame,
    value: str,
    index: str | Sequence[str],
    first: int | None = None,
    last: int | None = None,
) -> pd.DataFrame:
    r"""The first and last values of a per-layer profile, and their ratio.

    ``frame`` has a ``layer`` column and the columns ``index`` naming one profile;
    ``value`` is averaged over the rows of each (profile, layer) (seeds, say). ``first``
    and ``last`` default to the smallest and largest layer in ``frame``. Columns:
    ``first``, ``last`` and ``last / first``."""
    index = [index] if isinstance(index, str) else list(index)
    first = int(frame.layer.min()) if first is None else first
    last = int(frame.layer.max()) if last is None else last
    means = frame.groupby([*index, "layer"])[value].mean().unstack("layer")
    missing = [l for l in (first, last) if l not in means.columns]
    if missing:
        raise ValueError(f"layers {missing} are not in the frame")
    out = pd.DataFrame({"first": means[first], "last": means[last]})
    out["last / first"] = out["last"] / out["first"]
    return out


def inner_layers(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the layers strictly between the first and the last layer of ``frame``
    (column ``layer``): where the first and last layers, which a model often leans on,
    are left out. A stack of one or two layers has none between; then the rows of every
    layer but the first."""
    layers = sorted(frame.layer.unique())
    keep = layers[1:-1] if len(layers) > 2 else layers[1:]
    return frame[frame.layer.isin(keep)]


def depth_exponents(
    frame: pd.DataFrame, value: str, by: str | Sequence[str], x: str = "n_layers"
) -> pd.Series:
    r"""The exponent :math:`k` of :math:`\text{value} \propto x^k` for each group ``by``:
    :func:`~prenorm.depth_exponent` on all the group's rows (seeds included as points).
    Returns a Series indexed by the groups."""
    return frame.groupby(by)[[x, value]].apply(lambda g: depth_exponent(g[x], g[value]))


def labelled(values: Mapping[object, float] | pd.Series, fmt: str = ".2f") -> str:
    """Values with their labels as one phrase, ``"0.25 (gpt2), 0.36 (pytorch)"``, in the
    order given; ``fmt`` is a format spec for each value."""
    return ", ".join(f"{v:{fmt}} ({k})" for k, v in values.items())


def train_and_probe(
    data: Corpus,
    configs: Sequence[Mapping[str, object]],
    model_kwargs: Mapping[str, object],
    batch: Batch,
    probes: Sequence[Callable[..., pd.DataFrame]],
    at_init: Sequence[Callable[..., pd.DataFrame]] = (),
    device: torch.device | str | None = None,
    **train_kwargs: object,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train one model per config and probe it on one fixed ``batch``.

    Each config holds model arguments (overriding ``model_kwargs``) and ``seed``
    (default 0), which seeds both the initialization and the batches
    (:func:`~prenorm.train` with ``train_kwargs``). Each probe of ``at_init`` runs on the
    fresh model (``stage = "at init"``), each of ``probes`` on the trained one
    (``stage = "trained"``), in this process and with its thread settings
    (:func:`~prenorm.sweep` with ``probes`` runs each model with one thread, which can
    move the last bits). Returns ``(runs, probed)``: one row per config (the config,
    ``final_val_loss``, ``diverged``, ``diverged_at``, ``seconds``) and one row per probe
    row (with ``probe``, the function's name, ``stage`` and the config). Empty frames
    for no configs."""
    runs, probed = [], []
    for config in configs:
        seed = int(config.get("seed", 0))
        kwargs = {**model_kwargs, **{k: v for k, v in config.items() if k != "seed"}}
        model = build_model(seed=seed, device=device, **kwargs)
        meta = {**config, "seed": seed}
        for fn in at_init:
            probed.append(fn(model, batch).assign(probe=fn.__name__, stage="at init", **meta))
        r = train(model, data, seed=seed, device=device, **train_kwargs)
        for fn in probes:
            probed.append(fn(model, batch).assign(probe=fn.__name__, stage="trained", **meta))
        runs.append(
            {
                **meta,
                "final_val_loss": r.final_val_loss,
                "diverged": r.diverged,
                "diverged_at": r.diverged_at,
                "seconds": r.seconds,
            }
        )
    return (
        pd.DataFrame(runs),
        pd.concat(probed, ignore_index=True) if probed else pd.DataFrame(),
    )


# ---- figures (matplotlib is imported on first use) ---------------------------------------
def plot_variance(steps: pd.DataFrame, by: str = "init") -> Figure:
    r"""The variance argument step by step, one colour per init (``by``): left,
    :math:`\sigma` against :math:`\sqrt{1+\rho^2}`; right, the gain of
    :math:`(I + J_F)^\top` against :math:`\sigma`; the diagonal dotted on both, where
    the argument puts every step. ``steps`` are :func:`~prenorm.step_gradients` rows of
    steps with an after-norm. Returns the figure."""
    import matplotlib.pyplot as plt

    from .plotting import INIT_COLORS, TEXT_WIDTH

    fig, axes = plt.subplots(1, 2, figsize=(TEXT_WIDTH, 3.5))
    for key, grp in steps.groupby(by):
        color = INIT_COLORS.get(key)
        axes[0].scatter(
            np.sqrt(1 + grp.branch_ratio**2), grp.sigma, s=8, alpha=0.6, color=color, label=key
        )
        axes[1].scatter(grp.sigma, grp.residual_gain, s=8, alpha=0.6, color=color)
    for ax in axes:
        lo = min(ax.get_xlim()[0], ax.get_ylim()[0])
        hi = max(ax.get_xlim()[1], ax.get_ylim()[1])
        ax.plot([lo, hi], [lo, hi], color="0.4", lw=0.8, ls=":")
    axes[0].set_xlabel(r"$\sqrt{1+\rho^2}$")
    axes[0].set_ylabel(r"$\sigma$")
    axes[1].set_xlabel(r"$\sigma$")
    axes[1].set_ylabel(r"gain of $(I+J_F)^\top$")
    axes[0].legend(markerscale=2)
    fig.tight_layout()
    return fig


def legend_below(fig: Figure, axes: Sequence[Axes] | np.ndarray, ncol: int = 4) -> Figure:
    """One legend for the whole figure, below its panels, off the data: the entries of the
    first of ``axes`` that has a legend, in ``ncol`` columns; every axes' own legend is
    removed. Placement keys are printed as names ("Post-LN")."""
    from .plotting import PLACEMENT_LABELS

    flat = list(np.ravel(axes))
    source = next((ax for ax in flat if ax.get_legend() is not None), None)
    if source is None:
        raise ValueError("none of the axes has a legend to move below the figure")
    handles, labels = source.get_legend_handles_labels()
    for ax in flat:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    labels = [PLACEMENT_LABELS.get(label, label) for label in labels]
    fig.legend(handles, labels, ncol=ncol, loc="lower center", frameon=False)
    rows = -(-len(labels) // ncol)
    fig.tight_layout(rect=(0, 0.07 * rows, 1, 1))
    return fig


def plot_attenuation(frame: pd.DataFrame, ax: Axes, by: str = "init") -> Axes:
    """:func:`attenuation` against depth: per group ``by`` (one colour per init), the mean
    over seeds of ``measured`` (solid, with markers) and ``predicted`` (dashed), on a log
    scale with the depths as ticks."""
    from .plotting import INIT_COLORS, depth_axis

    for key, grp in frame.groupby(by):
        m = grp.groupby("n_layers")[["measured", "predicted"]].mean()
        ax.plot(m.index, m.measured, "o-", color=INIT_COLORS.get(key), label=key)
        ax.plot(m.index, m.predicted, "--", color=INIT_COLORS.get(key))
    ax.set_yscale("log")
    depth_axis(ax, sorted(frame.n_layers.unique()))
    return ax


def plot_power_laws(
    frame: pd.DataFrame, value: str, slopes: Mapping[str, float], ax: Axes, by: str = "placement"
) -> Axes:
    r"""Reference power laws :math:`y_0 (L/L_0)^k` (dashed, in the placement's colour), one
    per group ``by`` with its exponent ``slopes[group]``, through the group's mean
    ``value`` at the smallest depth :math:`L_0` of ``frame`` (column ``n_layers``)."""
    from .plotting import PLACEMENT_COLORS

    depths = np.array(sorted(frame.n_layers.unique()))
    for key, k in slopes.items():
        at = frame[(frame[by] == key) & (frame.n_layers == depths[0])]
        y0 = at[value].mean()
        ax.plot(depths, y0 * (depths / depths[0]) ** k, "--", color=PLACEMENT_COLORS[key], lw=1)
    return ax


def plot_stages(
    frame: pd.DataFrame,
    value: str,
    ax: Axes,
    by: str = "placement",
    yscale: str = "log",
    **scale_kwargs: object,
) -> Axes:
    """A per-layer profile at each stage of training: one line of the mean ``value`` per
    layer (over seeds) for each (``by``, ``stage``) of ``frame`` (``stage`` as
    :func:`train_and_probe` writes it), in the placement's colour, solid for
    ``"trained"`` and dashed, fainter, for any other stage; labelled
    ``"<placement>, <stage>"``; y axis in ``yscale`` (with ``scale_kwargs``)."""
    from .plotting import PLACEMENT_COLORS, PLACEMENT_LABELS

    means = frame.groupby([by, "stage", "layer"])[value].mean().reset_index()
    for (key, stage), grp in means.groupby([by, "stage"]):
        done = stage == "trained"
        ax.plot(
            grp.layer,
            grp[value],
            "o-" if done else "o--",
            ms=3,
            color=PLACEMENT_COLORS[key],
            alpha=1 if done else 0.5,
            label=f"{PLACEMENT_LABELS[key]}, {stage}",
        )
    ax.set_yscale(yscale, **scale_kwargs)
    ax.set_xlabel("layer index $l$")
    return ax
