"""MAR: masked autoregressive image generation on continuous tokens with a diffusion-loss head.

Li, Tian, Li, Deng, He (2024), "Autoregressive Image Generation without Vector Quantization"
(arXiv:2406.11838; official code github.com/LTH14/mar, ``models/mar.py``). The generator is an
MAE-style bidirectional transformer (§3.4, Fig. 3):

* tokens: the KL-16 latents (B, 16, 16, 16) patchified to (B, 256, 16) (``patch_size`` 1);
* encoder: ``buffer_size`` (64) leading buffer tokens all set to the class embedding (or the learned
  ``fake_latent`` for the unconditional branch of CFG, label drop 0.1 in training), + learned position
  embedding, LayerNorm; the masked tokens are *dropped* before the ViT blocks;
* decoder: the kept tokens are scattered back into a sequence of ``mask_token`` s, + learned position
  embedding, ViT blocks, LayerNorm; the buffer is removed and a learned diffusion position embedding
  added — that is the per-token condition ``z`` the diffusion head sees (:meth:`MAR.condition`);
* training (§3.4): a random order per image, mask ratio r ~ N(1, 0.25²) truncated to [0.7, 1], loss =
  the head's diffusion loss on the masked tokens (:mod:`mgen.models.diffloss`), repeated
  ``diffusion_batch_mul`` times with fresh t and ε.

Parameter names equal the official ``state_dict`` keys, so ``checkpoint-last.pth`` (keys ``model``,
``model_ema`` — a full state dict, EMA by default —, ``args``) loads with :meth:`MAR.from_pretrained`.
Sampling lives in :mod:`mgen.samplers.mar`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from mgen.errors import UserError, WeightsError
from mgen.models.diffloss import DiffLoss
from mgen.nn import KVCache, ViTBlock
from mgen.nn.attention import attention
from mgen.tokenizers import load_tokenizer


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------
@dataclass
class MARConfig:
    """Architecture of one MAR model; field names are the official ``MAR.__init__`` / ``args`` names."""

    img_size: int = 256
    vae_stride: int = 16
    patch_size: int = 1
    vae_embed_dim: int = 16
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    decoder_embed_dim: int = 768
    decoder_depth: int = 12
    decoder_num_heads: int = 12
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    class_num: int = 1000
    buffer_size: int = 64
    mask_ratio_min: float = 0.7
    label_drop_prob: float = 0.1
    attn_dropout: float = 0.1
    proj_dropout: float = 0.1
    diffloss_d: int = 6
    diffloss_w: int = 1024
    num_sampling_steps: int = 100
    diffusion_batch_mul: int = 4
    grad_checkpointing: bool = False
    noise_schedule: str = "cosine"  # the head's β schedule: MAR uses "cosine"; "linear" (DDPM) for tiny models

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "arch") -> "MARConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UserError(f"{where}: unknown MAR settings {sorted(unknown)}; allowed: {sorted(known)}")
        kwargs = dict(data)
        if "num_sampling_steps" in kwargs:
            kwargs["num_sampling_steps"] = int(kwargs["num_sampling_steps"])
        cfg = cls(**kwargs)
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "arch") -> None:
        if self.img_size % (self.vae_stride * self.patch_size):
            raise UserError(f"{where}: img_size {self.img_size} is not a multiple of vae_stride·patch_size")
        for name in ("encoder", "decoder"):
            dim, heads = getattr(self, f"{name}_embed_dim"), getattr(self, f"{name}_num_heads")
            if dim % heads:
                raise UserError(f"{where}: {name}_embed_dim {dim} is not divisible by {name}_num_heads {heads}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def seq_len(self) -> int:
        return (self.img_size // self.vae_stride // self.patch_size) ** 2

    @property
    def token_embed_dim(self) -> int:
        return self.vae_embed_dim * self.patch_size ** 2


# The official presets (LTH14/mar models/mar.py mar_base / mar_large / mar_huge); the diffusion MLP sizes
# are those of the released checkpoints (README: MAR-B 6×1024, MAR-L 8×1280, MAR-H 12×1536).
PRESETS: dict[str, dict[str, Any]] = {
    "mar_base": dict(encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12,
                     decoder_embed_dim=768, decoder_depth=12, decoder_num_heads=12),
    "mar_large": dict(encoder_embed_dim=1024, encoder_depth=16, encoder_num_heads=16,
                      decoder_embed_dim=1024, decoder_depth=16, decoder_num_heads=16),
    "mar_huge": dict(encoder_embed_dim=1280, encoder_depth=20, encoder_num_heads=16,
                     decoder_embed_dim=1280, decoder_depth=20, decoder_num_heads=16),
}
_HEADS_BY_WIDTH = {768: 12, 1024: 16, 1280: 16}


def config_from_args(args: argparse.Namespace | Mapping[str, Any], state: Mapping[str, torch.Tensor] | None = None) -> MARConfig:
    """The architecture recorded in an official checkpoint's ``args`` (``main_mar.py``'s argparse namespace).

    ``args.model`` (``mar_base`` / ``mar_large`` / ``mar_huge``) fixes the transformer's width, depth and
    heads; the other fields (``diffloss_d``, ``buffer_size``, ``img_size`` …) are read as recorded. An
    unknown ``model`` name takes the transformer sizes from the state dict's shapes instead.
    """
    a = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    model = a.get("model")
    fields = {f.name for f in dataclasses.fields(MARConfig)} - {"grad_checkpointing", "noise_schedule"}
    kw = {k: a[k] for k in fields if k in a and a[k] is not None}
    kw["num_sampling_steps"] = int(kw.get("num_sampling_steps", 100))
    if model in PRESETS:
        kw.update(PRESETS[model])
        return MARConfig(**kw)
    if state is None:
        raise WeightsError(f"checkpoint args name an unknown MAR model {model!r}; known: {', '.join(PRESETS)}")
    inferred = config_from_state_dict(state, MARConfig(**kw)).to_dict()
    inferred.update({k: v for k, v in kw.items() if k.endswith("_num_heads")})
    return MARConfig(**inferred)


def config_from_state_dict(state: Mapping[str, torch.Tensor], base: MARConfig | None = None) -> MARConfig:
    """Infer the architecture from tensor shapes (for checkpoints without ``args``)."""
    base = base or MARConfig()
    try:
        enc_dim, tok_dim = state["z_proj.weight"].shape
        dec_dim = state["decoder_embed.weight"].shape[0]
        seq_plus_buf = state["encoder_pos_embed_learned"].shape[1]
        seq_len = state["diffusion_pos_embed_learned"].shape[1]
        class_num = state["class_emb.weight"].shape[0]
        w = state["diffloss.net.input_proj.weight"].shape[0]
        mlp_hidden = state["encoder_blocks.0.mlp.fc1.weight"].shape[0]
    except KeyError as e:
        raise WeightsError(f"not a MAR state dict: missing {e.args[0]!r}") from None
    def depth(prefix: str) -> int:
        return len({k[len(prefix) + 1:].split(".")[0] for k in state if k.startswith(prefix + ".")})

    side = math.isqrt(seq_len)
    kw = base.to_dict()
    patch = base.patch_size
    vae_dim = tok_dim // (patch * patch)
    kw.update(encoder_embed_dim=enc_dim, decoder_embed_dim=dec_dim, buffer_size=seq_plus_buf - seq_len, class_num=class_num,
              encoder_depth=depth("encoder_blocks"), decoder_depth=depth("decoder_blocks"),
              diffloss_d=depth("diffloss.net.res_blocks"), diffloss_w=w, vae_embed_dim=vae_dim,
              mlp_ratio=mlp_hidden / enc_dim, img_size=side * base.vae_stride * patch)
    for name, dim in (("encoder", enc_dim), ("decoder", dec_dim)):
        if dim != getattr(base, f"{name}_embed_dim"):
            kw[f"{name}_num_heads"] = _HEADS_BY_WIDTH.get(dim, max(1, dim // 64))
    return MARConfig(**kw)


def resolve_config(config: str | MARConfig | Mapping[str, Any] | None) -> MARConfig | None:
    """A :class:`MARConfig` from a registry name (``"mar-b"``), a mapping, a config, or None."""
    if config is None or isinstance(config, MARConfig):
        return config
    if isinstance(config, Mapping):
        return MARConfig.from_mapping(config)
    from mgen import registry

    entry = registry.load_config_file(config) if str(config).endswith((".yaml", ".yml")) else registry.get(str(config))
    from mgen.families import get_family

    if get_family(entry.family).model_class() is not MAR:
        raise UserError(f"{entry.name} is a {entry.family!r} model, not a MAR config")
    return MARConfig.from_mapping(entry.arch, where=f"{entry.name}: arch")


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------
def _gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))


class MAR(ModelMixin, ConfigMixin):
    """The MAR generator (see the module docstring). ``MAR(**MARConfig fields)``; parameters as official."""

    config_name = "config.json"
    _supports_gradient_checkpointing = True
    #: Parameters that stay float32 when the model is cast to bf16/fp16 (``model.to(torch.bfloat16)`` or
    #: ``from_pretrained(..., torch_dtype=...)``), matched against the components of each parameter name as
    #: diffusers does: embeddings and position tables, every LayerNorm, the head's timestep embedding, its input
    #: projection and its output layer. The linears of the transformer blocks and of the head run in the reduced
    #: dtype; residual streams and diffusion arithmetic stay float32 (docs/ARCHITECTURE.md, "Reduced precision").
    _keep_in_fp32_modules = ["class_emb", "fake_latent", "z_proj", "z_proj_ln", "encoder_pos_embed_learned",
                             "encoder_norm", "mask_token", "decoder_pos_embed_learned", "decoder_norm",
                             "diffusion_pos_embed_learned", "norm1", "norm2", "in_ln", "time_embed", "input_proj",
                             "linear"]

    @register_to_config
    def __init__(self, img_size: int = 256, vae_stride: int = 16, patch_size: int = 1, vae_embed_dim: int = 16,
                 encoder_embed_dim: int = 768, encoder_depth: int = 12, encoder_num_heads: int = 12,
                 decoder_embed_dim: int = 768, decoder_depth: int = 12, decoder_num_heads: int = 12,
                 mlp_ratio: float = 4.0, norm_eps: float = 1e-6, class_num: int = 1000, buffer_size: int = 64,
                 mask_ratio_min: float = 0.7, label_drop_prob: float = 0.1, attn_dropout: float = 0.1,
                 proj_dropout: float = 0.1, diffloss_d: int = 6, diffloss_w: int = 1024,
                 num_sampling_steps: int = 100, diffusion_batch_mul: int = 4, grad_checkpointing: bool = False,
                 noise_schedule: str = "cosine") -> None:
        super().__init__()
        cfg = MARConfig(**{k: v for k, v in locals().items() if k in {f.name for f in dataclasses.fields(MARConfig)}})
        cfg.validate()
        self.arch = cfg
        self.vae_embed_dim = vae_embed_dim
        self.patch_size = patch_size
        self.seq_h = self.seq_w = img_size // vae_stride // patch_size
        self.seq_len = self.seq_h * self.seq_w
        self.token_embed_dim = vae_embed_dim * patch_size ** 2
        self.grad_checkpointing = grad_checkpointing
        self.num_classes = class_num
        self.label_drop_prob = label_drop_prob
        self.mask_ratio_min = mask_ratio_min
        self.buffer_size = buffer_size
        self.diffusion_batch_mul = diffusion_batch_mul

        def norm(d: int) -> nn.LayerNorm:
            return nn.LayerNorm(d, eps=norm_eps)

        self.class_emb = nn.Embedding(class_num, encoder_embed_dim)
        self.fake_latent = nn.Parameter(torch.zeros(1, encoder_embed_dim))  # unconditional "class" for CFG
        # encoder
        self.z_proj = nn.Linear(self.token_embed_dim, encoder_embed_dim)
        self.z_proj_ln = nn.LayerNorm(encoder_embed_dim, eps=1e-6)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len + buffer_size, encoder_embed_dim))
        self.encoder_blocks = nn.ModuleList([
            ViTBlock(encoder_embed_dim, encoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm,
                     proj_drop=proj_dropout, attn_drop=attn_dropout) for _ in range(encoder_depth)])
        self.encoder_norm = norm(encoder_embed_dim)
        # decoder
        self.decoder_embed = nn.Linear(encoder_embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len + buffer_size, decoder_embed_dim))
        self.decoder_blocks = nn.ModuleList([
            ViTBlock(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm,
                     proj_drop=proj_dropout, attn_drop=attn_dropout) for _ in range(decoder_depth)])
        self.decoder_norm = norm(decoder_embed_dim)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len, decoder_embed_dim))
        self.initialize_weights()
        self.diffloss = DiffLoss(self.token_embed_dim, decoder_embed_dim, diffloss_d, diffloss_w,
                                 num_sampling_steps, grad_checkpointing, noise_schedule)

    # ---- dtype ---------------------------------------------------------------------------------
    def to(self, *args: Any, **kwargs: Any) -> "MAR":
        """``nn.Module.to``; a dtype cast keeps :attr:`_keep_in_fp32_modules` in float32 (see :meth:`_apply`), so
        diffusers' warning that ``to(dtype)`` would not is silenced here."""
        import logging

        log = logging.getLogger("diffusers.models.modeling_utils")
        level = log.level
        log.setLevel(logging.ERROR)
        try:
            return super().to(*args, **kwargs)
        finally:
            log.setLevel(level)

    def _apply(self, fn: Any, recurse: bool = True) -> "MAR":
        out = super()._apply(fn, recurse)
        self.restore_fp32_parts()
        return out

    def restore_fp32_parts(self) -> None:
        """Cast the :attr:`_keep_in_fp32_modules` parameters back to float32 if they were cast to bf16/fp16."""
        keep = set(self._keep_in_fp32_modules)
        for name, p in self.named_parameters():
            if p.dtype in (torch.bfloat16, torch.float16) and keep.intersection(name.split(".")):
                p.data = p.data.float()

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of the transformer's and head's matmuls (float32, or bf16/fp16 after a cast)."""
        return self.decoder_embed.weight.dtype

    # ---- init ---------------------------------------------------------------------------------
    def initialize_weights(self) -> None:
        """N(0, 0.02) embeddings and tokens; Xavier-uniform linears; unit LayerNorms (MAR / MAE init)."""
        for p in (self.class_emb.weight, self.fake_latent, self.mask_token, self.encoder_pos_embed_learned,
                  self.decoder_pos_embed_learned, self.diffusion_pos_embed_learned):
            nn.init.normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None) -> None:
        self.grad_checkpointing = enable
        self.diffloss.net.grad_checkpointing = enable

    # ---- patchify -----------------------------------------------------------------------------
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) latents → (B, H/p·W/p, C·p²) tokens (channel-major within a patch, as official)."""
        b, c, h, w = x.shape
        p = self.patch_size
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // p) * (w // p), c * p * p)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, C·p²) tokens → (B, C, H, W) latents."""
        b = x.shape[0]
        p, c = self.patch_size, self.vae_embed_dim
        x = x.reshape(b, self.seq_h, self.seq_w, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, c, self.seq_h * p, self.seq_w * p)

    # ---- transformer ----------------------------------------------------------------------------
    def class_embedding(self, labels: torch.Tensor | None, drop: torch.Tensor | None = None, batch: int | None = None) -> torch.Tensor:
        """(B, D) class embeddings; rows where ``drop`` is True (or all, if ``labels`` is None) use ``fake_latent``."""
        if labels is None:
            return self.fake_latent.expand(batch, -1)
        emb = self.class_emb(labels)
        if drop is not None:
            emb = torch.where(drop[:, None].to(emb.device), self.fake_latent.to(emb.dtype), emb)
        return emb

    def _kept_indices(self, mask: torch.Tensor) -> torch.Tensor:
        """Indices (B, n_keep) of the unmasked positions of buffer+sequence, ascending (MAE's dropping)."""
        b = mask.shape[0]
        m = torch.cat([torch.zeros(b, self.buffer_size, dtype=torch.bool, device=mask.device), mask.bool()], dim=1)
        keep_counts = (~m).sum(dim=1)
        n_keep = int(keep_counts[0])
        if b > 1 and not bool((keep_counts == n_keep).all()):
            raise ValueError("every row of the mask must hide the same number of tokens")
        return torch.argsort(m.to(torch.uint8), dim=1, stable=True)[:, :n_keep]

    @staticmethod
    def _block(block: nn.Module, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """One ViT block; with reduced-precision linears the residual stream and the LayerNorms stay in ``x``'s
        dtype (float32) and only the attention/MLP linears run in the reduced dtype."""
        dt = block.attn.qkv.weight.dtype
        if dt == x.dtype:
            return block(x, cache=cache)
        x = x + block.attn(block.norm1(x).to(dt), cache=cache).to(x.dtype)
        return x + block.mlp(block.norm2(x).to(dt)).to(x.dtype)

    @staticmethod
    def _block_rows(block: nn.Module, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``block(x)`` evaluated only for the rows ``rows`` (B, n) of x (B, N, D): keys and values come from
        every row, queries, output projection and MLP only from the selected ones → (B, n, D)."""
        attn = block.attn
        dt = attn.qkv.weight.dtype
        b, _, d = x.shape
        h, hd = attn.num_heads, attn.head_dim
        xn = block.norm1(x).to(dt)
        kv = F.linear(xn, attn.qkv.weight[d:], attn.qkv.bias[d:] if attn.qkv.bias is not None else None)
        k, v = kv.reshape(b, -1, 2, h, hd).permute(2, 0, 3, 1, 4).unbind(0)
        xq = _gather_rows(x, rows)
        q = F.linear(_gather_rows(xn, rows), attn.qkv.weight[:d], attn.qkv.bias[:d] if attn.qkv.bias is not None else None)
        q = q.reshape(b, -1, h, hd).transpose(1, 2)
        q, k = attn.q_norm(q), attn.k_norm(k)
        o = attention(q, k, v).transpose(1, 2).reshape(b, -1, d)
        xq = xq + attn.proj(o).to(x.dtype)
        return xq + block.mlp(block.norm2(xq).to(dt)).to(x.dtype)

    def _run_blocks(self, blocks: nn.ModuleList, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            for block in blocks:
                x = checkpoint(self._block, block, x, use_reentrant=False)
        else:
            for block in blocks:
                x = self._block(block, x, cache)
        return x

    def forward_mae_encoder(self, tokens: torch.Tensor, keep: torch.Tensor, class_emb: torch.Tensor,
                            cache: KVCache | None = None) -> torch.Tensor:
        """Buffer ← class embedding, + position, LN, drop masked tokens, ViT blocks, LN → (B, n_keep, D)."""
        x = self.z_proj(tokens.to(self.z_proj.weight.dtype))
        b, _, d = x.shape
        buf = class_emb[:, None, :].to(x.dtype).expand(b, self.buffer_size, d)
        x = torch.cat([buf, x], dim=1) + self.encoder_pos_embed_learned
        x = self.z_proj_ln(x)
        x = _gather_rows(x, keep)
        return self.encoder_norm(self._run_blocks(self.encoder_blocks, x, cache))

    def forward_mae_decoder(self, x: torch.Tensor, keep: torch.Tensor, cache: KVCache | None = None,
                            query: torch.Tensor | None = None) -> torch.Tensor:
        """Scatter the kept tokens among mask tokens, + position, ViT blocks, LN, drop buffer, + diffusion position.

        ``query`` (B, n) token indices: return only those rows' conditions (B, n, D); the last block then
        evaluates only them (its keys/values still come from every row), which changes nothing but float rounding.
        """
        x = self.decoder_embed(x.to(self.decoder_embed.weight.dtype)).to(x.dtype)
        b, _, d = x.shape
        full = self.mask_token.to(x.dtype).expand(b, self.seq_len + self.buffer_size, d).clone()
        full = full.scatter(1, keep[..., None].expand(-1, -1, d), x)
        x = full + self.decoder_pos_embed_learned
        if query is None or cache is not None or len(self.decoder_blocks) == 0:
            x = self.decoder_norm(self._run_blocks(self.decoder_blocks, x, cache))
            z = x[:, self.buffer_size:] + self.diffusion_pos_embed_learned
            return z if query is None else _gather_rows(z, query)
        x = self._run_blocks(self.decoder_blocks[:-1], x)
        x = self.decoder_norm(self._block_rows(self.decoder_blocks[-1], x, query + self.buffer_size))
        return x + self.diffusion_pos_embed_learned[0][query]

    def condition_cached(self, tokens: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None,
                         drop: torch.Tensor | None, cache: KVCache) -> torch.Tensor:
        """A cheap ReCAP step (Liu et al. 2025, arXiv 2505.19089; official ``examples/MAR+ReCAP``): conditions
        z (B, n, D) for the tokens ``cache.group`` (B, n) only, reusing the K/V recorded by the last
        ``condition(..., cache=record)``.

        Encoder: only the group's tokens that are visible now are computed; rows that the full step also
        encoded overwrite their recorded K/V, the others (decoded since) are appended. Decoder: the group's
        rows (visible → encoder output, masked → mask token) are recomputed and overwrite their rows of the
        recorded K/V; every other row attends through the cache. The buffer (class) rows are cached, as the
        official ``cache_buffer=True``, unless ``cache.recompute_extra``.
        """
        g = cache.group.long().to(tokens.device)
        b, n = g.shape
        nb, dev = self.buffer_size, tokens.device
        seq = nb + self.seq_len
        enc, dec = cache.child("encoder"), cache.child("decoder")
        if enc.rows is None:
            raise RuntimeError("MAR: no full step recorded in this cache")
        buf_rows = torch.arange(nb, device=dev).expand(b, nb)
        vis = ~torch.gather(mask.bool(), 1, g)
        n_vis = int(vis[0].sum())
        if b > 1 and not bool((vis.sum(1) == n_vis).all()):
            raise ValueError("every row must have the same number of visible group tokens")
        order = torch.argsort((~vis).to(torch.uint8), dim=1, stable=True)[:, :n_vis]
        rows = torch.gather(g, 1, order) + nb  # visible group tokens, as sequence rows
        if cache.recompute_extra:
            rows = torch.cat([buf_rows, rows], dim=1)
        # where each computed row sits in the recorded encoder K/V (-1: not recorded → appended)
        slot_of = torch.full((b, seq), -1, dtype=torch.long, device=dev)
        slot_of.scatter_(1, enc.rows.to(dev), torch.arange(enc.rows.shape[1], device=dev).expand(b, -1))
        slots = torch.gather(slot_of, 1, rows)
        stored = slots >= 0
        n_stored = int(stored[0].sum())
        if b > 1 and not bool((stored.sum(1) == n_stored).all()):
            raise ValueError("every row must have the same number of recorded group tokens")
        first = torch.argsort((~stored).to(torch.uint8), dim=1, stable=True)
        rows, slots = torch.gather(rows, 1, first), torch.gather(slots, 1, first)
        enc.append, enc.positions = True, slots[:, :n_stored]
        d_enc = self.encoder_pos_embed_learned.shape[-1]
        zt = self.z_proj(tokens.to(self.z_proj.weight.dtype))
        full = torch.cat([torch.zeros(b, nb, d_enc, device=dev, dtype=zt.dtype), zt], dim=1)
        if nb:
            emb = self.class_embedding(labels, drop, batch=b).to(full.dtype)
            full[:, :nb] = emb[:, None, :]
        full = self.z_proj_ln(full + self.encoder_pos_embed_learned)
        xe = self.encoder_norm(self._run_blocks(self.encoder_blocks, _gather_rows(full, rows), enc))
        xe = self.decoder_embed(xe.to(self.decoder_embed.weight.dtype)).to(xe.dtype)
        d = xe.shape[-1]
        x_full = self.mask_token.to(xe.dtype).expand(b, seq, d).clone().scatter(1, rows[..., None].expand(-1, -1, d), xe)
        dec_rows = g + nb
        if cache.recompute_extra:
            dec_rows = torch.cat([buf_rows, dec_rows], dim=1)
        dec.append, dec.positions = False, dec_rows
        x = _gather_rows(x_full, dec_rows) + self.decoder_pos_embed_learned[0][dec_rows]
        x = self.decoder_norm(self._run_blocks(self.decoder_blocks, x, dec))
        return x[:, -n:] + self.diffusion_pos_embed_learned[0][g]

    def condition(self, tokens: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None,
                  drop: torch.Tensor | None = None, cache: KVCache | None = None,
                  query: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token conditions z for the diffusion head: (B, L, token_dim), (B, L) with 1 = masked, (B,) → (B, L, D).

        ``drop`` (B,) bool replaces the class embedding by ``fake_latent`` (the unconditional branch);
        ``labels=None`` makes every row unconditional. Every row must mask the same number of tokens.
        ``query`` (B, n) token indices: only those rows are returned, (B, n, D) (the decoder's last block then
        runs only for them). The result is float32 for a bf16/fp16 model (its float32 parts: see
        :attr:`_keep_in_fp32_modules`).
        """
        if tokens.dim() != 3 or tokens.shape[1:] != (self.seq_len, self.token_embed_dim):
            raise ValueError(f"tokens must be (B, {self.seq_len}, {self.token_embed_dim}), got {tuple(tokens.shape)}")
        if mask.shape != tokens.shape[:2]:
            raise ValueError(f"mask must be {tuple(tokens.shape[:2])}, got {tuple(mask.shape)}")
        if cache is not None and cache.mode == "reuse":
            return self.condition_cached(tokens, mask, labels, drop, cache)
        keep = self._kept_indices(mask)
        emb = self.class_embedding(labels, drop, batch=tokens.shape[0])
        if cache is not None:
            cache.child("encoder").rows = keep
        x = self.forward_mae_encoder(tokens, keep, emb, cache.child("encoder") if cache is not None else None)
        z = self.forward_mae_decoder(x, keep, cache.child("decoder") if cache is not None else None, query)
        return z if cache is None or query is None else _gather_rows(z, query)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The diffusion head's raw output ε_θ ‖ v for noisy tokens (N, C), timesteps (N,), conditions (N, D) → (N, 2C)."""
        return self.diffloss.net(x_t, t, z)

    # ---- training ---------------------------------------------------------------------------------
    def sample_mask_ratio(self, generator: torch.Generator | None = None) -> float:
        """r ~ N(1, 0.25²) truncated to [mask_ratio_min, 1] (MAR §3.4), by the inverse CDF of a uniform draw."""
        lo = torch.special.ndtr(torch.tensor((self.mask_ratio_min - 1.0) / 0.25, dtype=torch.float64))
        u = torch.rand((), generator=generator, dtype=torch.float64, device=generator.device if generator is not None else "cpu").cpu()
        return float(1.0 + 0.25 * torch.special.ndtri(lo + u * (0.5 - lo)))

    def forward(self, latents: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training loss for scaled latents (B, C, H, W) and labels (B,): MAR's ``forward`` with explicit randomness.

        One mask ratio per batch; a random order per image; labels dropped to ``fake_latent`` with
        probability ``label_drop_prob``; the diffusion loss on the masked tokens, each repeated
        ``diffusion_batch_mul`` times (the official code evaluates all tokens and weights them by the
        mask: the same loss, without the wasted rows).
        """
        gdev = generator.device if generator is not None else latents.device
        x = self.patchify(latents)
        b, l, _ = x.shape
        target = x.detach()
        orders = torch.rand(b, l, generator=generator, device=gdev).argsort(dim=1).to(x.device)
        num_masked = int(math.ceil(l * self.sample_mask_ratio(generator)))
        mask = torch.zeros(b, l, dtype=torch.bool, device=x.device)
        mask.scatter_(1, orders[:, :num_masked], True)
        drop = None
        if self.training and self.label_drop_prob > 0:
            drop = (torch.rand(b, generator=generator, device=gdev) < self.label_drop_prob).to(x.device)
        z = self.condition(x, mask, labels, drop)
        z_m, t_m = z[mask], target[mask]
        mul = self.diffusion_batch_mul
        return self.diffloss(t_m.repeat(mul, 1), z_m.repeat(mul, 1), None, generator)

    # ---- loading ----------------------------------------------------------------------------------
    @classmethod
    def from_config_obj(cls, config: MARConfig) -> "MAR":
        return cls(**config.to_dict())

    @classmethod
    def from_arch(cls, arch: Mapping[str, Any] | MARConfig, where: str = "arch") -> "MAR":
        """A random-weight MAR from a registry entry's ``arch:`` mapping (unknown keys → :class:`UserError`)."""
        return cls.from_config_obj(arch if isinstance(arch, MARConfig) else MARConfig.from_mapping(arch, where=where))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, config: str | MARConfig | Mapping[str, Any] | None = None,
                        ema: bool = True, **kwargs: Any) -> "MAR":
        """Load MAR weights in eval mode from an official ``checkpoint-last.pth``, a safetensors file, or a
        diffusers-style folder (``config.json`` + ``diffusion_pytorch_model.safetensors``).

        ``config``: a registry name (``"mar-b"``), a :class:`MARConfig` or mapping; when omitted it is read
        from the checkpoint's ``args`` (official ``.pth``), its metadata (safetensors), or inferred from the
        tensor shapes. ``ema``: use ``model_ema`` (default) rather than ``model`` when both are present.
        Weights whose shapes do not fit ``config`` raise :class:`~mgen.errors.WeightsError`.
        """
        p = Path(path).expanduser()
        if p.is_dir():
            if (p / "transformer").is_dir() and not (p / "config.json").exists():
                p = p / "transformer"
            if not (p / "config.json").exists():
                raise WeightsError(f"{p}: not a MAR folder (no config.json)")
            if config is None:
                model = super().from_pretrained(str(p), **kwargs)
                model.restore_fp32_parts()
                return model.eval()
            files = sorted(p.glob("*.safetensors"))
            if not files:
                raise WeightsError(f"{p}: no .safetensors weights in the folder")
            p = files[0]
        from mgen.hub import load_checkpoint

        ckpt = load_checkpoint(p)
        state, args, meta_cfg = _extract_state(ckpt, p, ema)
        want = resolve_config(config)
        try:  # the architecture read from the tensors (and args): a failure names the file it read
            inferred = config_from_args(args, state) if args is not None else None
            if inferred is None and want is None and meta_cfg is None:
                inferred = config_from_state_dict(state)
        except WeightsError as e:
            raise WeightsError(f"{p}: {e}") from None
        if want is None:
            want = inferred if inferred is not None else MARConfig.from_mapping(meta_cfg, where=f"{p}: metadata")
        elif inferred is not None:
            _check_same_arch(inferred, want, p)
        model = cls.from_config_obj(want)
        _load_state(model, state, p)
        dtype = kwargs.get("torch_dtype")
        if dtype is not None:
            model = model.to(dtype)
        return model.eval()

    def save_safetensors(self, path: str | os.PathLike) -> Path:
        """The state dict with the official key names, plus the config as safetensors metadata."""
        from mgen.hub import save_safetensors

        return save_safetensors(self.state_dict(), path, metadata={"mgen_mar_config": json.dumps(self.arch.to_dict())})


_ARCH_KEYS = ("encoder_embed_dim", "encoder_depth", "encoder_num_heads", "decoder_embed_dim", "decoder_depth",
              "decoder_num_heads", "diffloss_d", "diffloss_w", "class_num", "buffer_size", "vae_embed_dim",
              "patch_size", "img_size", "vae_stride")


def _check_same_arch(have: MARConfig, want: MARConfig, path: Path) -> None:
    diff = [f"{k} {getattr(have, k)} != {getattr(want, k)}" for k in _ARCH_KEYS if getattr(have, k) != getattr(want, k)]
    if diff:
        raise WeightsError(f"{path}: these weights are for another MAR config ({'; '.join(diff[:3])})")


def _extract_state(ckpt: dict[str, Any], path: Path, ema: bool) -> tuple[dict[str, torch.Tensor], Any, dict | None]:
    """(state dict, official args or None, config from safetensors metadata or None)."""
    from mgen.hub import iter_state_dicts

    args = ckpt.get("args") if isinstance(ckpt.get("args"), (argparse.Namespace, dict)) else None
    if "model" in ckpt or "model_ema" in ckpt:
        keys = ("model_ema", "model") if ema else ("model", "model_ema")
        state = iter_state_dicts(ckpt, keys)
        if state is None:
            raise WeightsError(f"{path}: neither 'model' nor 'model_ema' holds a state dict")
        if ema and not isinstance(ckpt.get("model_ema"), dict):
            warnings.warn(f"{path}: no EMA weights ('model_ema'); using 'model'", stacklevel=3)
        return dict(state), args, None
    if all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        meta = _safetensors_metadata(path)
        cfg = json.loads(meta["mgen_mar_config"]) if meta and "mgen_mar_config" in meta else None
        return dict(ckpt), None, cfg
    raise WeightsError(f"{path}: not a MAR checkpoint (expected keys 'model'/'model_ema' or a state dict)")


def _safetensors_metadata(path: Path) -> dict[str, str] | None:
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def _load_state(model: MAR, state: dict[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or bad:
        parts = []
        if bad:
            k = bad[0]
            parts.append(f"{len(bad)} shape mismatches, e.g. {k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}")
        if missing:
            parts.append(f"{len(missing)} missing keys, e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]}")
        raise WeightsError(f"{path}: these weights are for another MAR config: {'; '.join(parts)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


# --------------------------------------------------------------------------------------------------
# Training task (``mgen train --config configs/<mar config>.yaml``): the shared trainer + MAR's loss
# --------------------------------------------------------------------------------------------------
_TRAIN_EXTRA = ("data", "grid")


class MARTrainTask:
    """MAR's contribution to :class:`mgen.train.Trainer`: the loss on (scaled latents, labels) and a sample grid."""

    def __init__(self, model: MAR, tokenizer: Any = None, grid: Mapping[str, Any] | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        grid = dict(grid or {})
        self.grid_per_class = int(grid.pop("per_class", 1))
        self.grid_sampler_settings = {"num_steps": 16, "cfg": 1.0, "head_steps": 50, **grid}

    def loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> torch.Tensor:
        latents, labels = batch[0], batch[1]
        return model(latents, labels, generator=generator)

    def sample_grid(self, model: nn.Module, generator: torch.Generator) -> torch.Tensor:
        from mgen.samplers.mar import MARSampler

        sampler = MARSampler(**self.grid_sampler_settings)
        n = min(model.num_classes, 10)
        labels = torch.arange(n).repeat_interleave(self.grid_per_class)
        latents = sampler.sample(model, labels, generator=generator)
        if self.tokenizer is None:
            return latents[:, :3].clamp(-1, 1)
        tok = self.tokenizer
        unscaled = tok.from_model(latents) if hasattr(tok, "from_model") else latents / tok.scaling_factor
        return tok.decode(unscaled.to(next(tok.parameters(), latents).device if list(tok.parameters()) else latents.device))


def build_mar_training(entry: Any, factory: Any) -> tuple[Any, Any, Any]:
    """(task, data, config) of a MAR config for the one trainer (:mod:`mgen.train.builder`; ``mgen train --config
    configs/mar-digits.yaml``): MAR's diffusion loss on the tokenizer's (scaled) latents."""
    train = dict(entry.train)
    data = train.pop("data", None)
    grid = train.pop("grid", None)
    tokenizer = load_tokenizer(entry.tokenizer) if entry.tokenizer else None
    if data == "digits" and tokenizer is None:
        raise UserError(f"{entry.name}: training on digits needs a tokenizer (config key 'tokenizer')")
    arch = MARConfig.from_mapping(entry.arch, where=f"{entry.name}: arch")
    if data == "digits":
        size = getattr(tokenizer, "image_size", None) or arch.img_size
        latents, labels = factory.data.digits_latents(tokenizer, size=size)
    elif isinstance(data, str) and data.endswith(".safetensors"):
        latents, labels = factory.data.cached_latents(data)
    else:
        raise UserError(f"{entry.name}: set train.data to 'digits' (offline) or a cached-latents .safetensors file "
                        f"(tensors 'latents' scaled by the tokenizer, 'labels'); got {data!r}")
    cfg = factory.config(train)
    torch.manual_seed(cfg.seed)  # initial weights are a function of the seed
    model = MAR.from_config_obj(arch)
    want = (arch.vae_embed_dim, arch.img_size // arch.vae_stride, arch.img_size // arch.vae_stride)
    if tuple(latents.shape[1:]) != want:
        raise UserError(f"{entry.name}: data latents are {tuple(latents.shape[1:])}, the model expects {want}")
    return MARTrainTask(model, tokenizer, grid), (latents, labels), cfg
