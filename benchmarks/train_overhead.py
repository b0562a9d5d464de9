"""Overhead of ``prenorm.train`` over a bare, hand-written training loop.

Both run the same model (same init), the same optimizer and the same batches,
side by side in one process, alternating A/B for several repeats; the ratio of
medians is reported. The helper's extra work per step is setting the learning
rate, measuring the gradient norm, the divergence checks and the history row,
plus one validation pass of ``eval_batches=1`` at the end.

    python benchmarks/train_overhead.py [--steps 100] [--repeats 5] [--scale cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import prenorm as P


def bare_loop(
    model: P.TransformerLM, corpus: P.Corpus, steps: int, lr: float, batch_size: int, seed: int
) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = corpus.batch("train", batch_size, model.seq_len, gen)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scale", default="cpu", choices=list(P.PRESETS))
    ap.add_argument("--layers", type=int, default=6)
    args = ap.parse_args()
    P.setup_cpu()
    S = P.scale(args.scale)
    corpus = P.load_corpus()
    kw = dict(vocab_size=corpus.vocab_size, n_layers=args.layers, **S.model_kwargs())
    lr, bs = 1e-3, S.batch_size
    helper, bare = [], []
    for r in range(args.repeats + 1):  # the first pair warms up and is dropped
        m = P.build_model(seed=0, **kw)
        t0 = time.perf_counter()
        P.train(
            m,
            corpus,
            args.steps,
            lr,
            batch_size=bs,
            eval_interval=10**9,
            eval_batches=1,
            device="cpu",
        )
        t_helper = time.perf_counter() - t0
        m = P.build_model(seed=0, **kw)
        t_bare = bare_loop(m, corpus, args.steps, lr, bs, seed=0)
        if r:
            helper.append(t_helper)
            bare.append(t_bare)
    h, b = statistics.median(helper), statistics.median(bare)
    print(
        f"scale={S.name} d_model={S.d_model} layers={args.layers} batch={bs}x{S.seq_len} steps={args.steps}"
    )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"prenorm.train : {1e3 * h / args.steps:7.2f} ms/step (median of {args.repeats})")
    print(f"bare loop     : {1e3 * b / args.steps:7.2f} ms/step")
    print(f"overhead      : {100 * (h / b - 1):+6.1f} %")


if __name__ == "__main__":
    main()
