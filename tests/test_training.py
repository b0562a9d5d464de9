import math

import pytest
import torch

from prenorm import TransformerLM, lr_at, sweep, train


def _tiny(corpus, placement="pre", seed=0, n_layers=2):
    torch.manual_seed(seed)
    return TransformerLM(corpus.vocab_size, 32, n_layers, 2, 16, placement=placement)


def test_training_lowers_the_loss(corpus):
    r = train(_tiny(corpus), corpus, steps=60, lr=3e-3, batch_size=8, device="cpu")
    h = r.history
    assert not r.diverged and len(h) == 60
    assert h["train_loss"].tail(10).mean() < h["train_loss"].head(5).mean() - 0.8
    assert list(h.columns) == [
        "step",
        "lr",
        "train_loss",
        "grad_norm",
        "val_loss",
        "skipped",
        "tokens_per_s",
    ]
    assert not h["skipped"].any()  # fp32: no scaler, nothing skipped
    assert h["val_loss"].notna().sum() == 10  # every steps // 10
    assert math.isfinite(r.final_val_loss)


def test_same_seed_same_losses(corpus):
    a = train(_tiny(corpus, seed=5), corpus, steps=15, lr=1e-3, batch_size=4, seed=7, device="cpu")
    b = train(_tiny(corpus, seed=5), corpus, steps=15, lr=1e-3, batch_size=4, seed=7, device="cpu")
    c = train(_tiny(corpus, seed=5), corpus, steps=15, lr=1e-3, batch_size=4, seed=8, device="cpu")
    assert a.history["train_loss"].tolist() == b.history["train_loss"].tolist()
    assert a.history["train_loss"].tolist() != c.history["train_loss"].tolist()


def test_blow_up_is_caught_and_flagged(corpus):
    r = train(
        _tiny(corpus, "post"),
        corpus,
        steps=50,
        lr=50.0,
        optimizer="sgd",
        batch_size=4,
        device="cpu",
    )
    assert r.diverged and r.diverged_at is not None and r.diverged_at < 50
    assert len(r.history) <= r.diverged_at + 1
    assert r.history[["train_loss", "grad_norm"]].map(math.isfinite).all().all()


def test_nan_loss_is_caught(corpus):
    model = _tiny(corpus)
    calls = {"n": 0}

    def poison(_module, _inp, out):
        calls["n"] += 1
        return out * float("nan") if calls["n"] == 4 else out

    model.blocks[0].register_forward_hook(poison)
    r = train(model, corpus, steps=10, lr=1e-3, batch_size=4, device="cpu", eval_interval=100)
    assert r.diverged and r.diverged_at == 3 and len(r.history) == 3


def test_warmup_and_schedules():
    assert lr_at(0, 1.0, 100, warmup_steps=10) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 100, warmup_steps=10) == pytest.approx(1.0)
    assert lr_at(50, 1.0, 100, schedule="constant") == 1.0
    assert lr_at(100, 1.0, 100, schedule="cosine") == pytest.approx(0.1)
    assert lr_at(100, 1.0, 100, schedule="linear") == pytest.approx(0.0)
    assert lr_at(39, 1.0, 100, warmup_steps=10, schedule="inverse_sqrt") == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"'step'.*'constant', 'cosine'"):
        lr_at(0, 1.0, 10, schedule="step")


def test_sweep_grid(corpus):
    df = sweep(
        corpus,
        {"placement": ["pre", "post"], "lr": [1e-3], "n_layers": [1, 2], "seed": [0]},
        model_kwargs=dict(d_model=16, n_heads=2, seq_len=8),
        train_kwargs=dict(steps=3, batch_size=2, device="cpu"),
        progress=False,
    )
    assert len(df) == 4
    assert set(df["placement"]) == {"pre", "post"} and set(df["n_layers"]) == {1, 2}
    assert {"diverged", "final_train_loss", "final_val_loss"} <= set(df.columns)
    hist = sweep(
        corpus,
        {"warmup_steps": [0, 2]},
        model_kwargs=dict(d_model=16, n_heads=2, seq_len=8, n_layers=1),
        train_kwargs=dict(steps=3, lr=1e-3, batch_size=2, device="cpu"),
        history=True,
        progress=False,
    )
    assert len(hist) == 6 and set(hist["warmup_steps"]) == {0, 2}


def test_bad_training_input(corpus):
    m = _tiny(corpus)
    with pytest.raises(ValueError, match="'lion'.*'adam', 'adamw', 'radam', 'sgd'"):
        train(m, corpus, steps=1, lr=1e-3, optimizer="lion", device="cpu")
    with pytest.raises(ValueError, match="lr must be a positive finite number, got -1"):
        train(m, corpus, steps=1, lr=-1, device="cpu")
    with pytest.raises(ValueError, match="unknown schedule 'exp'"):
        train(m, corpus, steps=1, lr=1e-3, schedule="exp", device="cpu")
    with pytest.raises(ValueError, match=r"unknown sweep keys \['depth'\]"):
        sweep(corpus, {"depth": [1]}, progress=False)


def test_radam_first_step_is_a_momentum_step_not_adams(corpus):
    """Adam's first step moves every parameter by about lr (m/sqrt(v) = sign(g)); RAdam's
    rectifier is off at step 1, so it moves each by lr * g: far less where |g| << 1."""
    lr, moved = 1e-2, {}
    for name in ("adam", "radam"):
        model = _tiny(corpus, seed=3)
        w0 = model.blocks[0].mlp.fc1.weight.detach().clone()
        train(model, corpus, steps=1, lr=lr, optimizer=name, batch_size=4, device="cpu")
        moved[name] = (model.blocks[0].mlp.fc1.weight.detach() - w0).abs()
    assert moved["adam"].max() == pytest.approx(lr, rel=1e-3)
    assert moved["radam"].max() < 0.1 * lr


def test_callback_sees_every_step_and_leaves_training_unchanged(corpus):
    from prenorm import hidden_grad_norms

    batch = corpus.batch("val", 4, 16, torch.Generator().manual_seed(0))
    seen = []

    def probe(step, model):
        seen.append((step, float(hidden_grad_norms(model, batch).grad_norm.sum())))

    a = train(_tiny(corpus, seed=2), corpus, steps=5, lr=3e-3, batch_size=4, device="cpu")
    b = train(
        _tiny(corpus, seed=2), corpus, steps=5, lr=3e-3, batch_size=4, device="cpu", callback=probe
    )
    assert [s for s, _ in seen] == list(range(6))
    assert len({g for _, g in seen}) == 6  # the model the callback sees changes every step
    assert a.history["train_loss"].tolist() == b.history["train_loss"].tolist()


def test_outcome_classifies_one_run_or_a_frame_of_summaries(corpus):
    import pandas as pd

    from prenorm import OUTCOMES, outcome

    runs = pd.DataFrame(
        {"diverged": [True, False, False, False], "final_val_loss": [float("nan"), 3.0, 2.9, 2.0]}
    )
    words = outcome(runs, entropy=3.05, margin=0.1)
    assert list(words) == [OUTCOMES[2], OUTCOMES[1], OUTCOMES[0], OUTCOMES[0]]
    r = train(_tiny(corpus), corpus, steps=2, lr=1e-3, batch_size=4, device="cpu")
    assert outcome(r, entropy=100.0, margin=0.1) == OUTCOMES[0]
    assert outcome(r, entropy=0.0, margin=0.1) == OUTCOMES[1]
    with pytest.raises(ValueError, match=r"\['final_val_loss'\]"):
        outcome(runs[["diverged"]], entropy=3.0, margin=0.1)


def test_val_seed_fixes_the_validation_set_across_training_seeds(corpus):
    """Two runs from one model and one batch stream differ in final validation loss only
    through the validation set; with val_seed equal they must agree exactly."""
    kw = dict(steps=3, lr=1e-3, batch_size=4, device="cpu", eval_interval=3)
    a = train(_tiny(corpus, seed=1), corpus, seed=4, val_seed=123, **kw)
    b = train(_tiny(corpus, seed=1), corpus, seed=4, val_seed=123, **kw)
    c = train(_tiny(corpus, seed=1), corpus, seed=4, val_seed=124, **kw)
    d = train(_tiny(corpus, seed=1), corpus, seed=4, **kw)
    assert a.final_val_loss == b.final_val_loss != c.final_val_loss
    assert a.history.train_loss.tolist() == d.history.train_loss.tolist()  # training untouched


def test_lr_sensitivity_caps_failures_and_is_zero_for_a_flat_curve():
    # Fails if a diverged run (NaN or inf) is dropped instead of counted at the cap, if
    # the cap is not applied to a loss above it, or if the best loss is not subtracted.
    from prenorm import lr_sensitivity

    assert lr_sensitivity([2.0, 2.0, 2.0], cap=4.0) == 0.0
    assert lr_sensitivity([2.0, 3.0, float("nan")], cap=4.0) == pytest.approx((0 + 1 + 2) / 3)
    assert lr_sensitivity([2.0, 9.0, float("inf")], cap=4.0) == pytest.approx((0 + 2 + 2) / 3)
    # a diverged run's last finite loss (2.5 here) must not count: it is capped
    assert lr_sensitivity([2.0, 2.5], cap=4.0, diverged=[False, True]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="2 flags for 3 losses"):
        lr_sensitivity([2.0, 2.5, 3.0], cap=4.0, diverged=[False, True])
    with pytest.raises(ValueError, match="at least one"):
        lr_sensitivity([], cap=4.0)
    with pytest.raises(ValueError, match="cap must be a finite loss, got nan"):
        lr_sensitivity([2.0], cap=float("nan"))


def test_lr_summary_takes_the_best_finished_run_and_caps_diverged_ones():
    # Fails if a diverged run's last loss is taken as a design's best, if the best learning
    # rate is not the one of the best loss, or if the sensitivity ignores the divergence.
    import numpy as np
    import pandas as pd

    from prenorm import lr_summary

    runs = pd.DataFrame(
        {
            "design": ["a", "a", "a", "b", "b"],
            "lr": [1e-2, 1e-3, 1e-1, 1e-3, 1e-2],
            "final_val_loss": [2.2, 2.5, 1.0, 3.0, 2.9],
            "diverged": [False, False, True, True, True],
        }
    )
    table = lr_summary(runs, "design", cap=4.0)
    assert list(table.index) == ["a", "b"]
    assert table.loc["a", "best_loss"] == 2.2 and table.loc["a", "best_lr"] == 1e-2
    assert table.loc["a", "sensitivity"] == pytest.approx((2.5 + 2.2 + 4.0) / 3 - 2.2)
    assert np.isnan(table.loc["b", "best_loss"])
    assert np.isnan(table.loc["b", "sensitivity"])  # never trained: no best to lose against
