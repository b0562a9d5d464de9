"""The training fast path computes the functions the chapters write out.

Each test names what would make it fail: a fused kernel with another epsilon, another
variance, a missing bias or mask, QK-norm dropped on the fused path, a flag left set
after the ``with`` block, a probe that no longer sees the logits, or a fast path that
never switches on (then the op-trace tests fail, and the equality tests would be empty).
"""

from __future__ import annotations

import itertools

import pandas as pd
import pytest
import torch

import prenorm as P

VOCAB, SEQ = 11, 8


def _model(placement: str, norm: str, qk_norm: bool, dtype: torch.dtype) -> P.TransformerLM:
    model = P.build_model(
        seed=0,
        vocab_size=VOCAB,
        d_model=16,
        n_layers=4,
        n_heads=2,
        seq_len=SEQ,
        placement=placement,
        norm=norm,
        qk_norm=qk_norm,
    ).to(dtype)
    # Away from the init (gamma = 1, beta = 0, ReZero's gates = 0), so every parameter
    # and every term of every norm is exercised.
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=dtype))
    return model


def _loss_and_grads(model: P.TransformerLM, x: torch.Tensor, y: torch.Tensor):
    model.zero_grad(set_to_none=True)
    logits, loss = model(x, y)
    loss.backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


CASES = [
    (placement, norm, qk)
    for placement, norm, qk in itertools.product(P.PLACEMENTS, P.NORMS, (False, True))
    if not (placement == "rezero" and qk is False and norm != "layernorm")  # norm-free
]


@pytest.mark.parametrize(("placement", "norm", "qk_norm"), CASES)
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_fused_path_equals_written_out(placement, norm, qk_norm, dtype, tol):
    """Outputs and every parameter's gradient agree between the two paths, for every
    placement, norm and QK-norm option; ``device="cuda"`` switches every module that has
    a kernel (RMSNorm included), though the tensors stay on the CPU."""
    model = _model(placement, norm, qk_norm, dtype)
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(0, VOCAB, (3, SEQ), generator=gen)
    y = torch.randint(0, VOCAB, (3, SEQ), generator=gen)
    ref_out, ref_grads = _loss_and_grads(model, x, y)
    with P.use_kernels(model, "fused", device="cuda"):
        fused_out, fused_grads = _loss_and_grads(model, x, y)
    scale = ref_out.abs().max()
    assert (fused_out - ref_out).abs().max() <= tol * scale
    for name, g in ref_grads.items():
        err = (fused_grads[name] - g).abs().max()
        assert err <= tol * max(1.0, float(g.abs().max())), (name, float(err))


KERNEL_FUNCTIONS = ("layer_norm", "rms_norm", "scaled_dot_product_attention")


@pytest.mark.parametrize(
    ("device", "expect"),
    [
        ("cpu", {"layer_norm", "scaled_dot_product_attention"}),
        ("cuda", {"layer_norm", "rms_norm", "scaled_dot_product_attention"}),
    ],
)
def test_fused_path_calls_the_kernels(device, expect, monkeypatch):
    """The fused path really calls the kernels FUSED_ON lists for the device (RMSNorm's
    not on the CPU), and the reference path calls none of them: else the equality test
    above would compare a path with itself."""
    called: set[str] = set()
    for name in KERNEL_FUNCTIONS:
        real = getattr(torch.nn.functional, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            called.add(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(torch.nn.functional, name, spy)

    def calls(kernels: str) -> set[str]:
        called.clear()
        for norm in ("layernorm", "rmsnorm"):
            model = _model("peri", norm, True, torch.float32)
            x = torch.zeros(2, SEQ, dtype=torch.long)
            with P.use_kernels(model, kernels, device=device):
                model(x, x)[1].backward()
        return set(called)

    assert calls("fused") == expect
    assert calls("reference") == set()


def test_use_kernels_restores_flags_and_nests():
    model = _model("pre", "layernorm", True, torch.float32)
    flags = lambda: {m.fused for m in model.modules() if hasattr(m, "fused")}  # noqa: E731
    assert flags() == {False}
    with P.use_kernels(model, "fused"):
        assert flags() == {True}
        with P.use_kernels(model, "reference"):
            assert flags() == {False}
        assert flags() == {True}
    assert flags() == {False}
    with pytest.raises(RuntimeError), P.use_kernels(model, "fused"):
        raise RuntimeError("a failing step")
    assert flags() == {False}


@pytest.mark.parametrize("bad", ["fast", "FUSED", None, 1])
def test_kernels_argument_is_checked(bad):
    model = _model("pre", "layernorm", False, torch.float32)
    with pytest.raises(ValueError, match=r"kernels must be one of \['reference', 'fused'\]"):
        with P.use_kernels(model, bad):
            pass
    corpus = P.load_corpus()
    with pytest.raises(ValueError, match="kernels must be one of"):
        P.train(
            P.build_model(
                vocab_size=corpus.vocab_size, d_model=16, n_layers=1, n_heads=2, seq_len=SEQ
            ),
            corpus,
            1,
            1e-3,
            kernels=bad,
        )


def test_attention_logit_probe_sees_the_logits_on_the_fused_path():
    """max_attention_logits hooks the attention module; it must measure the same logits
    whichever kernel the forward pass uses."""
    model = _model("pre", "layernorm", False, torch.float32)
    x = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(3))
    batch = (x, x)
    ref = P.max_attention_logits(model, batch)
    with P.use_kernels(model, "fused"):
        fused = P.max_attention_logits(model, batch)
    assert len(ref) == 4 and ref["max_logit"].notna().all()
    # The logits are the same to float rounding (the layers' inputs went through the
    # fused LayerNorm, which sums in another order).
    pd.testing.assert_frame_equal(ref, fused, rtol=1e-5)


def _corpus_and_model(placement: str = "post", layers: int = 2):
    corpus = P.load_corpus()
    model = P.build_model(
        seed=0,
        vocab_size=corpus.vocab_size,
        d_model=32,
        n_layers=layers,
        n_heads=2,
        seq_len=16,
        placement=placement,
    )
    return corpus, model


@pytest.mark.parametrize("optimizer", list(P.OPTIMIZERS))
def test_train_fast_path_matches_reference(optimizer):
    """A short run has the same losses on both paths to float rounding (the fused
    optimizer step included), and its config says which path trained it."""
    out = {}
    for kernels in P.KERNELS:
        corpus, model = _corpus_and_model()
        res = P.train(
            model,
            corpus,
            8,
            3e-3,
            optimizer=optimizer,
            batch_size=4,
            kernels=kernels,
            eval_interval=4,
            eval_batches=1,
        )
        assert res.config["kernels"] == kernels
        out[kernels] = res.history
    ref, fused = out["reference"], out["fused"]
    assert len(ref) == len(fused) == 8
    for col in ("train_loss", "grad_norm"):
        assert (fused[col] - ref[col]).abs().max() < 1e-4 * ref[col].abs().max(), col
    assert ref["train_loss"].nunique() == len(ref)  # every step changed the model


def test_train_fast_path_is_deterministic_and_probes_see_the_written_out_model():
    seen = []

    def callback(step: int, model: P.TransformerLM) -> None:
        seen.append({m.fused for m in model.modules() if hasattr(m, "fused")})

    runs = []
    for _ in range(2):
        corpus, model = _corpus_and_model("pre")
        res = P.train(
            model, corpus, 6, 3e-3, batch_size=4, callback=callback, eval_interval=3, eval_batches=1
        )
        runs.append(res.history.drop(columns="tokens_per_s"))
        assert {m.fused for m in model.modules() if hasattr(m, "fused")} == {False}
    assert runs[0].equals(runs[1])
    assert seen and all(s == {False} for s in seen)


@pytest.mark.parametrize("name", list(P.OPTIMIZERS))
def test_fast_optimizer_step_is_the_same_update(name):
    """One optimizer's fused (or foreach) step against its plain one, over three steps on
    the same gradients: the same parameters to float rounding."""
    gen = torch.Generator().manual_seed(4)
    init = [torch.randn(5, 3, generator=gen), torch.randn(7, generator=gen)]
    grads = [[torch.randn(t.shape, generator=gen) for t in init] for _ in range(3)]
    finals = []
    for fast in (False, True):
        params = [torch.nn.Parameter(t.clone()) for t in init]
        opt = P.OPTIMIZERS[name](params, 1e-2, (0.9, 0.98), 0.01, fast=fast)
        for gs in grads:
            for p, g in zip(params, gs, strict=True):
                p.grad = g.clone()
            opt.step()
        finals.append([p.detach() for p in params])
    for a, b, start in zip(*finals, init, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
        assert not torch.allclose(a, start)  # the steps moved the parameters


@pytest.mark.parametrize("bias", [True, False])
def test_norm_kernels_keep_eps_and_bias(bias):
    """A large epsilon and a small input make a kernel that drops ``eps`` (or uses its
    own default) or the bias visibly wrong."""
    x = 0.05 * torch.randn(
        4, 6, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64
    )
    for norm in (P.LayerNorm(16, eps=0.01, bias=bias), P.RMSNorm(16, eps=0.01)):
        norm = norm.double()
        with torch.no_grad():
            for p in norm.parameters():
                p.add_(
                    torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(6))
                )
        ref = norm(x)
        norm.fused = True
        assert torch.allclose(norm(x), ref, rtol=1e-10, atol=1e-12)


def test_train_uses_the_fast_path_only_where_asked(monkeypatch):
    """train(kernels="fused") calls the kernels and builds the optimizer's fused step;
    "reference" does neither; the callback's forward passes never call a kernel."""
    calls = {"layer_norm": 0, "sdpa": 0, "in_callback": 0}
    inside = {"callback": False}
    real_ln, real_sdpa = (
        torch.nn.functional.layer_norm,
        torch.nn.functional.scaled_dot_product_attention,
    )

    def ln(*a, **k):
        calls["in_callback" if inside["callback"] else "layer_norm"] += 1
        return real_ln(*a, **k)

    def sdpa(*a, **k):
        calls["in_callback" if inside["callback"] else "sdpa"] += 1
        return real_sdpa(*a, **k)

    monkeypatch.setattr(torch.nn.functional, "layer_norm", ln)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", sdpa)
    built = []
    real_adam = torch.optim.Adam

    class Adam(real_adam):
        def __init__(self, params, **kwargs):
            built.append(kwargs)
            super().__init__(params, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", Adam)

    def callback(step, model):
        inside["callback"] = True
        model(torch.zeros(1, 4, dtype=torch.long))
        inside["callback"] = False

    for kernels in P.KERNELS:
        for k in calls:
            calls[k] = 0
        corpus, model = _corpus_and_model("pre")
        P.train(model, corpus, 3, 1e-3, batch_size=2, kernels=kernels, callback=callback,
                eval_batches=1)  # fmt: skip
        fused = kernels == "fused"
        assert (calls["layer_norm"] > 0) == fused and (calls["sdpa"] > 0) == fused, calls
        assert calls["in_callback"] == 0
        assert built[-1].get("fused", False) == fused


def test_a_builder_without_fast_still_trains(monkeypatch):
    """An optimizer registered with the four documented arguments keeps working."""
    corpus, model = _corpus_and_model()
    plain = lambda params, lr, betas, wd: torch.optim.SGD(params, lr=lr)  # noqa: E731
    monkeypatch.setitem(P.OPTIMIZERS._entries, "plain_sgd_test", plain)
    res = P.train(model, corpus, 2, 1e-3, optimizer="plain_sgd_test", batch_size=2,
                  eval_batches=1)  # fmt: skip
    assert len(res.history) == 2


@pytest.mark.parametrize("name", list(P.OPTIMIZERS))
def test_fast_builders_take_the_fused_step_where_there_is_one(name):
    params = [torch.nn.Parameter(torch.zeros(3))]
    opt = P.OPTIMIZERS[name](params, 1e-2, (0.9, 0.98), 0.0, fast=True)
    if name == "radam":  # no fused RAdam in torch: the multi-tensor step
        assert opt.defaults["foreach"] is True
    else:
        assert opt.defaults["fused"] is True
    plain = P.OPTIMIZERS[name](params, 1e-2, (0.9, 0.98), 0.0)
    assert not plain.defaults.get("fused") and not plain.defaults.get("foreach")


def test_bf16_autocast_paths_agree_to_bf16_precision():
    """Under bf16 autocast (the CPU's mixed precision, and an A100's) the two paths agree
    to bf16's precision: the first steps' losses within 1%."""
    out = {}
    for kernels in P.KERNELS:
        corpus, model = _corpus_and_model("pre")
        res = P.train(model, corpus, 4, 1e-3, batch_size=4, amp="bf16", kernels=kernels,
                      eval_batches=1)  # fmt: skip
        out[kernels] = res.history["train_loss"].to_numpy()
    assert abs(out["fused"] - out["reference"]).max() < 0.01 * out["reference"].max()
