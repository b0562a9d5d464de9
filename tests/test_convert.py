"""prenorm.convert: the exact rewrites (beta folded into the next bias, Jiang et al.'s
Pre-LN -> Pre-RMSNorm conversion) compute the same logits as the model they rewrite,
in float64, and the helpers that reset or tabulate the norms' affine parameters."""

from __future__ import annotations

import math

import pytest
import torch

import prenorm as P

VOCAB, D, HEADS, T = 13, 16, 2, 8


def _model(placement: str = "pre", n_layers: int = 2, seed: int = 0, **kwargs) -> P.TransformerLM:
    """A float64 model whose every parameter is perturbed away from its init: norms with
    gamma != 1 and beta != 0, non-zero biases, and embeddings with a large common offset,
    so that the residual stream has a mean the conversion must remove."""
    torch.manual_seed(seed)
    model = P.TransformerLM(VOCAB, D, n_layers, HEADS, T, placement=placement, **kwargs).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        model.tok_emb.weight.add_(1.5)
        model.pos_emb.weight.sub_(0.5)
    return model


def _tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, T), generator=torch.Generator().manual_seed(seed))


def _logits(model: P.TransformerLM, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx)[0]


FOLDABLE = [
    ("pre", 1, {}),
    ("pre", 3, {}),
    ("lns", 3, {}),  # the input norm's output times 1/sqrt(l): the fold must carry the factor
    ("peri", 2, {}),  # the output norms write the stream and keep their beta
    ("mixln", 4, {"mix_ratio": 0.5}),  # Post-LN layers keep theirs
    ("pre", 2, {"qk_norm": True}),
    ("pre", 2, {"norm": "dyt"}),  # DyT's beta folds the same way
]


@pytest.mark.parametrize(("placement", "n_layers", "kwargs"), FOLDABLE)
def test_fold_norm_bias_keeps_the_logits(placement, n_layers, kwargs):
    # Fails if a fold misses the 1/sqrt(l) factor (lns), the sign, or any norm: the logits of
    # the folded copy would then differ from the original's by far more than float64 rounding.
    model = _model(placement, n_layers, **kwargs)
    idx = _tokens()
    before = _logits(model, idx)
    folded = P.fold_norm_bias(model)
    after = _logits(folded, idx)
    assert torch.allclose(after, before, rtol=1e-12, atol=1e-12 * before.abs().max().item())
    fed = P.norms_feeding_linear(folded)
    assert fed, "every one of these placements has norms that feed a linear layer"
    for norm, _, _ in fed:  # the fold moved beta out: a copy that did nothing fails here
        assert torch.count_nonzero(norm.bias) == 0
    assert folded.head.bias is not None
    fed_ids = {id(n) for n, _, _ in fed}
    others = [m for m in folded.modules() if hasattr(m, "bias") and isinstance(m, P.LayerNorm)]
    for m in others:  # the norms that write the stream keep their beta
        if id(m) not in fed_ids and m.bias is not None:
            assert torch.count_nonzero(m.bias) > 0
    for norm, _, _ in P.norms_feeding_linear(model):  # the original is untouched
        assert torch.count_nonzero(norm.bias) > 0


def test_norms_feeding_linear_lists_the_input_norms_and_the_final_one():
    # Pre-LN with 3 layers: 3 attention-input norms, 3 MLP-input norms, the final norm; the
    # factor is 1/sqrt(l) only for LayerNorm Scaling. Fails if a norm is missed or misrouted.
    model = _model("lns", 3)
    fed = P.norms_feeding_linear(model)
    assert len(fed) == 7
    for l, blk in enumerate(model.blocks):
        assert (blk.attn_norm_in, blk.attn.qkv, 1 / math.sqrt(l + 1)) in fed
        assert (blk.mlp_norm_in, blk.mlp.fc1, 1 / math.sqrt(l + 1)) in fed
    assert fed[-1] == (model.final_norm, model.head, 1.0)
    assert P.norms_feeding_linear(_model("post", 2)) == []  # every Post-LN norm is on the stream


CONVERTIBLE = [
    ("pre", 1, {}),
    ("pre", 3, {}),
    ("lns", 3, {}),
    ("pre", 2, {"bias": False}),
    ("pre", 2, {"qk_norm": True}),
]


@pytest.mark.parametrize(("placement", "n_layers", "kwargs"), CONVERTIBLE)
def test_pre_rmsnorm_computes_the_same_logits(placement, n_layers, kwargs):
    # Jiang et al.: centre the stream, then LN -> RMSNorm with beta folded. Fails if the
    # centring misses the embeddings or a branch output, or the fold is wrong: the RMSNorms
    # would see the stream's mean (1.5 per feature here) and the logits move by O(1).
    model = _model(placement, n_layers, **kwargs)
    idx = _tokens()
    before = _logits(model, idx)
    twin = P.pre_rmsnorm(model)
    with torch.no_grad():
        after, _, stream = twin(idx, return_stream=True)
    assert torch.allclose(after, before, rtol=1e-10, atol=1e-10 * before.abs().max().item())
    for h in stream:  # the stream is zero-mean at every layer
        assert h.mean(-1).abs().max().item() < 1e-12 * max(1.0, h.abs().max().item())
    stream_norms = [n for blk in twin.blocks for _, _, n in blk.norms()] + [twin.final_norm]
    assert all(isinstance(n, P.RMSNorm) for n in stream_norms)
    assert twin.norm == "rmsnorm"
    assert all(isinstance(n, P.LayerNorm) for _, _, n in model.blocks[0].norms())  # a copy


@pytest.mark.parametrize(("placement", "n_layers", "kwargs"), CONVERTIBLE[:3])
def test_pre_rmsnorm_without_centring_changes_the_function(placement, n_layers, kwargs):
    # The control: swapping the norms alone leaves the stream's mean for the RMSNorms to see.
    # Fails if centre=False silently centred anyway (or if centring were not needed).
    model = _model(placement, n_layers, **kwargs)
    idx = _tokens()
    before = _logits(model, idx)
    gap = (_logits(P.pre_rmsnorm(model, centre=False), idx) - before).abs().max().item()
    assert gap > 1e-2 * before.abs().max().item()


@pytest.mark.parametrize(
    ("placement", "kwargs"),
    [
        ("post", {}),
        ("peri", {}),
        ("mixln", {"mix_ratio": 0.5}),
        ("reorder", {}),
        ("pre", {"norm": "rmsnorm"}),
    ],
)
def test_pre_rmsnorm_refuses_what_it_cannot_convert_exactly(placement, kwargs):
    with pytest.raises(ValueError, match="pre_rmsnorm"):
        P.pre_rmsnorm(_model(placement, 4, **kwargs))


def test_with_norm_params_restores_the_initial_norms():
    # A model at init (gamma = 1, beta = 0), then only its norms perturbed: setting every
    # LayerNorm back to weight=1, bias=0 must give the initial model's logits and loss
    # exactly. Fails if a norm is missed or any other parameter is touched.
    torch.manual_seed(0)
    init = P.TransformerLM(VOCAB, D, 2, HEADS, T, qk_norm=True).double()
    perturbed = P.with_norm_params(init)  # a copy, nothing set
    with torch.no_grad():
        for m in perturbed.modules():
            if isinstance(m, P.LayerNorm):
                m.weight.add_(0.5 * torch.randn_like(m.weight))
                m.bias.add_(0.5 * torch.randn_like(m.bias))
    idx = _tokens()
    assert not torch.equal(_logits(perturbed, idx), _logits(init, idx))
    restored = P.with_norm_params(perturbed, weight=1.0, bias=0.0)
    assert torch.equal(_logits(restored, idx), _logits(init, idx))
    batches = [(idx, _tokens(2))]
    assert P.loss_with_norm_params(perturbed, batches, weight=1.0, bias=0.0) == P.evaluate(
        init, batches
    )
    only_bias = P.with_norm_params(perturbed, bias=0.0)
    for a, b in zip(only_bias.modules(), perturbed.modules(), strict=True):
        if isinstance(a, P.LayerNorm):
            assert torch.count_nonzero(a.bias) == 0
            assert torch.equal(a.weight, b.weight)  # weight=None leaves gamma as it was
            assert torch.count_nonzero(b.bias) > 0  # the original keeps its beta


def test_norm_affine_drift_reads_each_norm():
    # Norm k gets gamma = 1 + a_k and beta = b_k in every feature, so its RMS drifts are
    # |a_k| and |b_k|, in forward order. Fails on a wrong order, label or formula.
    model = _model("pre", 2)
    norms = [n for blk in model.blocks for _, _, n in blk.norms()] + [model.final_norm]
    a = [0.1, -0.2, 0.3, -0.4, 0.5]
    b = [-0.05, 0.15, 0.0, 0.25, -0.35]
    with torch.no_grad():
        for n, ak, bk in zip(norms, a, b, strict=True):
            n.weight.fill_(1 + ak)
            n.bias.fill_(bk)
    drift = P.norm_affine_drift(model)
    assert list(drift.position) == [0, 1, 2, 3, 4]
    assert list(drift.layer) == [0, 0, 1, 1, 2]
    assert list(drift.sublayer) == ["attn", "mlp", "attn", "mlp", "final"]
    assert drift.gamma_drift.tolist() == pytest.approx([abs(v) for v in a], abs=1e-12)
    assert drift.beta_drift.tolist() == pytest.approx([abs(v) for v in b], abs=1e-12)
    no_bias = P.norm_affine_drift(_model("pre", 1, bias=False))
    assert no_bias.beta_drift.isna().all() and len(no_bias) == 3
