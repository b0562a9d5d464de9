"""Every probe treats each sequence of a batch on its own: reordering the sequences changes
no result, and a sequence gives the same states alone as inside a larger batch."""

import functools

import pandas as pd
import pytest
import torch

import prenorm as P

V, D, L, H, T = 13, 16, 3, 2, 6

BATCH_PROBES = {
    "residual_norms": P.residual_norms,
    "branch_ratios": P.branch_ratios,
    "norm_input_scales": P.norm_input_scales,
    "activation_outliers": P.activation_outliers,
    "max_attention_logits": P.max_attention_logits,
    "hidden_grad_norms": P.hidden_grad_norms,
    "param_grad_norms": P.param_grad_norms,
    "skip_path": P.skip_path,
    "step_gradients": P.step_gradients,
    "update_sensitivity": functools.partial(P.update_sensitivity, lr=1e-3),
    "batch_loss": P.batch_loss,
    "layer_ablation": P.layer_ablation,
}


def _model(placement):
    torch.manual_seed(0)
    return P.TransformerLM(V, D, L, H, T, placement=placement, init="xavier")


def _batch(b, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(V, (b, T), generator=g), torch.randint(V, (b, T), generator=g)


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    # Float sums over tokens may be taken in another order: a relative 1e-4 allows that
    # and nothing else (a token attending across sequences moves these by percent).
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("placement", ["post", "pre"])
@pytest.mark.parametrize("name", sorted(BATCH_PROBES))
def test_reordering_the_sequences_changes_no_probe(name, placement):
    # Fails for any probe that lets tokens of one sequence see another's, e.g. by
    # flattening (B, T, d) into one long sequence (skip_path did, before).
    m = _model(placement)
    x, y = _batch(4)
    perm = torch.tensor([2, 0, 3, 1])
    probe = BATCH_PROBES[name]
    _same(probe(m, (x, y)), probe(m, (x[perm], y[perm])))


@pytest.mark.parametrize("placement", ["post", "pre"])
def test_a_sequence_alone_equals_its_copies_inside_a_batch(placement):
    # The per-token averages of a batch of two copies of one sequence equal those of the
    # sequence alone, when each copy is computed on its own. Fails if the second copy's
    # tokens attend to the first's (the old skip_path, which read a (2, T) batch as one
    # sequence of 2T tokens).
    m = _model(placement)
    x, y = _batch(1)
    twice = (x.repeat(2, 1), y.repeat(2, 1))
    for name in ("skip_path", "residual_norms", "branch_ratios", "norm_input_scales"):
        probe = BATCH_PROBES[name]
        one, two = probe(m, (x, y)), probe(m, twice)
        std = [c for c in one.columns if c.endswith("_std")]  # spread over tokens differs
        _same(one.drop(columns=std), two.drop(columns=std))
