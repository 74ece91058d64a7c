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
import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from mgen import hub, registry
from mgen.errors import UserError, WeightsError
from mgen.fileio import atomic_dir
from mgen.nn import KVCache, ViTBlock
from mgen.tokenizers import load_tokenizer


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


def accepts_arch_object(arch_cls: type) -> Any:
    """Decorator for a ``@register_to_config`` ``__init__``: a first positional argument that is an ``arch``
    mapping or an ``arch_cls`` dataclass is spread into keyword arguments (after ``arch_cls.from_mapping``'s
    validation), so the older ``X(arch_mapping)`` / ``X(config_object)`` calls keep building the same model."""

    def wrap(init: Any) -> Any:
        @functools.wraps(init)
        def inner(self: Any, *args: Any, **kwargs: Any) -> None:
            if args and (isinstance(args[0], Mapping) or isinstance(args[0], arch_cls)):
                first, args = args[0], args[1:]
                data = dataclasses.asdict(first) if isinstance(first, arch_cls) else dict(first)
                cfg = arch_cls.from_mapping({**data, **kwargs})
                kwargs = _jsonable(dataclasses.asdict(cfg))
            init(self, *args, **kwargs)

        return inner

    return wrap


def _jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    """Config values as ``register_to_config`` stores them (tuples as lists, so a saved config compares equal)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


class MaskGITTransformer(ModelMixin, ConfigMixin):
    """The MaskGIT generator (see the module docstring); parameter names follow valeoai's v1 model except
    that the blocks are :class:`mgen.nn.ViTBlock` (``blocks.i.norm1 / attn.qkv / attn.proj / norm2 /
    mlp.fc1 / mlp.fc2``); :func:`convert_valeoai_state_dict` maps the official names.

    A diffusers ``ModelMixin + ConfigMixin``: the keyword arguments are the ``arch:`` fields of a
    ``configs/maskgit*.yaml`` entry (``MaskGITTransformer(**arch)``; :meth:`from_arch` validates a mapping
    first), ``save_pretrained`` writes ``config.json`` + ``diffusion_pytorch_model.safetensors`` and
    :meth:`from_pretrained` reads those folders as well as the official and older mgen formats.

    Reduced precision: ``.to(torch.bfloat16)`` / ``from_pretrained(..., torch_dtype=torch.bfloat16)`` runs
    the transformer in that dtype; the tied output head is evaluated in float32, so the logits a sampler
    gets are float32 whatever the weights' dtype (docs/ARCHITECTURE.md, "Reduced precision").
    """

    #: config keys that are not architecture fields (diffusers bookkeeping)
    ignore_for_config: list[str] = []

    @accepts_arch_object(MaskGITConfig)
    @register_to_config
    def __init__(self, grid_size: int = 16, hidden_dim: int = 768, depth: int = 24, heads: int = 16,
                 mlp_dim: int = 3072, dropout: float = 0.1, codebook_size: int = 1024, mask_token_id: int = 1024,
                 num_classes: int = 1000, img_size: int | None = None, label_drop: float = 0.1,
                 train_schedule: str = "cosine", label_smoothing: float = 0.1) -> None:
        super().__init__()
        c = MaskGITConfig(grid_size=grid_size, hidden_dim=hidden_dim, depth=depth, heads=heads, mlp_dim=mlp_dim,
                          dropout=dropout, codebook_size=codebook_size, mask_token_id=mask_token_id,
                          num_classes=num_classes, img_size=img_size, label_drop=label_drop,
                          train_schedule=train_schedule, label_smoothing=label_smoothing)
        c.validate()
        self.arch = c
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

    @classmethod
    def from_arch(cls, arch: Mapping[str, Any] | MaskGITConfig, where: str = "arch") -> "MaskGITTransformer":
        """A random-weight model from a registry entry's ``arch:`` mapping (validated: unknown keys, bad
        values → :class:`UserError`; valeoai's ``patch_size`` is accepted for ``grid_size``)."""
        cfg = arch if isinstance(arch, MaskGITConfig) else MaskGITConfig.from_mapping(arch, where=where)
        cfg.validate(where)
        return cls(**_jsonable(dataclasses.asdict(cfg)))

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
        return self.arch.num_tokens

    #: forward accepts ``mask_logit=True`` (used by the valeoai-faithful sampler)
    has_mask_logit = True

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None,
                drop_label: torch.Tensor | None = None, cache: KVCache | None = None,
                mask_logit: bool = False) -> torch.Tensor:
        """codes (B, h, w) or (B, h·w) with ``mask_token_id`` at masked positions; labels (B,) in
        [0, num_classes) (None = unconditional); drop_label (B,) bool (True = use the null class).
        ``cache``: an optional :class:`mgen.nn.KVCache` handed to every block (context-feature reuse,
        e.g. ReCAP). Returns float32 logits (B, h·w, codebook_size); with ``mask_logit=True`` also the
        [MASK] column, (B, h·w, codebook_size + 1) — exactly the official v1 ``MaskTransformer`` output."""
        b = codes.shape[0]
        codes = codes.reshape(b, -1)
        n = self.arch.num_tokens
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
        # head tied to the embedding (valeoai v1), in float32: the sampler's softmax / Gumbel / confidence
        # ranking read these logits (a no-op cast in float32 mode, so the exact path is unchanged)
        logits = x.float() @ self.tok_emb.weight.float().t() + bias.float()
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
        n = self.arch.num_tokens
        rows = torch.cat([g, torch.full_like(g[:, :1], n)], dim=1)
        cache.positions = rows
        return rows

    # -- weights ------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike,
                        config: str | MaskGITConfig | Mapping[str, Any] | None = None,
                        weights: str | os.PathLike | None = None, map_location: str | torch.device | None = None,
                        **kwargs: Any) -> "MaskGITTransformer":
        """Load a MaskGIT generator from any of:

        * a folder written by :meth:`save_pretrained` (``config.json`` + ``diffusion_pytorch_model.safetensors``;
          delegated to diffusers' ``ModelMixin.from_pretrained``, which receives ``**kwargs``);
        * the official valeoai checkpoint (``.pth`` with ``model_state_dict``), a safetensors file (mgen or
          official key names), an older mgen folder (``config.json`` + ``model.safetensors``);
        * a registry name (``maskgit``, ``maskgit-digits``: the shipped weights or the official file).

        ``config``: registry name, YAML file, :class:`MaskGITConfig` or ``arch`` mapping; when omitted it comes
        from the folder's ``config.json``, the registry entry, or the checkpoint's shapes. ``torch_dtype`` (or
        ``dtype``) is honoured on every path; diffusers' other loading options (``low_cpu_mem_usage``,
        ``device_map``, ``variant``, ``use_safetensors``, …) are accepted. The model is returned in eval mode.
        """
        return _load_pretrained(cls, MaskGITConfig, pretrained_model_name_or_path, config, weights, map_location,
                                kwargs, extract_state_dict, infer_config)


def _load_pretrained(cls: Any, arch_cls: Any, path: str | os.PathLike, config: Any, weights: Any, map_location: Any,
                     kwargs: dict[str, Any], extract: Any, infer: Any) -> Any:
    """The shared body of MaskGIT's and ENAT's ``from_pretrained`` (see :meth:`MaskGITTransformer.from_pretrained`):
    ``extract(ckpt, file) -> state dict`` in mgen key names, ``infer(state) -> arch_cls``."""
    kwargs = dict(kwargs)
    torch_dtype = kwargs.pop("dtype", None) or kwargs.get("torch_dtype")
    if torch_dtype is not None and not isinstance(torch_dtype, torch.dtype):
        raise UserError(f"torch_dtype must be a torch.dtype, got {torch_dtype!r}")
    subfolder = kwargs.get("subfolder")
    device = map_location if map_location is not None else kwargs.get("device_map")
    if isinstance(device, Mapping):  # an accelerate device map: not meaningful for these small models
        device = None
    p = Path(os.fspath(path)).expanduser()
    if subfolder:
        p = p / subfolder
    cfg = _config_from(arch_cls, config)
    if weights is None and config is None and is_diffusers_folder(p):
        kwargs.pop("subfolder", None)
        if torch_dtype is not None:
            kwargs["torch_dtype"] = torch_dtype
        model = ModelMixin.from_pretrained.__func__(cls, str(p), **kwargs)  # diffusers' own loader
        return (model.to(device) if device is not None else model).eval()
    if weights is not None or not p.exists():
        resolved = hub.resolve(str(path), weights)
        if cfg is None and resolved.entry is not None:
            cfg = arch_cls.from_mapping(resolved.entry.arch, where=resolved.entry.path)
        p = Path(resolved.path)
    if p.is_dir():
        cfg_json = p / "config.json"
        if cfg is None and cfg_json.exists():
            data = {k: v for k, v in json.loads(cfg_json.read_text()).items() if not k.startswith("_")}
            cfg = arch_cls.from_mapping(data, where=str(cfg_json))
        for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
            if (p / name).exists():
                p = p / name
                break
        else:
            raise WeightsError(f"{p}: no diffusion_pytorch_model.safetensors or model.safetensors")
    state = extract(hub.load_checkpoint(p), p)
    if cfg is None:
        cfg = infer(state)
    model = cls.from_arch(cfg)
    load_state(model, state, p)
    model = model.to(device=device if device is not None else "cpu", dtype=torch_dtype)
    return model.eval()


def is_diffusers_folder(p: Path) -> bool:
    """A folder written by ``ModelMixin.save_pretrained``: its ``config.json`` names the class (``_class_name``)
    and its weights are ``diffusion_pytorch_model*.safetensors`` / ``.bin``."""
    if not p.is_dir() or not (p / "config.json").exists():
        return False
    if not any(p.glob("diffusion_pytorch_model*")):
        return False
    try:
        return "_class_name" in json.loads((p / "config.json").read_text())
    except (OSError, ValueError):
        return False


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
    if all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state = dict(ckpt)
    else:
        state = hub.iter_state_dicts(ckpt, ("model_state_dict", "ema", "model", "state_dict"))
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


def _config_from(arch_cls: Any, config: Any) -> Any:
    """``config`` (None, an ``arch_cls`` object, an ``arch`` mapping, a registry name or a YAML file) → ``arch_cls``."""
    if config is None or isinstance(config, arch_cls):
        return config
    if isinstance(config, (str, os.PathLike)):
        s = os.fspath(config)
        e = registry.load_config_file(s) if s.endswith((".yaml", ".yml")) else registry.get(s)
        return arch_cls.from_mapping(e.arch, where=e.path)
    if isinstance(config, Mapping):
        return arch_cls.from_mapping(config)
    raise UserError(f"config must be a registry name, a YAML file or an arch mapping, got {type(config).__name__}")


def convert_checkpoint(src: str | os.PathLike, out: str | os.PathLike, config: str | None = "maskgit", **arch: Any) -> None:
    """``mgen convert maskgit SRC OUT``: valeoai ``MaskGIT_ImageNet_256.pth`` → a ``save_pretrained`` folder
    (``config.json`` + ``diffusion_pytorch_model.safetensors``), written atomically.

    ``config`` names the registry entry whose ``arch`` describes the checkpoint (default ``maskgit``);
    extra ``--opt key=value`` pairs override single arch numbers (e.g. ``heads=8``). ``mgen convert`` checks
    that ``OUT`` is free (or ``--force``) before calling this.
    """
    cfg = _config_from(MaskGITConfig, config) if config else None
    if arch:
        cfg = MaskGITConfig.from_mapping({**(dataclasses.asdict(cfg) if cfg else {}), **arch}, where="--opt")
    model = MaskGITTransformer.from_pretrained(src, config=cfg)
    with atomic_dir(out, force=True) as tmp:
        model.save_pretrained(tmp)


def looks_like(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for MaskGIT generator weights (valeoai v1 or mgen key names): the shared token table, the
    position table and the head bias, plus the blocks. Pure key inspection."""
    keys = {k[len("module."):] if k.startswith("module.") else k for k in state_dict}
    if not {"tok_emb.weight", "pos_emb", "bias", "first_layer.2.weight"} <= keys:
        return False
    return any(k.startswith(("transformer.layers.", "blocks.")) for k in keys)


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

        cfg = self.model.arch
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


def build_maskgit_training(entry: Any, factory: Any) -> tuple[Any, Any, Any]:
    """(task, data, config) of a ``maskgit`` config for the one trainer (:mod:`mgen.train.builder`): the digits
    configs train on the codes of their VQ tokenizer (``vq-digits``)."""
    from mgen.samplers.maskgit import MaskGITSampler

    if not entry.tokenizer:
        raise UserError(f"{entry.name}: the config names no tokenizer to encode training images with")
    cfg = MaskGITConfig.from_mapping(entry.arch, where=entry.path)
    tok = load_tokenizer(entry.tokenizer)
    codes, labels = factory.data.digits_codes(tok, size=cfg.img_size)
    if tuple(codes.shape[1:]) != (cfg.grid_size, cfg.grid_size):
        raise UserError(f"{entry.name}: tokenizer {entry.tokenizer} gives {tuple(codes.shape[1:])} codes, arch says grid_size {cfg.grid_size}")
    tc = factory.config(entry.train)
    torch.manual_seed(tc.seed)
    model = MaskGITTransformer.from_arch(cfg)
    task = MaskGITTask(model, tok, MaskGITSampler.from_mapping(entry.sampler))
    return task, (codes, labels), tc
