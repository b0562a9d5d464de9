"""The one-line chapter setup."""

import torch

import prenorm as P


def test_setup_gives_preset_device_corpus_and_the_shared_batches(monkeypatch, capsys):
    monkeypatch.setenv("PRENORM_SCALE", "ci")
    ch = P.book.setup()
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "'ci'" in line and "cpu" in line and "fp32" in line
    assert ch.S is P.PRESETS["ci"] and ch.dev == P.device()
    assert ch.model == {"vocab_size": ch.corpus.vocab_size, **ch.S.model_kwargs()}
    x, y = ch.val_batch()
    x2, _ = ch.val_batch()
    assert torch.equal(x, x2) and x.shape == (ch.S.batch_size, ch.S.seq_len)
    assert torch.equal(y[:, :-1], x[:, 1:])  # next-character targets from the validation split
    g, _ = ch.gaussian_batch(2)
    assert g.shape == (ch.S.batch_size, ch.S.seq_len, ch.S.theory_width)
    assert torch.equal(g, P.gaussian_batch(*g.shape, ch.corpus.vocab_size, seed=1002)[0])
    assert not torch.equal(g, ch.gaussian_batch(3)[0])
    assert ch.theory_model["init"] == "xiong" and ch.theory_model["n_heads"] == 1
