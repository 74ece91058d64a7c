"""MaskGIT: the bidirectional masked token transformer (Chang et al., "MaskGIT: Masked Generative Image
Transformer", CVPR 2022; PyTorch weights and layout from github.com/valeoai/Maskgit-pytorch, v1
``Network/transformer.py`` — the ``MaskGIT_ImageNet_256.pth`` checkpoint).

Input: a grid of VQ code indices where masked positions hold ``mask_token_id`` (= ``codebook_size``,
1024 for the ImageNet model) and one class token. As in the official model the class token shares the
token embedding table: label ``y`` is embedded as row ``codebook_size + 1 + y`` and the dropped label
(classifier-free guidance) as row ``codebook_size + 1 + num_classes``. Learned position embeddings cover
the ``h·w`` image tokens plus the class token (appended last). A small pre-MLP (``first_layer``),
``depth`` pre-norm transformer blocks (:class:`mgen.nn.ViTBlock`), a post-MLP (``last_layer``) and an
output head tied to the token embedding (logits = features · tok_embᵀ + bias) complete the network.

``model(codes, labels, drop_label)`` → logits over the ``codebook_size`` codes for every image token
(B, h·w, codebook_size). The official head also scores the mask/class rows; those columns are never a
valid prediction and are dropped here.

Training (:func:`build_training`, registered as the ``maskgit`` family of the shared trainer): for each
image draw r ~ U(0, 1), mask ⌈γ(r)·N⌉ tokens (γ the mask schedule, cosine by default — paper §3.2,
Eq. 1), and minimise the cross-entropy on the masked positions; labels are dropped with probability
``label_drop`` for classifier-free guidance.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mgen.errors import UserError, WeightsError
from mgen.nn import KVCache, ViTBlock


@dataclass
class MaskGITConfig:
    """Architecture numbers (``arch:`` of ``configs/maskgit*.yaml``).

    ImageNet 256 (valeoai ``vit_size="base"``): grid 16, width 768, depth 24, 16 heads, MLP 3072,
    dropout 0.1, 1024 codes, mask id 1024, 1000 classes.
    """

    grid_size: int = 16
    hidden_dim: int = 768
    depth: int = 24
    heads: int = 16
    mlp_dim: int = 3072
    dropout: float = 0.1
    codebook_size: int = 1024
    mask_token_id: int = 1024
    num_classes: int = 1000
    img_size: int | None = None  # informative: image side the tokenizer maps to this grid
    label_drop: float = 0.1  # training: probability of dropping the class (CFG), valeoai --drop-label
    train_schedule: str = "cosine"  # training: mask ratio γ(r), r ~ U(0, 1) (paper §3.2)
    label_smoothing: float = 0.1  # training: valeoai's cross-entropy label smoothing

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "arch") -> "MaskGITConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        data = dict(data)
        if "patch_size" in data and "grid_size" not in data:  # valeoai's name for the token grid side
            data["grid_size"] = data.pop("patch_size")
        unknown = set(data) - known
        if unknown:
            raise UserError(f"{where}: unknown MaskGIT arch keys {sorted(unknown)}; allowed: {sorted(known)}")
        cfg = cls(**data)
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "arch") -> None:
        for name in ("grid_size", "hidden_dim", "depth", "heads", "mlp_dim", "codebook_size", "num_classes"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise UserError(f"{where}: {name} must be a positive integer, got {v!r}")
        if self.hidden_dim % self.heads:
            raise UserError(f"{where}: hidden_dim {self.hidden_dim} is not divisible by heads {self.heads}")
        if self.mask_token_id != self.codebook_size:
            raise UserError(f"{where}: mask_token_id must equal codebook_size ({self.codebook_size}) in the MaskGIT layout")

    @property
    def num_tokens(self) -> int:
        return self.grid_size * self.grid_size

    @property
    def vocab_size(self) -> int:
        """Rows of the shared embedding: codes, the mask token, the classes and the null class."""
        return self.codebook_size + 1 + self.num_classes + 1


class MaskGITTransformer(nn.Module):
    """The MaskGIT generator (see the module docstring); parameter names follow valeoai's v1 model except
    that the blocks are :class:`mgen.nn.ViTBlock` (``blocks.i.norm1 / attn.qkv / attn.proj / norm2 /
    mlp.fc1 / mlp.fc2``); :func:`convert_valeoai_state_dict` maps the official names."""

    def __init__(self, config: MaskGITConfig | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None or isinstance(config, Mapping):
            config = MaskGITConfig.from_mapping({**(config or {}), **kwargs})
        elif kwargs:
            config = dataclasses.replace(config, **kwargs)
        config.validate()
        self.config = c = config
        d, p = c.hidden_dim, c.dropout
        self.codebook_size, self.mask_token_id, self.num_classes = c.codebook_size, c.mask_token_id, c.num_classes
        self.grid_size = (c.grid_size, c.grid_size)
        self.tok_emb = nn.Embedding(c.vocab_size, d)
        self.pos_emb = nn.Parameter(torch.zeros(1, c.num_tokens + 1, d))
        self.first_layer = nn.Sequential(
            nn.LayerNorm(d, eps=1e-12), nn.Dropout(p), nn.Linear(d, d), nn.GELU(),
            nn.LayerNorm(d, eps=1e-12), nn.Dropout(p), nn.Linear(d, d),
        )
        mlp_ratio = c.mlp_dim / d
        self.blocks = nn.ModuleList([
            ViTBlock(d, c.heads, mlp_ratio=mlp_ratio, qkv_bias=True, proj_drop=p, attn_drop=p) for _ in range(c.depth)
        ])
        for b in self.blocks:
            assert b.mlp.fc1.out_features == c.mlp_dim
        self.last_layer = nn.Sequential(
            nn.LayerNorm(d, eps=1e-12), nn.Dropout(p), nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d, eps=1e-12),
        )
        self.bias = nn.Parameter(torch.zeros(c.num_tokens + 1, c.vocab_size))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_emb, 0.0, 0.02)  # valeoai: trunc_normal_(std=0.02)
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        return {"pos_emb", "bias", "tok_emb.weight"}

    @property
    def num_tokens(self) -> int:
        return self.config.num_tokens

    #: forward accepts ``mask_logit=True`` (used by the valeoai-faithful sampler)
    has_mask_logit = True

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None,
                drop_label: torch.Tensor | None = None, cache: KVCache | None = None,
                mask_logit: bool = False) -> torch.Tensor:
        """codes (B, h, w) or (B, h·w) with ``mask_token_id`` at masked positions; labels (B,) in
        [0, num_classes) (None = unconditional); drop_label (B,) bool (True = use the null class).
        ``cache``: an optional :class:`mgen.nn.KVCache` handed to every block (context-feature reuse,
        e.g. ReCAP). Returns logits (B, h·w, codebook_size); with ``mask_logit=True`` also the [MASK]
        column, (B, h·w, codebook_size + 1) — exactly the official v1 ``MaskTransformer`` output."""
        b = codes.shape[0]
        codes = codes.reshape(b, -1)
        n = self.config.num_tokens
        if codes.shape[1] != n:
            raise UserError(f"MaskGIT expects {n} tokens per image ({self.grid_size[0]}x{self.grid_size[1]}), got {codes.shape[1]}")
        if labels is None:
            labels = torch.zeros(b, dtype=torch.long, device=codes.device)
            drop_label = torch.ones(b, dtype=torch.bool, device=codes.device)
        if drop_label is None:
            drop_label = torch.zeros(b, dtype=torch.bool, device=codes.device)
        cls = labels.reshape(b).long() + self.codebook_size + 1
        cls = torch.where(drop_label.reshape(b).bool(), torch.full_like(cls, self.codebook_size + 1 + self.num_classes), cls)
        tokens = torch.cat([codes.long(), cls[:, None]], dim=1)
        x = self.tok_emb(tokens) + self.pos_emb
        bias = self.bias
        rows = self.cache_rows(cache)
        if rows is not None:  # cheap ReCAP step: only the group's rows + the class row are computed
            x = torch.gather(x, 1, rows[..., None].expand(-1, -1, x.shape[-1]))
            bias = self.bias[rows]
        x = self.first_layer(x)
        for blk in self.blocks:
            x = blk(x, cache=cache)
        x = self.last_layer(x)
        logits = x @ self.tok_emb.weight.t() + bias  # head tied to the embedding (valeoai v1)
        v = self.codebook_size + (1 if mask_logit else 0)
        if rows is not None:
            return logits[:, :-1, :v]  # the group's rows, in the order of cache.group
        return logits[:, :n, :v]

    def cache_rows(self, cache: KVCache | None) -> torch.Tensor | None:
        """ReCAP hook: for a cache in ``reuse`` mode with a ``group`` (B, n) of token indices, the rows to
        recompute — the group plus the class token (row h·w, recomputed as in the official ReCAP code,
        where the class is part of the input) — set as ``cache.positions`` and returned; else None."""
        if cache is None or cache.mode != "reuse":
            return None
        if cache.group is None:
            raise RuntimeError("MaskGIT: a reuse-mode KVCache needs a group of token indices")
        g = cache.group.long()
        n = self.config.num_tokens
        rows = torch.cat([g, torch.full_like(g[:, :1], n)], dim=1)
        cache.positions = rows
        return rows

    # -- weights ------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, config: str | MaskGITConfig | Mapping[str, Any] | None = None,
                        weights: str | os.PathLike | None = None, map_location: str | torch.device = "cpu") -> "MaskGITTransformer":
        """Load from the official valeoai checkpoint (``.pth`` with ``model_state_dict``), a safetensors file
        (mgen or official key names), a folder written by :meth:`save_pretrained`, or a registry name
        (``maskgit``, ``maskgit-digits``). ``config``: registry name, :class:`MaskGITConfig` or ``arch``
        mapping; when omitted it comes from the folder's ``config.json``, the registry entry, or the
        checkpoint's shapes."""
        from mgen import hub

        cfg = _config_from(config)
        p = Path(path).expanduser()
        if weights is not None or not p.exists():
            resolved = hub.resolve(str(path), weights)
            if cfg is None and resolved.entry is not None:
                cfg = MaskGITConfig.from_mapping(resolved.entry.arch, where=resolved.entry.path)
            p = Path(resolved.path)
        if p.is_dir():
            cfg_json = p / "config.json"
            if cfg is None and cfg_json.exists():
                cfg = MaskGITConfig.from_mapping(json.loads(cfg_json.read_text()), where=str(cfg_json))
            p = p / "model.safetensors"
            if not p.exists():
                raise WeightsError(f"{p.parent}: no model.safetensors")
        state = extract_state_dict(hub.load_checkpoint(p), p)
        if cfg is None:
            cfg = infer_config(state)
        model = cls(cfg)
        load_state(model, state, p)
        return model.to(map_location).eval()

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (mgen key names)."""
        from mgen.hub import save_safetensors

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_safetensors(self.state_dict(), d / "model.safetensors", metadata={"format": "pt", "family": "maskgit"})
        (d / "config.json").write_text(json.dumps(dataclasses.asdict(self.config), indent=2))
        return d


# -- official layout ---------------------------------------------------------------------------------
_BLOCK_MAP = {
    "0.norm.weight": "norm1.weight", "0.norm.bias": "norm1.bias",
    "0.fn.mha.in_proj_weight": "attn.qkv.weight", "0.fn.mha.in_proj_bias": "attn.qkv.bias",
    "0.fn.mha.out_proj.weight": "attn.proj.weight", "0.fn.mha.out_proj.bias": "attn.proj.bias",
    "1.norm.weight": "norm2.weight", "1.norm.bias": "norm2.bias",
    "1.fn.net.0.weight": "mlp.fc1.weight", "1.fn.net.0.bias": "mlp.fc1.bias",
    "1.fn.net.3.weight": "mlp.fc2.weight", "1.fn.net.3.bias": "mlp.fc2.bias",
}


def convert_valeoai_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """valeoai v1 ``MaskTransformer`` keys → mgen keys. ``nn.MultiheadAttention``'s ``in_proj`` stacks
    [q; k; v] rows exactly like a fused ``qkv`` linear, so the tensors are copied unchanged."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        k = k[len("module."):] if k.startswith("module.") else k
        if k.startswith("transformer.layers."):
            rest = k[len("transformer.layers."):]
            i, sub = rest.split(".", 1)
            if sub not in _BLOCK_MAP:
                raise WeightsError(f"unexpected key {k!r} in a valeoai MaskGIT checkpoint")
            out[f"blocks.{i}.{_BLOCK_MAP[sub]}"] = v
        else:
            out[k] = v
    return out


def to_valeoai_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mgen keys → valeoai v1 keys (the inverse of :func:`convert_valeoai_state_dict`)."""
    inv = {v: k for k, v in _BLOCK_MAP.items()}
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k.startswith("blocks."):
            i, sub = k[len("blocks."):].split(".", 1)
            out[f"transformer.layers.{i}.{inv[sub]}"] = v
        else:
            out[k] = v
    return out


def extract_state_dict(ckpt: Mapping[str, Any], file: str | os.PathLike = "<checkpoint>") -> dict[str, torch.Tensor]:
    """The generator weights of a checkpoint dict, in mgen key names (valeoai ``model_state_dict`` /
    the shared trainer's ``ema``/``model`` / a bare state dict)."""
    from mgen.hub import iter_state_dicts

    if all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state = dict(ckpt)
    else:
        state = iter_state_dicts(ckpt, ("model_state_dict", "ema", "model", "state_dict"))
        if state is None:
            raise WeightsError(f"{file}: no MaskGIT weights found (expected 'model_state_dict' or a state dict); "
                               f"top-level keys: {sorted(ckpt)[:8]}")
    if any(k.endswith("cls_emb.weight") for k in state) and not any(k.endswith("bias") and k.split(".")[-2:] == ["bias"] for k in state if k in ("bias", "module.bias")):
        # valeoai v2.0 (2025, Network/transformer.py: adaLN + SwiGLU + Halton sampler, 16384-code
        # LlamaGen VQ) is a different network from the v1 MaskGIT this loader implements.
        raise WeightsError(f"{file}: this is a valeoai/Maskgit-pytorch v2.0 checkpoint (cls_emb, adaLN blocks); "
                           "mgen's MaskGIT loads the v1 layout (MaskGIT_ImageNet_256.pth / _512.pth)")
    if any(k.split(".", 1)[-1].startswith("transformer.layers.") or k.startswith("transformer.layers.") for k in state):
        state = convert_valeoai_state_dict(state)
    return state


def infer_config(state: Mapping[str, torch.Tensor]) -> MaskGITConfig:
    """Architecture from tensor shapes. The head count is not recorded in the weights: the valeoai
    ImageNet models use 16 heads (``Trainer/vit.py``), which is assumed."""
    try:
        vocab, d = state["tok_emb.weight"].shape
        n = state["pos_emb"].shape[1] - 1
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        mlp = state["blocks.0.mlp.fc1.weight"].shape[0]
        num_classes_plus = state["bias"].shape[1]
    except (KeyError, ValueError, IndexError) as e:
        raise WeightsError(f"not a MaskGIT checkpoint (missing {e})") from None
    g = int(round(math.sqrt(n)))
    if g * g != n:
        raise WeightsError(f"MaskGIT position embedding covers {n} tokens, not a square grid")
    # vocab = codebook + 1 + classes + 1; the ImageNet model has 1000 classes.
    codebook = vocab - 1000 - 2 if vocab > 1002 else None
    if codebook is None or codebook < 1 or num_classes_plus != vocab:
        raise WeightsError("cannot infer the codebook size / class count from this checkpoint; pass a config")
    return MaskGITConfig(grid_size=g, hidden_dim=d, depth=depth, heads=16, mlp_dim=mlp, codebook_size=codebook,
                         mask_token_id=codebook, num_classes=1000)


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], file: str | os.PathLike = "<checkpoint>") -> None:
    """Strict load with one clear error naming missing / unexpected / mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing {missing[:4]}{'…' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:4]}{'…' if len(unexpected) > 4 else ''}")
        if shape:
            k = shape[0]
            parts.append(f"shape mismatch {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        raise WeightsError(f"{file}: weights do not fit this architecture ({'; '.join(parts)})")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def _config_from(config: str | MaskGITConfig | Mapping[str, Any] | None) -> MaskGITConfig | None:
    if config is None or isinstance(config, MaskGITConfig):
        return config
    if isinstance(config, str):
        from mgen import registry

        e = registry.get(config)
        return MaskGITConfig.from_mapping(e.arch, where=e.path)
    return MaskGITConfig.from_mapping(config)


def convert_checkpoint(src: str | os.PathLike, out: str | os.PathLike, config: str | None = "maskgit", **arch: Any) -> None:
    """``mgen convert maskgit SRC OUT``: valeoai ``MaskGIT_ImageNet_256.pth`` → safetensors folder.

    ``config`` names the registry entry whose ``arch`` describes the checkpoint (default ``maskgit``);
    extra ``--opt key=value`` pairs override single arch numbers (e.g. ``heads=8``).
    """
    cfg = _config_from(config) if config else None
    if arch:
        cfg = MaskGITConfig.from_mapping({**(dataclasses.asdict(cfg) if cfg else {}), **arch}, where="--opt")
    model = MaskGITTransformer.from_pretrained(src, config=cfg)
    out = Path(out)
    tmp = out.parent / f".{out.name}.tmp"
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


# -- training ------------------------------------------------------------------------------------------
def random_masking(codes: torch.Tensor, ratio: torch.Tensor, mask_token_id: int,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask ⌈ratio_b·N⌉ (at least 1) uniformly chosen tokens of each row of ``codes`` (B, N).

    Returns (masked codes, bool mask). MaskGIT §3.2: "uniformly select ⌈γ(r)·N⌉ tokens to mask".
    """
    b, n = codes.shape
    k = torch.ceil(ratio.to(torch.float64) * n).long().clamp(1, n).to(codes.device)
    scores = torch.rand(b, n, generator=generator, device=generator.device if generator is not None else "cpu").to(codes.device)
    rank = scores.argsort(dim=1).argsort(dim=1)
    mask = rank < k[:, None]
    return torch.where(mask, torch.full_like(codes, mask_token_id), codes), mask


class MaskGITTask:
    """The MaskGIT training objective for the shared trainer (masked-token cross-entropy)."""

    def __init__(self, model: MaskGITTransformer, tokenizer: Any = None, sampler: Any = None) -> None:
        self.model, self.tokenizer, self.sampler = model, tokenizer, sampler

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...], generator: torch.Generator) -> torch.Tensor:
        from mgen.samplers.mask_schedules import mask_ratio

        cfg = self.model.config
        codes, labels = batch[0], batch[1]
        b = codes.shape[0]
        codes = codes.reshape(b, -1).long()
        gdev = generator.device
        r = torch.rand(b, generator=generator, device=gdev)
        ratio = mask_ratio(cfg.train_schedule, r.cpu())
        masked, mask = random_masking(codes, ratio, cfg.mask_token_id, generator)
        drop = (torch.rand(b, generator=generator, device=gdev) < cfg.label_drop).to(codes.device)
        logits = model(masked, labels.long(), drop)
        return F.cross_entropy(logits[mask].float(), codes[mask], label_smoothing=cfg.label_smoothing)

    def sample_grid(self, model: nn.Module, generator: torch.Generator) -> torch.Tensor:
        if self.tokenizer is None or self.sampler is None:
            raise RuntimeError("no tokenizer/sampler for sample grids")
        n = self.model.num_classes
        labels = torch.arange(n, device=next(model.parameters()).device).repeat_interleave(max(1, 40 // n))[:40]
        was = model.training
        model.eval()
        with torch.no_grad():
            codes = self.sampler.sample(model, labels, generator=generator)
            images = self.tokenizer.decode(codes)
        model.train(was)
        return images


def encode_digits(tokenizer_name: str, split: str = "train", size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """VQ codes and labels of the offline digits (``mgen.tokenizers.digits``, ``size``×``size`` RGB)
    under a VQ tokenizer (registry name or path)."""
    from mgen.tokenizers.digits import digits_images
    from mgen.tokenizers.vq import VQTokenizer

    tok = VQTokenizer.from_pretrained(tokenizer_name).eval()
    images, labels = digits_images(split, size=size or _tokenizer_image_size(tok))
    with torch.no_grad():
        codes = torch.cat([tok.encode(images[i:i + 256]) for i in range(0, len(images), 256)])
    return codes.long(), labels.long(), tok


def _tokenizer_image_size(tok: Any) -> int:
    for attr in ("image_size", "img_size", "resolution"):
        v = getattr(tok, attr, None) or getattr(getattr(tok, "config", None), attr, None)
        if isinstance(v, int):
            return v
    return 16


try:
    from mgen.train.tasks import register
except ImportError:  # pragma: no cover
    register = None  # type: ignore[assignment]


def _build(entry: Any, out_dir: str | None = None, max_steps: int | None = None, batch_size: int | None = None,
           seed: int | None = None) -> Any:
    """Trainer for a ``maskgit`` config: the digits configs train on ``vq-digits`` codes."""
    from mgen.samplers.maskgit import MaskGITSampler
    from mgen.train.trainer import TrainConfig, Trainer

    if not entry.tokenizer:
        raise UserError(f"{entry.name}: the config names no tokenizer to encode training images with")
    cfg = MaskGITConfig.from_mapping(entry.arch, where=entry.path)
    codes, labels, tok = encode_digits(entry.tokenizer, size=cfg.img_size)
    if tuple(codes.shape[1:]) != (cfg.grid_size, cfg.grid_size):
        raise UserError(f"{entry.name}: tokenizer {entry.tokenizer} gives {tuple(codes.shape[1:])} codes, arch says grid_size {cfg.grid_size}")
    torch.manual_seed(seed if seed is not None else int(entry.train.get("seed", 0)))
    model = MaskGITTransformer(cfg)
    sampler = MaskGITSampler.from_mapping(entry.sampler)
    task = MaskGITTask(model, tok, sampler)
    tc = TrainConfig.from_mapping(entry.train, out_dir=out_dir or f"runs/{entry.name}", max_steps=max_steps,
                                  batch_size=batch_size, seed=seed)
    return Trainer(task, (codes, labels), tc)


if register is not None:
    register("maskgit")(_build)
