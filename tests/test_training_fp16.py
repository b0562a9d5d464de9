"""fp16 with a gradient scaler, the path a Colab T4 takes, exercised on the CPU (which
autocasts to fp16 and has a GradScaler of its own): a step the scaler skips is counted and
is not a divergence; a run that really diverges is still recorded as diverged."""

import math

import pytest
import torch

from prenorm import MIN_LOSS_SCALE, TransformerLM, train


def _tiny(corpus, placement="pre", seed=0):
    torch.manual_seed(seed)
    return TransformerLM(corpus.vocab_size, 32, 2, 2, 16, placement=placement)


def test_an_overflowing_first_step_is_skipped_not_a_divergence(corpus):
    # A loss scale of 2^40 makes the scaled gradients overflow fp16 (max 65504) at once:
    # the scaler skips steps and halves the scale until they fit, then the run trains.
    # Fails if a skipped step ends the run (the old rule: an infinite gradient norm after
    # unscale_ was a divergence), if the skips are not reported, or if the run does not
    # go on to learn.
    r = train(
        _tiny(corpus),
        corpus,
        steps=60,
        lr=3e-3,
        batch_size=8,
        amp="fp16",
        grad_scale=2.0**40,
        device="cpu",
    )
    h = r.history
    assert not r.diverged and r.diverged_at is None and len(h) == 60
    assert r.config["amp"] == "fp16" and r.config["grad_scale"] == 2.0**40
    assert h["skipped"].iloc[0], "the first step must overflow at scale 2^40"
    assert 1 <= r.skipped_steps == int(h["skipped"].sum()) == r.summary()["skipped_steps"] < 40
    skipped = h[h["skipped"]]
    assert skipped["grad_norm"].isna().all()  # missing, never stored as inf
    assert skipped["train_loss"].map(math.isfinite).all()
    taken = h[~h["skipped"]]
    assert taken["grad_norm"].map(math.isfinite).all()
    assert math.isfinite(r.final_val_loss)
    assert h["train_loss"].tail(10).mean() < h["train_loss"].head(5).mean() - 0.5


def test_a_genuinely_diverging_fp16_run_is_still_diverged(corpus):
    # SGD at lr 50 on Post-LN blows up (tests/test_training.py shows it in fp32). Fails if
    # the scaler's skips hide a real divergence, or if a non-finite value reaches the
    # history.
    r = train(
        _tiny(corpus, "post"),
        corpus,
        steps=50,
        lr=50.0,
        optimizer="sgd",
        batch_size=4,
        amp="fp16",
        device="cpu",
    )
    h = r.history
    assert r.diverged and r.diverged_at is not None and r.diverged_at < 50
    assert h["train_loss"].map(math.isfinite).all()
    assert h.loc[~h["skipped"], "grad_norm"].map(math.isfinite).all()
    assert h["grad_norm"].isna().sum() == h["skipped"].sum()


def test_a_gradient_that_overflows_at_scale_one_is_a_divergence(corpus):
    # A hook makes one weight's gradient infinite whatever the loss scale, while the loss
    # stays finite. From a scale of 4 the scaler skips at 4, 2 and 1, and at 1 (the true
    # gradient) it can absorb no more: the run is diverged at the third step, with three
    # skipped rows. Fails if such a run trains on forever skipping, or stops earlier.
    model = _tiny(corpus)
    model.head.weight.register_hook(lambda g: g * math.inf)
    r = train(
        model, corpus, steps=20, lr=1e-3, batch_size=4, amp="fp16", grad_scale=4.0, device="cpu"
    )
    assert MIN_LOSS_SCALE == 1.0
    assert r.diverged and r.diverged_at == 2
    assert r.skipped_steps == 3 and r.history["skipped"].tolist() == [True, True, True]
    assert r.history["train_loss"].map(math.isfinite).all()


def test_fp16_arguments_are_checked(corpus):
    m = _tiny(corpus)
    with pytest.raises(ValueError, match=r"amp must be .*'bf16', 'fp16', 'fp32'.*got 'half'"):
        train(m, corpus, steps=1, lr=1e-3, amp="half", device="cpu")
    with pytest.raises(ValueError, match="grad_scale applies to fp16 training only"):
        train(m, corpus, steps=1, lr=1e-3, grad_scale=2.0**10, device="cpu")
    with pytest.raises(ValueError, match="grad_scale must be a positive finite number"):
        train(m, corpus, steps=1, lr=1e-3, amp="fp16", grad_scale=0.0, device="cpu")
