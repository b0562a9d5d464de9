"""What every chapter of the book starts with: one call, :func:`setup`.

A chapter's first code cell is its Colab bootstrap; its second is
``ch = P.book.setup()``. :func:`setup` applies the house style and the CPU
settings, picks the scale preset and the device, loads the corpus, glues the
preset's name for the prose, and prints one line saying where the chapter runs.
The returned :class:`Chapter` holds the idioms the chapters share: the standard
validation batch, the Gaussian batches of Xiong et al.'s theory setting and the
model sizes both use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import Corpus, gaussian_batch, load_corpus
from .devices import Scale, amp_dtype, device, scale, setup_cpu
from .model import THEORY_SETTING
from .plotting import glue, set_style
from .probes import Batch

__all__ = ["Chapter", "setup"]


_PRECISION = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}


@dataclass(frozen=True)
class Chapter:
    """A chapter's scale preset ``scale``, device ``dev``, ``corpus`` and shared model size
    ``model_kwargs`` (``vocab_size``, ``d_model``, ``n_heads``, ``seq_len``: the keyword
    arguments every :class:`~prenorm.TransformerLM` of the chapter starts from)."""

    scale: Scale
    dev: torch.device
    corpus: Corpus

    @property
    def model_kwargs(self) -> dict[str, int]:
        """The shared model size: the corpus's vocabulary and the preset's width, heads
        and context length."""
        return {"vocab_size": self.corpus.vocab_size, **self.scale.model_kwargs()}

    @property
    def theory_model_kwargs(self) -> dict[str, object]:
        """Xiong et al.'s theory setting (:data:`~prenorm.THEORY_SETTING`) at the preset's
        theory width."""
        return {**self.model_kwargs, "d_model": self.scale.theory_width, **THEORY_SETTING}

    def val_batch(self, seed: int = 0, batch_size: int | None = None) -> Batch:
        """The standard validation batch: ``batch_size`` (default: the preset's) windows of
        the validation split, drawn with a generator seeded by ``seed``, on the device."""
        gen = torch.Generator().manual_seed(seed)
        size = batch_size or self.scale.batch_size
        return self.corpus.batch("val", size, self.scale.seq_len, gen, device=self.dev)

    def gaussian_batch(
        self,
        seed: int,
        batch_size: int | None = None,
        seq_len: int | None = None,
        width: int | None = None,
        offset: int = 1000,
    ) -> Batch:
        r"""A theory-setting input :math:`x \sim N(0, I)` (see :func:`~prenorm.gaussian_batch`)
        for model seed ``seed``, drawn with seed ``offset + seed`` so that it never
        coincides with the model's own. Sizes default to the preset's batch, context
        and theory width."""
        return gaussian_batch(
            batch_size or self.scale.batch_size,
            seq_len or self.scale.seq_len,
            width or self.scale.theory_width,
            self.corpus.vocab_size,
            seed=offset + seed,
            device=self.dev,
        )


def setup(preset: str | None = None, threads: int | None = None) -> Chapter:
    """Prepare a chapter: house style, CPU settings (:func:`~prenorm.setup_cpu`), the scale
    preset (``preset``, else ``$PRENORM_SCALE``, else by device), the device and the
    corpus. Shows table cells in full (pandas' ``display.max_colwidth``). Glues ``scale_name`` for the prose and prints one line naming the preset,
    device and precision."""
    setup_cpu(threads)
    set_style()
    import pandas as pd

    pd.set_option("display.max_colwidth", None)  # a prediction's quantity is read in full
    S = scale(preset)
    dev = device()
    glue("scale_name", S.name)
    print(
        f"scale {S.name!r} on {dev} ({_PRECISION[amp_dtype(dev)]}): d_model={S.d_model}, "
        f"depths={S.depths}, seeds={S.seeds}"
    )
    return Chapter(S, dev, load_corpus())
