"""The Ray backend on a local two-CPU Ray instance gives the serial numbers exactly.

Needs the ``ray`` extra (``make test`` installs it); skipped, with the reason, without
it. Marked ``ray``: ``pytest -m "not ray"`` leaves it out (it costs ~20 s, most of it
starting Ray and its workers).
"""

import pandas as pd
import pytest

from prenorm import sweep

ray = pytest.importorskip("ray", reason='needs Ray: pip install "prenorm[ray]"')

TINY = dict(model_kwargs=dict(d_model=16, n_heads=2, seq_len=8, n_layers=1), progress=False)
TRAIN = dict(steps=6, batch_size=2, lr=1e-3, device="cpu")
GRID = {"placement": ["pre", "post"], "seed": [0, 1]}


@pytest.fixture
def local_ray():
    assert not ray.is_initialized(), "a Ray instance is already connected"
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=128 * 2**20,
        log_to_driver=False,
        configure_logging=False,
    )
    yield
    ray.shutdown()


@pytest.mark.ray
def test_ray_gives_the_serial_numbers_exactly(corpus, local_ray):
    # Fails if a Ray task trains differently from the serial loop (threads, seeding),
    # or rows come back in completion order; workers=1 also exercises the in-flight cap.
    on_ray = sweep(corpus, GRID, train_kwargs=TRAIN, history=True, backend="ray", **TINY)
    capped = sweep(corpus, GRID, train_kwargs=TRAIN, backend="ray", workers=1, **TINY)
    assert ray.is_initialized()  # the sweep used the instance it found
    serial = sweep(corpus, GRID, train_kwargs=TRAIN, history=True, workers=1, **TINY)
    summary = sweep(corpus, GRID, train_kwargs=TRAIN, workers=1, **TINY)
    for got, want in ((on_ray, serial), (capped, summary)):
        clock = ["seconds", "tokens_per_s"]  # wall-clock columns differ between runs
        pd.testing.assert_frame_equal(
            got.drop(columns=clock, errors="ignore"),
            want.drop(columns=clock, errors="ignore"),
            check_exact=True,
        )
    assert on_ray["error"].isna().all()
