"""ENAT: EfficientNAT (Ni et al., "ENAT: Rethinking Spatial-temporal Interactions in Token-based Image
Synthesis", NeurIPS 2024; official code github.com/LeapLabTHU/ENAT, ``libs/models.py``).

A non-autoregressive transformer over VQ codes that separates the two roles tokens play (paper §4.1,
Fig. 3b, and §4.2, Fig. 4):

* **Spatial disentanglement.** Visible (already decoded) tokens are *encoded on their own* by
  ``enc_depth`` blocks; [MASK] tokens are then *decoded* by ``dec_depth`` blocks whose attention reads
  the fully encoded visible tokens plus the mask tokens themselves.
* **Temporal reuse.** At step t > 0 only the *critical* tokens — those newly decoded at step t−1 — run
  through the encoder. Every other visible token takes the previous step's final feature passed
  through a small residual MLP (``prev_proj``); those reused features also serve as extra keys/values
  for the critical tokens inside the encoder.

Each block is an adaLN DiT block (Peebles & Xie 2023) conditioned on the class embedding whose attention
takes its queries from the tokens being computed and its keys/values from [context ; tokens], with a
"multiway" key/value projection: ``kv.A`` for context rows, ``kv.B`` for the tokens themselves
(BEiT-3 style; ``libs/multiway.py``), and separate adaLN shift/scale for the context rows (``norm1_``).
The head is an MLM layer tied to the (detached) word embedding (MAGE/MUSE style).

Parameter names are the official ones, so ``nnet_ema.pth`` loads as a plain state dict. Attention goes
through :func:`mgen.nn.attention.attention` like every other model.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from mgen import hub
from mgen.errors import UserError, WeightsError
from mgen.fileio import atomic_dir
from mgen.models.maskgit import _config_from, _jsonable, _load_pretrained, accepts_arch_object, load_state
from mgen.nn import LabelEmbedder, Mlp, modulate
from mgen.nn.attention import attention


@dataclass
class ENATConfig:
    """Architecture numbers (``arch:`` of ``configs/enat-*.yaml``).

    ENAT-L on ImageNet 256 (official README: ``--enc_dec 22 2 --embed_dim 1024 --num_heads 16``):
    grid 16, width 1024, 22 encoder + 2 decoder blocks, 16 heads, 1024 codes.
    """

    grid_size: int = 16
    hidden_dim: int = 1024
    enc_depth: int = 22
    dec_depth: int = 2
    heads: int = 16
    mlp_ratio: float = 4.0
    codebook_size: int = 1024
    num_classes: int = 1000
    emb_dropout: float = 0.1  # BertEmbeddings dropout
    img_size: int | None = None
    # training (official train.py / libs/nat_misc.py defaults)
    label_drop: float = 0.1
    mask_beta: tuple[float, float] = (12.0, 3.0)  # mask ratio ~ Beta(12, 3), one per batch
    reuse_prob: float = 0.5  # probability of a training step with previous-step features
    label_smoothing: float = 0.1

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "arch") -> "ENATConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        data = dict(data)
        if "enc_dec" in data:
            data["enc_depth"], data["dec_depth"] = data.pop("enc_dec")
        unknown = set(data) - known
        if unknown:
            raise UserError(f"{where}: unknown ENAT arch keys {sorted(unknown)}; allowed: {sorted(known)}")
        if "mask_beta" in data:
            data["mask_beta"] = tuple(float(v) for v in data["mask_beta"])
        cfg = cls(**data)
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "arch") -> None:
        for name in ("grid_size", "hidden_dim", "enc_depth", "dec_depth", "heads", "codebook_size", "num_classes"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise UserError(f"{where}: {name} must be a positive integer, got {v!r}")
        if self.hidden_dim % self.heads:
            raise UserError(f"{where}: hidden_dim {self.hidden_dim} is not divisible by heads {self.heads}")

    @property
    def num_tokens(self) -> int:
        return self.grid_size * self.grid_size


@dataclass
class ENATState:
    """What one ENAT evaluation hands to the next step: the mask it ran with (B, N) and the final
    per-token features before the output norm (B, N, D) (official ``return_dict['masking'/'feat']``)."""

    masking: torch.Tensor
    feat: torch.Tensor

    def select(self, index: torch.Tensor | slice) -> "ENATState":
        return ENATState(self.masking[index], self.feat[index])

    @staticmethod
    def cat(states: list["ENATState"]) -> "ENATState":
        return ENATState(torch.cat([s.masking for s in states]), torch.cat([s.feat for s in states]))


class TokenEmbeddings(nn.Module):
    """Word + learned position embeddings, LayerNorm, dropout (BERT embeddings; official ``x_embedder``)."""

    def __init__(self, vocab_size: int, hidden: int, num_positions: int, dropout: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden)
        self.position_embeddings = nn.Embedding(num_positions, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=1e-6)
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.dropout(self.LayerNorm(self.word_embeddings(ids) + self.position_embeddings(pos)[None]))


class MlmLayer(nn.Module):
    """fc → GELU → LayerNorm → · word_embeddingsᵀ + bias (official ``mlm_layer``)."""

    def __init__(self, hidden: int, vocab_size: int) -> None:
        super().__init__()
        self.fc = nn.Linear(hidden, hidden)
        self.gelu = nn.GELU()
        self.ln = nn.LayerNorm(hidden)
        self.bias = nn.Parameter(torch.zeros(1, 1, vocab_size))

    def forward(self, x: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        # the product with the tied embedding in float32: the sampler's softmax / Gumbel / confidence ranking
        # read these logits (a no-op cast for float32 weights)
        return self.ln(self.gelu(self.fc(x))).float() @ word_embeddings.float().t() + self.bias.float()


class MultiwayKV(nn.Module):
    """Two key/value projections: ``A`` for the first ``split`` (context) rows, ``B`` for the rest."""

    def __init__(self, dim: int, out: int, bias: bool = True) -> None:
        super().__init__()
        self.A = nn.Linear(dim, out, bias=bias)
        self.B = nn.Linear(dim, out, bias=bias)

    def forward(self, y: torch.Tensor, split: int) -> torch.Tensor:
        if split == 0:
            return self.B(y)
        return torch.cat([self.A(y[:, :split]), self.B(y[:, split:])], dim=1)


class ContextAttention(nn.Module):
    """Queries from ``x``; keys/values from ``y = [context ; x]`` through :class:`MultiwayKV`."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim, bias=True)
        self.kv = MultiwayKV(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor, split: int) -> torch.Tensor:
        b, n, c = x.shape
        m = y.shape[1]
        q = self.q(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        kv = self.kv(y, split).reshape(b, m, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = attention(q, kv[0], kv[1])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class ENATBlock(nn.Module):
    """adaLN block with context attention (official ``DiTBlock`` of ENAT): the condition gives 8 vectors —
    shift/scale for the tokens, shift/scale for the context rows, the attention gate, and
    shift/scale/gate of the MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm1_ = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = ContextAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=lambda: nn.GELU(approximate="tanh"))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 8 * dim, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        sh, sc, sh_ctx, sc_ctx, gate, sh_mlp, sc_mlp, gate_mlp = self.adaLN_modulation(c).chunk(8, dim=1)
        xm = modulate(self.norm1(x), sh, sc)
        if context is None or context.shape[1] == 0:
            y, split = xm, 0
        else:
            y, split = torch.cat([modulate(self.norm1_(context), sh_ctx, sc_ctx), xm], dim=1), context.shape[1]
        x = x + gate.unsqueeze(1) * self.attn(xm, y, split)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), sh_mlp, sc_mlp))


class PrevProj(nn.Module):
    """x + MLP(LayerNorm(x)): adapts a reused previous-step feature (official ``prev_proj``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim, act_layer=lambda: nn.GELU(approximate="tanh"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


def _rows(x: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """x[sel] as (B, k, D); every row of ``sel`` (B, N) must select the same number k of positions."""
    counts = sel.sum(dim=1)
    if counts.numel() and bool((counts != counts[0]).any()):
        raise UserError("ENAT needs the same number of masked tokens in every sample of a batch")
    k = int(counts[0]) if counts.numel() else 0
    return x[sel].reshape(x.shape[0], k, x.shape[-1])


class ENAT(ModelMixin, ConfigMixin):
    """The ENAT generator. ``model(ids, labels, drop_label, prev=None, return_state=False)``.

    A diffusers ``ModelMixin + ConfigMixin``: the keyword arguments are the ``arch:`` fields of a
    ``configs/enat-*.yaml`` entry (``ENAT(**arch)``; :meth:`from_arch` validates a mapping first, accepting the
    official ``enc_dec`` pair), ``save_pretrained`` writes ``config.json`` + ``diffusion_pytorch_model.safetensors``
    and :meth:`from_pretrained` reads those folders as well as the official ``nnet_ema.pth``.

    Reduced precision: ``.to(torch.bfloat16)`` / ``torch_dtype=torch.bfloat16`` runs the blocks in that dtype;
    the MLM head's product with the tied embedding is float32, so the logits are float32.
    """

    @accepts_arch_object(ENATConfig)
    @register_to_config
    def __init__(self, grid_size: int = 16, hidden_dim: int = 1024, enc_depth: int = 22, dec_depth: int = 2,
                 heads: int = 16, mlp_ratio: float = 4.0, codebook_size: int = 1024, num_classes: int = 1000,
                 emb_dropout: float = 0.1, img_size: int | None = None, label_drop: float = 0.1,
                 mask_beta: tuple[float, float] | list[float] = (12.0, 3.0), reuse_prob: float = 0.5,
                 label_smoothing: float = 0.1) -> None:
        super().__init__()
        beta = tuple(float(v) for v in mask_beta)
        if len(beta) != 2:
            raise UserError(f"ENAT mask_beta must be two numbers, got {mask_beta!r}")
        c = ENATConfig(grid_size=grid_size, hidden_dim=hidden_dim, enc_depth=enc_depth, dec_depth=dec_depth,
                       heads=heads, mlp_ratio=mlp_ratio, codebook_size=codebook_size, num_classes=num_classes,
                       emb_dropout=emb_dropout, img_size=img_size, label_drop=label_drop, mask_beta=beta,
                       reuse_prob=reuse_prob, label_smoothing=label_smoothing)
        c.validate()
        self.register_to_config(mask_beta=list(beta))  # JSON form, so a reloaded config compares equal
        self.arch = c
        d = c.hidden_dim
        self.codebook_size, self.mask_token_id, self.num_classes = c.codebook_size, c.codebook_size, c.num_classes
        self.grid_size = (c.grid_size, c.grid_size)
        vocab = c.codebook_size + 1
        self.x_embedder = TokenEmbeddings(vocab, d, c.num_tokens, c.emb_dropout)
        self.y_embedder = LabelEmbedder(c.num_classes, d, dropout_prob=max(c.label_drop, 1e-6))
        # Present in the official model and checkpoints but unused by its forward pass; kept so that
        # official state dicts load strictly.
        self.prev_embedder = Mlp(d, 4 * d, act_layer=lambda: nn.GELU(approximate="tanh"))
        self.prev_proj = PrevProj(d)
        self.blocks = nn.ModuleList([ENATBlock(d, c.heads, c.mlp_ratio) for _ in range(c.enc_depth + c.dec_depth)])
        self.norm = nn.LayerNorm(d)
        self.mlm_layer = MlmLayer(d, vocab)
        self.initialize_weights()

    @classmethod
    def from_arch(cls, arch: Mapping[str, Any] | ENATConfig, where: str = "arch") -> "ENAT":
        """A random-weight model from a registry entry's ``arch:`` mapping (validated: unknown keys, bad
        values → :class:`UserError`; the official ``enc_dec: [22, 2]`` pair is accepted)."""
        cfg = arch if isinstance(arch, ENATConfig) else ENATConfig.from_mapping(arch, where=where)
        cfg.validate(where)
        return cls(**_jsonable(dataclasses.asdict(cfg)))

    def initialize_weights(self) -> None:
        """Official init: xavier-uniform linears with zero bias, N(0, 0.02) embeddings, zero adaLN."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.x_embedder.word_embeddings.weight, std=0.02)
        nn.init.normal_(self.x_embedder.position_embeddings.weight, std=0.02)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for blk in self.blocks:
            nn.init.zeros_(blk.adaLN_modulation[-1].weight)
            nn.init.zeros_(blk.adaLN_modulation[-1].bias)

    def no_weight_decay(self) -> set[str]:
        return {"mlm_layer.bias"}

    @property
    def num_tokens(self) -> int:
        return self.arch.num_tokens

    def condition(self, labels: torch.Tensor | None, drop_label: torch.Tensor | None, b: int,
                  device: torch.device) -> torch.Tensor:
        null = self.num_classes
        if labels is None:
            y = torch.full((b,), null, dtype=torch.long, device=device)
        else:
            y = labels.reshape(b).long()
            if drop_label is not None:
                y = torch.where(drop_label.reshape(b).bool(), torch.full_like(y, null), y)
        return self.y_embedder.embedding_table(y)

    def forward(self, ids: torch.Tensor, labels: torch.Tensor | None = None, drop_label: torch.Tensor | None = None,
                prev: ENATState | None = None, return_state: bool = False,
                ) -> torch.Tensor | tuple[torch.Tensor, ENATState]:
        """ids (B, h, w) or (B, N) with ``mask_token_id`` (= codebook_size) at masked positions, the same
        number of masked positions in every row; labels (B,) (None = unconditional); drop_label (B,)
        bool → null class. ``prev``: the state returned by the previous step for the same samples — its
        visible tokens are reused and only the newly decoded ones are encoded. Returns logits
        (B, N, codebook_size) (and the new :class:`ENATState` with ``return_state``)."""
        b = ids.shape[0]
        ids = ids.reshape(b, -1).long()
        n = self.num_tokens
        if ids.shape[1] != n:
            raise UserError(f"ENAT expects {n} tokens per image, got {ids.shape[1]}")
        enc = self.blocks[: self.arch.enc_depth]
        dec = self.blocks[self.arch.enc_depth:]
        x = self.x_embedder(ids)
        c = self.condition(labels, drop_label, b, ids.device)
        masking = ids == self.mask_token_id
        masked_x = _rows(x, masking)
        if prev is None:
            visible = _rows(x, ~masking)
            if visible.shape[1]:
                for blk in enc:
                    visible = blk(visible, c)
        else:
            if prev.masking.shape != masking.shape or bool((masking & ~prev.masking).any()):
                raise UserError("ENAT feature reuse: a token masked now was visible at the previous step")
            reused_sel = ~prev.masking  # visible before (and so still visible now)
            new_sel = ~masking & prev.masking  # critical tokens: decoded at the previous step
            reused = self.prev_proj(_rows(prev.feat.detach(), reused_sel)).to(x.dtype)
            new = _rows(x, new_sel)
            if new.shape[1]:
                for blk in enc:
                    new = blk(new, c, context=reused)
            full = torch.zeros_like(x)
            full[new_sel] = new.reshape(-1, x.shape[-1])
            full[reused_sel] = reused.reshape(-1, x.shape[-1])
            visible = _rows(full, ~masking)
        if masked_x.shape[1]:
            for blk in dec:
                masked_x = blk(masked_x, c, context=visible)
        feat = torch.zeros_like(x)
        feat[~masking] = visible.reshape(-1, x.shape[-1]).to(feat.dtype)
        feat[masking] = masked_x.reshape(-1, x.shape[-1]).to(feat.dtype)
        logits = self.mlm_layer(self.norm(feat), self.x_embedder.word_embeddings.weight.detach())
        logits = logits[..., : self.codebook_size]
        return (logits, ENATState(masking, feat)) if return_state else logits

    # -- weights ------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike,
                        config: str | ENATConfig | Mapping[str, Any] | None = None,
                        weights: str | os.PathLike | None = None, map_location: str | torch.device | None = None,
                        **kwargs: Any) -> "ENAT":
        """Load the official ``nnet_ema.pth`` (a plain state dict), a safetensors file, a folder written by
        :meth:`save_pretrained` (delegated to diffusers' loader with ``**kwargs``), an older mgen folder
        (``config.json`` + ``model.safetensors``) or a registry name (``enat-l``, ``enat-digits``).
        ``config``: registry name / YAML file / :class:`ENATConfig` / ``arch`` mapping; otherwise the folder's
        ``config.json``, the registry entry, or the shapes (heads assumed 16 as in ENAT-L, the depth split
        assumed ``depth−2`` / 2). ``torch_dtype`` is honoured on every path; the model is in eval mode."""
        return _load_pretrained(cls, ENATConfig, pretrained_model_name_or_path, config, weights, map_location,
                                kwargs, extract_state_dict, infer_config)


def extract_state_dict(ckpt: Mapping[str, Any], file: str | os.PathLike = "<checkpoint>") -> dict[str, torch.Tensor]:
    """The generator weights of a checkpoint: the official plain state dict, or ``nnet_ema`` / the shared
    trainer's ``ema`` / ``nnet`` / ``model`` entry; DDP ``module.`` prefixes removed."""
    state = ckpt if all(isinstance(v, torch.Tensor) for v in ckpt.values()) else hub.iter_state_dicts(ckpt, ("nnet_ema", "ema", "nnet", "model"))
    if state is None:
        raise WeightsError(f"{file}: no ENAT weights found; top-level keys: {sorted(ckpt)[:8]}")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def looks_like(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for ENAT generator weights (official LeapLabTHU/ENAT names): BERT-style token embeddings, the
    label table and the multiway key/value projections. Pure key inspection."""
    keys = {k[len("module."):] if k.startswith("module.") else k for k in state_dict}
    return {"x_embedder.word_embeddings.weight", "y_embedder.embedding_table.weight", "prev_proj.norm.weight",
            "blocks.0.attn.kv.A.weight", "mlm_layer.bias"} <= keys


def infer_config(state: Mapping[str, torch.Tensor]) -> ENATConfig:
    try:
        vocab, d = state["x_embedder.word_embeddings.weight"].shape
        n = state["x_embedder.position_embeddings.weight"].shape[0]
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        classes = state["y_embedder.embedding_table.weight"].shape[0] - 1
        mlp = state["blocks.0.mlp.fc1.weight"].shape[0]
    except (KeyError, ValueError) as e:
        raise WeightsError(f"not an ENAT checkpoint (missing {e})") from None
    g = int(round(math.sqrt(n)))
    return ENATConfig(grid_size=g, hidden_dim=d, enc_depth=depth - 2, dec_depth=2, heads=16, mlp_ratio=mlp / d,
                      codebook_size=vocab - 1, num_classes=classes)


def convert_checkpoint(src: str | os.PathLike, out: str | os.PathLike, config: str | None = "enat-l", **arch: Any) -> None:
    """``mgen convert enat SRC OUT``: official ``nnet_ema.pth`` → a ``save_pretrained`` folder, written atomically."""
    cfg = _config_from(ENATConfig, config) if config else None
    if arch:
        cfg = ENATConfig.from_mapping({**(dataclasses.asdict(cfg) if cfg else {}), **arch}, where="--opt")
    model = ENAT.from_pretrained(src, config=cfg)
    with atomic_dir(out, force=True) as tmp:
        model.save_pretrained(tmp)


# -- training ------------------------------------------------------------------------------------------
def _mask_by_rank(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean (B, N) selecting the k lowest-scoring positions of each row."""
    order = scores.argsort(dim=1, stable=True)
    sel = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        sel.scatter_(1, order[:, :k], True)
    return sel


class ENATTask:
    """ENAT's training objective (official ``train.py: LSimple`` + ``NATSchedule.sample``).

    One mask ratio per batch from Beta(12, 3), ``round(N·ratio)`` (1 … N−1) random tokens masked,
    cross-entropy with label smoothing on the masked tokens. With probability ``reuse_prob`` the step
    first runs the network without gradient on a *more* masked copy (a uniform fraction of the visible
    tokens masked as well) and trains the real pass with those features as the previous-step state,
    so the reuse path (``prev_proj``, context keys/values) is learned. The official code takes that
    conditioning pass from the EMA network by default; the shared trainer does not expose its EMA to
    tasks, so the current network is used (the official ``--ema_for_cond 0`` setting).
    """

    def __init__(self, model: ENAT, tokenizer: Any = None, sampler: Any = None) -> None:
        self.model, self.tokenizer, self.sampler = model, tokenizer, sampler

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...], generator: torch.Generator) -> torch.Tensor:
        cfg = self.model.arch
        codes, labels = batch[0], batch[1]
        b = codes.shape[0]
        codes = codes.reshape(b, -1).long()
        n = codes.shape[1]
        dev, gdev = codes.device, generator.device
        # Beta(a, b) through two Gamma draws is not generator-aware; use the inverse-free ratio of
        # uniform order statistics instead: Beta(a, b) for integer a, b = a-th smallest of a+b−1 uniforms.
        a_, b_ = cfg.mask_beta
        if float(a_).is_integer() and float(b_).is_integer():
            u = torch.rand(int(a_ + b_ - 1), generator=generator, device=gdev).sort().values
            ratio = float(u[int(a_) - 1])
        else:
            raise UserError("ENAT mask_beta must be two integers (official: 12, 3)")
        k = int(min(max(round(n * ratio), 1), n - 1))
        mask = _mask_by_rank(torch.rand(b, n, generator=generator, device=gdev).to(dev), k)
        ids = torch.where(mask, torch.full_like(codes, cfg.codebook_size), codes)
        drop = (torch.rand(b, generator=generator, device=gdev) < cfg.label_drop).to(dev)
        prev = None
        if float(torch.rand(1, generator=generator, device=gdev)) < cfg.reuse_prob:
            visible = n - k
            extra = int(round(visible * float(torch.rand(1, generator=generator, device=gdev))))
            extra = min(extra, visible)
            scores = torch.rand(b, n, generator=generator, device=gdev).to(dev).masked_fill(mask, float("inf"))
            more = _mask_by_rank(scores, extra) | mask
            prev_ids = torch.where(more, torch.full_like(codes, cfg.codebook_size), codes)
            with torch.no_grad():
                _, prev = model(prev_ids, labels, drop, return_state=True)
        logits = model(ids, labels, drop, prev=prev)
        return F.cross_entropy(logits[mask].float(), codes[mask], label_smoothing=cfg.label_smoothing)

    def sample_grid(self, model: nn.Module, generator: torch.Generator) -> torch.Tensor:
        if self.tokenizer is None or self.sampler is None:
            raise RuntimeError("no tokenizer/sampler for sample grids")
        n = self.model.num_classes
        labels = torch.arange(n, device=next(model.parameters()).device).repeat_interleave(max(1, 40 // n))[:40]
        was = model.training
        model.eval()
        with torch.no_grad():
            images = self.tokenizer.decode(self.sampler.sample(model, labels, generator=generator))
        model.train(was)
        return images


def build_enat_training(entry: Any, factory: Any) -> tuple[Any, Any, Any]:
    """(task, data, config) of an ``enat`` config for the one trainer (:mod:`mgen.train.builder`): the digits
    configs train on the codes of their VQ tokenizer."""
    from mgen.samplers.enat import ENATSampler
    from mgen.tokenizers import load_tokenizer

    if not entry.tokenizer:
        raise UserError(f"{entry.name}: the config names no tokenizer to encode training images with")
    cfg = ENATConfig.from_mapping(entry.arch, where=entry.path)
    tok = load_tokenizer(entry.tokenizer)
    codes, labels = factory.data.digits_codes(tok, size=cfg.img_size)
    if tuple(codes.shape[1:]) != (cfg.grid_size, cfg.grid_size):
        raise UserError(f"{entry.name}: tokenizer {entry.tokenizer} gives {tuple(codes.shape[1:])} codes, arch says grid_size {cfg.grid_size}")
    tc = factory.config(entry.train)
    torch.manual_seed(tc.seed)
    model = ENAT.from_arch(cfg)
    task = ENATTask(model, tok, ENATSampler.from_mapping(entry.sampler))
    return task, (codes, labels), tc
