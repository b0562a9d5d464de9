"""Sweeps in worker processes and with a cache: the same numbers as a serial sweep, failures
as rows, resumable caches, and bad input refused before any run starts."""

import json
import os
import sys

import pandas as pd
import pytest
import torch

from prenorm import sweep, sweeps

TINY = dict(model_kwargs=dict(d_model=16, n_heads=2, seq_len=8, n_layers=1), progress=False)
TRAIN = dict(steps=6, batch_size=2, lr=1e-3, device="cpu")
GRID = {"placement": ["pre", "post"], "seed": [0, 1]}


def same_numbers(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Every column but the wall-clock ``seconds`` and ``tokens_per_s``, exactly (NaN
    equals NaN)."""
    clock = ["seconds", "tokens_per_s"]
    pd.testing.assert_frame_equal(
        a.drop(columns=clock, errors="ignore"),
        b.drop(columns=clock, errors="ignore"),
        check_exact=True,
    )


@pytest.fixture
def trained(monkeypatch):
    """The jobs trained in this process (the serial backend), in order."""
    calls = []
    real = sweeps._run_job

    def counting(data, job):
        calls.append(job)
        return real(data, job)

    monkeypatch.setattr(sweeps, "_run_job", counting)
    return calls


def test_workers_give_the_serial_numbers_exactly(corpus, tmp_path, trained, monkeypatch, request):
    # Fails if a worker trains differently from the serial loop (seeding, data, settings),
    # or if the serial loop trains with the caller's thread count or does not restore it.
    # (On the machine this was written on, 1 and 2 threads gave the same bits; the
    # one-thread rule guards BLAS builds whose summation order follows the thread count.)
    threads = []
    real_train = sweeps.train

    def recording_train(*args, **kwargs):
        threads.append(torch.get_num_threads())
        return real_train(*args, **kwargs)

    monkeypatch.setattr(sweeps, "train", recording_train)
    before = torch.get_num_threads()
    request.addfinalizer(lambda: torch.set_num_threads(before))
    torch.set_num_threads(2)  # the caller's setting
    serial = sweep(corpus, GRID, train_kwargs=TRAIN, history=True, workers=1, **TINY)
    assert threads == [1, 1, 1, 1] and torch.get_num_threads() == 2
    assert len(trained) == 4
    cache = tmp_path / "runs.jsonl"
    parallel = sweep(corpus, GRID, train_kwargs=TRAIN, history=True, workers=2, cache=cache, **TINY)
    assert parallel["train_loss"].tolist() == serial["train_loss"].tolist()
    assert parallel["final_val_loss"].tolist() == serial["final_val_loss"].tolist()
    same_numbers(parallel, serial)
    points = parallel[["placement", "seed"]].drop_duplicates().values.tolist()
    assert points == [["pre", 0], ["pre", 1], ["post", 0], ["post", 1]]
    # The workers' cache reads back here without training, history included, to the bit.
    trained.clear()
    again = sweep(corpus, GRID, train_kwargs=TRAIN, history=True, workers=1, cache=cache, **TINY)
    assert trained == []
    pd.testing.assert_frame_equal(again, parallel, check_exact=True)


def test_failed_and_diverged_runs_are_rows(corpus):
    # lr=50 with SGD on a Post-LN model diverges; batch_size=0 raises inside train().
    # Fails if an exception escapes the sweep, loses the other runs, or is not reported.
    grid = {"batch_size": [2, 0], "lr": [1e-3, 50.0]}
    kw = dict(
        train_kwargs=dict(steps=20, optimizer="sgd", device="cpu"),
        model_kwargs=dict(d_model=16, n_heads=2, seq_len=8, n_layers=1, placement="post"),
        progress=False,
    )
    with pytest.warns(UserWarning, match="2 of 4 runs raised .* first with ValueError"):
        parallel = sweep(corpus, grid, workers=2, **kw)
    with pytest.warns(UserWarning, match="2 of 4 runs raised"):
        serial = sweep(corpus, grid, workers=1, **kw)
    same_numbers(parallel, serial)
    assert parallel["diverged"].tolist() == [False, True, False, False]
    assert parallel["error"].isna().tolist() == [True, True, False, False]
    assert parallel["error"][2].startswith("ValueError: batch_size")  # train() refuses 0
    assert parallel["lr"].tolist() == [1e-3, 50.0, 1e-3, 50.0]  # failed rows keep their config
    assert parallel["n_layers"].tolist() == [1, 1, 1, 1]
    assert parallel["final_train_loss"].notna().tolist() == [True, True, False, False]
    assert parallel["steps_done"][0] == 20
    with pytest.warns(UserWarning, match="2 of 4 runs raised"):
        steps = sweep(corpus, grid, workers=1, history=True, **kw)
    assert steps.groupby("batch_size").size().to_dict()[0] == 2  # one row per failed run
    assert steps[steps["error"].notna()]["step"].isna().all()


class WorkerKiller:
    """A grid value that ends the process that unpickles it: a worker dies mid-sweep."""

    def __reduce__(self):
        return (os._exit, (3,))


def test_a_dead_worker_costs_only_its_run(corpus, tmp_path):
    # Fails if a worker that dies (out of memory, a crash, os._exit) takes other runs down
    # with it (they would have an error, as every run did with a ProcessPoolExecutor, or
    # be missing from the cache), raises out of sweep() or hangs it, if the dead run's row
    # does not say that its worker died and how, or if no new worker takes over: two runs
    # kill two workers, so the last run can only finish on a replacement.
    cache = tmp_path / "runs.jsonl"
    grid = {"clip": [None, WorkerKiller(), WorkerKiller(), 1.0]}
    with pytest.warns(UserWarning, match="2 of 4 runs raised .* first with WorkerDied"):
        df = sweep(corpus, grid, train_kwargs=TRAIN, workers=2, cache=cache, **TINY)
    assert df["error"].isna().tolist() == [True, False, False, True]
    for error in df["error"][1:3]:
        assert error.startswith(
            "WorkerDied: the worker process running this run died (exit code 3)"
        )
    assert df["final_val_loss"].notna().tolist() == [True, False, False, True]
    cached = [json.loads(line)["job"]["train"]["clip"] for line in cache.read_text().splitlines()]
    assert sorted(cached, key=str) == [1.0, None]


def test_interrupted_sweep_resumes_and_finished_one_reads_back(corpus, tmp_path, trained):
    # Fails if cached runs are trained again, missing ones are not, a half-written line
    # breaks the reader or the next append, or the per-step history does not round-trip.
    cache = tmp_path / "sub" / "runs.jsonl"
    kw = dict(train_kwargs=TRAIN, history=True, workers=1, cache=cache, **TINY)
    full = sweep(corpus, GRID, **kw)
    lines = cache.read_text().splitlines()
    assert len(trained) == 4 and len(lines) == 4
    # Interrupted after two runs, in the middle of writing the third.
    cache.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:40])
    trained.clear()
    with pytest.warns(UserWarning, match="skipped 1 unreadable line"):
        resumed = sweep(corpus, GRID, **kw)
    assert [(j["model"]["placement"], j["seed"]) for j in trained] == [("post", 0), ("post", 1)]
    same_numbers(resumed, full)
    first_two = resumed["seed"].index[: 2 * TRAIN["steps"]]
    assert resumed.loc[first_two, "seconds"].equals(full.loc[first_two, "seconds"])
    # Finished: read back at once, identical to the bit, seconds included.
    trained.clear()
    with pytest.warns(UserWarning, match="unreadable"):
        again = sweep(corpus, GRID, **kw)
    assert trained == []
    pd.testing.assert_frame_equal(again, resumed, check_exact=True)
    # A cache is keyed by the whole configuration: other steps, or history=False, miss.
    trained.clear()
    with pytest.warns(UserWarning, match="unreadable"):
        sweep(corpus, GRID, **{**kw, "history": False})
    assert len(trained) == 4


def test_cache_from_another_version_is_retrained_with_a_warning(corpus, tmp_path, trained):
    # Fails if entries written by another prenorm version are reused, or crash the sweep.
    cache = tmp_path / "runs.jsonl"
    kw = dict(train_kwargs=TRAIN, workers=1, cache=cache, **TINY)
    first = sweep(corpus, {"seed": [0, 1]}, **kw)
    records = [json.loads(line) for line in cache.read_text().splitlines()]
    cache.write_text("".join(json.dumps({**r, "prenorm": "0.0.0-old"}) + "\n" for r in records))
    trained.clear()
    with pytest.warns(UserWarning, match=r"another package version \(2 by prenorm 0\.0\.0-old"):
        again = sweep(corpus, {"seed": [0, 1]}, **kw)
    assert len(trained) == 2
    same_numbers(again, first)


def test_cache_lines_that_are_not_utf8_are_skipped(corpus, tmp_path, trained):
    # Fails if a line with bytes that are not UTF-8 crashes the sweep (UnicodeDecodeError
    # from reading the file as text) instead of being skipped with the warning, or if the
    # run that line held is not trained again.
    cache = tmp_path / "runs.jsonl"
    kw = dict(train_kwargs=TRAIN, workers=1, cache=cache, **TINY)
    first = sweep(corpus, {"seed": [0, 1]}, **kw)
    lines = cache.read_bytes().split(b"\n")
    cache.write_bytes(lines[0] + b"\n" + lines[1].replace(b'"prenorm"', b'"pr\xe9norm"') + b"\n")
    trained.clear()
    with pytest.warns(UserWarning, match="skipped 1 unreadable line"):
        again = sweep(corpus, {"seed": [0, 1]}, **kw)
    assert [job["seed"] for job in trained] == [1]
    same_numbers(again, first)


def test_cache_from_other_source_code_is_retrained_with_a_warning(
    corpus, tmp_path, trained, monkeypatch
):
    # Fails if entries written by other source code under the same version number (an
    # editable install edited since) are reused, or ignored without a warning that says why.
    cache = tmp_path / "runs.jsonl"
    kw = dict(train_kwargs=TRAIN, workers=1, cache=cache, **TINY)
    real = sweeps._source_hash
    monkeypatch.setattr(sweeps, "_source_hash", lambda: "0" * 64)
    first = sweep(corpus, {"seed": [0, 1]}, **kw)
    assert {json.loads(line)["source"] for line in cache.read_text().splitlines()} == {"0" * 64}
    monkeypatch.setattr(sweeps, "_source_hash", real)
    trained.clear()
    with pytest.warns(UserWarning, match=r"ignoring 2 run\(s\) written by prenorm .* other source"):
        again = sweep(corpus, {"seed": [0, 1]}, **kw)
    assert len(trained) == 2
    same_numbers(again, first)


def test_source_hash_follows_every_module(tmp_path, monkeypatch):
    # Fails if the hash misses a change to a module's bytes, to its name, or a new module,
    # or if it is computed again on every call instead of once per process.
    real = sweeps._source_hash()
    package = tmp_path / "prenorm"
    package.mkdir()
    (package / "a.py").write_text("x = 1\n")
    (package / "b.py").write_text("y = 2\n")
    monkeypatch.setattr(sweeps, "__file__", str(package / "sweeps.py"))
    digest = sweeps._source_hash.__wrapped__  # the function, without its once-per-process cache
    hashes = [digest()]
    (package / "b.py").write_text("y = 3\n")
    hashes.append(digest())
    (package / "b.py").rename(package / "c.py")
    hashes.append(digest())
    (package / "d.py").write_text("")
    hashes.append(digest())
    assert len(set(hashes)) == 4 and all(len(h) == 64 for h in hashes)
    assert sweeps._source_hash() == real  # the package's, computed once


def test_grid_values_must_be_lists_and_seeds_integers(corpus, trained):
    # Fails if a bare value is iterated (the string "pre" as the placements "p", "r", "e")
    # or raises a bare TypeError (a float), if an empty list silently makes an empty sweep,
    # or if a seed that is not an integer is accepted (1.7 trained as seed 1 and labelled
    # 1.7; "1" and True are no seeds either), in sweep() or probe_sweep().
    import re

    import numpy as np

    from prenorm import probe_sweep, residual_norms

    kw = dict(train_kwargs=TRAIN, workers=1, **TINY)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "grid values must be a list (or tuple) of values, got 'placement': 'pre'; "
            "e.g. {'placement': ['pre']}"
        ),
    ):
        sweep(corpus, {"placement": "pre"}, **kw)
    with pytest.raises(ValueError, match=re.escape("got 'lr': 0.001; e.g. {'lr': [0.001]}")):
        sweep(corpus, {"seed": [0], "lr": 1e-3}, **kw)
    with pytest.raises(ValueError, match="grid values for 'lr' are empty"):
        sweep(corpus, {"lr": []}, **kw)
    for bad in (1.7, 1.0, "1", True, None):
        with pytest.raises(
            ValueError,
            match=re.escape(f"seeds must be integers (int or a numpy integer), got {bad!r}"),
        ):
            sweep(corpus, {"seed": [0, bad]}, **kw)
    batch = _val_batch(corpus, 2, 8, 0)
    with pytest.raises(ValueError, match="seeds must be integers"):
        probe_sweep(residual_norms, batch, {"seed": [0.5]}, TINY["model_kwargs"])
    assert trained == []
    # Tuples, ranges, 1-D numpy arrays and numpy integer seeds are lists and integers.
    a = sweep(corpus, {"seed": (np.int64(1),), "lr": np.array([1e-3])}, **kw)
    b = sweep(corpus, {"seed": range(1, 2), "lr": [1e-3]}, **kw)
    assert a["seed"].tolist() == [1]
    same_numbers(a, b)


def test_bad_input_is_refused_before_any_run(corpus, tmp_path, trained):
    # Fails if a bad argument is noticed only once runs have started (or not at all).
    cache = tmp_path / "runs.jsonl"
    kw = dict(train_kwargs=TRAIN, cache=cache, **TINY)
    with pytest.raises(ValueError, match="workers must be a positive integer, got 0"):
        sweep(corpus, GRID, workers=0, **kw)
    with pytest.raises(ValueError, match="workers must be a positive integer, got 1.5"):
        sweep(corpus, GRID, workers=1.5, **kw)
    with pytest.raises(
        ValueError, match="unknown backend 'dask'; valid backends are 'serial', 'processes', 'ray'"
    ):
        sweep(corpus, GRID, backend="dask", **kw)
    with pytest.raises(ValueError, match="backend 'serial' runs one point at a time"):
        sweep(corpus, GRID, backend="serial", workers=2, **kw)
    with pytest.raises(ValueError, match=r"unknown sweep keys \['depth'\]"):
        sweep(corpus, {"depth": [1, 2]}, **kw)
    with pytest.raises(ValueError, match="unknown placement 'mid'"):
        sweep(corpus, {"placement": ["pre", "mid"]}, **kw)
    with pytest.raises(ValueError, match="unknown optimizer 'lion'"):
        sweep(corpus, {"optimizer": ["adam", "lion"]}, **kw)
    with pytest.raises(ValueError, match=r"missing train arguments \['lr'\]: give them in"):
        sweep(corpus, GRID, **{**kw, "train_kwargs": {"steps": 2}})
    with pytest.raises(ValueError, match=r"missing model arguments \['n_layers'\]"):
        sweep(corpus, GRID, **{**kw, "model_kwargs": dict(d_model=16, n_heads=2, seq_len=8)})
    with pytest.raises(ValueError, match=r"unknown train_kwargs keys \['seed'\]"):
        sweep(corpus, GRID, **{**kw, "train_kwargs": {**TRAIN, "seed": 1}})
    assert trained == [] and not cache.exists()


def test_missing_ray_says_how_to_install_it(corpus, monkeypatch, trained):
    # Fails if backend="ray" without Ray surfaces a bare ModuleNotFoundError mid-sweep.
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "prenorm\[ray\]"'):
        sweep(corpus, GRID, train_kwargs=TRAIN, backend="ray", **TINY)
    assert trained == []


def test_default_workers(monkeypatch):
    # The documented rule: one per usable core on the CPU, capped by the runs; one on a GPU.
    monkeypatch.setattr(sweeps.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(sweeps, "default_device", lambda: torch.device("cpu"))
    jobs = [{"train": {}}] * 8
    assert sweeps._default_workers(jobs) == 4
    assert sweeps._default_workers(jobs[:3]) == 3
    monkeypatch.setattr(sweeps, "default_device", lambda: torch.device("cuda"))
    assert sweeps._default_workers(jobs) == 1
    assert sweeps._default_workers([{"train": {"device": "cpu"}}] * 8) == 4


# ---- probes during training ---------------------------------------------------------
def _val_batch(corpus, batch_size, seq_len, seed):
    return corpus.batch("val", batch_size, seq_len, torch.Generator().manual_seed(seed))


def test_probes_during_training_match_the_probe_on_a_model_trained_that_far(corpus):
    # Fails if a probe runs at the wrong step (off by one: before or after the optimizer
    # step), on a different batch than documented, or its rows lose the run they belong to.
    from prenorm import batch_loss, build_model, layer_ablation, residual_norms, train

    model_kwargs = dict(d_model=16, n_heads=2, seq_len=8, n_layers=2, placement="pre")
    train_kwargs = dict(steps=6, batch_size=3, lr=3e-3, device="cpu")
    df = sweep(
        corpus,
        {"seed": [1]},
        model_kwargs,
        train_kwargs,
        progress=False,
        workers=1,
        probes=[residual_norms, layer_ablation, batch_loss],
        probe_at=[0, 4, 6],
        probe_seed=7,
        probe_batch_size=5,
    )
    assert set(df["probe"]) == {"residual_norms", "layer_ablation", "batch_loss"}
    assert sorted(df["step"].unique()) == [0, 4, 6]
    assert df["final_val_loss"].notna().all() and not df["diverged"].any()
    batch = _val_batch(corpus, 5, 8, 7)
    for step in (0, 4, 6):
        with sweeps._one_thread():
            model = build_model(seed=1, vocab_size=corpus.vocab_size, **model_kwargs)
            if step:
                train(model, corpus, seed=1, **{**train_kwargs, "steps": step})
        want = residual_norms(model, batch)
        got = df[(df.probe == "residual_norms") & (df.step == step)]
        assert got["rms"].tolist() == pytest.approx(want["rms"].tolist(), rel=1e-6)
        want = layer_ablation(model, batch)
        got = df[(df.probe == "layer_ablation") & (df.step == step)]
        assert got["loss_increase"].tolist() == pytest.approx(
            want["loss_increase"].tolist(), rel=1e-5, abs=1e-6
        )
        got = df[(df.probe == "batch_loss") & (df.step == step)]["loss"]
        assert got.tolist() == pytest.approx([model(*batch)[1].item()], rel=1e-6)


def test_probes_stop_where_a_run_diverges_and_bad_probes_are_refused(corpus):
    # Fails if a diverged run is probed past its last step, or loses its row, or if a
    # probe that a worker cannot import by name is accepted.
    from prenorm import residual_norms

    kw = dict(
        model_kwargs=dict(d_model=16, n_heads=2, seq_len=8, n_layers=1, placement="post"),
        train_kwargs=dict(steps=20, optimizer="sgd", device="cpu", batch_size=2),
        progress=False,
        workers=1,
    )
    df = sweep(corpus, {"lr": [1e-3, 50.0]}, probes=[residual_norms], probe_at=[0, 20], **kw)
    ok, blown = df[df.lr == 1e-3], df[df.lr == 50.0]
    assert sorted(ok["step"].unique()) == [0, 20]
    assert blown["diverged"].all() and blown["step"].max() < 20
    with pytest.raises(ValueError, match="module-level functions"):
        sweep(corpus, {"lr": [1e-3]}, probes=[lambda m, b: None], **kw)
    with pytest.raises(ValueError, match=r"probe_at steps \[21\] lie outside 0..20"):
        sweep(corpus, {"lr": [1e-3]}, probes=[residual_norms], probe_at=[21], **kw)
    with pytest.raises(ValueError, match="either history=True or probes"):
        sweep(corpus, {"lr": [1e-3]}, probes=[residual_norms], history=True, **kw)
    with pytest.raises(ValueError, match="probe_at is given but probes is not"):
        sweep(corpus, {"lr": [1e-3]}, probe_at=[0], **kw)


def test_a_list_of_grids_runs_their_union_in_order(corpus):
    # Fails if a list of grids loses a point, mixes one grid's values into another's
    # points, reorders the rows, or trains a point differently from a sweep of its own.
    grids = [{"placement": ["pre"], "qk_norm": [False, True]}, {"placement": ["rezero"]}]
    both = sweep(corpus, grids, train_kwargs=TRAIN, workers=1, **TINY)
    apart = pd.concat(
        [sweep(corpus, g, train_kwargs=TRAIN, workers=1, **TINY) for g in grids],
        ignore_index=True,
    )
    assert both["placement"].tolist() == ["pre", "pre", "rezero"]
    assert both["qk_norm"].tolist()[:2] == [False, True]
    assert both.run.tolist() == [0, 1, 2]  # one index over the union
    cols = [c for c in apart.columns if c != "run"]
    same_numbers(both[cols], apart[cols])
    with pytest.raises(ValueError, match="list of mappings"):
        sweep(corpus, ["pre"], train_kwargs=TRAIN, **TINY)


def test_importing_prenorm_does_not_load_matplotlib():
    # Fails if a module that every sweep worker imports pulls in matplotlib or seaborn
    # (about a second per worker), or if the lazy names stop resolving.
    import subprocess

    code = (
        "import sys, prenorm as P; assert 'matplotlib' not in sys.modules, 'loaded'; "
        "P.TEXT_WIDTH; P.book.setup; assert 'matplotlib' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_each_probe_can_run_at_its_own_steps(corpus):
    # Fails if a probe given its own steps runs at another probe's steps (or not at all),
    # or if steps are accepted both in the mapping and in probe_at.
    from prenorm import batch_loss, layer_ablation

    kw = dict(
        model_kwargs=dict(d_model=16, n_heads=2, seq_len=8, n_layers=2),
        train_kwargs=dict(steps=6, batch_size=2, lr=1e-3, device="cpu"),
        progress=False,
        workers=1,
    )
    df = sweep(corpus, {"seed": [0]}, probes={batch_loss: [0, 3, 6], layer_ablation: [6]}, **kw)
    steps = df.groupby("probe").step.unique().map(sorted).to_dict()
    assert steps == {"batch_loss": [0, 3, 6], "layer_ablation": [6]}
    with pytest.raises(ValueError, match="not both"):
        sweep(corpus, {"seed": [0]}, probes={batch_loss: [0]}, probe_at=[0], **kw)
