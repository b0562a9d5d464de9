"""mean_over_seeds pools seeds cell by cell; each assertion fails if a rule is broken."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import prenorm as P


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "design": ["b", "b", "a", "a", "a"],
            "alpha0": [np.nan, np.nan, 0.5, 0.5, np.nan],
            "seed": [0, 1, 0, 1, 0],
            "loss": [1.0, 3.0, 2.0, 4.0, 7.0],
            "diverged": [False, True, False, False, False],
            "diverged_at": [25.0, 40.0, np.nan, np.nan, np.nan],
            "note": ["x", "y", "z", "w", "v"],
        }
    )


def test_means_any_earliest_and_counts():
    out = P.mean_over_seeds(_frame(), ["design", "alpha0"])
    assert list(out["design"]) == ["b", "a", "a"]  # order of first appearance
    b, a_half, a_none = (out.iloc[i] for i in range(3))
    assert b.loss == 2.0 and a_half.loss == 3.0 and a_none.loss == 7.0
    assert bool(b.diverged) and not bool(a_half.diverged)  # any seed
    assert b.diverged_at == 25.0 and math.isnan(a_half.diverged_at)  # the earliest
    assert list(out["n_seeds"]) == [2, 2, 1]  # the missing alpha0 is a cell of its own
    assert b.note == "x"  # other columns: the first seed's value
    assert "seed" not in out


def test_min_seeds_leaves_out_cells_a_seed_did_not_reach():
    out = P.mean_over_seeds(_frame(), ["design", "alpha0"], min_seeds=2)
    assert list(zip(out["design"], out["n_seeds"], strict=True)) == [("b", 2), ("a", 2)]
    assert out["alpha0"].notna().tolist() == [False, True]
    with pytest.raises(ValueError, match="min_seeds must be a positive integer"):
        P.mean_over_seeds(_frame(), ["design"], min_seeds=0)


def test_how_overrides_and_errors():
    out = P.mean_over_seeds(_frame(), ["design"], how={"loss": "max"})
    assert list(out["loss"]) == [3.0, 7.0]
    with pytest.raises(ValueError, match=r"columns \['lr'\] are not in the frame"):
        P.mean_over_seeds(_frame(), ["lr"])
    with pytest.raises(ValueError, match="cannot be a key"):
        P.mean_over_seeds(_frame(), ["design", "seed"])
