"""The exercise checkers are specifications that can fail: every solution shown in the book
passes its checker, and a plausible wrong answer for each checker fails it."""

import contextlib
import io
import math
import re
from pathlib import Path
from statistics import NormalDist

import pytest
import torch

import prenorm as P
from prenorm import exercises

ROOT = Path(__file__).resolve().parents[1]
EXERCISE_FILES = sorted((ROOT / "book" / "exercises").glob("*.md"))
CHECK_CALL = re.compile(r'P\.exercises\.check\("(\w+)", (\w+)\)')


def _solution_blocks() -> list[tuple[str, str]]:
    """(file name, code) of every python block inside a solution directive."""
    out = []
    for path in EXERCISE_FILES:
        for sol in re.findall(r"````\{solution\}.*?\n````\n", path.read_text(), re.S):
            for code in re.findall(r"```python\n(.*?)```", sol, re.S):
                out.append((path.name, code))
    return out


def _exec(code: str) -> dict:
    namespace: dict = {}
    placements = dict(P.PLACEMENTS._entries)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(code, "<solution>", "exec"), namespace)
    finally:  # a solution that registers a placement must not leak into other tests
        P.PLACEMENTS._entries.clear()
        P.PLACEMENTS._entries.update(placements)
    return namespace


def test_every_chapter_of_parts_1_to_3_has_exercises():
    assert [p.stem for p in EXERCISE_FILES] == [f"{n:02d}" for n in range(1, 11)]
    labels = []
    for path in EXERCISE_FILES:
        found = re.findall(r"````\{exercise\}.*\n:label: (\S+)", path.read_text())
        assert 2 <= len(found) <= 4, (path.name, found)
        solved = re.findall(r"````\{solution\} (\S+)\n:class: dropdown", path.read_text())
        assert sorted(solved) == sorted(found), (
            f"{path.name}: each exercise has one hidden solution"
        )
        labels += found
    assert len(labels) == len(set(labels)), "exercise labels must be unique across the book"


def test_each_chapter_includes_its_exercises_at_the_end():
    import json

    for path in EXERCISE_FILES:
        (nb,) = (ROOT / "book").glob(f"{path.stem}_*.ipynb")
        last = json.loads(nb.read_text())["cells"][-1]
        assert last["cell_type"] == "markdown"
        assert "".join(last["source"]).strip() == f"```{{include}} exercises/{path.name}\n```"


def test_every_checker_has_a_solution_in_the_book():
    checked = {name for _, code in _solution_blocks() for name, _ in CHECK_CALL.findall(code)}
    assert checked == set(exercises.EXERCISES)


@pytest.mark.parametrize(
    "where,code", _solution_blocks(), ids=lambda v: v if v.endswith(".md") else ""
)
def test_solution_runs_and_passes_its_checker(where, code, monkeypatch):
    monkeypatch.setenv("PRENORM_SCALE", "ci")
    namespace = _exec(code)
    for name, fn in CHECK_CALL.findall(code):
        result = exercises.check(name, namespace[fn])
        assert result.passed, str(result)
        assert str(result) == f"{name}: passed all {result.cases} cases."


# --- Wrong answers, one or more per checker: each must fail ---------------------------


def _ln_parts(x, eps, unbiased=False):
    xc = x - x.mean(-1, keepdim=True)
    var = xc.var(-1, unbiased=unbiased, keepdim=True)
    sigma = torch.sqrt(var + eps)
    return xc / sigma, sigma


def jac_no_mean_term(x, weight, eps):
    xhat, sigma = _ln_parts(x, eps)
    d = x.shape[-1]
    return weight[:, None] * (torch.eye(d, dtype=x.dtype) - torch.outer(xhat, xhat) / d) / sigma


def jac_no_radial_term(x, weight, eps):
    _, sigma = _ln_parts(x, eps)
    d = x.shape[-1]
    return weight[:, None] * (torch.eye(d, dtype=x.dtype) - 1 / d) / sigma


def jac_eps_outside(x, weight, eps):
    xc = x - x.mean()
    sigma = xc.pow(2).mean().sqrt() + eps
    xhat = xc / sigma
    d = x.shape[-1]
    b = torch.eye(d, dtype=x.dtype) - 1 / d - torch.outer(xhat, xhat) / d
    return weight[:, None] * b / sigma


def jac_unbiased(x, weight, eps):
    xhat, sigma = _ln_parts(x, eps, unbiased=True)
    d = x.shape[-1]
    b = torch.eye(d, dtype=x.dtype) - 1 / d - torch.outer(xhat, xhat) / d
    return weight[:, None] * b / sigma


def jac_gamma_on_columns(x, weight, eps):
    return P.layernorm_jacobian(x, None, eps) * weight[None, :]


def vjp_gamma_after(x, weight, eps, grad_out):
    xhat, sigma = _ln_parts(x, eps)
    g = grad_out
    return (
        weight * (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True)) / sigma
    )


def vjp_no_mean(x, weight, eps, grad_out):
    xhat, sigma = _ln_parts(x, eps)
    g = weight * grad_out
    return (g - xhat * (g * xhat).mean(-1, keepdim=True)) / sigma


def rms_no_projection(x, weight, eps, grad_out):
    r = torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
    return weight * grad_out / r


def rms_eps_outside(x, weight, eps, grad_out):
    r = torch.sqrt((x * x).mean(-1, keepdim=True)) + eps
    xhat = x / r
    g = weight * grad_out
    return (g - xhat * (g * xhat).mean(-1, keepdim=True)) / r


def rms_layernorm_backward(x, weight, eps, grad_out):  # centres as LayerNorm would
    return vjp_no_mean(x - x.mean(-1, keepdim=True), weight, eps, grad_out)


def step_jac_no_identity(x, W, eps):
    return W @ P.layernorm_jacobian(x, None, eps)


def step_jac_wrong_order(x, W, eps):
    return torch.eye(x.shape[-1], dtype=x.dtype) + P.layernorm_jacobian(x, None, eps) @ W


def wald_interval(k, n, level):
    z = NormalDist().inv_cdf((1 + level) / 2)
    p = k / n
    half = z * math.sqrt(p * (1 - p) / n)
    return max(0.0, p - half), min(1.0, p + half)


def unpaired_interval(a, b, level):
    a, b = torch.tensor(a), torch.tensor(b)
    n = len(a)
    half = P.t_quantile((1 + level) / 2, n - 1) * math.sqrt(a.var() / n + b.var() / n)
    mean = float(a.mean() - b.mean())
    return mean - half, mean + half


def z_instead_of_t(a, b, level):
    d = torch.tensor(a) - torch.tensor(b)
    half = NormalDist().inv_cdf((1 + level) / 2) * float(d.std()) / math.sqrt(len(d))
    return float(d.mean()) - half, float(d.mean()) + half


def lns_zero_based(x, f, norm, layer):
    return x + f(norm(x) / math.sqrt(layer + 1))


def lns_scale_outside(x, f, norm, layer):
    return x + f(norm(x)) / math.sqrt(layer)


def dyt_no_alpha(x, alpha, weight):
    return torch.diag(weight * (1 - torch.tanh(alpha * x) ** 2))


def dyt_no_square(x, alpha, weight):
    return torch.diag(weight * alpha * (1 - torch.tanh(alpha * x)))


WRONG = [
    ("post_ln_step", lambda x, f, norm: x + f(norm(x))),
    ("post_ln_step", lambda x, f, norm: x + f(x)),
    ("post_ln_step", lambda x, f, norm: norm(x) + f(norm(x))),
    ("pre_ln_step", lambda x, f, norm: norm(x + f(x))),
    ("pre_ln_step", lambda x, f, norm: x + norm(f(x))),
    ("layernorm_jacobian", jac_no_mean_term),
    ("layernorm_jacobian", jac_no_radial_term),
    ("layernorm_jacobian", jac_eps_outside),
    ("layernorm_jacobian", jac_unbiased),
    ("layernorm_jacobian", jac_gamma_on_columns),
    ("layernorm_vjp", vjp_gamma_after),
    ("layernorm_vjp", vjp_no_mean),
    ("pre_ln_step_jacobian", step_jac_no_identity),
    ("pre_ln_step_jacobian", step_jac_wrong_order),
    ("wilson_interval", wald_interval),
    ("rmsnorm_backward", rms_no_projection),
    ("rmsnorm_backward", rms_eps_outside),
    ("rmsnorm_backward", rms_layernorm_backward),
    ("paired_t_interval", unpaired_interval),
    ("paired_t_interval", z_instead_of_t),
    ("lns_step", lns_zero_based),
    ("lns_step", lns_scale_outside),
    ("dyt_jacobian", dyt_no_alpha),
    ("dyt_jacobian", dyt_no_square),
]


@pytest.mark.parametrize("name,fn", WRONG, ids=[f"{n}-{i}" for i, (n, _) in enumerate(WRONG)])
def test_a_wrong_answer_fails_its_checker(name, fn):
    result = exercises.check(name, fn)
    assert not result.passed
    text = str(result)
    assert f"of {result.cases} cases failed" in text and "The specification:" in text


def test_every_checker_has_a_wrong_answer():
    assert {name for name, _ in WRONG} == set(exercises.EXERCISES)


def test_messages_say_what_failed():
    def wrong_shape(x, weight, eps):
        return torch.zeros(3)

    def raises(x, weight, eps):
        raise RuntimeError("not written yet")

    def nan(x, weight, eps):
        return torch.full((x.shape[-1], x.shape[-1]), float("nan"))

    assert "returned shape (3,), expected" in str(
        exercises.check("layernorm_jacobian", wrong_shape)
    )
    assert "raised RuntimeError: not written yet" in str(
        exercises.check("layernorm_jacobian", raises)
    )
    assert "NaN or infinite" in str(exercises.check("layernorm_jacobian", nan))
    failed = exercises.check("layernorm_jacobian", jac_no_mean_term)
    assert "a random token (d=3), eps=0.0: is off by up to" in str(failed)
    assert not failed and "and" in str(failed).splitlines()[-2]  # counted beyond those shown


def test_check_validates_its_arguments():
    with pytest.raises(ValueError, match="valid exercises are 'post_ln_step'"):
        exercises.check("layernorm_jacobain", jac_no_mean_term)
    with pytest.raises(TypeError, match="signature layernorm_jacobian"):
        exercises.check("layernorm_jacobian", 3)
    with pytest.raises(ValueError, match="seed must be an integer"):
        exercises.check("layernorm_jacobian", jac_no_mean_term, seed=1.5)


def test_checker_leaves_the_readers_inputs_alone_and_reference_unharmed():
    def mutates(x, weight, eps):
        out = P.layernorm_jacobian(x, weight, eps)
        x.zero_()
        return out

    assert exercises.check("layernorm_jacobian", mutates).passed


def test_float32_answers_pass():
    def single(x, weight, eps):
        return P.layernorm_jacobian(x.float(), weight.float(), eps)

    assert exercises.check("layernorm_jacobian", single).passed
