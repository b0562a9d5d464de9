r"""The first look at placements and at the norm's Jacobian (chapters 1 and 2).

Placements side by side (:func:`placement_table`, :func:`train_placements`); the
residual stream's growth, against Xiong et al.'s Lemma 2 band for Pre-LN at
initialization, :math:`1 + l/2 \le \mathbb E\|x_l\|^2/d \le 1 + 3l/2`
(:func:`lemma2_band`), and from the first state to the last (:func:`stream_growth`); a
closed-form Jacobian against autograd (:func:`autograd_error`) and the singular values of
the LayerNorm and RMSNorm Jacobians against their closed forms
(:func:`jacobian_spectrum`); and the scale :math:`\sigma` a stack's norms divide by
(:func:`sigma_summary`). The plotting helpers import matplotlib when called.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .blocks import PLACEMENTS, SLOTS
from .data import Corpus
from .model import TransformerLM, build_model
from .norms import layernorm_jacobian, rmsnorm_jacobian
from .probes import Batch, _norm_inputs, _position, hidden_grad_norms
from .training import TrainResult, outcome, train
from .verdicts import Estimate

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "PlacementDemo",
    "autograd_error",
    "jacobian_spectrum",
    "lemma2_band",
    "mark_entropy",
    "norm_jacobian_scale",
    "placement_table",
    "plot_jacobian_spectra",
    "plot_layernorm_geometry",
    "plot_lemma2_band",
    "plot_stream_rms",
    "sigma_deviation",
    "sigma_summary",
    "spectrum_explorer",
    "stream_growth",
    "train_placements",
]

_SLOT_NAMES = {
    "in": "norm on branch input",
    "out": "norm on branch output",
    "after": "norm after the sum",
}


def placement_table(placements: Sequence[str] | None = None) -> pd.DataFrame:
    """Where each placement of :data:`~prenorm.PLACEMENTS` (default: all of them) puts a
    norm: one row per placement, one boolean column per slot of :data:`~prenorm.SLOTS`
    (on the branch input, on the branch output, after the sum) and ``final norm`` (a norm
    before the output head)."""
    names = list(PLACEMENTS) if placements is None else list(placements)
    rows = {}
    for name in names:
        spec = PLACEMENTS[name]
        rows[name] = {_SLOT_NAMES[s]: spec.has(s) for s in SLOTS} | {"final norm": spec.final_norm}
    return pd.DataFrame(rows).T


@dataclass(frozen=True)
class PlacementDemo:
    """One training run per placement (:func:`train_placements`): ``results`` maps each
    placement to its :class:`~prenorm.TrainResult`; ``table`` has one row per placement
    with its ``final validation loss`` and ``outcome`` (:func:`~prenorm.outcome`);
    ``histories`` concatenates the runs' histories with ``placement``, ``seed`` and
    ``diverged`` columns (what :func:`~prenorm.plot_loss_curves` draws); ``grad_at_init``
    is, per placement, the gradient at the first hidden state :math:`x_1` over the
    gradient at the top :math:`x_L`, before training
    (:func:`~prenorm.hidden_grad_norms`'s ``relative`` at layer 1)."""

    results: dict[str, TrainResult]
    table: pd.DataFrame
    histories: pd.DataFrame
    grad_at_init: pd.Series


def train_placements(
    corpus: Corpus,
    placements: Sequence[str],
    batch: Batch,
    entropy: float,
    margin: float,
    model_kwargs: Mapping[str, object],
    seed: int = 0,
    device: torch.device | str | None = None,
    **train_kwargs: object,
) -> PlacementDemo:
    """Build one model per placement from the same ``seed`` (``model_kwargs`` fixes the
    rest: depth, init, width, ...) on ``device``, measure its gradient ratio at
    initialization on ``batch``, then train it there with :func:`~prenorm.train`
    (``train_kwargs``: ``steps``, ``lr``, ...) and classify the run against the unigram ``entropy`` with ``margin``.
    Returns a :class:`PlacementDemo`."""
    results, rows, histories, at_init = {}, {}, [], {}
    for placement in placements:
        model = build_model(seed=seed, placement=placement, device=device, **model_kwargs)
        at_init[placement] = float(hidden_grad_norms(model, batch).relative.iloc[1])
        r = train(model, corpus, device=device, **train_kwargs)
        results[placement] = r
        rows[placement] = {
            "final validation loss": r.final_val_loss,
            "outcome": outcome(r, entropy, margin),
        }
        histories.append(r.history.assign(placement=placement, seed=seed, diverged=r.diverged))
    return PlacementDemo(
        results=results,
        table=pd.DataFrame(rows).T,
        histories=pd.concat(histories, ignore_index=True),
        grad_at_init=pd.Series(at_init, name="gradient at x_1 / gradient at x_L, at init"),
    )


def lemma2_band(states: pd.DataFrame, value: str = "ms") -> pd.DataFrame:
    r"""Pre-LN's mean square per layer against Xiong et al.'s Lemma 2,
    :math:`1 + l/2 \le \mathbb E\|x_l\|^2/d \le 1 + 3l/2`. ``states`` holds rows of
    :func:`~prenorm.residual_norms` (several seeds) with ``layer`` and ``value``. One row
    per layer :math:`l`: ``mean`` and ``sem`` (standard error over the rows) of ``value``,
    the band's ends ``lo`` :math:`= 1 + l/2` and ``hi`` :math:`= 1 + 3l/2`, and ``below``
    :math:`= (lo - mean)/sem` and ``above`` :math:`= (mean - hi)/sem`, how many standard
    errors the mean lies below or above the band (negative inside it)."""
    band = states.groupby("layer")[value].agg(["mean", "sem"])
    l = band.index.to_numpy()
    band["lo"], band["hi"] = 1 + l / 2, 1 + 3 * l / 2
    band["below"] = ((1 + l / 2) - band["mean"]) / band["sem"]
    band["above"] = (band["mean"] - (1 + 3 * l / 2)) / band["sem"]
    return band


def stream_growth(
    norms: pd.DataFrame, value: str = "rms", run: Sequence[str] = ("init", "n_layers", "seed")
) -> pd.DataFrame:
    r"""The growth of the residual stream from its first state to its last, per run:
    :math:`g = v_L / v_0` for ``value`` :math:`v` (the RMS, say) of
    :func:`~prenorm.residual_norms` rows, where :math:`L` is each run's ``n_layers``. One
    row per run (the columns ``run`` identify it) with ``growth``."""
    run = list(run)
    first = norms[norms.layer == 0].set_index(run)[value]
    last = norms[norms.layer == norms.n_layers].set_index(run)[value]
    return (last / first).rename("growth").reset_index()


def autograd_error(fn: Callable[[Tensor], Tensor], jacobian: Tensor, x: Tensor) -> float:
    r"""How far closed-form Jacobians are from autograd's: for the rows :math:`x_i` of
    ``x`` (shape ``(n, d)``) and ``jacobian`` the closed forms :math:`J_i` (shape
    ``(n, d, d)``), :math:`\max |J - A| / \max |A|` over all entries, with :math:`A_i` the
    Jacobian of ``fn`` at :math:`x_i` by :func:`torch.func.jacrev`."""
    if x.ndim != 2 or jacobian.shape != (*x.shape, x.shape[-1]):
        raise ValueError(
            f"x must be (n, d) and jacobian (n, d, d); got {x.shape}, {jacobian.shape}"
        )
    auto = torch.stack([torch.func.jacrev(fn)(xi) for xi in x])
    return ((jacobian - auto).abs().max() / auto.abs().max()).item()


def jacobian_spectrum(x: Tensor, norm: str = "layernorm", eps: float = 0.0) -> pd.DataFrame:
    r"""The singular values of a norm's Jacobian at one token ``x`` (:math:`\gamma = 1`)
    next to their closed form. For LayerNorm, with :math:`\sigma = \sqrt{\mathrm{Var}(x) +
    \epsilon}`: :math:`1/\sigma` (:math:`d - 2` times), :math:`\epsilon/\sigma^3`, 0; for
    RMSNorm, with :math:`r = \sqrt{\overline{x^2} + \epsilon}`: :math:`1/r`
    (:math:`d - 1` times), :math:`\epsilon/r^3`. One row per singular value, largest
    first: ``norm``, ``eps``, ``scale`` (:math:`\sigma` or :math:`r`), ``index``,
    ``singular_value`` and ``predicted``."""
    if x.ndim != 1:
        raise ValueError(f"x must be one token, shape (d,); got {tuple(x.shape)}")
    d = x.shape[0]
    if norm == "layernorm":
        s = (x.var(unbiased=False) + eps).sqrt().item()
        sv = torch.linalg.svdvals(layernorm_jacobian(x, eps=eps))
        predicted = [1 / s] * (d - 2) + [eps / s**3, 0.0]
    elif norm == "rmsnorm":
        s = (x.pow(2).mean() + eps).sqrt().item()
        sv = torch.linalg.svdvals(rmsnorm_jacobian(x, eps=eps))
        predicted = [1 / s] * (d - 1) + [eps / s**3]
    else:
        raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {norm!r}")
    return pd.DataFrame(
        {
            "norm": norm,
            "eps": eps,
            "scale": s,
            "index": np.arange(d),
            "singular_value": sv.tolist(),
            "predicted": predicted,
        }
    )


def sigma_summary(scales: pd.DataFrame, by: str = "init") -> pd.DataFrame:
    r"""The scale :math:`\sigma` a stack's norms divide by, per level of ``by``, from rows
    of :func:`~prenorm.norm_input_scales` (several seeds): ``sigma_mean``, ``sigma_min``,
    ``sigma_max`` of the per-norm ``scale_mean``; ``prod_inv_sigma``, the product
    :math:`\prod_k 1/\sigma_k` over the norms of one model (the post's compounding
    factor), averaged over seeds; and ``sigma_pct``, :math:`100\max_k|\sigma_k - 1|`."""
    summary = scales.groupby(by).agg(
        sigma_mean=("scale_mean", "mean"),
        sigma_min=("scale_mean", "min"),
        sigma_max=("scale_mean", "max"),
    )
    summary["prod_inv_sigma"] = (
        scales.groupby([by, "seed"]).inv_scale_mean.prod().groupby(by).mean()
    )
    summary["sigma_pct"] = [
        100 * float((scales[scales[by] == level].scale_mean - 1).abs().max())
        for level in summary.index
    ]
    return summary


def norm_jacobian_scale(model: TransformerLM, batch: Batch, tokens: int = 8) -> pd.DataFrame:
    r"""The scale :math:`\sigma` every norm of ``model``'s blocks divides by, and its
    Jacobian's spectral norm measured against :math:`\max_i|\gamma_i|/\sigma`.

    The inputs :math:`s` each norm sees on ``batch`` are recorded in one forward pass.
    Over all tokens: ``scale_mean`` (the mean of :math:`\sigma(s)`, as
    :func:`~prenorm.norm_input_scales`) and ``inv_scale_mean`` (of :math:`1/\sigma`). At
    the first ``tokens`` tokens: the Jacobian of the norm module by reverse-mode
    autograd, its largest singular value :math:`\|J(s)\|_2`, and
    ``ratio_min`` and ``ratio_max``, the extremes over those tokens of
    :math:`\|J(s)\|_2\,\sigma(s)/\max_i|\gamma_i|`. Chapter 2's closed form makes the
    ratio exactly 1 for :math:`\gamma = 1` (:math:`\epsilon` aside) and at most 1 for any
    :math:`\gamma`. One row per (layer, norm): ``layer`` (the block's index from 0),
    ``sublayer``, ``position`` (the residual step, two per block, from 0), ``slot``, the
    columns above, plus the model's :meth:`~prenorm.TransformerLM.describe` columns."""
    if not (isinstance(tokens, int) and tokens >= 1):
        raise ValueError(f"tokens must be a positive integer, got {tokens!r}")
    for blk in model.blocks:
        for _, _, norm in blk.norms():
            if not (hasattr(norm, "scale") and hasattr(norm, "weight")):
                raise TypeError(f"norm {type(norm).__name__} has no scale or weight to compare")
    seen = [
        (l, w, slot, mod, x.reshape(-1, x.shape[-1]))
        for l, w, slot, mod, x in _norm_inputs(model, batch)
    ]
    rows = []
    for l, which, slot, mod, s in seen:
        sigma = mod.scale(s)
        sample = s[:tokens]
        d = sample.shape[-1]
        # reverse-mode autograd, one pass for all rows: copy k of the tokens carries the
        # gradient of output k, so its gradient is row k of each token's Jacobian
        copies = sample.unsqueeze(0).repeat(d, 1, 1).requires_grad_(True)
        with torch.enable_grad():
            out = mod(copies)
            k = torch.arange(d, device=out.device)
            (rows_,) = torch.autograd.grad(out[k, :, k].sum(), copies)
        jac = rows_.permute(1, 0, 2)  # (token, output, input)
        spec = torch.linalg.matrix_norm(jac, ord=2)
        ratio = spec * mod.scale(sample) / mod.weight.detach().abs().max()
        rows.append(
            {
                "layer": l,
                "sublayer": which,
                "position": _position(l, which),
                "slot": slot,
                "scale_mean": sigma.mean().item(),
                "inv_scale_mean": (1 / sigma).mean().item(),
                "ratio_min": ratio.min().item(),
                "ratio_max": ratio.max().item(),
            }
        )
    return pd.DataFrame(rows).assign(**model.describe())


def sigma_deviation(
    scales: pd.DataFrame, by: str = "init", seed: str = "seed", level: float = 0.95
) -> dict[str, Estimate]:
    r"""How far the scale :math:`\sigma` of a stack's norms is from 1, per level of ``by``:
    for each seed, :math:`|\bar\sigma - 1|` with :math:`\bar\sigma` the mean of
    ``scale_mean`` over that model's norms; then the mean over seeds with its Student-t
    interval at ``level`` (:func:`~prenorm.t_interval`). Returns one
    :class:`~prenorm.Estimate` per level."""
    from .stats import t_interval

    for col in (by, seed, "scale_mean"):
        if col not in scales.columns:
            raise KeyError(f"no column {col!r}; columns: {list(scales.columns)}")
    per_seed = (scales.groupby([by, seed]).scale_mean.mean() - 1).abs()
    return {
        str(level_): t_interval(group.to_numpy(), level=level)
        for level_, group in per_seed.groupby(level=by)
    }


# ---- figures --------------------------------------------------------------------------
def mark_entropy(ax: Axes, entropy: float, headroom: float | None = 1.2) -> Axes:
    """Draw the unigram entropy :math:`H` as a labelled dashed line on a loss plot, and
    (with ``headroom``) cap the y axis at :math:`H` + ``headroom``, so that the first
    steps' large losses do not squash the curves."""
    ax.axhline(entropy, color="0.3", ls="--", lw=1.2)
    ax.annotate(
        "unigram entropy $H$",
        (0.98, entropy),
        xycoords=("axes fraction", "data"),
        ha="right",
        va="bottom",
        fontsize=11,
        color="0.3",
    )
    if headroom is not None:
        ax.set_ylim(top=min(ax.get_ylim()[1], entropy + headroom))
    return ax


def plot_lemma2_band(
    band: pd.DataFrame, post: pd.Series | None = None, ax: Axes | None = None
) -> Axes:
    r"""Lemma 2's band for Pre-LN (grey), the Pre-LN means of :func:`lemma2_band` with
    error bars of three standard errors, and optionally Post-LN's per-layer mean square
    ``post`` (indexed by layer), against the block index."""
    import matplotlib.pyplot as plt

    from .plotting import PLACEMENT_COLORS

    ax = ax or plt.gca()
    l = band.index.to_numpy()
    ax.fill_between(l, band["lo"], band["hi"], color="0.88", zorder=0, label="Lemma 2 (Pre-LN)")
    ax.errorbar(
        l,
        band["mean"],
        yerr=3 * band["sem"],
        fmt="o",
        ms=3,
        capsize=2,
        color=PLACEMENT_COLORS["pre"],
        label="Pre-LN",
    )
    if post is not None:
        ax.plot(post.index, post.values, "s", ms=3, color=PLACEMENT_COLORS["post"], label="Post-LN")
    ax.set_xlabel("block index $l$")
    ax.set_ylabel(r"$\|x_l\|^2 / d$")
    ax.legend()
    return ax


def plot_stream_rms(norms: pd.DataFrame, n_layers: int) -> Figure:
    r"""The residual stream at initialization for the stacks of depth ``n_layers`` among
    :func:`~prenorm.residual_norms` rows (several inits and seeds, both placements), in
    two panels on log axes: the Pre-LN stream's RMS :math:`\|x_l\|/\sqrt d` against the
    block index :math:`l`, and its growth from the embedding, RMS of :math:`x_l` over RMS
    of :math:`x_0`; one line per init (mean over seeds, colour and line style and marker
    all differ), Post-LN as one grey reference line (its states after block 1 are exactly
    1 under every init). The legend sits below the panels."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from .plotting import TEXT_WIDTH, _log_axis, palette

    deep = norms[norms.n_layers == n_layers]
    pre = deep[deep.placement == "pre"].copy()
    first = pre[pre.layer == 0].set_index(["init", "seed"]).rms
    pre["growth"] = (
        pre.rms.to_numpy() / first.loc[list(zip(pre.init, pre.seed, strict=True))].to_numpy()
    )
    inits = list(dict.fromkeys(pre.init))
    fig, axes = plt.subplots(1, 2, figsize=(TEXT_WIDTH, 3.6), sharex=True)
    for ax, col, label in (
        (axes[0], "rms", r"Pre-LN RMS $\|x_l\|/\sqrt{d}$"),
        (axes[1], "growth", r"Pre-LN RMS of $x_l$ / RMS of $x_0$"),
    ):
        sns.lineplot(
            data=pre,
            x="layer",
            y=col,
            hue="init",
            style="init",
            hue_order=inits,
            style_order=inits,
            palette=palette("init", inits),
            markers=True,
            dashes=True,
            markersize=5,
            markevery=max(1, n_layers // 8),
            errorbar=None,
            ax=ax,
        )
        ax.set_ylabel(label)
        ax.set_xlabel("block index $l$")
    axes[0].axhline(1.0, color="0.45", ls=":", lw=1.6, label="Post-LN, every init")
    for ax in axes:
        _log_axis(ax)
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes:
        ax.get_legend().remove()
    fig.legend(handles, labels, ncol=len(labels), loc="lower center", frameon=False, fontsize=9.5)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def plot_jacobian_spectra(spectra: pd.DataFrame, floor: float = 1e-12) -> Figure:
    r"""Every singular value of :func:`jacobian_spectrum`'s rows on a log axis, one row of
    the figure per (norm, :math:`\epsilon`, token scale): the numerical SVD of the
    closed-form matrix as dots, the predicted values as open circles, so that the shelf of :math:`d - 2` (or :math:`d - 1`)
    equal values is one point, labelled with its count, and the one or two small values
    stand apart. Values below
    ``floor`` (the exact zeros, and their float round-off) are drawn at ``floor`` as
    left-pointing triangles and read "0". The legend sits below the panel."""
    import matplotlib.pyplot as plt

    from .plotting import NORM_COLORS, TEXT_WIDTH

    names = {"layernorm": "LayerNorm", "rmsnorm": "RMSNorm"}
    groups = list(spectra.groupby(["norm", "eps", "scale"], sort=False))
    fig, ax = plt.subplots(figsize=(TEXT_WIDTH, 0.42 * len(groups) + 1.4))
    labels = []
    for row, ((norm, eps, scale), grp) in enumerate(groups):
        colour = NORM_COLORS.get(norm, "0.3")
        for col, style in (("predicted", "closed"), ("singular_value", "measured")):
            v = grp[col].to_numpy()
            low = v < floor
            kw = (
                {"s": 90, "facecolors": "none", "edgecolors": colour, "linewidths": 1.4}
                if style == "closed"
                else {"s": 16, "color": colour, "zorder": 3}
            )
            ax.scatter(v[~low], np.full((~low).sum(), row), marker="o", **kw)
            ax.scatter(np.full(low.sum(), floor), np.full(low.sum(), row), marker="<", **kw)
        top = grp["singular_value"].max()
        shelf = int((grp["singular_value"] > top * (1 - 1e-9)).sum())
        ax.annotate(
            f"×{shelf}",
            (top, row),
            xytext=(9, 0),
            textcoords="offset points",
            va="center",
            fontsize=9,
            color=colour,
        )
        zeros = int((grp["singular_value"] < floor).sum())
        if zeros > 1:
            ax.annotate(
                f"×{zeros}",
                (floor, row),
                xytext=(9, 0),
                textcoords="offset points",
                va="center",
                fontsize=9,
                color=colour,
            )
        sym = r"\sigma" if norm == "layernorm" else "r"
        labels.append(f"{names.get(norm, norm)}, $\\epsilon$={eps:g}, ${sym}$={scale:.2f}")
    ax.set_xscale("log")
    ax.set_yticks(range(len(groups)), labels)
    ax.invert_yaxis()
    ticks = [t for t in ax.get_xticks() if floor < t <= 10 * spectra.singular_value.max()]
    ax.set_xticks([floor, *ticks], ["0", *[f"$10^{{{int(round(np.log10(t)))}}}$" for t in ticks]])
    ax.set_xlim(floor / 5, 30 * spectra.singular_value.max())
    ax.set_xlabel("singular value (log scale; zeros at the left edge)")
    ax.grid(axis="y", visible=False)
    handles = [
        plt.Line2D([], [], ls="", marker="o", ms=4, color="0.3", label="SVD of the matrix"),
        plt.Line2D(
            [], [], ls="", marker="o", ms=9, mfc="none", mec="0.3", label="predicted spectrum"
        ),
        plt.Line2D([], [], ls="", marker="<", ms=6, color="0.3", label="zero (below the axis)"),
    ]
    fig.legend(handles=handles, ncol=3, loc="lower center", frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def spectrum_explorer() -> object:
    r"""Sliders for a token's scale and the width :math:`d` that redraw the singular values
    of the LayerNorm and RMSNorm Jacobians (:math:`\epsilon = 0`) next to
    :math:`1/\sigma`; needs ipywidgets (without it, prints how to get it and returns
    ``None``)."""
    try:
        import ipywidgets as widgets
    except ImportError:
        print("install ipywidgets for the interactive version")
        return None
    import matplotlib.pyplot as plt

    from .plotting import TEXT_WIDTH

    def show(scale: float = 1.0, width: int = 64) -> None:
        gen = torch.Generator().manual_seed(1)
        x = scale * torch.randn(width, generator=gen, dtype=torch.float64)
        fig, ax = plt.subplots(figsize=(TEXT_WIDTH, 3))
        for name, fn in (("LayerNorm", layernorm_jacobian), ("RMSNorm", rmsnorm_jacobian)):
            ax.plot(torch.linalg.svdvals(fn(x, eps=0.0)), "o-", ms=3, label=name)
        sigma = x.std(unbiased=False).item()
        ax.axhline(1 / sigma, color="0.5", ls="--", lw=1, label=r"$1/\sigma$")
        ax.set_xlabel("singular value index")
        ax.set_ylabel("singular value")
        ax.legend()
        plt.show()

    return widgets.interact(
        show,
        scale=widgets.FloatLogSlider(value=1.0, base=10, min=-1, max=1, description="scale"),
        width=widgets.IntSlider(value=64, min=4, max=256, step=4, description="d"),
    )


def plot_layernorm_geometry(
    x: Sequence[float] = (1.0, 2.0, 3.0), n_points: int = 24, seed: int = 0
) -> Figure:
    r"""The geometry of LayerNorm at :math:`d = 3` (:math:`\gamma = 1`, :math:`\beta = 0`,
    :math:`\epsilon = 0`), in two panels.

    Left, in 3-D: ``n_points`` random tokens (grey) and their images
    :math:`\mathrm{LN}(x) = \sqrt d\,(x - \mu\mathbf 1)/\|x - \mu\mathbf 1\|`, which all lie on
    the circle where the sphere of radius :math:`\sqrt d` meets the plane
    :math:`\mathbf 1^\top y = 0` (the image of the mean-subtraction projector
    :math:`I - \tfrac1d\mathbf 1\mathbf 1^\top`); the token ``x`` and its image are marked, and
    the direction :math:`\mathbf 1` that the centring removes is drawn. Right, in that plane
    (coordinates along :math:`(1,-1,0)/\sqrt2` and :math:`(1,1,-2)/\sqrt6`): the circle, the
    image :math:`\hat x` of ``x``, a ring of small perturbations :math:`\delta` of ``x`` in
    the plane, and their images :math:`J\delta` under the Jacobian, which all fall on the
    tangent at :math:`\hat x`: the radial direction is removed and the one kept direction is
    scaled by :math:`1/\sigma`. ``x`` must have 3 finite entries that are not all equal.
    """
    import matplotlib.pyplot as plt

    from .plotting import TEXT_WIDTH

    t = torch.as_tensor(x, dtype=torch.float64)
    if t.shape != (3,) or not torch.isfinite(t).all():
        raise ValueError(f"x must be 3 finite numbers (a token at d = 3), got {x!r}")
    if float(t.var()) == 0.0:
        raise ValueError(f"x must not be constant (LayerNorm at eps = 0 is undefined), got {x!r}")
    if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 1:
        raise ValueError(f"n_points must be a positive integer, got {n_points!r}")
    d = 3
    basis = torch.tensor([[1, -1, 0], [1, 1, -2]], dtype=torch.float64)
    basis = basis / basis.norm(dim=1, keepdim=True)  # orthonormal, both orthogonal to 1
    g = torch.Generator().manual_seed(seed)
    pts = torch.randn(n_points, d, generator=g, dtype=torch.float64) + t.mean()
    centred = pts - pts.mean(dim=1, keepdim=True)
    images = d**0.5 * centred / centred.norm(dim=1, keepdim=True)
    xc = t - t.mean()
    xhat = d**0.5 * xc / xc.norm()
    angle = torch.linspace(0, 2 * torch.pi, 200, dtype=torch.float64)
    circle = d**0.5 * (torch.cos(angle)[:, None] * basis[0] + torch.sin(angle)[:, None] * basis[1])

    fig = plt.figure(figsize=(TEXT_WIDTH, 4.2))
    ax3 = fig.add_subplot(1, 2, 1, projection="3d")
    ax3.plot(
        *circle.T.numpy(),
        color="#4c72b0",
        lw=1.6,
        label=r"LN outputs: $\|y\| = \sqrt{d}$, $\mathbf{1}^\top y = 0$",
    )
    for p, q in zip(pts, images, strict=True):
        ax3.plot(*torch.stack([p, q]).T.numpy(), color="0.75", lw=0.6)
    ax3.scatter(*pts.T.numpy(), s=8, color="0.5", label="tokens $x$")
    ax3.scatter(*images.T.numpy(), s=10, color="#4c72b0")
    ax3.scatter(
        *t.numpy(), s=30, color="#c44e52", label=f"$x = {tuple(round(v, 2) for v in t.tolist())}$"
    )
    ax3.scatter(*xhat.numpy(), s=30, color="#c44e52", marker="D")
    ax3.plot(*torch.stack([t, xhat]).T.numpy(), color="#c44e52", lw=1.0)
    ones = torch.ones(d, dtype=torch.float64) / d**0.5
    ax3.quiver(0, 0, 0, *(2.2 * ones).numpy(), color="0.2", lw=1.2, arrow_length_ratio=0.15)
    ax3.text(*(2.4 * ones).numpy(), r"$\mathbf{1}$ (removed)", fontsize=9)
    ax3.set_xlabel("$y_1$", labelpad=-8)
    ax3.set_ylabel("$y_2$", labelpad=-8)
    ax3.set_zlabel("$y_3$", labelpad=-8)
    ax3.tick_params(labelsize=7, pad=-2)

    ax = fig.add_subplot(1, 2, 2)
    xy = (circle @ basis.T).numpy()
    ax.plot(xy[:, 0], xy[:, 1], color="#4c72b0", lw=1.6)
    h = (xhat @ basis.T).numpy()
    ax.scatter(*h, s=30, color="#c44e52", marker="D", zorder=3)
    ax.annotate(r"$\hat x$", h, xytext=(6, 6), textcoords="offset points")
    jac = layernorm_jacobian(t, None, 0.0)
    ring = 0.35 * (torch.cos(angle)[:, None] * basis[0] + torch.sin(angle)[:, None] * basis[1])
    before = ((ring + xhat) @ basis.T).numpy()
    after = ((xhat + ring @ jac.T) @ basis.T).numpy()
    ax.plot(before[:, 0], before[:, 1], color="0.5", lw=1.0, ls="--", label=r"$\hat x + \delta$")
    ax.plot(after[:, 0], after[:, 1], color="#c44e52", lw=2.4, label=r"$\hat x + J\delta$")
    ax.annotate("", xy=1.4 * h, xytext=h, arrowprops={"arrowstyle": "->", "color": "0.3"})
    ax.annotate(
        "radial: removed", 1.4 * h, xytext=(-40, -14), textcoords="offset points", fontsize=9
    )
    tangent = (jac @ basis[0] @ basis.T).numpy()
    tangent = 0.9 * tangent / np.linalg.norm(tangent)
    ax.annotate("", xy=h + tangent, xytext=h, arrowprops={"arrowstyle": "->", "color": "#c44e52"})
    ax.annotate(
        r"kept, $\times 1/\sigma$",
        h + tangent,
        xytext=(4, 2),
        textcoords="offset points",
        fontsize=9,
        color="#c44e52",
    )
    lim = 1.5 * 3**0.5
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim - 0.5, lim)
    ax.set_aspect("equal")
    ax.set_xlabel(r"along $(1,-1,0)/\sqrt{2}$")
    ax.set_ylabel(r"along $(1,1,-2)/\sqrt{6}$")
    handles = [*ax3.get_legend_handles_labels()[0], *ax.get_legend_handles_labels()[0]]
    fig.legend(handles=handles, ncol=3, loc="lower center", fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    return fig
