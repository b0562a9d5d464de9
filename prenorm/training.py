r"""Training helpers: schedules, optimizers, and one seeded training run.

The learning rate at step :math:`t` (counting from 0) is
:math:`\eta_t = \eta \cdot w_t \cdot s_t`, with the linear warmup
:math:`w_t = \min(1, (t+1)/T_w)` and the decay :math:`s_t` of the named schedule.
A run whose loss or gradient norm stops being finite, or whose loss exceeds
``explode_factor`` times its first loss, stops and is recorded as diverged.

The GPU helpers cost nothing on a CPU: mixed precision is chosen per device
(:func:`~prenorm.amp_dtype`: bf16 or fp16 autocast on CUDA, fp32 elsewhere),
``torch.compile`` is opt-in, each step is timed with CUDA events on CUDA (read once at
the end, so timing adds no synchronization) and with ``time.perf_counter`` elsewhere,
and the peak GPU memory of a run is reported where there is one.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

from .data import Corpus
from .devices import amp_dtype, peak_memory_mb, reset_peak_memory
from .devices import device as default_device
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
    params: Sequence[nn.Parameter], lr: float, betas: tuple[float, float], weight_decay: float
) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` (L2 penalty ``weight_decay`` added to the gradient)."""
    return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)


def adamw(
    params: Sequence[nn.Parameter], lr: float, betas: tuple[float, float], weight_decay: float
) -> torch.optim.Optimizer:
    """``torch.optim.AdamW`` (decoupled weight decay)."""
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)


def sgd(
    params: Sequence[nn.Parameter], lr: float, betas: tuple[float, float], weight_decay: float
) -> torch.optim.Optimizer:
    """``torch.optim.SGD`` with momentum 0.9 (``betas`` unused)."""
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


def radam(
    params: Sequence[nn.Parameter], lr: float, betas: tuple[float, float], weight_decay: float
) -> torch.optim.Optimizer:
    r"""``torch.optim.RAdam`` (Liu et al. 2020, arXiv:1908.03265): Adam whose adaptive
    step is switched off while the variance of :math:`v_t` is intractable, and rectified
    after, so its first steps are momentum SGD steps instead of Adam's large early ones."""
    return torch.optim.RAdam(params, lr=lr, betas=betas, weight_decay=weight_decay)


#: The optimizers by name; each entry builds one from
#: ``(params, lr, betas, weight_decay)``.
OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry(
    "optimizer", {"adam": adam, "adamw": adamw, "radam": radam, "sgd": sgd}
)


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    ``history`` has one row per completed step: ``step``, ``lr``, ``train_loss``,
    ``grad_norm`` (before clipping), ``val_loss`` (filled at evaluation steps,
    missing elsewhere) and ``tokens_per_s`` (training tokens of the step over its wall
    time, evaluation excluded; a wall-clock figure, so it differs between two runs
    that agree in every other column). ``diverged_at`` is the step at which a
    diverging run was stopped; the non-finite values themselves are never stored.
    ``seconds`` is the whole run's wall time; ``peak_memory_mb`` the most GPU memory
    its tensors held (``torch.cuda.max_memory_allocated``), ``None`` off CUDA.
    """

    history: pd.DataFrame
    diverged: bool
    diverged_at: int | None
    seconds: float
    config: dict[str, object] = field(default_factory=dict)
    peak_memory_mb: float | None = None

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
        }


#: The columns of :attr:`TrainResult.history`, in order.
HISTORY_COLUMNS = ("step", "lr", "train_loss", "grad_norm", "val_loss", "tokens_per_s")

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
    return sum(capped) / len(capped) - min(capped)


def lr_summary(runs: pd.DataFrame, by: str, cap: float) -> pd.DataFrame:
    """Each design's loss-against-learning-rate curve in three numbers: one row per level
    of ``by`` (in order of appearance) with ``best_loss`` (the lowest final validation
    loss of a run that did not diverge), ``best_lr`` (its learning rate) and
    ``sensitivity`` (:func:`lr_sensitivity` over all its runs, diverged ones at ``cap``).
    ``runs`` has one row per run with ``lr``, ``final_val_loss`` and ``diverged``.
    ``best_loss`` and ``best_lr`` are NaN for a design whose every run diverged."""
    rows = []
    for level, g in runs.groupby(by, sort=False):
        g = g.sort_values("lr")
        ok = g[~g["diverged"].astype(bool)]
        i = ok["final_val_loss"].idxmin() if ok["final_val_loss"].notna().any() else None
        rows.append(
            {
                by: level,
                "best_loss": float(ok.loc[i, "final_val_loss"]) if i is not None else math.nan,
                "best_lr": float(ok.loc[i, "lr"]) if i is not None else math.nan,
                "sensitivity": lr_sensitivity(g["final_val_loss"], cap, diverged=g["diverged"]),
            }
        )
    return pd.DataFrame(rows).set_index(by)


def _classify(diverged: bool, final_val_loss: float, entropy: float, margin: float) -> str:
    if diverged:
        return OUTCOMES[2]
    return OUTCOMES[0] if final_val_loss < entropy - margin else OUTCOMES[1]


@torch.no_grad()
def evaluate(
    model: TransformerLM,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    amp: torch.dtype | None = None,
) -> float:
    """Mean loss of ``model`` over ``batches`` (eval mode, no gradients)."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    losses = []
    for x, y in batches:
        with _autocast(dev, amp):
            _, loss = model(x.to(dev), y.to(dev))
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
    amp: bool | None = None,
    batch_size: int = 16,
    eval_interval: int | None = None,
    eval_batches: int = 4,
    explode_factor: float = 3.0,
    val_seed: int | None = None,
    callback: Callable[[int, TransformerLM], None] | None = None,
    compile: bool | str = False,
) -> TrainResult:
    """Train ``model`` on ``data`` for ``steps`` steps and return a :class:`TrainResult`.

    Batches are drawn from a generator seeded with ``seed`` (the model's own
    initialization is the caller's: seed before building it). ``amp=None`` picks
    mixed precision per device (:func:`prenorm.amp_dtype`); ``False`` forces fp32.
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
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite number, got {lr}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    SCHEDULES.check(schedule)
    dev = torch.device(device) if device is not None else default_device()
    if dev.type == "cpu":
        torch.set_flush_denormal(True)
    model.to(dev).train()
    step_model = compiled(model, compile)
    dtype = amp_dtype(dev) if amp in (None, True) else None
    scaler = torch.amp.GradScaler(dev.type) if dtype == torch.float16 else None
    params = [p for p in model.parameters() if p.requires_grad]
    opt = OPTIMIZERS[optimizer](params, lr, betas, weight_decay)
    gen = torch.Generator().manual_seed(seed)
    val_gen = torch.Generator().manual_seed(seed + 10_000 if val_seed is None else val_seed)
    val_set = [data.batch("val", batch_size, model.seq_len, val_gen) for _ in range(eval_batches)]
    eval_interval = eval_interval or max(1, steps // 10)
    max_norm = clip if clip is not None else math.inf

    rows: list[dict[str, float]] = []
    diverged_at: int | None = None
    limit = math.inf  # explode_factor x the first loss, once it is known
    timer = StepTimer(dev)
    reset_peak_memory(dev)
    t0 = time.perf_counter()
    if callback is not None:
        callback(0, model)
        model.train()
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
        }
        blown_up = _blown_up(loss, gnorm, limit)
        if not blown_up:
            _optimizer_step(opt, scaler)
        timer.stop()
        if not blown_up:
            if callback is not None:
                callback(step + 1, model)
                model.train()
            if (step + 1) % eval_interval == 0 or step == steps - 1:
                val = evaluate(model, val_set, dtype)
                blown_up = _blown_up(val, 0.0, limit)
                row["val_loss"] = math.nan if blown_up else val
        if math.isfinite(loss) and math.isfinite(gnorm):  # non-finite values are never stored
            rows.append(row)
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
        "clip": clip,
        "seed": seed,
        "steps": steps,
    }
    if compile is not False:
        config["compile"] = compile
    return TrainResult(
        history, diverged_at is not None, diverged_at, seconds, config, peak_memory_mb(dev)
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
        _, loss = model(x, y)
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
    else:
        loss.backward()
    gnorm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return loss.detach().item(), gnorm


def _optimizer_step(opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()


def _blown_up(loss: float, gnorm: float, limit: float) -> bool:
    """A run has diverged when its loss or gradient norm is not finite, or its loss
    exceeds ``limit`` (``explode_factor`` times the first loss)."""
    return not (math.isfinite(loss) and math.isfinite(gnorm)) or loss > limit
