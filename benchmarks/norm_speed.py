"""Forward+backward time of LayerNorm and RMSNorm, several implementations, against a copy.

Every implementation of :data:`prenorm.IMPLEMENTATIONS` (prenorm's plain-ops modules,
torch's built-ins and, where ``torch.compile`` works on the device, the compiled
plain-ops modules) is timed side by side with a plain copy of the same tensor, in one run
(:func:`prenorm.time_norms`). The script prints, per width, each implementation's
median time and its fraction of the memory-bandwidth bound (5 full-size transfers at
copy speed), then RMSNorm's time over LayerNorm's for each kind of implementation, and
the first-call (compile) time of the compiled ones.

    python benchmarks/norm_speed.py [--widths 256 1024 4096] [--tokens 4096] [--repeats 20]
        [--device cuda] [--dtype bfloat16] [--threads 1] [--no-compile] [--csv norms.csv]
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

import prenorm as P


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    ap.add_argument("--tokens", type=int, default=None, help="default: 512 on CPU, 16384 on GPU")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="default: the best available")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=None, help="CPU threads while timing")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled variants")
    ap.add_argument("--csv", default=None, help="also write the full frame here")
    args = ap.parse_args()

    dev = torch.device(args.device) if args.device else P.device()
    tokens = args.tokens or (16384 if dev.type == "cuda" else 512)
    names = [n for n, impl in P.IMPLEMENTATIONS.items() if not impl.compiled]
    if not args.no_compile:
        problem = P.compile_problem(dev)
        if problem is None:
            names += [n for n, impl in P.IMPLEMENTATIONS.items() if impl.compiled]
        else:
            print(f"torch.compile does not run on {dev}, compiled variants skipped: {problem}")
    df = P.time_norms(
        args.widths,
        names,
        tokens,
        device=dev,
        dtype=getattr(torch, args.dtype),
        repeats=args.repeats,
        seed=args.seed,
        threads=args.threads,
    )
    if args.csv:
        df.to_csv(args.csv, index=False)

    pd.set_option("display.width", 160)
    print(
        f"device {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}), "
        f"{args.dtype}, {tokens} tokens, {df.threads.iloc[0]} CPU threads, torch {torch.__version__}"
    )
    copy = df.groupby("d").copy_seconds.first() * 1e3
    ms = df.pivot(index="d", columns="implementation", values="seconds")[names] * 1e3
    print("\nmedian forward+backward time, ms (copy = clone of the same tensor)")
    print(ms.assign(copy=copy).round(4).to_string())
    print("\nfraction of the bandwidth bound (5 transfers at copy speed; 1 = at the bound)")
    frac = df.pivot(index="d", columns="implementation", values="bound_fraction")[names]
    print(frac.round(3).to_string())
    print("\nRMSNorm time / LayerNorm time, same kind of implementation, same run")
    kinds = sorted(set(df.kind), key=["ops", "torch", "compiled"].index)
    ratio = pd.DataFrame(
        {k: ms[f"rmsnorm-{k}"] / ms[f"layernorm-{k}"] for k in kinds}, index=ms.index
    )
    print(ratio.round(3).to_string())
    compiled = df[df.kind == "compiled"]
    if len(compiled):
        print("\nfirst call (compile) seconds")
        print(compiled.pivot(index="d", columns="implementation", values="first_call_seconds"))


if __name__ == "__main__":
    main()
