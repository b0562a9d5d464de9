r"""Training helpers: one seeded training run, and a grid of runs.

The learning rate at step :math:`t` (counting from 0) is
:math:`\eta_t = \eta \cdot w_t \cdot s_t`, with the linear warmup
:math:`w_t = \min(1, (t+1)/T_w)` and the decay :math:`s_t` of the named schedule.
A run whose loss or gradient norm stops being finite, or whose loss exceeds
``explode_factor`` times its first loss, stops and is recorded as diverged.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

from .data import Corpus
from .devices import amp_dtype
from .devices import device as default_device
from .model import TransformerLM

SCHEDULES = ("constant", "cosine", "linear", "inverse_sqrt")
OPTIMIZERS = ("adam", "adamw", "sgd")


def lr_at(
    step: int, lr: float, steps: int, warmup_steps: int = 0, schedule: str = "constant"
) -> float:
    r"""Learning rate at ``step``: linear warmup over ``warmup_steps``, then

    - ``constant``: :math:`s_t = 1`;
    - ``cosine``: :math:`s_t = 0.1 + 0.45\,(1+\cos(\pi p))`, :math:`p` the post-warmup progress;
    - ``linear``: :math:`s_t = 1 - p`;
    - ``inverse_sqrt``: :math:`s_t = \sqrt{T_w/(t+1)}` after warmup (Vaswani et al. 2017).
    """
    if schedule not in SCHEDULES:
        raise ValueError(
            f"unknown schedule {schedule!r}; valid schedules are {', '.join(map(repr, SCHEDULES))}"
        )
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    p = min(1.0, max(0.0, (step - warmup_steps) / max(1, steps - warmup_steps)))
    if schedule == "constant":
        decay = 1.0
    elif schedule == "cosine":
        decay = 0.1 + 0.45 * (1.0 + math.cos(math.pi * p))
    elif schedule == "linear":
        decay = 1.0 - p
    else:
        decay = math.sqrt(max(1, warmup_steps) / (step + 1)) if step >= warmup_steps else 1.0
    return lr * warm * decay


def make_optimizer(
    name: str,
    params: Sequence[nn.Parameter],
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (momentum 0.9) by name."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(
        f"unknown optimizer {name!r}; valid optimizers are {', '.join(map(repr, OPTIMIZERS))}"
    )


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    ``history`` has one row per completed step: ``step``, ``lr``, ``train_loss``,
    ``grad_norm`` (before clipping) and ``val_loss`` (filled at evaluation steps,
    missing elsewhere). ``diverged_at`` is the step at which a diverging run was
    stopped; the non-finite values themselves are never stored.
    """

    history: pd.DataFrame
    diverged: bool
    diverged_at: int | None
    seconds: float
    config: dict[str, object] = field(default_factory=dict)

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
        }


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
) -> TrainResult:
    """Train ``model`` on ``data`` for ``steps`` steps and return a :class:`TrainResult`.

    Batches are drawn from a generator seeded with ``seed`` (the model's own
    initialization is the caller's: seed before building it). ``amp=None`` picks
    mixed precision per device (:func:`prenorm.amp_dtype`); ``False`` forces fp32.
    ``eval_interval`` defaults to ``steps // 10``; validation uses a fixed set of
    ``eval_batches`` batches. ``clip`` is the max global gradient norm, or None.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite number, got {lr}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    lr_at(0, lr, steps, warmup_steps, schedule)  # validates the schedule name
    dev = torch.device(device) if device is not None else default_device()
    if dev.type == "cpu":
        torch.set_flush_denormal(True)
    model.to(dev).train()
    dtype = amp_dtype(dev) if amp in (None, True) else None
    scaler = torch.amp.GradScaler(dev.type) if dtype == torch.float16 else None
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(optimizer, params, lr, betas, weight_decay)
    gen = torch.Generator().manual_seed(seed)
    val_gen = torch.Generator().manual_seed(seed + 10_000)
    val_set = [data.batch("val", batch_size, model.seq_len, val_gen) for _ in range(eval_batches)]
    eval_interval = eval_interval or max(1, steps // 10)
    max_norm = clip if clip is not None else math.inf

    rows: list[dict[str, float]] = []
    diverged_at: int | None = None
    first_loss: float | None = None
    t0 = time.perf_counter()
    for step in range(steps):
        lr_t = lr_at(step, lr, steps, warmup_steps, schedule)
        for group in opt.param_groups:
            group["lr"] = lr_t
        x, y = data.batch("train", batch_size, model.seq_len, gen, device=dev)
        with _autocast(dev, dtype):
            _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        loss_v = loss.detach().item()
        first_loss = loss_v if first_loss is None else first_loss
        exploded = loss_v > explode_factor * first_loss
        if not math.isfinite(loss_v) or not math.isfinite(gnorm) or exploded:
            diverged_at = step
            if math.isfinite(loss_v) and math.isfinite(gnorm):
                rows.append(
                    {
                        "step": step,
                        "lr": lr_t,
                        "train_loss": loss_v,
                        "grad_norm": gnorm,
                        "val_loss": math.nan,
                    }
                )
            break
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        row = {
            "step": step,
            "lr": lr_t,
            "train_loss": loss_v,
            "grad_norm": gnorm,
            "val_loss": math.nan,
        }
        if (step + 1) % eval_interval == 0 or step == steps - 1:
            val = evaluate(model, val_set, dtype)
            if not math.isfinite(val) or val > explode_factor * first_loss:
                rows.append(row)
                diverged_at = step
                break
            row["val_loss"] = val
        rows.append(row)
    seconds = time.perf_counter() - t0
    history = pd.DataFrame(rows, columns=["step", "lr", "train_loss", "grad_norm", "val_loss"])
    config = {
        "placement": model.placement,
        "norm": model.norm,
        "init": model.init_scheme,
        "n_layers": model.n_layers,
        "d_model": model.d_model,
        "lr": lr,
        "warmup_steps": warmup_steps,
        "schedule": schedule,
        "optimizer": optimizer,
        "clip": clip,
        "seed": seed,
        "steps": steps,
    }
    return TrainResult(history, diverged_at is not None, diverged_at, seconds, config)


_MODEL_KEYS = tuple(k for k in inspect.signature(TransformerLM.__init__).parameters if k != "self")
_TRAIN_KEYS = tuple(
    k for k in inspect.signature(train).parameters if k not in ("model", "data", "seed")
)


def sweep(
    data: Corpus,
    grid: Mapping[str, Sequence[object]],
    model_kwargs: Mapping[str, object] | None = None,
    train_kwargs: Mapping[str, object] | None = None,
    history: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Train one model per point of the Cartesian product of ``grid`` and return one DataFrame.

    ``grid`` maps names to lists of values. A name may be any argument of
    :class:`TransformerLM` (``placement``, ``n_layers``, ``norm``, ``init``, ...),
    any argument of :func:`train` (``lr``, ``warmup_steps``, ``clip``, ...), or
    ``seed``, which seeds both the initialization and the batches. Fixed values
    go in ``model_kwargs`` / ``train_kwargs``. With ``history=False`` the result
    has one row per run (:meth:`TrainResult.summary`); with ``history=True`` one
    row per step of every run, with the run's configuration and ``diverged``.
    """
    model_kwargs = dict(model_kwargs or {})
    train_kwargs = dict(train_kwargs or {})
    valid = set(_MODEL_KEYS) | set(_TRAIN_KEYS) | {"seed"}
    unknown = sorted(set(grid) - valid)
    if unknown:
        raise ValueError(f"unknown sweep keys {unknown}; valid keys are {sorted(valid)}")
    model_kwargs.setdefault("vocab_size", data.vocab_size)
    keys = list(grid)
    points = list(itertools.product(*(grid[k] for k in keys)))
    from tqdm.auto import tqdm

    frames, rows = [], []
    for values in tqdm(points, disable=not progress, desc="sweep"):
        point = dict(zip(keys, values, strict=True))
        seed = int(point.get("seed", 0))
        mk = {**model_kwargs, **{k: v for k, v in point.items() if k in _MODEL_KEYS}}
        tk = {**train_kwargs, **{k: v for k, v in point.items() if k in _TRAIN_KEYS}}
        torch.manual_seed(seed)
        model = TransformerLM(**mk)
        result = train(model, data, seed=seed, **tk)
        summary = {**result.summary(), **point}
        if history:
            frames.append(
                result.history.assign(**{k: v for k, v in summary.items() if k != "steps_done"})
            )
        else:
            rows.append(summary)
    if history:
        return pd.concat(frames, ignore_index=True)
    return pd.DataFrame(rows)
