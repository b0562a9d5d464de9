"""Grids of experiments: every point of a Cartesian product, on a freshly seeded model.

:func:`sweep` trains one model per grid point; :func:`probe_sweep` runs a probe on
one. Both expand the grid and build each point's model the same way
(:func:`grid_points`, :func:`point_model`), so a grid point means the same model
in both.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Mapping, Sequence

import pandas as pd
import torch

from .data import Corpus
from .model import TransformerLM, build_model
from .probes import Batch
from .training import train

#: Grid keys that configure the model: the arguments of :class:`~prenorm.TransformerLM`.
MODEL_KEYS = tuple(k for k in inspect.signature(TransformerLM.__init__).parameters if k != "self")
#: Grid keys that configure training: the arguments of :func:`~prenorm.train`.
TRAIN_KEYS = tuple(
    k for k in inspect.signature(train).parameters if k not in ("model", "data", "seed")
)


def grid_points(
    grid: Mapping[str, Sequence[object]], valid: Sequence[str]
) -> list[dict[str, object]]:
    """Every point of the Cartesian product of ``grid`` (name -> list of values), in
    order, as dicts. Names must be in ``valid`` or be ``"seed"``."""
    allowed = set(valid) | {"seed"}
    unknown = sorted(set(grid) - allowed)
    if unknown:
        raise ValueError(f"unknown sweep keys {unknown}; valid keys are {sorted(allowed)}")
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def point_model(
    point: Mapping[str, object],
    model_kwargs: Mapping[str, object],
    device: torch.device | str | None = None,
) -> TransformerLM:
    """The model of one grid point: ``model_kwargs`` overridden by the point's model
    keys, initialized under ``torch.manual_seed(point["seed"])`` (default 0)."""
    kwargs = {**model_kwargs, **{k: v for k, v in point.items() if k in MODEL_KEYS}}
    return build_model(seed=int(point.get("seed", 0)), device=device, **kwargs)


def probe_sweep(
    probe: Callable[..., pd.DataFrame],
    batch: Batch | Callable[[int], Batch],
    grid: Mapping[str, Sequence[object]],
    model_kwargs: Mapping[str, object],
    device: torch.device | str | None = None,
    **probe_kwargs: object,
) -> pd.DataFrame:
    """Run ``probe(model, batch, **probe_kwargs)`` on a fresh model for every point
    of the Cartesian product of ``grid`` and concatenate the frames.

    ``grid`` keys are :class:`~prenorm.TransformerLM` arguments (``placement``,
    ``init``, ``n_layers``, ...) or ``seed`` (seeds the initialization; default 0).
    ``batch`` is a fixed batch or a function ``seed -> batch``. Every row gets the
    grid point's values as columns.
    """
    frames = []
    for point in grid_points(grid, MODEL_KEYS):
        model = point_model(point, model_kwargs, device)
        b = batch(int(point.get("seed", 0))) if callable(batch) else batch
        frames.append(probe(model, b, **probe_kwargs).assign(**point))
    return pd.concat(frames, ignore_index=True)


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
    :class:`~prenorm.TransformerLM` (``placement``, ``n_layers``, ``norm``, ``init``,
    ...), any argument of :func:`~prenorm.train` (``lr``, ``warmup_steps``, ``clip``,
    ...), or ``seed``, which seeds both the initialization and the batches. Fixed
    values go in ``model_kwargs`` / ``train_kwargs``. With ``history=False`` the
    result has one row per run (:meth:`~prenorm.TrainResult.summary`); with
    ``history=True`` one row per step of every run, with the run's configuration and
    ``diverged``.
    """
    from tqdm.auto import tqdm

    points = grid_points(grid, MODEL_KEYS + TRAIN_KEYS)
    model_kwargs = {"vocab_size": data.vocab_size, **(model_kwargs or {})}
    frames, rows = [], []
    for point in tqdm(points, disable=not progress, desc="sweep"):
        tk = {**(train_kwargs or {}), **{k: v for k, v in point.items() if k in TRAIN_KEYS}}
        model = point_model(point, model_kwargs)
        result = train(model, data, seed=int(point.get("seed", 0)), **tk)
        summary = {**result.summary(), **point}
        if history:
            frames.append(
                result.history.assign(**{k: v for k, v in summary.items() if k != "steps_done"})
            )
        else:
            rows.append(summary)
    return pd.concat(frames, ignore_index=True) if history else pd.DataFrame(rows)
