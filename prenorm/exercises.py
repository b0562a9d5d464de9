r"""Checkers for the book's coding exercises: the checker is the specification.

Each exercise at the end of a chapter that asks for code names a function with a fixed
signature. :func:`check` runs the reader's function on many cases (random shapes and
weights, several :math:`\epsilon`, edge cases such as a constant token) and compares it
with the package's reference, in float64, to a relative tolerance of
:data:`TOLERANCE` of the answer's largest entry (so float32 arithmetic inside the
reader's function passes, a missing term does not). The result says in plain words which
cases failed and how::

    import prenorm as P
    P.exercises.check("layernorm_jacobian", my_layernorm_jacobian)

:data:`EXERCISES` lists the checked exercises with their chapter and signature.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .norms import LayerNorm, RMSNorm, dyt_jacobian, layernorm_jacobian, rmsnorm_jacobian
from .registry import Registry
from .stats import rate_interval, t_interval

__all__ = ["EXERCISES", "CheckResult", "Exercise", "TOLERANCE", "check"]

#: Largest error allowed, relative to the largest entry of the reference answer.
TOLERANCE = 1e-5
#: How many failed cases a result spells out (it counts them all).
SHOWN = 5

# One case: a description in words, the arguments for the reader's function, and the answer.
Case = tuple[str, tuple, object]


@dataclass(frozen=True)
class Exercise:
    """A checked exercise: its ``chapter`` (1-10), the ``signature`` the reader's function
    must have, the ``spec`` in words (what it returns), and ``cases(generator)``, which
    yields the cases with the reference answers."""

    chapter: int
    signature: str
    spec: str
    cases: Callable[[torch.Generator], Iterator[Case]]
    compare: str = "tensor"  # "tensor" or "interval"


@dataclass(frozen=True)
class CheckResult:
    """What :func:`check` found: the exercise ``name``, whether every case ``passed``,
    the number of ``cases`` run and one line per failed case (``failures``). True in a
    boolean context exactly when every case passed; printed, it says so in words."""

    name: str
    passed: bool
    cases: int
    failures: tuple[str, ...]
    spec: str

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        if self.passed:
            return f"{self.name}: passed all {self.cases} cases."
        shown = "\n".join(f"  - {f}" for f in self.failures[:SHOWN])
        more = len(self.failures) - SHOWN
        tail = f"\n  ... and {more} more" if more > 0 else ""
        return (
            f"{self.name}: {len(self.failures)} of {self.cases} cases failed:\n{shown}{tail}\n"
            f"The specification: {self.spec}"
        )

    __repr__ = __str__


def _randn(g: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _gamma(g: torch.Generator, d: int) -> Tensor:
    """A random scale with both signs, so that a gamma on the wrong side shows."""
    return 1 + 0.8 * _randn(g, d)


def _tokens(g: torch.Generator, d: int) -> Iterator[tuple[str, Tensor]]:
    """Single tokens that exercise a norm: typical, offset, tiny (eps matters), constant."""
    yield f"a random token (d={d})", _randn(g, d)
    yield f"a token with a large mean (d={d})", 5.0 + 0.3 * _randn(g, d)
    yield f"a tiny token, where eps matters (d={d})", 1e-3 * _randn(g, d)
    yield (
        f"a constant token (all features equal, d={d})",
        torch.full((d,), 0.7, dtype=torch.float64),
    )


def _ln(d: int, eps: float, g: torch.Generator, bias: bool = True) -> LayerNorm:
    norm = LayerNorm(d, eps=eps, bias=bias).double()
    with torch.no_grad():
        norm.weight.copy_(_gamma(g, d))
        if norm.bias is not None:
            norm.bias.copy_(0.5 * _randn(g, d))
    return norm


def _rms(d: int, eps: float, g: torch.Generator) -> RMSNorm:
    norm = RMSNorm(d, eps=eps).double()
    with torch.no_grad():
        norm.weight.copy_(_gamma(g, d))
    return norm


def _branch(d: int, g: torch.Generator, zero: bool = False) -> nn.Module:
    """A small nonlinear sublayer f: Linear, tanh, Linear (the zero map when ``zero``)."""
    f = nn.Sequential(nn.Linear(d, 2 * d), nn.Tanh(), nn.Linear(2 * d, d)).double()
    with torch.no_grad():
        for p in f.parameters():
            p.copy_(0.0 if zero else _randn(g, *p.shape) / math.sqrt(p.shape[-1]))
    return f.requires_grad_(False)


_SHAPES = ((3,), (2, 5, 8), (4, 16), (1, 3, 33))
_EPS_NORMS = (("LayerNorm", 1e-5), ("LayerNorm", 0.5), ("RMSNorm", 1e-6), ("RMSNorm", 0.5))


def _step_cases(g: torch.Generator, which: str) -> Iterator[Case]:
    for shape in _SHAPES:
        d = shape[-1]
        for kind, eps in _EPS_NORMS:
            norm = _ln(d, eps, g) if kind == "LayerNorm" else _rms(d, eps, g)
            for zero in (False, True):
                f = _branch(d, g, zero)
                x = 2.0 * _randn(g, *shape) + 1.0
                with torch.no_grad():
                    want = norm(x + f(x)) if which == "post" else x + f(norm(x))
                what = f"x of shape {shape}, {kind}(eps={eps}), {'f = 0' if zero else 'random f'}"
                yield what, (x, f, norm), want


def _post_cases(g: torch.Generator) -> Iterator[Case]:
    return _step_cases(g, "post")


def _pre_cases(g: torch.Generator) -> Iterator[Case]:
    return _step_cases(g, "pre")


def _jacobian_cases(g: torch.Generator) -> Iterator[Case]:
    for d in (3, 8, 33):  # at d = 2 the Jacobian is eps/sigma^3-small: no test of the terms
        for eps in (0.0, 1e-5, 0.1, 1.0):
            for what, x in _tokens(g, d):
                if eps == 0.0 and ("constant" in what or "tiny" in what):
                    continue  # sigma = 0: LayerNorm itself is undefined there
                w = _gamma(g, d)
                yield f"{what}, eps={eps}", (x, w, eps), layernorm_jacobian(x, w, eps)


def _vjp_cases(g: torch.Generator, norm: str) -> Iterator[Case]:
    jac = layernorm_jacobian if norm == "layernorm" else rmsnorm_jacobian
    epss = (1e-5, 0.1, 1.0) if norm == "layernorm" else (1e-6, 0.1, 1.0)
    for shape in _SHAPES:
        d = shape[-1]
        for eps in epss:
            x = 2.0 * _randn(g, *shape) + 1.0
            w, gout = _gamma(g, d), _randn(g, *shape)
            want = (jac(x, w, eps).transpose(-1, -2) @ gout.unsqueeze(-1)).squeeze(-1)
            yield f"x of shape {shape}, eps={eps}", (x, w, eps, gout), want
        for what, x in _tokens(g, d):
            x = x.expand(shape).clone()
            w, gout = _gamma(g, d), _randn(g, *shape)
            want = (jac(x, w, 0.1).transpose(-1, -2) @ gout.unsqueeze(-1)).squeeze(-1)
            yield f"{what} repeated to shape {shape}, eps=0.1", (x, w, 0.1, gout), want


def _ln_vjp_cases(g: torch.Generator) -> Iterator[Case]:
    return _vjp_cases(g, "layernorm")


def _rms_backward_cases(g: torch.Generator) -> Iterator[Case]:
    return _vjp_cases(g, "rmsnorm")


def _pre_step_jacobian_cases(g: torch.Generator) -> Iterator[Case]:
    for d in (2, 3, 8, 33):
        for eps in (1e-5, 0.1, 1.0):
            for what, x in _tokens(g, d):
                W = _randn(g, d, d) / math.sqrt(d)
                want = torch.eye(d, dtype=x.dtype) + W @ layernorm_jacobian(x, None, eps)
                yield f"{what}, eps={eps}", (x, W, eps), want


def _wilson_cases(g: torch.Generator) -> Iterator[Case]:
    for n in (1, 2, 3, 5, 10, 40):
        for k in sorted({0, 1, n // 2, n - 1, n} & set(range(n + 1))):
            for level in (0.9, 0.95, 0.99):
                e = rate_interval(["diverged"] * k + ["trained"] * (n - k), "diverged", level)
                yield f"k={k} of n={n} at level {level}", (k, n, level), (e.lo, e.hi)


def _paired_cases(g: torch.Generator) -> Iterator[Case]:
    for n in (2, 3, 5, 12):
        for level in (0.9, 0.95):
            shared = 3.0 * _randn(g, n)  # what both sides of a pair have in common (the seed)
            a = shared + 0.1 * _randn(g, n)
            b = shared + 0.05 + 0.1 * _randn(g, n)
            e = t_interval((a - b).numpy(), level)
            yield f"n={n} pairs at level {level}", (a.tolist(), b.tolist(), level), (e.lo, e.hi)


def _lns_cases(g: torch.Generator) -> Iterator[Case]:
    for shape in _SHAPES:
        d = shape[-1]
        for layer in (1, 2, 5, 24):
            norm, f = _ln(d, 1e-5, g), _branch(d, g)
            x = 2.0 * _randn(g, *shape)
            with torch.no_grad():
                want = x + f(norm(x) / math.sqrt(layer))
            yield f"x of shape {shape}, layer l={layer}", (x, f, norm, layer), want


def _dyt_cases(g: torch.Generator) -> Iterator[Case]:
    for d in (2, 3, 8, 33):
        for alpha in (0.1, 0.5, 2.0):
            for what, x in _tokens(g, d):
                w = _gamma(g, d)
                yield f"{what}, alpha={alpha}", (x, alpha, w), dyt_jacobian(x, alpha, w)
            x = 20.0 * _randn(g, d)
            w = _gamma(g, d)
            yield (
                f"a large token (saturating), alpha={alpha}",
                (x, alpha, w),
                dyt_jacobian(x, alpha, w),
            )


#: The checked exercises by name. A new one is one more entry.
EXERCISES: Registry[Exercise] = Registry(
    "exercise",
    {
        "post_ln_step": Exercise(
            1,
            "post_ln_step(x, f, norm) -> Tensor",
            "return the Post-LN residual step norm(x + f(x)) for x of shape (..., d), "
            "f a sublayer and norm a norm module (LayerNorm or RMSNorm).",
            _post_cases,
        ),
        "pre_ln_step": Exercise(
            1,
            "pre_ln_step(x, f, norm) -> Tensor",
            "return the Pre-LN residual step x + f(norm(x)) for x of shape (..., d), "
            "f a sublayer and norm a norm module (LayerNorm or RMSNorm).",
            _pre_cases,
        ),
        "layernorm_jacobian": Exercise(
            2,
            "layernorm_jacobian(x, weight, eps) -> Tensor",
            "return the d x d Jacobian of LayerNorm at one token x of shape (d,), "
            "diag(weight) (I - 11^T/d - xhat xhat^T/d) / sigma, with "
            "sigma = sqrt(population variance of x + eps) and xhat = (x - mean) / sigma.",
            _jacobian_cases,
        ),
        "layernorm_vjp": Exercise(
            3,
            "layernorm_vjp(x, weight, eps, grad_out) -> Tensor",
            "return the gradient at LayerNorm's input, J^T grad_out for every token, without "
            "building J: with g = weight * grad_out, (g - mean(g) - xhat mean(g xhat)) / sigma "
            "over the last dimension; x and grad_out have shape (..., d).",
            _ln_vjp_cases,
        ),
        "pre_ln_step_jacobian": Exercise(
            4,
            "pre_ln_step_jacobian(x, W, eps) -> Tensor",
            "return the d x d Jacobian of the Pre-LN step x + W LN(x) at one token x of "
            "shape (d,), LN without affine parameters: I + W J_LN(x).",
            _pre_step_jacobian_cases,
        ),
        "wilson_interval": Exercise(
            5,
            "wilson_interval(k, n, level) -> (lo, hi)",
            "return the Wilson score interval for k successes in n runs at confidence level "
            "`level`, clipped to [0, 1].",
            _wilson_cases,
            compare="interval",
        ),
        "rmsnorm_backward": Exercise(
            7,
            "rmsnorm_backward(x, weight, eps, grad_out) -> Tensor",
            "return the gradient at RMSNorm's input, J^T grad_out for every token: with "
            "r = sqrt(mean(x^2) + eps), xhat = x / r and g = weight * grad_out, "
            "(g - xhat mean(g xhat)) / r over the last dimension.",
            _rms_backward_cases,
        ),
        "paired_t_interval": Exercise(
            8,
            "paired_t_interval(a, b, level) -> (lo, hi)",
            "return the Student-t interval at `level` for the mean of the paired differences "
            "a[i] - b[i] (n - 1 degrees of freedom, sample standard deviation).",
            _paired_cases,
            compare="interval",
        ),
        "lns_step": Exercise(
            9,
            "lns_step(x, f, norm, layer) -> Tensor",
            "return LayerNorm Scaling's residual step x + f(norm(x) / sqrt(layer)), with "
            "layer the 1-based index l of the block.",
            _lns_cases,
        ),
        "dyt_jacobian": Exercise(
            10,
            "dyt_jacobian(x, alpha, weight) -> Tensor",
            "return the d x d Jacobian of DyT(x) = weight * tanh(alpha x) + bias at one token "
            "x of shape (d,): diag(weight * alpha * (1 - tanh(alpha x)^2)).",
            _dyt_cases,
        ),
    },
)


def check(name: str, fn: Callable[..., object], seed: int = 0) -> CheckResult:
    """Run the reader's ``fn`` through the checked exercise ``name`` (a key of
    :data:`EXERCISES`) and compare every answer with the reference; ``seed`` draws the
    random cases. Returns a :class:`CheckResult` that prints which cases failed and how
    (wrong shape, non-finite values, the size of the error, or the exception raised)."""
    exercise = EXERCISES[name]
    if not callable(fn):
        raise TypeError(f"fn must be a function with signature {exercise.signature}, got {fn!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    g = torch.Generator().manual_seed(seed)
    failures, n = [], 0
    for what, args, want in exercise.cases(g):
        n += 1
        given = tuple(a.clone() if isinstance(a, Tensor) else a for a in args)
        try:
            got = fn(*given)
        except Exception as e:  # the reader's code: report it, do not crash
            failures.append(f"{what}: raised {type(e).__name__}: {e}")
            continue
        compare = _interval_error if exercise.compare == "interval" else _tensor_error
        error = compare(got, want)
        if error:
            failures.append(f"{what}: {error}")
    return CheckResult(name, not failures, n, tuple(failures), exercise.spec)


def _tensor_error(got: object, want: Tensor) -> str | None:
    """Why ``got`` is not ``want`` (shape, finiteness, size of the error), or ``None``."""
    if not isinstance(got, Tensor):
        return f"returned a {type(got).__name__}, not a torch.Tensor"
    if got.shape != want.shape:
        return f"returned shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    if not torch.isfinite(got).all():
        return "returned NaN or infinite values"
    err = (got.detach().double() - want).abs().max().item()
    size = want.abs().max().item()
    if err > TOLERANCE * max(size, 1e-12):
        return f"is off by up to {err:.3g} (the answer's largest entry is {size:.3g})"
    return None


def _interval_error(got: object, want: tuple[float, float]) -> str | None:
    """Why ``got`` is not the interval ``want``, or ``None``."""
    try:
        lo, hi = (float(v) for v in got)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return f"returned {got!r}, not a pair (lo, hi) of numbers"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"returned ({lo}, {hi}), not finite"
    err = max(abs(lo - want[0]), abs(hi - want[1]))
    if err > TOLERANCE * max(abs(want[0]), abs(want[1]), 1e-3):
        return f"returned ({lo:.4f}, {hi:.4f}), expected ({want[0]:.4f}, {want[1]:.4f})"
    return None
