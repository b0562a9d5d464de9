"""Devices, mixed precision and the three scale presets that size every experiment.

The preset comes from the ``PRENORM_SCALE`` environment variable (``ci``, ``cpu``
or ``gpu``); without it, ``gpu`` when CUDA is present and ``cpu`` otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch

from .registry import Registry


def device() -> torch.device:
    """The best available device: CUDA, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def amp_dtype(dev: torch.device | str) -> torch.dtype | None:
    """Autocast dtype for ``dev``: bf16 on GPUs that compute it natively (compute
    capability 8.0 and up: A100, L4, H100), fp16 on older CUDA GPUs such as Colab's T4
    (use with a gradient scaler; ``torch.cuda.is_bf16_supported()`` is true there too, but
    by slow emulation), ``None`` (plain fp32) on CPU and MPS."""
    dev = torch.device(dev)
    if dev.type == "cuda":
        major, _ = torch.cuda.get_device_capability(dev)
        return torch.bfloat16 if major >= 8 else torch.float16
    return None


def reset_peak_memory(dev: torch.device | str) -> None:
    """Start counting peak GPU memory afresh on ``dev`` (a no-op off CUDA)."""
    dev = torch.device(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def peak_memory_mb(dev: torch.device | str) -> float | None:
    """The most memory tensors held on ``dev`` since :func:`reset_peak_memory`, in MiB
    (``torch.cuda.max_memory_allocated``); ``None`` off CUDA, where torch keeps no such
    count."""
    dev = torch.device(dev)
    if dev.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(dev) / 2**20


def setup_cpu(threads: int | None = None) -> None:
    """Avoid the two CPU slowdowns that cost an order of magnitude: denormal
    floats in stalled or collapsed runs (flushed to zero here) and thread
    oversubscription (``threads`` defaults to the physical-core count reported
    by torch, capped by ``OMP_NUM_THREADS`` when set)."""
    torch.set_flush_denormal(True)
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS")
        threads = int(env) if env and env.isdigit() else torch.get_num_threads()
    torch.set_num_threads(max(1, threads))


@dataclass(frozen=True)
class Scale:
    """Sizes for one preset. Chapters read only these fields, never literals.

    ``d_model``/``n_heads``/``seq_len``/``batch_size``: model and batch for probes
    and training; ``depths``: depths for per-layer probes at initialization;
    ``seeds``: seeds for spread; ``theory_width``/``theory_depths``/``theory_seeds``: the
    Xiong et al. theory setting, whose lemmas bound expectations over weight draws, so it
    takes more seeds; ``spectral_iters``: power-iteration steps; ``train_*``: the
    training experiments; ``demo_*``: the book's opening comparison of Post-LN and
    Pre-LN trained side by side; ``stack_depth`` and ``wide_lrs``: part 3's comparisons
    of the designs after Pre-LN, one depth (at least 4, so that Mix-LN has a Post-LN
    layer) and a learning-rate range wide enough to find each design's best and its
    failures, in the style of Wortsman et al. 2023; ``design_seeds``: the seeds of every
    cell of those comparisons (at least two, so that a verdict that compares designs is
    never one draw). ``cell_timeout``: the seconds one
    notebook cell may run before the book build (and ``pytest --nbval-lax``) stops it as
    hung, several times the slowest cell measured at that preset, so that a lost kernel
    message fails in a minute or two at ``ci`` instead of half an hour.
    ``speed_widths``/``speed_tokens``/``speed_repeats``: the norm-speed benchmark of
    chapter 7 (:func:`~prenorm.time_norms`): the widths :math:`d` timed, the tokens per
    input and the timed repeats per width and implementation. ``quality_seeds``: the
    seeds of chapter 7's paired comparison of RMSNorm with LayerNorm (C13); at ``cpu``,
    eight, so that the half-width of the 95% *t*-interval, t(0.975, n - 1) s / sqrt(n) at
    the paired SD s = 0.015 nats that three seeds measured, is about 0.012 nats, below
    the claim's 0.02 (three seeds gave 0.036).
    ``jacobian_seeds``: chapter 2's fresh seeds for C4's measurement of
    the scale sigma in Post-LN stacks (seeds 0-4 were seen while C4 was restated, so these
    start at 5; three suffice for a 95% interval of half-width about 0.02 at the seed-to-seed
    SD of 0.0064 seen on seeds 3-4; at ``ci`` too few are fresh and the verdict says so).
    ``gradients_confirm_seeds``: chapter 3's fresh seeds for the init-time probes of C2,
    C3 and C5, whose predictions were revised (the width-scaled GPT-2 init added) after
    the results of ``seeds`` were seen: the verdicts rest on these seeds only.
    ``highway_confirm_seeds``: chapter 4's fresh seeds for C8 (the gradient at the lowest
    block boundary relative to the top, in trained Pre-LN models and at initialization),
    whose predictions were revised after earlier builds had trained or probed every seed
    below the smallest of these, the development seeds; at least three at ``cpu``, so
    that a 95% *t*-interval over them has a usable width (with two, t(0.975, 1) = 12.7).
    ``warmup_confirm_seeds``: chapter 5's confirmation seeds, fresh seeds (none of
    ``train_seeds``) on which the predictions revised after ``train_seeds``' results were
    seen are judged; every run of chapter 5 uses them (the development seeds are not run
    again); ``warmup_long_factor``: how many times ``grid_steps`` chapter 5's long run of
    its hardest cell (one seed) trains, to tell a stalled run from a slow one.
    ``design_lrs``: chapter 9's learning rates for the designs after Pre-LN, reaching one
    rate past each end of ``wide_lrs``, on whose edges some designs' optima lay for the
    development seeds (``design_seeds``), so that the optima are bracketed; ``design_confirm_seeds``: the fresh seeds chapter 9's
    verdicts are judged on (at ``ci`` the development seeds, so the verdicts say they
    saw their own development data).
    ``nonorm_seeds``: the seeds of chapter 10's designs (ReZero, DyT, QK-norm), fresh
    ones: ``design_seeds`` were the development seeds of its predictions revised after
    earlier builds, so the verdicts rest on these alone. ``nonorm_alphas``: the values
    of DyT's initial alpha swept at the middle learning rate (0.5, Zhu et al.'s default,
    among them).
    ``coda_lrs``/``coda_search_seeds``/``coda_confirm_seeds``: chapter 8's default-against-
    tuned Adam (C14): the learning rates of the search (Adam's default 1e-3 inside the
    range, not at an end), the development seeds the tuned setting is picked on (three at
    ``cpu``, so that the paired interval of the best setting against the defaults exists
    and can exclude 0), and the confirmation seeds, none of them a search seed, that the
    verdict rests on (at ``cpu``, four: seeds 2 to 9 were seen by earlier designs of the
    test and are skipped).
    ``part3_dev_seeds``/``part3_confirm_seeds``: part 3's (chapters 9 and 10) development
    seeds, run over the whole grid of learning rates to show each design's curve and to
    choose the learning rates the verdicts are read at (each design's best), and its fresh
    confirmation seeds, run only at those learning rates, on which the predictions revised
    after the earlier builds' seeds (``design_seeds``, ``design_confirm_seeds``,
    ``nonorm_seeds``) had been seen are judged. At ``cpu`` and ``gpu`` there are four:
    with two, a 95% t-interval spans 12.7 standard errors each way (1 degree of freedom)
    and most predictions could not be decided; with four, 3.2. Seeds 14 to 17 had never
    been run by any chapter when they were added. At ``ci`` they overlap the seen seeds, so
    the verdicts say they saw development data.
    ``trained_seq_len``/``trained_encoder_seqs``/``trained_decoder_seqs``: chapter 11's
    text for the trained checkpoints: tokens per window, and how many windows of the
    corpus go through the encoder (an even number: the contrastive readout pairs them)
    and through the 30-layer decoder (whose layer ablation costs about 15 forward passes);
    each window is one observation of the chapter's 95% intervals, so every preset has at
    least two of each.
    ``stops_confirm_seeds``: the fresh seeds of the "stops" cores of C15 and C21 (the
    growth factor of Peri-LN's stream and of QK-norm's largest logit), made core after
    ``part3_confirm_seeds`` had been seen; chapters 9 and 10 run them only at the top
    learning rate those cores read, for the design and its Pre-LN reference. At ``ci``
    they overlap the seen seeds, and the verdicts say they saw development data.
    """

    name: str
    d_model: int
    n_heads: int
    seq_len: int
    batch_size: int
    depths: tuple[int, ...]
    seeds: tuple[int, ...]
    theory_width: int
    theory_depths: tuple[int, ...]
    theory_seeds: tuple[int, ...]
    spectral_iters: int
    spectral_depths: tuple[int, ...]
    train_depths: tuple[int, ...]
    train_steps: int
    train_lrs: tuple[float, ...]
    train_warmups: tuple[int, ...]
    train_seeds: tuple[int, ...]
    grid_steps: int
    demo_depth: int
    demo_steps: int
    demo_batch_size: int
    stack_depth: int
    wide_lrs: tuple[float, ...]
    design_seeds: tuple[int, ...]
    cell_timeout: int
    speed_widths: tuple[int, ...]
    speed_tokens: int
    speed_repeats: int
    quality_seeds: tuple[int, ...]
    jacobian_seeds: tuple[int, ...]
    gradients_confirm_seeds: tuple[int, ...]
    highway_confirm_seeds: tuple[int, ...]
    warmup_confirm_seeds: tuple[int, ...]
    warmup_long_factor: int
    design_lrs: tuple[float, ...]
    design_confirm_seeds: tuple[int, ...]
    nonorm_seeds: tuple[int, ...]
    nonorm_alphas: tuple[float, ...]
    coda_lrs: tuple[float, ...]
    coda_search_seeds: tuple[int, ...]
    coda_confirm_seeds: tuple[int, ...]
    part3_dev_seeds: tuple[int, ...]
    part3_confirm_seeds: tuple[int, ...]
    trained_seq_len: int
    trained_encoder_seqs: int
    trained_decoder_seqs: int
    stops_confirm_seeds: tuple[int, ...]

    def model_kwargs(self) -> dict[str, int]:
        """``d_model``, ``n_heads`` and ``seq_len``: the model size every chapter shares."""
        return {"d_model": self.d_model, "n_heads": self.n_heads, "seq_len": self.seq_len}

    def with_(self, **changes: object) -> Scale:
        """A copy with some fields changed (for one-off experiments)."""
        return replace(self, **changes)


#: The scale presets by name: ``ci`` (seconds per chapter, for tests), ``cpu`` (the
#: default book build on a laptop-class CPU) and ``gpu`` (chosen when CUDA is present).
PRESETS: Registry[Scale] = Registry(
    "scale",
    {
        "ci": Scale(
            name="ci",
            d_model=32,
            n_heads=2,
            seq_len=16,
            batch_size=4,
            depths=(2, 6),
            seeds=(0, 1),
            theory_width=32,
            theory_depths=(2, 4, 8),
            theory_seeds=(0, 1, 2, 3),
            spectral_iters=15,
            spectral_depths=(2, 4),
            train_depths=(2,),
            train_steps=30,
            train_lrs=(3e-3,),
            train_warmups=(0, 10),
            train_seeds=(0,),
            grid_steps=30,
            demo_depth=2,
            demo_steps=30,
            demo_batch_size=4,
            stack_depth=4,
            wide_lrs=(1e-3, 1e-2),
            design_seeds=(0, 1),
            cell_timeout=120,
            speed_widths=(256, 1024),
            speed_tokens=128,
            speed_repeats=3,
            quality_seeds=(0, 1),
            jacobian_seeds=(2, 3),
            gradients_confirm_seeds=(2, 3),
            highway_confirm_seeds=(1, 2),
            warmup_confirm_seeds=(1,),
            warmup_long_factor=2,
            design_lrs=(1e-3, 1e-2),
            design_confirm_seeds=(0, 1),
            nonorm_seeds=(2, 3),
            nonorm_alphas=(0.5, 2.0),
            coda_lrs=(3e-4, 1e-3, 1e-2),
            coda_search_seeds=(0, 1),
            coda_confirm_seeds=(10, 11),
            part3_dev_seeds=(0,),
            part3_confirm_seeds=(1, 2),
            trained_seq_len=32,
            trained_encoder_seqs=4,
            trained_decoder_seqs=2,
            stops_confirm_seeds=(2, 3),
        ),
        "cpu": Scale(
            name="cpu",
            d_model=64,
            n_heads=4,
            seq_len=32,
            batch_size=8,
            depths=(6, 12, 24, 48),
            seeds=(0, 1, 2),
            theory_width=64,
            theory_depths=(3, 6, 12, 24, 48),
            theory_seeds=tuple(range(16)),
            spectral_iters=40,
            spectral_depths=(3, 6, 12, 24, 48),
            train_depths=(6, 12),
            train_steps=400,
            train_lrs=(1e-3, 3e-3),
            train_warmups=(0, 50),
            train_seeds=(0, 1),
            grid_steps=200,
            demo_depth=12,
            demo_steps=300,
            demo_batch_size=16,
            stack_depth=8,
            wide_lrs=(3e-4, 1.5e-3, 6e-3, 3e-2),
            design_seeds=(0, 1),
            cell_timeout=900,
            speed_widths=(256, 512, 1024, 2048, 4096),
            speed_tokens=512,
            speed_repeats=15,
            quality_seeds=tuple(range(8)),
            jacobian_seeds=(5, 6, 7),
            gradients_confirm_seeds=(3, 4, 5),
            highway_confirm_seeds=(4, 5, 6),
            warmup_confirm_seeds=(2, 3),
            warmup_long_factor=4,
            design_lrs=(1e-4, 5e-4, 2.5e-3, 1.25e-2, 6.25e-2),
            design_confirm_seeds=(2, 3),
            nonorm_seeds=(2, 3),
            nonorm_alphas=(0.125, 0.5, 2.0, 8.0),
            coda_lrs=(3e-4, 1e-3, 3e-3),
            coda_search_seeds=(0, 1, 2),
            coda_confirm_seeds=(10, 11, 12, 13),
            part3_dev_seeds=(2,),
            part3_confirm_seeds=(4, 5, 14, 15),
            trained_seq_len=128,
            trained_encoder_seqs=16,
            trained_decoder_seqs=4,
            stops_confirm_seeds=(6, 7, 16, 17),
        ),
        "gpu": Scale(
            name="gpu",
            d_model=256,
            n_heads=8,
            seq_len=128,
            batch_size=32,
            depths=(6, 12, 24, 48, 96),
            seeds=(0, 1, 2, 3, 4),
            theory_width=256,
            theory_depths=(3, 6, 12, 24, 48, 96),
            theory_seeds=tuple(range(32)),
            spectral_iters=60,
            spectral_depths=(3, 6, 12, 24, 48, 96),
            train_depths=(6, 12, 24),
            train_steps=3000,
            train_lrs=(1e-3, 3e-3),
            train_warmups=(0, 75),
            train_seeds=(0, 1, 2),
            grid_steps=300,
            demo_depth=12,
            demo_steps=1500,
            demo_batch_size=64,
            stack_depth=24,
            wide_lrs=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
            design_seeds=(0, 1),
            cell_timeout=1800,
            speed_widths=(256, 512, 1024, 2048, 4096, 8192),
            speed_tokens=16384,
            speed_repeats=30,
            quality_seeds=tuple(range(8)),
            jacobian_seeds=(5, 6, 7, 8, 9),
            gradients_confirm_seeds=(5, 6, 7, 8, 9),
            highway_confirm_seeds=(6, 7, 8),
            warmup_confirm_seeds=(3, 4, 5),
            warmup_long_factor=4,
            design_lrs=(3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
            design_confirm_seeds=(2, 3),
            nonorm_seeds=(2, 3),
            nonorm_alphas=(0.125, 0.5, 2.0, 8.0),
            coda_lrs=(3e-4, 1e-3, 3e-3, 1e-2),
            coda_search_seeds=(0, 1, 2),
            coda_confirm_seeds=(10, 11, 12, 13, 14, 15),
            part3_dev_seeds=(2,),
            part3_confirm_seeds=(4, 5, 14, 15),
            trained_seq_len=256,
            trained_encoder_seqs=16,
            trained_decoder_seqs=8,
            stops_confirm_seeds=(6, 7, 16, 17),
        ),
    },
)


def scale(name: str | None = None) -> Scale:
    """The active scale preset: ``name`` if given, else ``$PRENORM_SCALE``, else
    ``"gpu"`` when CUDA is available and ``"cpu"`` otherwise."""
    name = (
        name or os.environ.get("PRENORM_SCALE") or ("gpu" if torch.cuda.is_available() else "cpu")
    )
    return PRESETS[name]
