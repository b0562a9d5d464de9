r"""Timing LayerNorm and RMSNorm against the memory-bandwidth bound, and counting their passes.

Both norms do a handful of flops per element, so on any modern device their time is
set by the bytes they move, not by arithmetic. One forward and backward pass of a norm
over a ``(tokens, d)`` tensor must at least

- forward: read :math:`x`, write :math:`y`;
- backward: read :math:`x` and :math:`\partial L/\partial y`, write :math:`\partial L/\partial x`

(the per-token statistics and the :math:`d`-sized weight gradients are small). That is
:data:`BOUND_TRANSFERS` = 5 full-size transfers, where a plain copy makes
:data:`COPY_TRANSFERS` = 2 (one read, one write). :func:`time_norms` times a copy of the
same tensor in the same run, interleaved with the norms, and reports each norm's time as
a fraction of the bound :math:`\tfrac52\,t_{\text{copy}}`: 1 means the implementation
moves the minimum of bytes at copy speed.

:func:`count_passes` counts the full-size tensors each aten operator reads and writes
in an eager implementation, which is where a formula's "passes" become memory traffic.

The implementations are a :class:`~prenorm.Registry`, :data:`IMPLEMENTATIONS`.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .devices import device as default_device
from .norms import LayerNorm, RMSNorm
from .registry import Registry

#: Full-size tensor transfers that one forward and backward pass of a norm must make:
#: read x, write y; read x and dy, write dx.
BOUND_TRANSFERS = 5
#: Full-size tensor transfers of a copy: read x, write the copy.
COPY_TRANSFERS = 2
#: The epsilon of each norm in every implementation (the defaults of
#: :class:`~prenorm.LayerNorm` and :class:`~prenorm.RMSNorm`).
EPS = {"layernorm": 1e-5, "rmsnorm": 1e-6}


@dataclass(frozen=True)
class Implementation:
    """One way to compute a norm: ``norm`` (``"layernorm"`` or ``"rmsnorm"``), ``kind``
    (``"ops"``: prenorm's modules, written in plain tensor operations; ``"torch"``:
    ``torch.nn.LayerNorm`` / ``torch.nn.RMSNorm``, which call ``F.layer_norm`` /
    ``F.rms_norm``; ``"compiled"``: prenorm's module through ``torch.compile``), and
    ``build(d)``, which returns the module over ``d`` features."""

    norm: str
    kind: str
    build: Callable[[int], nn.Module]
    description: str

    @property
    def compiled(self) -> bool:
        """Whether the module runs through ``torch.compile`` (a first call compiles)."""
        return self.kind == "compiled"


def _ops_layernorm(d: int) -> nn.Module:
    return LayerNorm(d, eps=EPS["layernorm"])


def _ops_rmsnorm(d: int) -> nn.Module:
    return RMSNorm(d, eps=EPS["rmsnorm"])


def _torch_layernorm(d: int) -> nn.Module:
    return nn.LayerNorm(d, eps=EPS["layernorm"])


def _torch_rmsnorm(d: int) -> nn.Module:
    return nn.RMSNorm(d, eps=EPS["rmsnorm"])


def _compiled(build: Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
    def build_compiled(d: int) -> nn.Module:
        return torch.compile(build(d), dynamic=False)  # type: ignore[return-value]

    return build_compiled


#: The implementations :func:`time_norms` can time, by name: ``{norm}-{kind}``.
IMPLEMENTATIONS: Registry[Implementation] = Registry(
    "implementation",
    {
        "layernorm-ops": Implementation(
            "layernorm", "ops", _ops_layernorm, "prenorm.LayerNorm: plain tensor ops"
        ),
        "rmsnorm-ops": Implementation(
            "rmsnorm", "ops", _ops_rmsnorm, "prenorm.RMSNorm: plain tensor ops"
        ),
        "layernorm-torch": Implementation(
            "layernorm", "torch", _torch_layernorm, "torch.nn.LayerNorm (F.layer_norm)"
        ),
        "rmsnorm-torch": Implementation(
            "rmsnorm", "torch", _torch_rmsnorm, "torch.nn.RMSNorm (F.rms_norm)"
        ),
        "layernorm-compiled": Implementation(
            "layernorm", "compiled", _compiled(_ops_layernorm), "torch.compile(prenorm.LayerNorm)"
        ),
        "rmsnorm-compiled": Implementation(
            "rmsnorm", "compiled", _compiled(_ops_rmsnorm), "torch.compile(prenorm.RMSNorm)"
        ),
    },
)


def norm_module(
    name: str,
    d: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> nn.Module:
    r"""The implementation ``name`` (a key of :data:`IMPLEMENTATIONS`) over ``d`` features,
    on ``device`` (default: the CPU) in ``dtype``, with non-trivial affine parameters drawn
    under ``seed``: :math:`\gamma = 1 + \tfrac12 z_1`, :math:`\beta = \tfrac12 z_2`,
    :math:`z_i \sim N(0, I)`. The same seed gives the same parameters to every
    implementation, so all of them compute the same function."""
    impl = IMPLEMENTATIONS[name]
    _check_positive("d", d)
    gen = torch.Generator().manual_seed(seed)
    weight = 1 + 0.5 * torch.randn(d, generator=gen)
    bias = 0.5 * torch.randn(d, generator=gen)
    module = impl.build(d)
    inner = getattr(module, "_orig_mod", module)  # the module under torch.compile
    with torch.no_grad():
        inner.weight.copy_(weight)
        if getattr(inner, "bias", None) is not None:
            inner.bias.copy_(bias)
    return module.to(device=device or "cpu", dtype=dtype)


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


#: Dynamo's switch that makes hitting the recompile limit an error instead of a silent
#: fallback to eager code: torch 2.7 renamed 2.6's ``fail_on_cache_limit_hit`` (kept as an
#: alias) to ``fail_on_recompile_limit_hit``; torch 2.4 and 2.5 have neither.
_FAIL_ON_LIMIT_CONFIGS = ("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit")


def _fail_on_recompile_limit() -> contextlib.AbstractContextManager:
    """Within it, a compiled module that hits dynamo's recompile limit raises, so a
    ``"compiled"`` timing never measures the eager fallback. The first of
    :data:`_FAIL_ON_LIMIT_CONFIGS` that this torch has; on torch 2.4 and 2.5, which have
    no such switch, nothing (there a module past the limit runs eagerly, with dynamo's
    warning)."""
    config = torch._dynamo.config
    for name in _FAIL_ON_LIMIT_CONFIGS:
        if hasattr(config, name):
            return config.patch(**{name: True})
    return contextlib.nullcontext()


def _timed(run: Callable[[], object], number: int, dev: torch.device) -> float:
    """Seconds per call of ``run``, over ``number`` back-to-back calls, the device
    synchronized before and after."""
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(number):
        run()
    _sync(dev)
    return (time.perf_counter() - t0) / number


def _fwd_bwd(module: nn.Module, x: Tensor, dy: Tensor) -> Callable[[], tuple[Tensor, ...]]:
    """One forward and backward pass: y = module(x), then dL/dx and the parameter
    gradients for the upstream gradient dy (returned, not accumulated)."""
    inputs = (x, *(p for p in module.parameters() if p.requires_grad))

    def run() -> tuple[Tensor, ...]:
        return torch.autograd.grad(module(x), inputs, dy)

    return run


def time_norms(
    widths: Sequence[int],
    implementations: Sequence[str],
    tokens: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    repeats: int = 10,
    seed: int = 0,
    min_time: float = 1e-3,
    threads: int | None = None,
) -> pd.DataFrame:
    r"""Time one forward and backward pass of each implementation on a ``(tokens, d)``
    input for every width ``d`` in ``widths``, next to a plain copy of the same tensor.

    Per width, every implementation (and the copy) is warmed up with one call (for a
    compiled one this call compiles: its time is ``first_call_seconds``), then timed
    ``repeats`` times, the implementations interleaved in an order that rotates with the
    repeat, so drifts in machine load hit all of them alike. One timing is the mean over
    ``number`` back-to-back calls, with ``number`` chosen so that a timing lasts at least
    ``min_time`` seconds; on CUDA (and MPS) the device is synchronized around it. The
    input :math:`x` and upstream gradient are :math:`N(0, 1)`, drawn under ``seed``;
    the affine parameters are :func:`norm_module`'s.

    Returns one row per implementation and width: ``implementation``, ``norm``,
    ``kind``, ``d``, ``tokens``, ``mbytes`` (size of :math:`x`), ``device``,
    ``dtype``, ``seconds`` (median over repeats), ``seconds_min``,
    ``copy_seconds`` (median copy time of the same tensor, same run),
    ``bound_fraction`` :math:`= \tfrac{5}{2}\,t_{\text{copy}} / t` (see the module
    docstring; 1 is copy speed for the minimum traffic), ``first_call_seconds``,
    ``number``, ``repeats`` and ``threads``. ``dtype`` defaults to float32.

    ``threads`` sets torch's intra-op CPU threads for the measurement (restored
    afterwards; default: leave them as they are). One thread gives steady CPU numbers on
    a machine whose cores are shared: a parallel operator waits for its slowest thread.
    """
    names = list(implementations)
    if not names:
        raise ValueError(
            f"give at least one implementation; valid ones are {list(IMPLEMENTATIONS)}"
        )
    for name in names:
        IMPLEMENTATIONS.check(name)
    widths = list(widths)
    if not widths:
        raise ValueError("give at least one width d")
    for d in widths:
        _check_positive("every width d", d)
    _check_positive("tokens", tokens)
    _check_positive("repeats", repeats)
    dtype = dtype or torch.float32
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
    if not min_time >= 0:
        raise ValueError(f"min_time must be >= 0 seconds, got {min_time}")
    if threads is not None:
        _check_positive("threads", threads)
    dev = torch.device(device) if device is not None else default_device()
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return pd.DataFrame(
            _time_widths(widths, names, tokens, dev, dtype, repeats, seed, min_time)
        )
    finally:
        torch.set_num_threads(before)


def _time_widths(
    widths: list[int],
    names: list[str],
    tokens: int,
    dev: torch.device,
    dtype: torch.dtype,
    repeats: int,
    seed: int,
    min_time: float,
) -> list[dict[str, Any]]:
    threads = torch.get_num_threads()
    rows: list[dict[str, Any]] = []
    for d in widths:
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(tokens, d, generator=gen).to(dev, dtype).requires_grad_(True)
        dy = torch.randn(tokens, d, generator=gen).to(dev, dtype)
        plain = x.detach()
        runs: dict[str, Callable[[], object]] = {"copy": plain.clone}
        for name in names:
            runs[name] = _fwd_bwd(norm_module(name, d, dev, dtype, seed), x, dy)
        first, number = {}, {}
        with _fail_on_recompile_limit():
            for name, run in runs.items():
                first[name] = _timed(run, 1, dev)  # warm-up; compiles a compiled module
                once = _timed(run, 1, dev)
                number[name] = max(1, math.ceil(min_time / max(once, 1e-9)))
            samples: dict[str, list[float]] = {name: [] for name in runs}
            order = list(runs)
            for r in range(repeats):
                k = r % len(order)
                for name in order[k:] + order[:k]:
                    samples[name].append(_timed(runs[name], number[name], dev))
        copy_s = statistics.median(samples["copy"])
        for name in names:
            impl = IMPLEMENTATIONS[name]
            sec = statistics.median(samples[name])
            rows.append(
                {
                    "implementation": name,
                    "norm": impl.norm,
                    "kind": impl.kind,
                    "d": d,
                    "tokens": tokens,
                    "mbytes": x.numel() * x.element_size() / 2**20,
                    "device": dev.type,
                    "dtype": str(dtype).removeprefix("torch."),
                    "seconds": sec,
                    "seconds_min": min(samples[name]),
                    "copy_seconds": copy_s,
                    "bound_fraction": BOUND_TRANSFERS / COPY_TRANSFERS * copy_s / sec,
                    "first_call_seconds": first[name],
                    "number": number[name],
                    "repeats": repeats,
                    "threads": threads,
                }
            )
    return rows


def compile_problem(device: torch.device | str | None = None) -> str | None:
    """Why ``torch.compile`` (the default inductor backend) cannot run on ``device``
    (default: the best available), as ``"Type: message"``; ``None`` when a small
    function compiles and runs there. The first compile in a process is slow (seconds
    to tens of seconds on a CPU)."""
    dev = torch.device(device) if device is not None else default_device()
    try:
        fn = torch.compile(lambda t: torch.rsqrt((t * t).mean(-1, keepdim=True) + 1.0) * t)
        fn(torch.ones(4, 8, device=dev))
    except Exception as exc:  # the reason is the answer
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
    return None


class _Traffic(TorchDispatchMode):
    """Records, for every aten operator that runs, the distinct full-size tensors it
    reads and writes (storages of at least ``nbytes``; views move no data)."""

    def __init__(self, nbytes: int) -> None:
        super().__init__()
        self.nbytes = nbytes
        self.phase = "forward"
        self.rows: list[dict[str, object]] = []

    def _full(self, tensors: list[object]) -> int:
        storages = {
            t.untyped_storage().data_ptr()
            for t in tensors
            if isinstance(t, Tensor) and t.untyped_storage().nbytes() >= self.nbytes
        }
        return len(storages)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            reads = self._full(tree_flatten((args, kwargs))[0])
            writes = self._full(tree_flatten(out)[0])
            self.rows.append(
                {
                    "phase": self.phase,
                    "op": str(func.overloadpacket.__name__),
                    "reads": reads,
                    "writes": writes,
                }
            )
        return out


def count_passes(
    name: str,
    d: int = 64,
    tokens: int = 32,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> pd.DataFrame:
    """The aten operators that one forward and backward pass of the eager implementation
    ``name`` runs on a ``(tokens, d)`` float32 input on ``device`` (default: the CPU;
    the operators a built-in dispatches to can differ between devices), one row per operator:
    ``implementation``, ``phase`` (``"forward"`` or ``"backward"``), ``op``, and
    ``reads`` / ``writes``, the number of distinct full-size tensors (``tokens x d``
    elements) it reads and writes. Each is one pass over memory for an unfused operator;
    a fused kernel that walks a row twice while it sits in cache still counts once.
    Operators that touch only per-token statistics or the weights count zero. Compiled
    implementations run generated kernels that the dispatcher does not see, and are
    refused."""
    impl = IMPLEMENTATIONS[name]
    if impl.compiled:
        eager = [n for n, i in IMPLEMENTATIONS.items() if not i.compiled]
        raise ValueError(
            f"count_passes needs an eager implementation, got {name!r}; valid ones are {eager}"
        )
    _check_positive("d", d)
    _check_positive("tokens", tokens)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    module = norm_module(name, d, dev, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, d, generator=gen).to(dev).requires_grad_(True)
    dy = torch.randn(tokens, d, generator=gen).to(dev)
    inputs = (x, *module.parameters())
    mode = _Traffic(x.numel() * x.element_size())
    with mode:
        y = module(x)
        mode.phase = "backward"
        torch.autograd.grad(y, inputs, dy)
    return pd.DataFrame(mode.rows, columns=["phase", "op", "reads", "writes"]).assign(
        implementation=name
    )[["implementation", "phase", "op", "reads", "writes"]]
