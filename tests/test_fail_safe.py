"""Inputs that once failed unsafely (silently wrong, a raw error that blames the wrong
thing, or a flattering summary) now get a clear error naming the value, or the behaviour
the docs promise. Each case says what it did before."""

import math

import pytest
import torch

import prenorm as P
from prenorm import TransformerLM, train

KW = dict(steps=2, lr=1e-3, batch_size=2, device="cpu")


def _tiny(corpus):
    torch.manual_seed(0)
    return TransformerLM(corpus.vocab_size, 16, 1, 2, 8)


@pytest.mark.parametrize(
    "bad, message",
    [
        # a negative clip silently trained uphill; 0 and NaN zeroed or poisoned the step
        (dict(clip=-1.0), "clip must be a positive finite number or None, got -1.0"),
        (dict(clip=0.0), "clip must be a positive finite number or None, got 0.0"),
        (dict(clip=math.nan), "clip must be a positive finite number or None, got nan"),
        # explode_factor <= 0 made every run diverge at step 0; NaN made none ever diverge
        (dict(explode_factor=0.0), "explode_factor must be a positive finite number, got 0.0"),
        (dict(explode_factor=math.nan), "explode_factor must be a positive finite number"),
        # eval_batches=0 raised ZeroDivisionError at the first evaluation
        (dict(eval_batches=0), "eval_batches must be a positive integer, got 0"),
        # eval_interval=0 was silently read as the default, a negative one too
        (dict(eval_interval=0), "eval_interval must be a positive integer or None, got 0"),
        (dict(eval_interval=-5), "eval_interval must be a positive integer or None, got -5"),
        # a fractional seed trained seed 1 and was labelled 1.7
        (dict(seed=1.7), "seed must be an integer, got 1.7"),
        (dict(batch_size=2.5), "batch_size must be a positive integer, got 2.5"),
        (dict(betas=(0.9,)), r"betas must be a pair of numbers in \[0, 1\), got \(0.9,\)"),
        (dict(weight_decay=-0.1), "weight_decay must be a number >= 0, got -0.1"),
        (dict(optimizer="lion"), "unknown optimizer 'lion'"),
    ],
)
def test_bad_training_values_are_refused_before_the_first_step(corpus, bad, message):
    calls = []
    with pytest.raises(ValueError, match=message):
        train(_tiny(corpus), corpus, **{**KW, **bad}, callback=lambda s, m: calls.append(s))
    assert calls == []  # refused before anything ran


@pytest.mark.parametrize("d_model", [0, -16, 16.5, "16", True])
def test_d_model_must_be_a_positive_integer(d_model):
    # d_model=16.5 or 0 reached torch as a raw "empty(): argument 'size'" error
    with pytest.raises(ValueError, match=r"d_model must be a positive integer, got"):
        TransformerLM(13, d_model, 1, 2, 8)


def test_a_model_smaller_than_the_corpus_vocabulary_is_refused(corpus):
    torch.manual_seed(0)
    small = TransformerLM(corpus.vocab_size - 1, 16, 1, 2, 8)
    with pytest.raises(ValueError, match=f"corpus has {corpus.vocab_size} token ids but"):
        train(small, corpus, **KW)


def test_token_ids_are_checked_per_call_but_not_inside_the_training_loop(corpus, monkeypatch):
    # The range check reads min and max, which on a GPU waits for the device: train checks
    # its corpus once and skips it in the loop. Fails if the loop checks every step (a
    # host sync per step on CUDA) or if a direct call no longer gets the clear error.
    m = _tiny(corpus)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 103\)|token ids must lie"):
        m(torch.full((1, 4), corpus.vocab_size + 5))
    checks = []
    real = TransformerLM._check_tokens
    monkeypatch.setattr(
        TransformerLM, "_check_tokens", lambda self, idx: (checks.append(1), real(self, idx))
    )
    train(m, corpus, **{**KW, "steps": 3})
    assert checks == []


def test_an_integer_tensor_that_is_not_token_ids_is_named_as_such():
    # An int32 batch was routed to the float check, whose error blamed a non-float tensor.
    torch.manual_seed(0)
    m = TransformerLM(13, 16, 1, 2, 8)
    x = torch.zeros(2, 8, dtype=torch.int32)
    y = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(ValueError, match=r"token ids \(torch.long\).*got torch.int32"):
        P.residual_norms(m, (x, y))


def test_a_corpus_too_short_to_split_is_refused():
    # "abcdefghij" with val_fraction 0.1 had an empty split: train_ids = ids[:-0] = [].
    with pytest.raises(ValueError, match="too short to split"):
        P.Corpus("tiny", "abcdefghij")
    c = P.Corpus("small", "abcdefghijklmnopqrstuvwxyz" * 2)
    assert len(c.train_ids) >= 2 and len(c.val_ids) >= 2


def test_corpus_repr_is_a_summary(corpus):
    # It printed the whole text: about half a million characters.
    text = repr(corpus)
    assert len(text) < 200 and f"vocab_size={corpus.vocab_size}" in text
    assert f"{len(corpus.text):,} characters" in text


def test_lr_sensitivity_of_a_design_that_never_trained_is_nan_not_zero():
    # Every run diverged: S was cap - cap = 0, the score of a design good at every lr.
    assert math.isnan(P.lr_sensitivity([2.0, 2.5], cap=4.0, diverged=[True, True]))
    assert math.isnan(P.lr_sensitivity([5.0, 6.0], cap=4.0))  # none below the cap
    assert not P.Prediction("S", "<", 1.0).holds(P.lr_sensitivity([5.0], cap=4.0))
    assert P.lr_sensitivity([2.0, 9.0], cap=4.0) == pytest.approx(1.0)


def test_train_result_config_carries_every_argument_needed_to_rerun_it(corpus):
    # batch_size, betas, weight_decay and val_seed were missing, so a row could not be
    # reproduced from itself. Fails if any argument of train() that changes the numbers
    # is left out, or if training again from the config gives other numbers.
    kw = dict(
        steps=3,
        lr=2e-3,
        batch_size=3,
        betas=(0.8, 0.95),
        weight_decay=0.01,
        val_seed=11,
        seed=2,
        device="cpu",
        eval_interval=3,
        eval_batches=2,
    )
    a = train(_tiny(corpus), corpus, **kw)
    c = a.config
    for key in ("batch_size", "weight_decay", "val_seed", "eval_interval", "eval_batches"):
        assert c[key] == kw[key], key
    assert (c["beta1"], c["beta2"]) == kw["betas"] and c["amp"] == "fp32"
    again = dict(
        steps=c["steps"],
        lr=c["lr"],
        warmup_steps=c["warmup_steps"],
        schedule=c["schedule"],
        optimizer=c["optimizer"],
        betas=(c["beta1"], c["beta2"]),
        weight_decay=c["weight_decay"],
        clip=c["clip"],
        seed=c["seed"],
        val_seed=c["val_seed"],
        batch_size=c["batch_size"],
        eval_interval=c["eval_interval"],
        eval_batches=c["eval_batches"],
        explode_factor=c["explode_factor"],
        amp=c["amp"],
        device="cpu",
    )
    b = train(_tiny(corpus), corpus, **again)
    assert b.history["train_loss"].tolist() == a.history["train_loss"].tolist()
    assert b.final_val_loss == a.final_val_loss
