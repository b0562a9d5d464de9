"""Training speed: the written-out path against the fused fast path, and the matmul roofline.

Everything is measured side by side in one invocation, the two paths alternating, so
that a busy host slows both alike:

1. **One training step** of the ``cpu`` preset's demo model (chapter 1: Post-LN, 12
   layers, d_model 64, batch 16 x 32 tokens), through ``prenorm.train`` with
   ``kernels="reference"`` (the written-out norms and attention and the plain optimizer
   step: the path every run took before the fast path) and ``kernels="fused"``. The
   step time is the median over the steps of several runs, the first steps of each run
   dropped. The same is measured at the preset's sweep batch (8 x 32 at ``cpu``),
   which chapters 5, 9 and 10 train.
2. **GFLOP/s and the roofline.** The step's floating-point operations are counted by
   torch's ``FlopCounterMode`` (its matrix products, which are nearly all of them). The
   roofline is what this machine's ``torch.mm``/``torch.bmm`` reach on the step's own
   matrix shapes: every product of one forward and backward pass, recorded as it runs,
   replayed on fresh contiguous tensors and timed. The fraction of the roofline is the
   step's GFLOP/s over the roofline's: 1 would mean the step did nothing but its matrix
   products, each at plain-``mm`` speed. It is a roofline of this machine's matrix
   library at these small shapes (per-call overhead included), not the hardware's peak.
   The count includes the masked half of the attention scores, which a causal kernel may
   skip (about 4% of the step at this size), so the fused path's figure is a little
   flattering. ``ops_per_step`` counts the aten operators one step dispatches (forward,
   backward, clipping, optimizer), views left out: on a GPU, where a step this small is
   bound by launching kernels, each is about one launch. It is counted on the CPU, where
   the plain optimizer step loops over parameters; on CUDA torch's default step is
   already multi-tensor, so there the reference path launches fewer than this count.
3. **A chapter-5-sized sweep end to end** (``--sweep``): chapter 5's grid at the preset
   (placements x depths x learning rates x warmups x seeds), in worker processes,
   uncached, once per path, worker start-up included; it prints in how many runs the
   two paths agree on divergence and how far their final losses lie apart (a Post-LN
   run near the edge of stalling can go either way on a last-bit difference).
4. **torch.compile** (``--compile``): in a fresh process with an empty inductor cache,
   the first step of a compiled run (the compile), a second run of the same shapes in
   the same process (another seed and learning rate), and the same two runs in a second
   fresh process that finds the cache warm; each run's steady step time against the
   eager fused step.

    python benchmarks/train_speed.py [--scale cpu] [--threads 1] [--repeats 3] [--sweep] [--compile]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import pandas as pd
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import prenorm as P

MATMULS = {"mm", "addmm", "bmm", "baddbmm"}


class _MatmulShapes(TorchDispatchMode):
    """Records ``(op, shape of a, shape of b)`` for every matrix product that runs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name in MATMULS:
            a, b = (args[1], args[2]) if name in ("addmm", "baddbmm") else (args[0], args[1])
            self.calls.append((name, tuple(a.shape), tuple(b.shape)))
        return func(*args, **(kwargs or {}))


class _OpCount(TorchDispatchMode):
    """Counts the aten operators dispatched: on a GPU, each is about one kernel launch."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += not func.is_view  # a view launches nothing
        return func(*args, **(kwargs or {}))


def ops_per_step(kw: dict, corpus: P.Corpus, kernels: str, batch_size: int) -> int:
    """Operators of one training step (forward, backward, clipping, optimizer) on a path."""
    model = _model(kw)
    params = list(model.parameters())
    opt = P.OPTIMIZERS["adam"](params, 1e-3, (0.9, 0.98), 0.0, fast=kernels == "fused")
    x, y = corpus.batch("train", batch_size, model.seq_len, torch.Generator().manual_seed(0))
    with P.use_kernels(model, kernels):
        for counting in (False, True):  # the first step creates the optimizer's state
            with _OpCount() if counting else contextlib.nullcontext() as rec:
                loss = model(x, y, check=False)[1]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
    return rec.n


def _model(kw: dict, seed: int = 0) -> P.TransformerLM:
    return P.build_model(seed=seed, **kw)


def step_flops_and_shapes(kw: dict, corpus: P.Corpus, batch_size: int):
    """FLOPs of one forward and backward pass of the written-out model, and the shapes
    of its matrix products."""
    model = _model(kw)
    gen = torch.Generator().manual_seed(0)
    x, y = corpus.batch("train", batch_size, model.seq_len, gen)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x, y, check=False)[1].backward()
    model.zero_grad(set_to_none=True)
    with _MatmulShapes() as rec:
        model(x, y, check=False)[1].backward()
    return counter.get_total_flops(), rec.calls


def replay_seconds(calls, repeats: int = 20) -> float:
    """Median time of the step's matrix products as plain ``torch.mm``/``torch.bmm`` on
    fresh contiguous tensors."""
    pairs = [(torch.randn(a), torch.randn(b)) for _, a, b in calls]
    ops = [torch.bmm if len(a) == 3 else torch.mm for _, a, _b in calls]
    for op, (a, b) in zip(ops, pairs, strict=True):  # warm up
        op(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for op, (a, b) in zip(ops, pairs, strict=True):
            op(a, b)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def step_seconds(kw: dict, corpus: P.Corpus, kernels: str, steps: int, batch_size: int) -> list:
    model = _model(kw)
    res = P.train(
        model,
        corpus,
        steps,
        1e-3,
        batch_size=batch_size,
        kernels=kernels,
        eval_interval=10**9,
        eval_batches=1,
    )
    per_step = batch_size * model.seq_len / res.history["tokens_per_s"]
    return list(per_step.iloc[5:])  # the first steps allocate and warm caches


def chapter5_sweep(S: P.Scale, corpus: P.Corpus, kernels: str, workers: int):
    grid = {
        "placement": ["post", "pre"],
        "n_layers": list(S.train_depths),
        "lr": list(S.train_lrs),
        "warmup_steps": list(S.train_warmups),
        "seed": list(S.train_seeds),
    }
    model_kwargs = {"vocab_size": corpus.vocab_size, **S.model_kwargs(), "init": "xavier"}
    train_kwargs = {"steps": S.grid_steps, "batch_size": S.batch_size, "kernels": kernels}
    t0 = time.perf_counter()
    runs = P.sweep(
        corpus,
        grid,
        model_kwargs,
        train_kwargs,
        progress=False,
        workers=workers,
        backend="processes",
    )
    return time.perf_counter() - t0, runs


def compile_child(scale: str, threads: int) -> None:
    """Runs in a fresh process: two compiled runs of the same shapes, then an eager one."""
    P.setup_cpu(threads)
    S = P.scale(scale)
    corpus = P.load_corpus()
    kw = {"vocab_size": corpus.vocab_size, **S.model_kwargs(), "n_layers": S.demo_depth}
    kw["placement"] = "post"
    bs = S.demo_batch_size
    for i, (seed, lr) in enumerate([(0, 1e-3), (1, 3e-3)]):
        model = _model(kw, seed)
        res = P.train(model, corpus, 60, lr, batch_size=bs, seed=seed, compile=True,
                      eval_interval=10**9, eval_batches=1)  # fmt: skip
        st = bs * model.seq_len / res.history["tokens_per_s"]
        print(json.dumps({"run": i, "first_step_s": float(st.iloc[0]),
                          "steady_ms": 1e3 * float(st.iloc[10:].median())}), flush=True)  # fmt: skip
    eager = step_seconds(kw, corpus, "fused", 60, bs)
    print(json.dumps({"eager_fused_ms": 1e3 * statistics.median(eager)}), flush=True)


def measure_compile(scale: str, threads: int) -> pd.DataFrame:
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        for process in ("cold cache", "warm cache"):
            out = subprocess.run(
                [sys.executable, __file__, "--compile-child", "--scale", scale,
                 "--threads", str(threads)],
                env=env, capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            eager = next(d["eager_fused_ms"] for d in lines if "eager_fused_ms" in d)
            for d in lines:
                if "run" in d:
                    run = "first run" if d["run"] == 0 else "second run, same process"
                    rows.append({**d, "process": process, "run": run, "eager_fused_ms": eager})
    return pd.DataFrame(rows)


def step_table(kw: dict, corpus: P.Corpus, bs: int, seq_len: int, steps: int, repeats: int):
    """Step time, GFLOP/s, fraction of the roofline and operators per step, both paths."""
    flops, calls = step_flops_and_shapes(kw, corpus, bs)
    times: dict[str, list[float]] = {k: [] for k in P.KERNELS}
    roof = []
    for _ in range(repeats):  # alternate, so drift in the host's load hits both
        for k in P.KERNELS:
            times[k] += step_seconds(kw, corpus, k, steps, bs)
        roof.append(replay_seconds(calls))
    roof_s = statistics.median(roof)
    rows = []
    for k in P.KERNELS:
        t = statistics.median(times[k])
        rows.append({"path": k, "step_ms": 1e3 * t, "GFLOP/s": flops / t / 1e9,
                     "fraction_of_roofline": roof_s / t,
                     "ops_per_step": ops_per_step(kw, corpus, k, bs)})  # fmt: skip
    table = pd.DataFrame(rows).set_index("path")
    speedup = table.loc["reference", "step_ms"] / table.loc["fused", "step_ms"]
    print(f"\nbatch {bs} x {seq_len}: {flops / 1e9:.2f} GFLOP per step ({len(calls)} matrix "
          f"products); roofline: the step's products as plain mm/bmm take "
          f"{1e3 * roof_s:.1f} ms, {flops / roof_s / 1e9:.1f} GFLOP/s")  # fmt: skip
    print(table.round(3).to_string())
    print(f"fused step {speedup:.2f}x faster than the reference step")
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="cpu", choices=list(P.PRESETS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sweep", action="store_true", help="time chapter 5's sweep on both paths")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="measure torch.compile's caches")
    ap.add_argument("--compile-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.compile_child:
        compile_child(args.scale, args.threads)
        return
    P.setup_cpu(args.threads)
    S = P.scale(args.scale)
    corpus = P.load_corpus()
    kw = {"vocab_size": corpus.vocab_size, **S.model_kwargs(), "n_layers": S.demo_depth}
    kw["placement"] = "post"
    n_params = _model(kw).num_params()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); demo model: "
          f"Post-LN, {S.demo_depth} layers, d_model {S.d_model}, {n_params:,} parameters")  # fmt: skip
    # the demo's batch (chapter 1), then the sweeps' (chapters 5, 9 and 10 train this one)
    for bs in dict.fromkeys((S.demo_batch_size, S.batch_size)):
        step_table(kw, corpus, bs, S.seq_len, args.steps, args.repeats)

    if args.sweep:
        print(f"\nchapter 5's sweep at '{S.name}', {args.workers} workers, uncached:")
        out = {}
        for k in P.KERNELS:
            seconds, runs = chapter5_sweep(S, corpus, k, args.workers)
            out[k] = runs
            print(f"  {k:<10} {seconds:7.1f} s for {len(runs)} runs", flush=True)
        a, b = out["reference"], out["fused"]
        gap = (a["final_val_loss"] - b["final_val_loss"]).abs()
        same = (a["diverged"] == b["diverged"]).mean()
        print(f"  same divergence flag in {100 * same:.0f}% of runs; final validation "
              f"loss differs by at most {gap.max():.3g} nats (median {gap.median():.2g})")  # fmt: skip

    if args.compile:
        print("\ntorch.compile (inductor), fresh processes sharing one cache directory:")
        print(measure_compile(args.scale, args.threads).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
