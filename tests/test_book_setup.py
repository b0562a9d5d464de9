"""The one-line chapter setup."""

import torch

import prenorm as P


def test_setup_gives_preset_device_corpus_and_the_shared_batches(monkeypatch, capsys):
    monkeypatch.setenv("PRENORM_SCALE", "ci")
    ch = P.book.setup()
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "'ci'" in line and "cpu" in line and "fp32" in line
    assert ch.scale is P.PRESETS["ci"] and ch.dev == P.device()
    assert ch.model_kwargs == {"vocab_size": ch.corpus.vocab_size, **ch.scale.model_kwargs()}
    x, y = ch.val_batch()
    x2, _ = ch.val_batch()
    assert torch.equal(x, x2) and x.shape == (ch.scale.batch_size, ch.scale.seq_len)
    assert torch.equal(y[:, :-1], x[:, 1:])  # next-character targets from the validation split
    g, _ = ch.gaussian_batch(2)
    assert g.shape == (ch.scale.batch_size, ch.scale.seq_len, ch.scale.theory_width)
    assert torch.equal(g, P.gaussian_batch(*g.shape, ch.corpus.vocab_size, seed=1002)[0])
    assert not torch.equal(g, ch.gaussian_batch(3)[0])
    assert ch.theory_model_kwargs["init"] == "xiong" and ch.theory_model_kwargs["n_heads"] == 1


def test_each_preset_bounds_a_cell_and_the_build_and_nbval_use_it(monkeypatch, pytestconfig):
    # A hung kernel once waited 17 minutes at ci under the build's 1800 s limit. Fails if a
    # preset has no timeout, if ci's is not seconds-scale, if the Sphinx extension does not
    # hand the preset's value to MyST-NB, or if nbval runs with its 2000 s default.
    import importlib.util
    from pathlib import Path
    from types import SimpleNamespace

    this_run = P.scale().cell_timeout  # the preset this pytest run executes notebooks at
    timeouts = {name: P.PRESETS[name].cell_timeout for name in P.PRESETS}
    assert timeouts["ci"] <= 300 and timeouts["ci"] < timeouts["cpu"] <= timeouts["gpu"]
    path = Path(__file__).resolve().parents[1] / "book" / "_ext" / "book_site.py"
    spec = importlib.util.spec_from_file_location("book_site", path)
    site = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(site)
    for name, seconds in timeouts.items():
        monkeypatch.setenv("PRENORM_SCALE", name)
        config = SimpleNamespace(nb_execution_timeout=1800)
        site.preset_timeout(None, config)
        assert config.nb_execution_timeout == seconds
    if hasattr(pytestconfig.option, "nbval_cell_timeout"):
        args = pytestconfig.invocation_params.args
        if not any(str(a).startswith("--nbval-cell-timeout") for a in args):
            assert pytestconfig.option.nbval_cell_timeout == this_run
