"""Throughput of one sweep run serially, in worker processes, and as Ray tasks.

The same grid (by default 8 runs of the ``cpu``-preset model: d_model 64, 6 layers,
context 32, batch 8) is swept three times in one invocation, side by side: serially
in this process, with ``workers`` spawned processes, and on a local Ray instance with
``workers`` CPUs. Each wall time includes starting the worker processes, or Ray's
workers (``ray.init`` itself is timed apart), since a user pays for those too. Every
run trains with one thread on every backend, so the three sweeps must agree to the
bit; the script checks that and says so.

    python benchmarks/sweep_throughput.py [--steps 80] [--workers 2] [--no-ray]
"""

from __future__ import annotations

import argparse
import os
import time

import pandas as pd
import torch

import prenorm as P


def timed(label: str, fn, runs: int) -> tuple[pd.DataFrame, float]:
    t0 = time.perf_counter()
    df = fn()
    seconds = time.perf_counter() - t0
    print(f"  {label:<22} {seconds:7.1f} s  {60 * runs / seconds:6.1f} runs/min", flush=True)
    return df, seconds


def same_numbers(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    return a.drop(columns="seconds").equals(b.drop(columns="seconds"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--scale", default="cpu", choices=list(P.PRESETS))
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray backend")
    args = ap.parse_args()
    S = P.scale(args.scale)
    corpus = P.load_corpus()
    grid = {"placement": ["post", "pre"], "seed": [0, 1, 2, 3]}
    runs = len(P.grid_points(grid, ["placement"]))
    kw = dict(
        model_kwargs=dict(n_layers=args.layers, **S.model_kwargs()),
        train_kwargs=dict(steps=args.steps, lr=1e-3, batch_size=S.batch_size, device="cpu"),
        progress=False,
    )
    print(
        f"{runs} runs x {args.steps} steps: scale={S.name} d_model={S.d_model} "
        f"layers={args.layers} batch={S.batch_size}x{S.seq_len}"
    )
    print(
        f"torch {torch.__version__}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.2f} (other work on the machine makes the numbers noisy)"
    )
    serial, t_serial = timed("serial", lambda: P.sweep(corpus, grid, workers=1, **kw), runs)
    procs, t_procs = timed(
        f"processes, workers={args.workers}",
        lambda: P.sweep(corpus, grid, workers=args.workers, **kw),
        runs,
    )
    rows = [("processes", t_procs, same_numbers(procs, serial))]
    if not args.no_ray:
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        print(f"  (ray.init: {time.perf_counter() - t0:.1f} s, not counted below)")
        try:
            on_ray, t_ray = timed(
                f"ray, {args.workers} CPUs",
                lambda: P.sweep(corpus, grid, backend="ray", **kw),
                runs,
            )
        finally:
            ray.shutdown()
        rows.append(("ray", t_ray, same_numbers(on_ray, serial)))
    print(f"serial: {60 * runs / t_serial:.1f} runs/min")
    for name, t, same in rows:
        print(
            f"{name}: {60 * runs / t:.1f} runs/min, {t_serial / t:.2f}x serial, "
            f"numbers {'identical to' if same else 'DIFFERENT from'} the serial sweep"
        )


if __name__ == "__main__":
    main()
