"""The timing logic of prenorm.benchmark: what it computes and how it refuses bad input.

No test here asserts a speed: timings belong to benchmarks/norm_speed.py and the book.
"""

import pytest
import torch
import torch.nn.functional as F

from prenorm import (
    IMPLEMENTATIONS,
    UnknownNameError,
    compile_problem,
    count_passes,
    norm_module,
    time_norms,
)
from prenorm import benchmark as B

EAGER = [n for n, impl in IMPLEMENTATIONS.items() if not impl.compiled]


@pytest.fixture
def eager_compile(monkeypatch):
    """torch.compile with the eager backend: traced by dynamo, no code generation (fast)."""
    real = torch.compile

    def compile_eager(model, **kwargs):
        return real(model, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", compile_eager)
    yield
    torch._dynamo.reset()


def _reference(norm: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    d = x.shape[-1]
    if norm == "layernorm":
        return F.layer_norm(x, (d,), weight, bias, eps=B.EPS["layernorm"])
    return F.rms_norm(x, (d,), weight, eps=B.EPS["rmsnorm"])


@pytest.mark.parametrize("name", list(IMPLEMENTATIONS))
def test_every_implementation_computes_the_reference_norm(name, eager_compile):
    d = 24
    module = norm_module(name, d, seed=3)
    inner = getattr(module, "_orig_mod", module)
    weight = inner.weight.detach().clone().requires_grad_(True)
    has_bias = getattr(inner, "bias", None) is not None
    bias = inner.bias.detach().clone().requires_grad_(True) if has_bias else None
    assert has_bias == (IMPLEMENTATIONS[name].norm == "layernorm")
    assert (weight - 1).abs().max() > 0.1  # a non-trivial gamma, so a dropped weight shows
    x = (torch.randn(5, d) * 3 + 1).requires_grad_(True)
    dy = torch.randn(5, d)
    y = module(x)
    ref = _reference(IMPLEMENTATIONS[name].norm, x, weight, bias)
    assert torch.allclose(y, ref, atol=1e-5), name
    ours = torch.autograd.grad(y, [x, inner.weight], dy)
    theirs = torch.autograd.grad(ref, [x, weight], dy)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.allclose(a, b, atol=1e-4), name


def test_same_seed_same_parameters_across_implementations():
    a = norm_module("layernorm-ops", 8, seed=1)
    b = norm_module("layernorm-torch", 8, seed=1)
    c = norm_module("layernorm-torch", 8, seed=2)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert not torch.equal(b.weight, c.weight)


def test_time_norms_frame():
    threads = torch.get_num_threads()
    df = time_norms(
        [8, 16], ["layernorm-torch", "rmsnorm-ops"], tokens=4, repeats=3, seed=0, threads=1
    )
    assert torch.get_num_threads() == threads  # restored
    assert list(df.columns) == [
        "implementation",
        "norm",
        "kind",
        "d",
        "tokens",
        "mbytes",
        "device",
        "dtype",
        "seconds",
        "seconds_min",
        "copy_seconds",
        "bound_fraction",
        "first_call_seconds",
        "number",
        "repeats",
        "threads",
    ]
    assert len(df) == 4  # one row per implementation and width
    assert set(df.d) == {8, 16} and set(df.implementation) == {"layernorm-torch", "rmsnorm-ops"}
    assert (df.seconds > 0).all() and (df.seconds_min <= df.seconds).all()
    assert (df.threads == 1).all() and (df.repeats == 3).all() and (df.number >= 1).all()
    assert df.loc[df.d == 16, "mbytes"].iloc[0] == 16 * 4 * 4 / 2**20
    ratio = B.BOUND_TRANSFERS / B.COPY_TRANSFERS * df.copy_seconds / df.seconds
    assert torch.allclose(torch.tensor(df.bound_fraction.values), torch.tensor(ratio.values))
    # the copy is timed once per width and shared by every implementation of that width
    assert df.groupby("d").copy_seconds.nunique().eq(1).all()
    assert set(df.dtype) == {"float32"} and set(df.device) == {"cpu"}


def test_time_norms_compiled_reports_the_compile_call(eager_compile):
    df = time_norms([8], ["rmsnorm-compiled"], tokens=4, repeats=2, device="cpu")
    assert df.kind.iloc[0] == "compiled" and df.first_call_seconds.iloc[0] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_time_norms_on_cuda():
    df = time_norms([64], ["layernorm-torch", "rmsnorm-torch"], tokens=8, repeats=2, device="cuda")
    assert set(df.device) == {"cuda"}


def test_bad_input_is_named():
    with pytest.raises(UnknownNameError, match=r"'rmsnorm-fast'.*'layernorm-ops'"):
        time_norms([8], ["rmsnorm-fast"], tokens=4)
    with pytest.raises(ValueError, match="at least one implementation"):
        time_norms([8], [], tokens=4)
    with pytest.raises(ValueError, match="tokens must be a positive integer, got 0"):
        time_norms([8], ["rmsnorm-ops"], tokens=0)
    with pytest.raises(ValueError, match="width d must be a positive integer, got -8"):
        time_norms([-8], ["rmsnorm-ops"], tokens=4)
    with pytest.raises(ValueError, match="repeats must be a positive integer, got 0"):
        time_norms([8], ["rmsnorm-ops"], tokens=4, repeats=0)
    with pytest.raises(ValueError, match="floating-point dtype, got torch.int64"):
        time_norms([8], ["rmsnorm-ops"], tokens=4, dtype=torch.int64)
    with pytest.raises(UnknownNameError, match="'groupnorm'"):
        norm_module("groupnorm", 8)


def test_count_passes_fused_layernorm_makes_the_minimum():
    df = count_passes("layernorm-torch", d=16, tokens=8)
    assert list(df.columns) == ["implementation", "phase", "op", "reads", "writes"]
    by_phase = df.groupby("phase")[["reads", "writes"]].sum()
    # forward: read x, write y; backward: read x and dy, write dx
    assert by_phase.loc["forward"].tolist() == [1, 1]
    assert by_phase.loc["backward"].tolist() == [2, 1]
    assert by_phase.to_numpy().sum() == B.BOUND_TRANSFERS


def test_count_passes_plain_ops():
    ln, rms = (count_passes(n, d=16, tokens=8) for n in ("layernorm-ops", "rmsnorm-ops"))
    fwd = {n: f[f.phase == "forward"] for n, f in (("ln", ln), ("rms", rms))}
    # prenorm.RMSNorm forward: x*x, mean, x*rsqrt, *gamma -> 4 reads, 3 writes of full size
    assert fwd["rms"].reads.sum() == 4 and fwd["rms"].writes.sum() == 3
    # LayerNorm needs the mean before it can centre, and the centred tensor before its variance
    assert fwd["ln"].reads.sum() > fwd["rms"].reads.sum()
    assert (ln.reads + ln.writes).sum() > (rms.reads + rms.writes).sum()
    # ops on per-token statistics only (rsqrt of a (tokens, 1) tensor) move no full tensor
    assert (fwd["rms"].query("op == 'rsqrt'")[["reads", "writes"]] == 0).all().all()


def test_count_passes_refuses_compiled():
    with pytest.raises(ValueError, match=r"'rmsnorm-compiled'.*'layernorm-ops'"):
        count_passes("rmsnorm-compiled")
    assert set(EAGER) == {"layernorm-ops", "rmsnorm-ops", "layernorm-torch", "rmsnorm-torch"}


def test_compile_problem_reports_the_reason(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nmore detail")

    monkeypatch.setattr(torch, "compile", broken)
    assert compile_problem("cpu") == "RuntimeError: no C++ compiler found"
