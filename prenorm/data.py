"""A character-level corpus that needs no network, with seeded batches.

The default corpus, ``"python-docs"``, is the English text of the Python language
reference that every CPython installation carries for ``help()``
(``pydoc_data.topics``): about half a million characters of prose and examples.
Its exact content follows the Python version, so numbers are reproducible for a
given interpreter. Where a network is available, ``"tinyshakespeare"`` fetches
Karpathy's char-rnn Shakespeare once, checks its SHA-256, caches it, and falls
back to the offline corpus if anything goes wrong.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .registry import Registry

SPLITS = ("train", "val")

_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def _python_docs_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def _cache_dir() -> Path:
    return Path(os.environ.get("PRENORM_CACHE", Path.home() / ".cache" / "prenorm"))


def _shakespeare_text(timeout: float = 10.0) -> str:
    path = _cache_dir() / "tinyshakespeare.txt"
    if not path.exists():
        with urllib.request.urlopen(_SHAKESPEARE_URL, timeout=timeout) as resp:
            raw = resp.read()
        digest = hashlib.sha256(raw).hexdigest()
        if digest != _SHAKESPEARE_SHA256:
            raise OSError(f"tinyshakespeare checksum mismatch: got {digest}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != _SHAKESPEARE_SHA256:
        raise OSError(f"cached {path} fails its checksum; delete it to download again")
    return raw.decode("utf-8")


@dataclass
class Corpus:
    """A text, its character vocabulary, and a train/validation split of token ids.

    ``encode``/``decode`` map between strings and ids; ``batch`` draws random
    windows of ``seq_len + 1`` characters (inputs and next-character targets).
    """

    name: str
    text: str = field(repr=False)
    val_fraction: float = 0.1
    chars: list[str] = field(init=False)
    train_ids: Tensor = field(init=False, repr=False)
    val_ids: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        self.chars = sorted(set(self.text))
        self._stoi = {c: i for i, c in enumerate(self.chars)}
        ids = self.encode(self.text)
        n_val = int(len(ids) * self.val_fraction)
        if n_val < 2 or len(ids) - n_val < 2:  # a window needs an input and a target
            raise ValueError(
                f"a text of {len(ids)} characters is too short to split with "
                f"val_fraction={self.val_fraction}: the train split would hold "
                f"{len(ids) - n_val} ids and the validation split {n_val}; each needs at "
                "least 2"
            )
        self.train_ids, self.val_ids = ids[:-n_val], ids[-n_val:]

    def __repr__(self) -> str:
        """A summary, not the text: name, size, vocabulary and split sizes."""
        return (
            f"Corpus(name={self.name!r}, {len(self.text):,} characters, "
            f"vocab_size={self.vocab_size}, train={len(self.train_ids):,} ids, "
            f"val={len(self.val_ids):,} ids, val_fraction={self.val_fraction})"
        )

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters."""
        return len(self.chars)

    def unigram_entropy(self, split: str = "train") -> float:
        r"""Entropy of the character frequencies of ``split``, in nats:
        :math:`H = -\sum_c p_c \ln p_c`. It is the cross-entropy of the best model that
        ignores context, the level at which a language model that has learned only
        character frequencies stalls."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits are 'train', 'val'")
        ids = self.train_ids if split == "train" else self.val_ids
        p = torch.bincount(ids, minlength=self.vocab_size).double() / len(ids)
        p = p[p > 0]
        return float(-(p * p.log()).sum())

    def encode(self, s: str) -> Tensor:
        """Characters to a 1-D long tensor of ids (unknown characters raise)."""
        unknown = sorted(set(s) - self._stoi.keys())
        if unknown:
            raise ValueError(f"characters not in the {self.name!r} vocabulary: {unknown[:10]}")
        return torch.tensor([self._stoi[c] for c in s], dtype=torch.long)

    def decode(self, ids: Tensor | list[int]) -> str:
        """Ids back to a string."""
        return "".join(self.chars[int(i)] for i in ids)

    def batch(
        self,
        split: str,
        batch_size: int,
        seq_len: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Random windows from ``split`` (``"train"`` or ``"val"``): inputs ``(B, T)``
        and targets shifted by one character. Deterministic given ``generator``."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits are 'train', 'val'")
        ids = self.train_ids if split == "train" else self.val_ids
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
        if seq_len + 1 > len(ids):
            raise ValueError(f"seq_len={seq_len} is longer than the {split} split ({len(ids)} ids)")
        start = torch.randint(len(ids) - seq_len, (batch_size,), generator=generator)
        offsets = torch.arange(seq_len + 1)
        win = ids[start[:, None] + offsets]
        x, y = win[:, :-1], win[:, 1:]
        if device is not None:
            x, y = x.to(device), y.to(device)
        return x, y

    def batches(self, split: str, batch_size: int, seq_len: int, seed: int = 0) -> BatchStream:
        """An endless, seeded stream of :meth:`batch` draws."""
        return BatchStream(self, split, batch_size, seq_len, seed)


class BatchStream:
    """Iterator over seeded batches of a :class:`Corpus` split."""

    def __init__(
        self, corpus: Corpus, split: str, batch_size: int, seq_len: int, seed: int
    ) -> None:
        self.corpus, self.split, self.batch_size, self.seq_len = corpus, split, batch_size, seq_len
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        return self.corpus.batch(self.split, self.batch_size, self.seq_len, self.generator)


#: The corpora by name; each entry returns the corpus's text.
CORPORA: Registry[Callable[[], str]] = Registry(
    "corpus",
    {"python-docs": _python_docs_text, "tinyshakespeare": _shakespeare_text},
    plural="corpora",
)


def load_corpus(name: str = "python-docs", val_fraction: float = 0.1) -> Corpus:
    """Load a character corpus by name (a key of :data:`CORPORA`).

    ``"python-docs"`` is always available offline. ``"tinyshakespeare"`` needs a
    network the first time; on any failure it warns and returns ``"python-docs"``.
    """
    text = CORPORA[name]
    try:
        return Corpus(name, text(), val_fraction)
    except OSError as exc:
        warnings.warn(
            f"{name} unavailable ({exc}); using the offline 'python-docs' corpus",
            stacklevel=2,
        )
        return Corpus("python-docs", _python_docs_text(), val_fraction)


def gaussian_batch(
    batch_size: int,
    seq_len: int,
    d_model: int,
    vocab_size: int,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    r"""The input of Xiong et al.'s theory setting: a residual-stream batch
    :math:`x \sim N(0, I)` of shape ``(B, T, d)`` (so :math:`E\|x_t\|^2 = d`) and
    uniformly random targets ``(B, T)``. Deterministic given ``seed``; probes accept
    it wherever they accept token ids."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, seq_len, d_model, generator=g)
    y = torch.randint(vocab_size, (batch_size, seq_len), generator=g)
    return (x.to(device), y.to(device)) if device is not None else (x, y)
