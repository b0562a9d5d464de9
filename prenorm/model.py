r"""A small decoder-only character language model, readable top to bottom.

.. math::
    x_0 = E[\text{tokens}] + P[\text{positions}],\qquad
    x_{l+1} = \mathrm{Block}_l(x_l),\qquad
    \text{logits} = W_{\text{head}}\, \mathrm{N}_{\text{final}}(x_L),

where :math:`\mathrm{N}_{\text{final}}` is a norm for the Pre-LN family and the
identity for Post-LN (whose last block already ends in a norm) and for ReZero (which has
no norm).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import MIX_RATIO, PLACEMENTS, Block, _check_norm_bias, layer_placements
from .norms import _norm_kwargs, make_norm
from .registry import Registry


# ---- initialization schemes ------------------------------------------------------
# Each scheme runs after every module is back at its framework default (nn.Linear's
# Kaiming-uniform, nn.Embedding's N(0, 1), norms at gamma = 1, beta = 0).
def _linears_and_embeddings(model: nn.Module) -> list[tuple[str, nn.Linear | nn.Embedding]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Embedding)]


def _zero_bias(m: nn.Module) -> None:
    if isinstance(m, nn.Linear) and m.bias is not None:
        m.bias.zero_()


def init_pytorch(model: TransformerLM) -> None:
    """The framework defaults, unchanged."""


def init_gpt2(model: TransformerLM) -> None:
    r"""GPT-2: weights :math:`N(0, 0.02^2)`; the residual output projections (attention
    ``proj``, MLP ``fc2``) :math:`N(0, (0.02/\sqrt{2L})^2)`; biases 0."""
    for name, m in _linears_and_embeddings(model):
        std = 0.02 / math.sqrt(2 * model.n_layers) if name.endswith(("proj", "fc2")) else 0.02
        nn.init.normal_(m.weight, 0.0, std)
        _zero_bias(m)


#: The width at which GPT-2 small used :math:`N(0, 0.02^2)` (Radford et al. 2019).
GPT2_WIDTH = 768


def init_gpt2_scaled(model: TransformerLM) -> None:
    r"""GPT-2's init carried to width :math:`d` at the same gain: every std of
    :func:`init_gpt2` multiplied by :math:`\sqrt{768/d}`, so that
    :math:`\mathrm{std}\cdot\sqrt d = 0.02\sqrt{768} \approx 0.55` as in GPT-2 small
    (width 768). Weights :math:`N(0, s^2)` with :math:`s = 0.02\sqrt{768/d}`; the
    residual output projections (attention ``proj``, MLP ``fc2``)
    :math:`N(0, (s/\sqrt{2L})^2)`; biases 0. At :math:`d = 768` it is ``"gpt2"``."""
    s = 0.02 * math.sqrt(GPT2_WIDTH / model.d_model)
    for name, m in _linears_and_embeddings(model):
        std = s / math.sqrt(2 * model.n_layers) if name.endswith(("proj", "fc2")) else s
        nn.init.normal_(m.weight, 0.0, std)
        _zero_bias(m)


def init_xavier(model: TransformerLM) -> None:
    """Xavier-uniform weights and embeddings, biases 0 (the original Transformer)."""
    for _, m in _linears_and_embeddings(model):
        nn.init.xavier_uniform_(m.weight)
        _zero_bias(m)


def init_xiong(model: TransformerLM) -> None:
    r"""Xiong et al. 2020's theory setting (their Section 3): Gaussian Xavier weights,
    :math:`N(0, 2/(n_{in}+n_{out}))`, which is :math:`N(0, 1/d)` for every
    :math:`d \times d` matrix of :data:`THEORY_SETTING` (:math:`W^V`, :math:`W^O`,
    :math:`W^1`, :math:`W^2`); biases 0; and :math:`W^Q = W^K = 0`, so attention is
    uniform over the causal prefix. :math:`W^V` is drawn as its own :math:`d \times d`
    matrix, not as a slice of the fused QKV projection, whose Xavier fan would give it
    variance :math:`1/(2d)`."""
    for _, m in _linears_and_embeddings(model):
        nn.init.xavier_normal_(m.weight)
        _zero_bias(m)
    d = model.d_model
    for blk in model.blocks:
        blk.attn.qkv.weight[: 2 * d].zero_()
        nn.init.normal_(blk.attn.qkv.weight[2 * d :], 0.0, d**-0.5)


def init_deepnorm(model: TransformerLM) -> None:
    r"""DeepNet (Wang et al. 2022): Xavier-normal, with gain :math:`\beta = (8L)^{-1/4}` on
    :math:`W^V`, :math:`W^O` and the MLP; biases 0."""
    for _, m in _linears_and_embeddings(model):
        nn.init.xavier_normal_(m.weight)
        _zero_bias(m)
    beta, d = (8 * model.n_layers) ** -0.25, model.d_model
    for blk in model.blocks:
        nn.init.xavier_normal_(blk.attn.qkv.weight[2 * d :], gain=beta)
        for w in (blk.attn.proj.weight, blk.mlp.fc1.weight, blk.mlp.fc2.weight):
            nn.init.xavier_normal_(w, gain=beta)


#: Xiong et al. 2020's theory setting (their Section 3), as model arguments: one head
#: with :math:`W^Q = W^K = 0` (uniform attention), a :math:`d \times d` ReLU FFN
#: (``mlp_ratio=1``), no biases, Gaussian Xavier weights (``init="xiong"``). With
#: Gaussian inputs of :math:`E\|x\|^2 = d` (:func:`~prenorm.gaussian_batch`), their
#: Lemma 2 bounds the Pre-LN stream by :math:`(1 + l/2)d \le E\|x_l\|^2 \le (1 + 3l/2)d`.
THEORY_SETTING: dict[str, object] = {
    "n_heads": 1,
    "mlp_ratio": 1,
    "activation": "relu",
    "bias": False,
    "init": "xiong",
}

#: The initialization schemes by name; each entry is the function that applies it.
INITS: Registry[Callable[[TransformerLM], None]] = Registry(
    "init",
    {
        "pytorch": init_pytorch,
        "gpt2": init_gpt2,
        "gpt2_scaled": init_gpt2_scaled,
        "xavier": init_xavier,
        "xiong": init_xiong,
        "deepnorm": init_deepnorm,
    },
)


class TransformerLM(nn.Module):
    r"""Decoder-only transformer LM built from :class:`~prenorm.Block`.

    ``init`` names the initialization (a key of :data:`INITS`):

    - ``"pytorch"``: the framework defaults (``nn.Linear``'s Kaiming-uniform,
      ``nn.Embedding``'s :math:`N(0,1)`);
    - ``"gpt2"``: weights :math:`N(0, 0.02^2)`, the residual output projections
      (attention ``proj``, MLP ``fc2``) :math:`N(0, (0.02/\sqrt{2L})^2)`, biases 0: GPT-2's
      stds at every width, so at small :math:`d` a much smaller gain than GPT-2 had;
    - ``"gpt2_scaled"``: the same with every std times :math:`\sqrt{768/d}`, GPT-2 small's
      gain (:math:`\mathrm{std}\cdot\sqrt d \approx 0.55`) at any width;
    - ``"xavier"``: Xavier-uniform weights and embeddings, biases 0;
    - ``"xiong"``: the init of Xiong et al. 2020's theory setting (Gaussian Xavier,
      biases 0, :math:`W^Q = W^K = 0`); use it with :data:`THEORY_SETTING`'s shapes;
    - ``"deepnorm"``: DeepNet's init (Wang et al. 2022): Xavier-normal, with gain
      :math:`\beta=(8L)^{-1/4}` on :math:`W^V`, :math:`W^O` and the MLP.

    Norm weights start at :math:`\gamma=1`, :math:`\beta=0` (DyT's :math:`\alpha` at
    :math:`\alpha_0`, ReZero's gates at 0) under every scheme.
    ``placement="deepnorm"`` also sets the skip-path scale :math:`\alpha=(2L)^{1/4}`.

    ``placement="mixln"`` is resolved layer by layer (:func:`~prenorm.layer_placements`,
    split by ``mix_ratio``, default 0.25); :attr:`layer_placements` lists the result and
    each block's ``placement`` is its own. ``qk_norm`` adds per-head QK-norm to every
    attention; ``alpha0`` is DyT's initial :math:`\alpha` (``norm="dyt"`` only).
    ``emb_scale=True`` multiplies the embeddings by one learnable scalar
    :math:`s`, :math:`x_0 = s\,(E[\text{tokens}] + P[\text{positions}])`, initialized to
    :math:`s = \sqrt{d}` under every scheme: the scalar that Zhu et al.'s LLaMA code for
    DyT puts after the token embedding (``shared_scale``; LLaMA has rotary positions and
    no position table, so there the scalar multiplies the whole input of the first block,
    as it does here).
    ``bias`` sets the biases of every linear layer and, unless ``norm_bias`` says
    otherwise, the norms' shift :math:`\beta`; ``norm_bias=False`` drops :math:`\beta` from
    every block norm and the final norm while the linear layers keep their biases (the
    head has none either way), ``None`` (the default) follows ``bias``.
    :meth:`describe` gives the names that identify the model in every table.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        n_layers: int,
        n_heads: int,
        seq_len: int,
        placement: str = "pre",
        norm: str = "layernorm",
        init: str = "gpt2",
        mlp_ratio: int = 4,
        bias: bool = True,
        activation: str = "gelu",
        qk_norm: bool = False,
        mix_ratio: float | None = None,
        alpha0: float | None = None,
        emb_scale: bool = False,
        norm_bias: bool | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(emb_scale, bool):
            raise ValueError(f"emb_scale must be True or False, got {emb_scale!r}")
        for name, value in (
            ("vocab_size", vocab_size),
            ("d_model", d_model),
            ("n_layers", n_layers),
            ("n_heads", n_heads),
            ("seq_len", seq_len),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        INITS.check(init)
        norm_cls, _ = _norm_kwargs(norm, bias, alpha0)
        shift = _check_norm_bias(norm_bias, bias)
        #: Whether the norms keep their shift beta (see ``norm_bias``).
        self.norm_bias = shift
        spec = PLACEMENTS[placement]
        #: The single-step placement of every layer (all equal except for ``"mixln"``).
        self.layer_placements = layer_placements(placement, n_layers, mix_ratio)
        self.vocab_size, self.d_model, self.n_layers = vocab_size, d_model, n_layers
        self.seq_len, self.placement, self.norm, self.init_scheme = seq_len, placement, norm, init
        rho = MIX_RATIO if mix_ratio is None else float(mix_ratio)
        self.mix_ratio = rho if spec.mix is not None else None
        self.qk_norm = bool(qk_norm)
        self._linear_bias = bool(bias)
        self.alpha0: float | None = None  # DyT's initial alpha; None for the other norms
        if getattr(norm_cls, "has_alpha0", False):
            self.alpha0 = norm_cls.default_alpha0 if alpha0 is None else float(alpha0)
        alpha = (2 * n_layers) ** 0.25
        # The modules' own constructors draw weights that reset_parameters overwrites;
        # keeping them off the global RNG makes the init a function of the RNG state
        # alone, so a model reset under seed s equals a model built under seed s.
        with torch.random.fork_rng(devices=[]):
            self.tok_emb = nn.Embedding(vocab_size, d_model)
            self.pos_emb = nn.Embedding(seq_len, d_model)
            self.blocks = nn.ModuleList(
                Block(
                    d_model,
                    n_heads,
                    p,
                    norm,
                    mlp_ratio,
                    bias,
                    alpha if PLACEMENTS[p].scaled_residual else 1.0,
                    activation,
                    layer=l,
                    qk_norm=qk_norm,
                    alpha0=alpha0,
                    norm_bias=shift,
                )
                for l, p in enumerate(self.layer_placements)
            )
            self.final_norm = (
                make_norm(norm, d_model, shift, alpha0) if spec.final_norm else nn.Identity()
            )
            self.head = nn.Linear(d_model, vocab_size, bias=False)
        #: The learnable scalar on the embeddings (``emb_scale=True``), else ``None``.
        self.emb_scale = nn.Parameter(torch.ones(())) if emb_scale else None
        self.reset_parameters(init)

    def describe(self) -> dict[str, object]:
        r"""The model's identity, as every probe, :func:`~prenorm.train` and
        :func:`~prenorm.sweep` record it: ``placement``, ``norm``, ``init``,
        ``n_layers`` and ``d_model``; and, only where they apply, so that part 1's
        tables keep their columns, ``mix_ratio`` (``"mixln"``), ``alpha0`` (DyT) and
        ``qk_norm`` and ``emb_scale`` (``True`` when the model has them) and ``norm_bias``
        (``False`` when the norms lack :math:`\beta` while the linear layers keep their
        biases). Frames that mix models with and
        without these keys get NaN there (``df.fillna({"qk_norm": False})``)."""
        meta: dict[str, object] = {
            "placement": self.placement,
            "norm": self.norm,
            "init": self.init_scheme,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
        }
        if self.mix_ratio is not None:
            meta["mix_ratio"] = self.mix_ratio
        if self.alpha0 is not None:
            meta["alpha0"] = self.alpha0
        if self.qk_norm:
            meta["qk_norm"] = True
        if self.emb_scale is not None:
            meta["emb_scale"] = True
        if not self.norm_bias and self._linear_bias:
            meta["norm_bias"] = False
        return meta

    @torch.no_grad()
    def reset_parameters(self, init: str | None = None) -> None:
        r"""(Re-)initialize every weight with the scheme ``init`` (default: the model's):
        every module back to its framework default (norms to :math:`\gamma=1`,
        :math:`\beta=0`, DyT's :math:`\alpha` to :math:`\alpha_0`, ReZero's gates to 0, the
        embedding scale, if any, to :math:`\sqrt{d}`), then the scheme's own draws, all from the global RNG. Under
        ``torch.manual_seed(s)`` the result equals a fresh model built under the same
        seed (:func:`build_model` with ``seed=s``), whatever training did before."""
        init = INITS.check(init or self.init_scheme)
        self.init_scheme = init
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()
        if self.emb_scale is not None:
            self.emb_scale.fill_(math.sqrt(self.d_model))
        INITS[init](self)

    # ---- forward ----------------------------------------------------------
    def embed(self, idx: Tensor, check: bool = True) -> Tensor:
        """Token plus position embeddings (times the learnable scalar of ``emb_scale``,
        if the model has one): the residual stream entering layer 0.

        With ``check`` (the default) token ids outside ``[0, vocab_size)`` raise a
        ``ValueError``; the check reads the ids' range, which on a GPU waits for the
        device, so :func:`~prenorm.train` checks its corpus once instead and passes
        ``check=False`` in its loop."""
        if not isinstance(idx, Tensor) or idx.dtype != torch.long or idx.dim() != 2:
            got = (
                f"{idx.dtype} tensor of shape {tuple(idx.shape)}"
                if isinstance(idx, Tensor)
                else type(idx).__name__
            )
            raise ValueError(f"idx must be a (batch, time) tensor of dtype torch.long, got {got}")
        T = idx.shape[1]
        if T > self.seq_len:
            raise ValueError(f"sequence length {T} exceeds the model's seq_len={self.seq_len}")
        if check:
            self._check_tokens(idx)
        pos = torch.arange(T, device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        return x if self.emb_scale is None else self.emb_scale * x

    def _check_tokens(self, idx: Tensor) -> None:
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size}), got range "
                f"[{int(idx.min())}, {int(idx.max())}]"
            )

    def residual_stream(self, x: Tensor) -> list[Tensor]:
        """Run the blocks on residual input ``x`` (batch, time, d_model) and return
        ``[x_0, x_1, ..., x_L]``: the state entering every layer and the final one."""
        states = [x]
        for blk in self.blocks:
            states.append(blk(states[-1]))
        return states

    def logits_from_stream(self, x_last: Tensor) -> Tensor:
        """Output head applied to the final residual state."""
        return self.head(self.final_norm(x_last))

    def loss_from_stream(self, x_last: Tensor, targets: Tensor) -> Tensor:
        """The mean next-token cross-entropy of ``targets`` from the final residual state:
        the scalar every gradient probe differentiates."""
        logits = self.logits_from_stream(x_last)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        return_stream: bool = False,
        check: bool = True,
    ) -> tuple[Tensor, Tensor | None] | tuple[Tensor, Tensor | None, list[Tensor]]:
        """Return ``(logits, loss)``; ``loss`` is the mean next-token cross-entropy
        when ``targets`` is given. With ``return_stream=True`` also return the
        residual stream ``[x_0, ..., x_L]``. ``check=False`` skips the token-range check
        of :meth:`embed` (for a loop whose data were checked once)."""
        states = self.residual_stream(self.embed(idx, check=check))
        logits = self.logits_from_stream(states[-1])
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return (logits, loss, states) if return_stream else (logits, loss)

    def num_params(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def build_model(
    seed: int = 0, device: torch.device | str | None = None, **kwargs: object
) -> TransformerLM:
    """``TransformerLM(**kwargs)`` initialized under ``torch.manual_seed(seed)`` and moved
    to ``device`` (default: the CPU). The same seed gives the same weights."""
    torch.manual_seed(seed)
    model = TransformerLM(**kwargs)  # type: ignore[arg-type]
    return model.to(device) if device is not None else model
