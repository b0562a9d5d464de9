r"""Training helpers: schedules, optimizers, and one seeded training run.

The learning rate at step :math:`t` (counting from 0) is
:math:`\eta_t = \eta \cdot w_t \cdot s_t`, with the linear warmup
:math:`w_t = \min(1, (t+1)/T_w)` and the decay :math:`s_t` of the named schedule.
A run whose loss stops being finite, or exceeds ``explode_factor`` times its first
loss, stops and is recorded as diverged; so does a run whose gradient stops being
finite, except where an fp16 gradient scaler can absorb it (see :func:`train`).

The GPU helpers cost nothing on a CPU: mixed precision is chosen per device
(:func:`~prenorm.amp_dtype`: bf16 or fp16 autocast on CUDA, fp32 elsewhere),
``torch.compile`` is opt-in, each step is timed with CUDA events on CUDA (read once at
the end, so timing adds no synchronization) and with ``time.perf_counter`` elsewhere,
and the peak GPU memory of a run is reported where there is one.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import numbers
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

from .data import Corpus
from .devices import amp_dtype, peak_memory_mb, reset_peak_memory
from .devices import device as default_device
from .kernels import check_kernels, use_kernels
from .model import TransformerLM
from .registry import Registry


# ---- learning-rate schedules and optimizers ------------------------------------------
# A schedule is the decay s_t as a function of the post-warmup progress p in [0, 1],
# the step t and the warmup length T_w.
def decay_constant(p: float, step: int, warmup_steps: int) -> float:
    r""":math:`s_t = 1`."""
    return 1.0


def decay_cosine(p: float, step: int, warmup_steps: int) -> float:
    r""":math:`s_t = 0.1 + 0.45\,(1+\cos(\pi p))`: from 1 down to 0.1."""
    return 0.1 + 0.45 * (1.0 + math.cos(math.pi * p))


def decay_linear(p: float, step: int, warmup_steps: int) -> float:
    r""":math:`s_t = 1 - p`."""
    return 1.0 - p


def decay_inverse_sqrt(p: float, step: int, warmup_steps: int) -> float:
    r""":math:`s_t = \sqrt{T_w/(t+1)}` after warmup (Vaswani et al. 2017)."""
    return math.sqrt(max(1, warmup_steps) / (step + 1)) if step >= warmup_steps else 1.0


#: The learning-rate decays by name; each entry is the function :math:`s_t`.
SCHEDULES: Registry[Callable[[float, int, int], float]] = Registry(
    "schedule",
    {
        "constant": decay_constant,
        "cosine": decay_cosine,
        "linear": decay_linear,
        "inverse_sqrt": decay_inverse_sqrt,
    },
)


def lr_at(
    step: int, lr: float, steps: int, warmup_steps: int = 0, schedule: str = "constant"
) -> float:
    r"""Learning rate at ``step``: :math:`\eta\,w_t\,s_t`, with the linear warmup
    :math:`w_t = \min(1, (t+1)/T_w)` and the decay :math:`s_t` of ``schedule`` (a key
    of :data:`SCHEDULES`) at the post-warmup progress :math:`p`."""
    decay = SCHEDULES[schedule]
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    p = min(1.0, max(0.0, (step - warmup_steps) / max(1, steps - warmup_steps)))
    return lr * warm * decay(p, step, warmup_steps)


def adam(
    params: Sequence[nn.Parameter],
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    fast: bool = False,
) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` (L2 penalty ``weight_decay`` added to the gradient); ``fast``:
    its fused step, one kernel for every parameter (see :func:`_fast_step`)."""
    return _fast_step(torch.optim.Adam, params, fast, lr=lr, betas=betas, weight_decay=weight_decay)


def adamw(
    params: Sequence[nn.Parameter],
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    fast: bool = False,
) -> torch.optim.Optimizer:
    """``torch.optim.AdamW`` (decoupled weight decay); ``fast``: its fused step."""
    return _fast_step(
        torch.optim.AdamW, params, fast, lr=lr, betas=betas, weight_decay=weight_decay
    )


def sgd(
    params: Sequence[nn.Parameter],
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    fast: bool = False,
) -> torch.optim.Optimizer:
    """``torch.optim.SGD`` with momentum 0.9 (``betas`` unused); ``fast``: its fused step."""
    return _fast_step(torch.optim.SGD, params, fast, lr=lr, momentum=0.9, weight_decay=weight_decay)


def radam(
    params: Sequence[nn.Parameter],
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    fast: bool = False,
) -> torch.optim.Optimizer:
    r"""``torch.optim.RAdam`` (Liu et al. 2020, arXiv:1908.03265): Adam whose adaptive
    step is switched off while the variance of :math:`v_t` is intractable, and rectified
    after, so its first steps are momentum SGD steps instead of Adam's large early ones.
    ``fast``: its multi-tensor (foreach) step; RAdam has no fused one."""
    return _fast_step(
        torch.optim.RAdam, params, fast, lr=lr, betas=betas, weight_decay=weight_decay
    )


def _fast_step(
    cls: type[torch.optim.Optimizer],
    params: Sequence[nn.Parameter],
    fast: bool,
    **kwargs: object,
) -> torch.optim.Optimizer:
    """``cls(params, **kwargs)``; with ``fast``, its fused implementation (the update of
    every parameter in one kernel, the same formula) where this torch has one for the
    parameters' device, else its multi-tensor (foreach) one."""
    if not fast:
        return cls(params, **kwargs)
    params = list(params)
    accepts = inspect.signature(cls.__init__).parameters
    if "fused" in accepts or any(p.kind is p.VAR_KEYWORD for p in accepts.values()):
        try:
            return cls(params, fused=True, **kwargs)
        except RuntimeError as exc:  # this torch has no fused step for the parameters' device
            if "fused" not in str(exc):
                raise
    return cls(params, foreach=True, **kwargs)


#: The optimizers by name; each entry builds one from ``(params, lr, betas,
#: weight_decay)``, and may take ``fast`` (its fused or multi-tensor step), which
#: :func:`train` passes where the entry accepts it.
OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry(
    "optimizer", {"adam": adam, "adamw": adamw, "radam": radam, "sgd": sgd}
)


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    ``history`` has one row per completed step: ``step``, ``lr``, ``train_loss``,
    ``grad_norm`` (before clipping; missing at a skipped step), ``val_loss`` (filled at
    evaluation steps, missing elsewhere), ``skipped`` (the fp16 gradient scaler skipped
    the step: its gradients overflowed) and ``tokens_per_s`` (training tokens of the step over its wall
    time, evaluation excluded; a wall-clock figure, so it differs between two runs
    that agree in every other column). ``diverged_at`` is the step at which a
    diverging run was stopped; the non-finite values themselves are never stored.
    ``seconds`` is the whole run's wall time; ``peak_memory_mb`` the most GPU memory
    its tensors held (``torch.cuda.max_memory_allocated``), ``None`` off CUDA;
    ``skipped_steps`` how many steps the fp16 gradient scaler skipped (0 without one).
    ``config`` holds every argument needed to train the run again: the model's
    :meth:`~prenorm.TransformerLM.describe` and the training arguments (``amp`` as the
    precision used, ``"fp32"``, ``"bf16"`` or ``"fp16"``; Adam's ``betas`` as ``beta1`` and
    ``beta2``).
    """

    history: pd.DataFrame
    diverged: bool
    diverged_at: int | None
    seconds: float
    config: dict[str, object] = field(default_factory=dict)
    peak_memory_mb: float | None = None
    skipped_steps: int = 0

    @property
    def final_train_loss(self) -> float:
        """Mean training loss over the last 10% of the completed steps (NaN if none)."""
        h = self.history["train_loss"]
        return float(h.tail(max(1, len(h) // 10)).mean()) if len(h) else math.nan

    @property
    def final_val_loss(self) -> float:
        """Last validation loss measured (NaN if none)."""
        v = self.history["val_loss"].dropna()
        return float(v.iloc[-1]) if len(v) else math.nan

    def summary(self) -> dict[str, object]:
        """One flat record: the config plus the outcome."""
        return {
            **self.config,
            "diverged": self.diverged,
            "diverged_at": self.diverged_at,
            "steps_done": len(self.history),
            "final_train_loss": self.final_train_loss,
            "final_val_loss": self.final_val_loss,
            "seconds": self.seconds,
            "peak_memory_mb": self.peak_memory_mb,
            "skipped_steps": self.skipped_steps,
        }


#: The columns of :attr:`TrainResult.history`, in order.
HISTORY_COLUMNS = (
    "step",
    "lr",
    "train_loss",
    "grad_norm",
    "val_loss",
    "skipped",
    "tokens_per_s",
)

#: What became of a training run, in the words the book uses.
OUTCOMES = ("trained", "stalled", "diverged")


def outcome(result: TrainResult | pd.DataFrame, entropy: float, margin: float) -> str | pd.Series:
    """Classify a run against the unigram entropy :math:`H` of its corpus
    (:meth:`~prenorm.Corpus.unigram_entropy`), with a ``margin`` stated before the
    experiment: ``"diverged"`` if it diverged; ``"stalled"`` if its final validation
    loss is not at least ``margin`` below :math:`H` (it learned no more than character
    frequencies); ``"trained"`` otherwise.

    ``result`` is one :class:`TrainResult` (returns the word), or a frame of run
    summaries with ``diverged`` and ``final_val_loss`` columns, as :func:`~prenorm.sweep`
    returns (returns one word per row, as a Series).
    """
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if isinstance(result, pd.DataFrame):
        missing = sorted({"diverged", "final_val_loss"} - set(result.columns))
        if missing:
            raise ValueError(
                f"run summaries need the columns {missing}; got {list(result.columns)}"
            )
        return pd.Series(
            [
                _classify(bool(d), float(v), entropy, margin)
                for d, v in zip(result["diverged"], result["final_val_loss"], strict=True)
            ],
            index=result.index,
            name="outcome",
        )
    return _classify(result.diverged, result.final_val_loss, entropy, margin)


def lr_sensitivity(
    losses: Sequence[float], cap: float, diverged: Sequence[bool] | None = None
) -> float:
    r"""How much a design loses, on average, by not having its best learning rate:

    .. math:: S = \frac{1}{n}\sum_{i=1}^{n} \min(\ell_i, c) - \min_i \ell_i,

    over the final losses :math:`\ell_i` of one design at the :math:`n` learning rates of
    a log-spaced range, each capped at ``cap`` :math:`c` (the loss of a uniform guess,
    :math:`\ln V`, say), so that a run that diverged or ended worse than the cap counts
    as :math:`c`. A diverged run counts as :math:`c` whatever its last loss: mark it in
    ``diverged`` (one flag per loss, e.g. a sweep's ``diverged`` column; its
    ``final_val_loss`` is the last loss measured *before* the run blew up) or give its
    loss as NaN or infinity. Wortsman et al. 2023
    (arXiv:2309.14322) summarise a loss-against-learning-rate curve this way: 0 for a
    design whose loss does not depend on the learning rate, larger the narrower its
    good range. The value depends on the range, so compare designs on one range only.
    A design none of whose runs ends below the cap (all diverged, say) has no best
    learning rate to lose against: its sensitivity is NaN, not the 0 of a design that
    is good everywhere (and a NaN satisfies no :class:`~prenorm.Prediction`).
    """
    vals = [float(v) for v in losses]
    if not vals:
        raise ValueError("lr_sensitivity needs the losses of at least one learning rate")
    if not math.isfinite(cap):
        raise ValueError(f"cap must be a finite loss, got {cap}")
    flags = [False] * len(vals) if diverged is None else [bool(d) for d in diverged]
    if len(flags) != len(vals):
        raise ValueError(f"diverged has {len(flags)} flags for {len(vals)} losses")
    capped = [
        cap if d or not math.isfinite(v) else min(v, cap) for v, d in zip(vals, flags, strict=True)
    ]
    if min(capped) >= cap:
        return math.nan
    return sum(capped) / len(capped) - min(capped)


def lr_summary(runs: pd.DataFrame, by: str, cap: float, by_seed: bool = False) -> pd.DataFrame:
    """Each design's loss-against-learning-rate curve in three numbers: one row per level
    of ``by`` (in order of appearance) with ``best_loss`` (the lowest final validation
    loss of a run that did not diverge), ``best_lr`` (its learning rate) and
    ``sensitivity`` (:func:`lr_sensitivity` over all its runs, diverged ones at ``cap``).
    ``runs`` has one row per run with ``lr``, ``final_val_loss`` and ``diverged``.
    ``best_loss`` and ``best_lr`` are NaN for a design whose every run diverged.

    With ``by_seed=True`` the runs of each seed are summarised apart: one row per
    (level of ``by``, ``seed``), indexed by both, each seed's curve being its own
    learning-rate grid; ``runs`` then needs a ``seed`` column."""
    keys = [by, "seed"] if by_seed else by
    rows = []
    for level, g in runs.groupby(keys, sort=False):
        g = g.sort_values("lr")
        ok = g[~g["diverged"].astype(bool)]
        i = ok["final_val_loss"].idxmin() if ok["final_val_loss"].notna().any() else None
        rows.append(
            {
                **(dict(zip(keys, level, strict=True)) if by_seed else {by: level}),
                "best_loss": float(ok.loc[i, "final_val_loss"]) if i is not None else math.nan,
                "best_lr": float(ok.loc[i, "lr"]) if i is not None else math.nan,
                "sensitivity": lr_sensitivity(g["final_val_loss"], cap, diverged=g["diverged"]),
            }
        )
    return pd.DataFrame(rows).set_index(keys)


def _classify(diverged: bool, final_val_loss: float, entropy: float, margin: float) -> str:
    if diverged:
        return OUTCOMES[2]
    return OUTCOMES[0] if final_val_loss < entropy - margin else OUTCOMES[1]


@torch.no_grad()
def evaluate(
    model: TransformerLM,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    amp: torch.dtype | None = None,
    check: bool = True,
) -> float:
    """Mean loss of ``model`` over ``batches`` (eval mode, no gradients); ``check=False``
    skips the token-range check (see :meth:`~prenorm.TransformerLM.embed`)."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    losses = []
    for x, y in batches:
        with _autocast(dev, amp):
            _, loss = model(x.to(dev), y.to(dev), check=check)
        losses.append(loss.float().item())
    model.train(was_training)
    return sum(losses) / len(losses)


def _autocast(dev: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


class StepTimer:
    """Wall time of each training step. On CUDA, a pair of CUDA events per step, read
    once by :meth:`seconds` after the last step, so timing adds no synchronization to the
    loop; elsewhere ``time.perf_counter``."""

    def __init__(self, dev: torch.device) -> None:
        self.cuda = torch.device(dev).type == "cuda"
        self.marks: list[tuple[object, object]] = []
        self._start: object = None

    def _now(self) -> object:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        """Mark the start of a step."""
        self._start = self._now()

    def stop(self) -> None:
        """Mark the end of the step started last."""
        self.marks.append((self._start, self._now()))

    def seconds(self) -> list[float]:
        """The duration of every step marked, in seconds, in order."""
        if not self.marks:
            return []
        if self.cuda:
            self.marks[-1][1].synchronize()  # type: ignore[attr-defined]
            return [a.elapsed_time(b) / 1000 for a, b in self.marks]  # type: ignore[attr-defined]
        return [b - a for a, b in self.marks]  # type: ignore[operator]


def compiled(model: nn.Module, compile: bool | str) -> nn.Module:
    """``model`` itself (``compile=False``), or ``torch.compile(model)`` with the default
    backend (``True``) or the backend named (e.g. ``"inductor"``, ``"aot_eager"``). The
    compiled module shares the model's parameters."""
    if compile is False:
        return model
    if compile is True:
        return torch.compile(model)
    return torch.compile(model, backend=compile)


#: The autocast precisions :func:`train` accepts by name for ``amp``.
AMP_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}

#: The loss scale at or below which an fp16 run that still overflows is diverged: at a
#: scale of 1 the scaled gradient is the true one, so an overflow there is the
#: gradient's own, and no loss scale can take it back (see :func:`train`).
MIN_LOSS_SCALE = 1.0


def resolve_amp(amp: bool | str | None, dev: torch.device) -> torch.dtype | None:
    """The autocast dtype :func:`train` uses: ``None``/``True`` pick per device
    (:func:`~prenorm.amp_dtype`), ``False`` or ``"fp32"`` plain fp32, ``"bf16"`` and
    ``"fp16"`` force that precision on any device (``"fp16"`` trains with a gradient
    scaler, as on a T4)."""
    if amp is None or amp is True:
        return amp_dtype(dev)
    if amp is False:
        return None
    if isinstance(amp, str) and amp in AMP_DTYPES:
        return AMP_DTYPES[amp]
    raise ValueError(f"amp must be None, True, False or one of {sorted(AMP_DTYPES)}, got {amp!r}")


def _check_positive(name: str, value: object, integer: bool = False, none_ok: bool = False) -> None:
    """Raise unless ``value`` is a positive finite number (an int if ``integer``)."""
    if value is None and none_ok:
        return
    kind = "a positive integer" if integer else "a positive finite number"
    if isinstance(value, bool):
        ok = False
    elif integer:
        ok = isinstance(value, numbers.Integral) and value > 0
    else:
        ok = isinstance(value, numbers.Real) and math.isfinite(value) and value > 0
    if not ok:
        raise ValueError(f"{name} must be {kind}{' or None' if none_ok else ''}, got {value!r}")


def train(
    model: TransformerLM,
    data: Corpus,
    steps: int,
    lr: float,
    warmup_steps: int = 0,
    schedule: str = "constant",
    optimizer: str = "adam",
    betas: tuple[float, float] = (0.9, 0.98),
    weight_decay: float = 0.0,
    clip: float | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    amp: bool | str | None = None,
    batch_size: int = 16,
    eval_interval: int | None = None,
    eval_batches: int = 4,
    explode_factor: float = 3.0,
    val_seed: int | None = None,
    callback: Callable[[int, TransformerLM], None] | None = None,
    compile: bool | str = False,
    grad_scale: float | None = None,
    kernels: str = "fused",
) -> TrainResult:
    """Train ``model`` on ``data`` for ``steps`` steps and return a :class:`TrainResult`.

    Batches are drawn from a generator seeded with ``seed`` (the model's own
    initialization is the caller's: seed before building it). ``amp=None`` picks
    mixed precision per device (:func:`prenorm.amp_dtype`); ``False`` forces fp32, and
    ``"fp32"``, ``"bf16"`` or ``"fp16"`` force that precision (:func:`resolve_amp`).
    ``eval_interval`` defaults to ``steps // 10``; validation uses a fixed set of
    ``eval_batches`` batches, drawn with seed ``seed + 10000`` unless ``val_seed`` fixes
    them (the same validation set for every seed of a comparison, so that seed-to-seed
    spread is training's alone). ``clip`` is the max global gradient norm, or None.
    ``callback(step, model)``, if given, runs once before the first step (``step=0``)
    and after each completed optimizer step (``step`` = steps taken), for probes
    during training; it must leave the parameters alone. ``compile`` trains through
    ``torch.compile`` (see :func:`compiled`; evaluation and the callback use the model
    itself); it pays on a GPU for long runs, and costs a compilation (tens of seconds)
    first.

    ``kernels="fused"`` (the default) trains on the fast path: the norms and attention
    through torch's fused kernels where they are faster on the device
    (:func:`~prenorm.use_kernels`), and the optimizer's fused step (Adam, AdamW, SGD;
    RAdam's multi-tensor one). It computes the same functions as ``"reference"``, the
    written-out operations the chapters show, to float rounding (the tests hold the two
    equal), so a run's numbers differ between the two in their last bits and grow apart
    only as fast as training amplifies rounding. Evaluation uses the same kernels; the
    ``callback`` sees the written-out model, so probes differentiate what the chapters
    show.

    **fp16 and the gradient scaler.** In fp16 (a T4's precision) the loss is multiplied
    by a scale before the backward pass so that small gradients do not underflow; a step
    whose scaled gradients overflow is *skipped* by the scaler, which then halves the
    scale (``grad_scale`` sets the first scale; torch's default is :math:`2^{16}`). A
    skipped step is not a divergence: it is counted (``skipped`` in the history, whose
    ``grad_norm`` is then missing; ``skipped_steps`` in the summary) and training goes
    on. The run is diverged when its loss, which the scale does not touch, is not finite
    or exceeds the limit, exactly as in fp32; or when a step overflows at a scale of
    :data:`MIN_LOSS_SCALE` (1) or less, where the scaled gradient is the true one, so
    the overflow is the gradient's own and no scaling can absorb it (in fp32 or bf16, a
    non-finite gradient norm is a divergence at once: there is no scaler).
    """
    if not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    _check_positive("lr", lr)
    if (
        not isinstance(warmup_steps, numbers.Integral)
        or isinstance(warmup_steps, bool)
        or warmup_steps < 0
    ):
        raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
    _check_positive("batch_size", batch_size, integer=True)
    _check_positive("clip", clip, none_ok=True)
    _check_positive("explode_factor", explode_factor)
    _check_positive("eval_batches", eval_batches, integer=True)
    _check_positive("eval_interval", eval_interval, integer=True, none_ok=True)
    _check_positive("grad_scale", grad_scale, none_ok=True)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if val_seed is not None and (
        isinstance(val_seed, bool) or not isinstance(val_seed, numbers.Integral)
    ):
        raise ValueError(f"val_seed must be an integer or None, got {val_seed!r}")
    if (
        not isinstance(betas, tuple | list)
        or len(betas) != 2
        or not all(isinstance(b, numbers.Real) and 0 <= b < 1 for b in betas)
    ):
        raise ValueError(f"betas must be a pair of numbers in [0, 1), got {betas!r}")
    if not (isinstance(weight_decay, numbers.Real) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    SCHEDULES.check(schedule)
    OPTIMIZERS.check(optimizer)
    check_kernels(kernels)
    if data.vocab_size > model.vocab_size:
        raise ValueError(
            f"the corpus has {data.vocab_size} token ids but the model's vocab_size is "
            f"{model.vocab_size}: build the model with vocab_size=corpus.vocab_size"
        )
    dev = torch.device(device) if device is not None else default_device()
    dtype = resolve_amp(amp, dev)
    if grad_scale is not None and dtype != torch.float16:
        raise ValueError(f"grad_scale applies to fp16 training only (amp='fp16'), got amp={amp!r}")
    if dev.type == "cpu":
        torch.set_flush_denormal(True)
    model.to(dev).train()
    step_model = compiled(model, compile)
    scaler = None
    if dtype == torch.float16:
        scaler = torch.amp.GradScaler(
            dev.type, **({} if grad_scale is None else {"init_scale": grad_scale})
        )
    params = [p for p in model.parameters() if p.requires_grad]
    build = OPTIMIZERS[optimizer]
    if "fast" in inspect.signature(build).parameters:
        opt = build(params, lr, betas, weight_decay, fast=kernels == "fused")
    else:  # a builder registered with the four arguments only: its own step
        opt = build(params, lr, betas, weight_decay)
    gen = torch.Generator().manual_seed(seed)
    val_gen = torch.Generator().manual_seed(seed + 10_000 if val_seed is None else val_seed)
    val_set = [data.batch("val", batch_size, model.seq_len, val_gen) for _ in range(eval_batches)]
    eval_interval = eval_interval or max(1, steps // 10)
    max_norm = clip if clip is not None else math.inf

    rows: list[dict[str, float]] = []
    diverged_at: int | None = None
    limit = math.inf  # explode_factor x the first loss, once it is known
    skipped_steps = 0  # steps the fp16 gradient scaler skipped
    timer = StepTimer(dev)
    reset_peak_memory(dev)
    t0 = time.perf_counter()
    if callback is not None:
        callback(0, model)
        model.train()
    with use_kernels(model, kernels, dev):  # the callback's probes switch back
        for step in range(steps):
            timer.start()
            lr_t = lr_at(step, lr, steps, warmup_steps, schedule)
            for group in opt.param_groups:
                group["lr"] = lr_t
            x, y = data.batch("train", batch_size, model.seq_len, gen, device=dev)
            loss, gnorm = _backward(step_model, opt, scaler, params, x, y, dtype, max_norm)
            if step == 0:
                limit = explode_factor * loss
            row = {
                "step": step,
                "lr": lr_t,
                "train_loss": loss,
                "grad_norm": gnorm,
                "val_loss": math.nan,
                "skipped": False,
            }
            # The loss decides, with or without a scaler; a non-finite gradient decides only
            # where no scaler can absorb it.
            blown_up = _blown_up(loss, gnorm if scaler is None else 0.0, limit)
            if not blown_up:
                skipped, gave_up = _optimizer_step(opt, scaler)
                if skipped:
                    skipped_steps += 1
                    row["skipped"] = True
                    row["grad_norm"] = math.nan  # it overflowed: missing, never stored as inf
                blown_up = gave_up
            timer.stop()
            if not blown_up:
                if callback is not None:
                    with use_kernels(model, "reference", dev):
                        callback(step + 1, model)
                    model.train()
                if (step + 1) % eval_interval == 0 or step == steps - 1:
                    val = evaluate(model, val_set, dtype, check=False)
                    blown_up = _blown_up(val, 0.0, limit)
                    row["val_loss"] = math.nan if blown_up else val
            if math.isfinite(loss) and (row["skipped"] or math.isfinite(gnorm)):
                rows.append(row)  # non-finite values are never stored
            if blown_up:
                diverged_at = step
                break
    step_seconds = timer.seconds()
    seconds = time.perf_counter() - t0
    tokens = batch_size * model.seq_len
    for row in rows:
        row["tokens_per_s"] = tokens / max(step_seconds[int(row["step"])], 1e-9)
    history = pd.DataFrame(rows, columns=[*HISTORY_COLUMNS])
    config = {
        **model.describe(),
        "lr": lr,
        "warmup_steps": warmup_steps,
        "schedule": schedule,
        "optimizer": optimizer,
        "beta1": float(betas[0]),  # two columns, not one of pairs: tables stay flat
        "beta2": float(betas[1]),
        "weight_decay": weight_decay,
        "clip": clip,
        "seed": seed,
        "val_seed": val_seed,
        "steps": steps,
        "batch_size": batch_size,
        "eval_interval": eval_interval,
        "eval_batches": eval_batches,
        "explode_factor": explode_factor,
        "amp": _amp_name(dtype),
        "kernels": kernels,
    }
    if grad_scale is not None:
        config["grad_scale"] = grad_scale
    if compile is not False:
        config["compile"] = compile
    return TrainResult(
        history,
        diverged_at is not None,
        diverged_at,
        seconds,
        config,
        peak_memory_mb(dev),
        skipped_steps,
    )


def _backward(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    params: list[nn.Parameter],
    x: torch.Tensor,
    y: torch.Tensor,
    dtype: torch.dtype | None,
    max_norm: float,
) -> tuple[float, float]:
    """Forward, backward and clipping for one batch: returns (loss, gradient norm before clipping)."""
    with _autocast(x.device, dtype):
        _, loss = model(x, y, check=False)  # the corpus was checked once, before the loop
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
    else:
        loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    # One read of both numbers: on a GPU each read waits for the device (with an fp16
    # scaler, its step and update read the scale as well).
    loss_v, gnorm_v = torch.stack([loss.detach().float(), gnorm.float()]).tolist()
    return loss_v, gnorm_v


def _optimizer_step(
    opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None
) -> tuple[bool, bool]:
    """Take the step; return (skipped, gave up). With a scaler, a step whose gradients
    overflowed is skipped and the scale lowered (the scale falls exactly when it skips);
    it gives up when the step skipped was taken at a scale of :data:`MIN_LOSS_SCALE` or
    less. Without one, nothing is skipped."""
    if scaler is None:
        opt.step()
        return False, False
    scale = scaler.get_scale()
    scaler.step(opt)
    scaler.update()
    skipped = scaler.get_scale() < scale
    return skipped, skipped and scale <= MIN_LOSS_SCALE


def _amp_name(dtype: torch.dtype | None) -> str:
    return next(name for name, d in AMP_DTYPES.items() if d == dtype)


def _blown_up(loss: float, gnorm: float, limit: float) -> bool:
    """A run has diverged when its loss or gradient norm is not finite, or its loss
    exceeds ``limit`` (``explode_factor`` times the first loss). With an fp16 scaler the
    gradient norm is passed as 0: an overflowing gradient is the scaler's to skip."""
    return not (math.isfinite(loss) and math.isfinite(gnorm)) or loss > limit
