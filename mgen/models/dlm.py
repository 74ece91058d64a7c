"""A bidirectional transformer masked diffusion language model (MDLM / LLaDA objective).

Training objective (Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language Models"; Nie et al.
2025, "Large Language Diffusion Models", Eq. 3): draw t ~ U(0, 1), mask every token independently with
probability p = (1-ε)·t + ε, and minimise
    L = E_t [ 1/p · Σ_i 1[x_t^i = M] · −log p_θ(x_0^i | x_t) ] / L_seq,
an upper bound on the per-token negative log-likelihood. The network is a Llama-style encoder without a
causal mask: RoPE, RMSNorm, SwiGLU (as LLaDA's), attention through :func:`mgen.nn.attention`.

Every generator of text in mgen (this model and the adapters in :mod:`mgen.models.dlm_adapters`) returns
*position-aligned* logits from ``forward(input_ids, attention_mask)``: row i predicts token i.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from safetensors import safe_open
from torch import nn

from mgen import hub, registry
from mgen.errors import UserError, WeightsError
from mgen.nn import Attention


@dataclass(frozen=True)
class DLMConfig:
    vocab_size: int = 4096
    dim: int = 256
    depth: int = 6
    num_heads: int = 4
    mlp_hidden: int = 688
    max_len: int = 1024
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    mask_id: int = 2
    eos_id: int = 1
    pad_id: int = 0
    tie_embeddings: bool = True
    seq_len: int = 128  # training window
    eps: float = 1e-3  # minimum masking probability (LLaDA's eps)
    tokenizer_file: str = ""  # a Hugging Face tokenizers JSON, relative to mgen/weights or absolute

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> "DLMConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UserError(f"unknown dlm arch keys {sorted(unknown)}; allowed: {sorted(known)}")
        cfg = cls(**data)
        if cfg.dim % cfg.num_heads or (cfg.dim // cfg.num_heads) % 2:
            raise UserError(f"dim {cfg.dim} must split into {cfg.num_heads} heads of even size")
        for name in ("mask_id", "eos_id", "pad_id"):
            if not 0 <= getattr(cfg, name) < cfg.vocab_size:
                raise UserError(f"{name} {getattr(cfg, name)} outside the vocabulary of {cfg.vocab_size}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of the rotary embedding (Su et al. 2021, RoFormer, Eq. 34; rotate-half layout) for (B, N) positions."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    freqs = positions.to(torch.float32)[..., None] * inv  # (B, N, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # (B, 1, N, D)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class SwiGLU(nn.Module):
    """fc2(silu(gate) · up) with [gate, up] = fc1(x) (Shazeer 2020, "GLU Variants Improve Transformer", FFN_SwiGLU)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(F.silu(gate) * up)


class DLMBlock(nn.Module):
    """Pre-norm bidirectional decoder layer: x + attn(rms(x)); x + swiglu(rms(x))."""

    def __init__(self, cfg: DLMConfig) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg.dim, cfg.num_heads, qkv_bias=False, proj_bias=False)
        self.norm2 = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg.dim, cfg.mlp_hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, rope) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask=mask, rope=rope)
        return x + self.mlp(self.norm2(x))


def key_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, N) 1 = real token → (B, 1, 1, N) boolean key mask for :func:`mgen.nn.attention`."""
    if attention_mask is None:
        return None
    return attention_mask.bool()[:, None, None, :]


def positions_from_mask(attention_mask: torch.Tensor | None, b: int, n: int, device) -> torch.Tensor:
    """Position ids that start at 0 on the first real token (left padding does not shift RoPE)."""
    if attention_mask is None:
        return torch.arange(n, device=device).expand(b, n)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class MaskedDiffusionLM(ModelMixin, ConfigMixin):
    """The network: token embedding → blocks → RMSNorm → LM head (tied to the embedding by default).

    A diffusers ``ModelMixin + ConfigMixin``: ``MaskedDiffusionLM(**arch)`` builds random weights from a registry
    entry's ``arch:`` mapping (the :class:`DLMConfig` fields), ``save_pretrained(folder)`` writes ``config.json`` +
    ``diffusion_pytorch_model.safetensors`` and :meth:`from_pretrained` reads those folders, our own safetensors
    files (arch in the metadata) and registry names (docs/ARCHITECTURE.md, "The three protocols").
    ``self.cfg`` is the validated :class:`DLMConfig`; ``self.config`` diffusers' frozen dict of the same fields.
    """

    config_name = "config.json"
    shift_logits = False  # position-aligned
    _no_split_modules = ["DLMBlock"]

    @register_to_config
    def __init__(self, vocab_size: int = 4096, dim: int = 256, depth: int = 6, num_heads: int = 4,
                 mlp_hidden: int = 688, max_len: int = 1024, rope_theta: float = 10000.0, norm_eps: float = 1e-5,
                 mask_id: int = 2, eos_id: int = 1, pad_id: int = 0, tie_embeddings: bool = True, seq_len: int = 128,
                 eps: float = 1e-3, tokenizer_file: str = "") -> None:
        super().__init__()
        if isinstance(vocab_size, DLMConfig):  # MaskedDiffusionLM(DLMConfig(...)), the older spelling
            cfg = vocab_size
            self.register_to_config(**cfg.to_dict())
        else:
            cfg = DLMConfig.from_mapping({k: v for k, v in locals().items() if k in _ARCH_FIELDS})
        self.cfg = cfg
        self._fp32_fingerprint: str | None = None
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList([DLMBlock(cfg) for _ in range(cfg.depth)])
        self.norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        # a tied head reuses tok_emb.weight (no separate parameter, so checkpoints hold no shared tensors)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.apply(self._init)

    @classmethod
    def from_arch(cls, arch: Mapping[str, Any] | DLMConfig) -> "MaskedDiffusionLM":
        """Random weights for a registry entry's ``arch:`` mapping (unknown keys, bad sizes → UserError)."""
        if isinstance(arch, DLMConfig):
            return cls(**arch.to_dict())
        if "base" in arch:
            raise UserError("this arch describes a joint sampler layer (it names a 'base' model); build it with "
                            "mgen.models.joint_sampler.JointSamplerLayer.from_arch")
        return cls(**DLMConfig.from_mapping(dict(arch)).to_dict())

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, config: Any = None,
                        **kwargs: Any) -> "MaskedDiffusionLM":
        """A saved diffusers folder (``save_pretrained``), our safetensors file, or a registry name (``dlm-text``).

        ``config`` (a registry name, a YAML path or an ``arch`` mapping) gives the architecture of a bare file.
        ``torch_dtype`` is honoured on every path; the diffusers loader's other keyword arguments are accepted
        (forwarded for a diffusers folder, ignored otherwise). The model is returned in ``eval()`` mode.
        """
        torch_dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)  # diffusers 0.42 name: dtype
        kwargs.pop("torch_dtype", None)
        device = kwargs.get("device_map")
        path = Path(os.fspath(pretrained_model_name_or_path)).expanduser()
        sub = kwargs.get("subfolder")
        folder = path / sub if sub else path
        if folder.is_dir() and _is_diffusers_folder(folder):
            model = super().from_pretrained(os.fspath(path), **kwargs)
        else:
            arch = arch_of(config) if config is not None else None
            res = hub.resolve(pretrained_model_name_or_path)
            if res.entry is not None:
                if "base" in res.entry.arch:
                    raise UserError(f"{res.entry.name} is a joint sampler layer, not a language model; load it with "
                                    f"JointSamplerLayer.from_pretrained({res.entry.name!r}) (its base is "
                                    f"{res.entry.arch['base']!r})")
                arch = res.entry.arch if arch is None else arch
            if res.path.is_dir():
                raise WeightsError(f"{res.path}: not a saved MaskedDiffusionLM folder (no config.json naming the "
                                   "class); transformers folders load through mgen.pipelines.dlm.DLMPipeline")
            model = load_dlm_file(str(res.path), arch)
            if _as_device(device) is not None:
                model = model.to(_as_device(device))
        model._fp32_fingerprint = weights_fingerprint(model.state_dict()) if model.dtype == torch.float32 else None
        if torch_dtype is not None:
            model = model.to(torch_dtype)
        return model.eval()

    def to(self, *args: Any, **kwargs: Any) -> "MaskedDiffusionLM":
        """``nn.Module.to``; remembers the float32 weights' fingerprint before a cast to reduced precision, so a
        joint sampler layer trained on the float32 model still recognises its base (:meth:`fingerprint`)."""
        dtype = kwargs.get("dtype") or next((a for a in args if isinstance(a, torch.dtype)), None)
        if dtype is not None and dtype != torch.float32 and self.dtype == torch.float32:
            self._fp32_fingerprint = weights_fingerprint(self.state_dict())
        return _module_to(self, *args, **kwargs)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    # -- the interface samplers and the joint sampler layer use -------------------------------
    @property
    def mask_id(self) -> int:
        return self.cfg.mask_id

    @property
    def eos_id(self) -> int:
        return self.cfg.eos_id

    @property
    def pad_id(self) -> int:
        return self.cfg.pad_id

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.tok_emb(input_ids)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head: hidden states (after the final norm) → logits, the mask token's logit forced to the
        dtype's minimum.

        MDLM's SUBS parameterisation, "zero masking probabilities" (Sahoo et al. 2024, §3.2.3): the clean data
        never holds the mask token, so the model never predicts it. Doing it in the model (not the sampler)
        keeps every sampler — ours and LLaDA's / Dream's own code driving this model — on the same logits, and
        no decoded position can stay masked. The training loss is unchanged in effect (targets are never the
        mask token; its probability is simply taken out of the normaliser).
        """
        logits = F.linear(hidden, self.tok_emb.weight) if self.lm_head is None else self.lm_head(hidden)
        idx = torch.tensor([self.cfg.mask_id], device=logits.device)
        return logits.index_fill(-1, idx, torch.finfo(logits.dtype).min)

    def rope_for(self, attention_mask: torch.Tensor | None, b: int, n: int, device, dtype):
        pos = positions_from_mask(attention_mask, b, n, device)
        cos, sin = rope_tables(pos, self.cfg.dim // self.cfg.num_heads, self.cfg.rope_theta, dtype)
        return lambda t: apply_rope(t, cos, sin)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states after the last RMSNorm, (B, N, dim)."""
        b, n = input_ids.shape
        x = self.tok_emb(input_ids)
        rope = self.rope_for(attention_mask, b, n, x.device, x.dtype)
        mask = key_mask(attention_mask)
        for blk in self.blocks:
            x = blk(x, mask, rope)
        return self.norm(x)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Position-aligned logits (B, N, vocab)."""
        return self.head(self.hidden_states(input_ids, attention_mask))

    def forward_with_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden_states(input_ids, attention_mask)
        return self.head(h), h

    def fingerprint(self) -> str:
        """A short hash of the weights, stored by joint sampler layers to check their base model.

        In reduced precision the hash of the float32 weights the model was loaded from / cast from is returned
        (rounding would change the hash although the model is the same)."""
        if self.dtype != torch.float32 and self._fp32_fingerprint is not None:
            return self._fp32_fingerprint
        return weights_fingerprint(self.state_dict())


_ARCH_FIELDS = {f.name for f in dataclasses.fields(DLMConfig)}


def _module_to(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """``nn.Module.to`` without ``ModelMixin.to``'s warning: diffusers 0.42 warns about "modules that should be
    kept in float32: []" on every dtype cast, also when (as here) there are none. These models hold no quantized
    weights and no offload hooks, the cases ``ModelMixin.to`` exists for."""
    return nn.Module.to(module, *args, **kwargs)


def _is_diffusers_folder(folder: Path) -> bool:
    """A folder written by ``save_pretrained``: config.json whose ``_class_name`` is a diffusers class name."""
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "_class_name" in cfg


def _as_device(device_map: Any) -> torch.device | None:
    """A ``device_map`` that names one device (``"cpu"``, ``"cuda:0"``, a torch.device) as that device."""
    if isinstance(device_map, torch.device):
        return device_map
    if isinstance(device_map, str):
        try:
            return torch.device(device_map)
        except RuntimeError:
            return None  # "auto", "balanced", …: placement strategies of the diffusers loader
    return None


def arch_of(config: Any) -> dict[str, Any]:
    """An ``arch`` mapping from a registry name, a YAML config path, a mapping or a :class:`DLMConfig`."""
    if isinstance(config, DLMConfig):
        return config.to_dict()
    if isinstance(config, Mapping):
        return dict(config)
    p = Path(os.fspath(config)).expanduser()
    entry = registry.load_config_file(p) if p.suffix in (".yaml", ".yml") and p.exists() else registry.get(str(config))
    return dict(entry.arch)


def weights_fingerprint(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().to("cpu", torch.float32).contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        # a strided subsample keeps this fast for big models and still tells different weights apart
        flat = t.flatten()
        step = max(1, flat.numel() // 4096)
        h.update(flat[::step].numpy().tobytes())
    return h.hexdigest()[:16]


def masked_diffusion_loss(model: nn.Module, ids: torch.Tensor, mask_id: int, generator: torch.Generator,
                          eps: float = 1e-3, t: torch.Tensor | None = None) -> torch.Tensor:
    """LLaDA Eq. 3 / MDLM ELBO: Σ masked CE / p_mask, divided by B·N (a per-token NLL upper bound)."""
    b, n = ids.shape
    if t is None:
        t = torch.rand(b, generator=generator, device=generator.device).to(ids.device)
    p = ((1 - eps) * t + eps)[:, None].expand(b, n)
    u = torch.rand(b, n, generator=generator, device=generator.device).to(ids.device)
    masked = u < p
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
    logits = model(noisy)
    ce = F.cross_entropy(logits[masked].float(), ids[masked], reduction="none")
    return (ce / p[masked]).sum() / (b * n)


@torch.no_grad()
def nll_bound(model: nn.Module, data: torch.Tensor, mask_id: int, generator: torch.Generator,
              samples_per_window: int = 8, batch_size: int = 32, eps: float = 1e-3) -> float:
    """Monte-Carlo ELBO per token (nats) on held-out windows: t on a stratified grid per window.

    exp(result) is an upper bound (in expectation) on the model's perplexity (LLaDA §2.1, Eq. 3).
    """
    model.eval()
    total, count = 0.0, 0
    for k in range(samples_per_window):
        for s in range(0, data.shape[0], batch_size):
            ids = data[s:s + batch_size]
            u = torch.rand(ids.shape[0], generator=generator)
            t = ((k + u) / samples_per_window).clamp(max=1.0)
            total += float(masked_diffusion_loss(model, ids, mask_id, generator, eps=eps, t=t)) * ids.shape[0]
            count += ids.shape[0]
    return total / count


# -- weights ----------------------------------------------------------------------------------------------
def save_dlm(model: MaskedDiffusionLM, path: str, dtype: torch.dtype = torch.float16, extra: dict | None = None) -> None:
    """One safetensors file with the arch in its metadata (so a bare file is self-describing; the shipped format).
    ``model.save_pretrained(folder)`` writes the diffusers folder instead."""
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    meta = {"mgen_family": "dlm", "mgen_arch": json.dumps(model.cfg.to_dict())}
    meta.update(extra or {})
    hub.save_safetensors(state, path, metadata=meta)


def read_metadata(path: str) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise WeightsError(f"cannot read {path} as safetensors: {str(e).splitlines()[0]}") from None


def load_dlm_state(model: MaskedDiffusionLM, state: dict[str, torch.Tensor], path: str = "") -> MaskedDiffusionLM:
    state = {k: v.float() for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(f"{path}: weights do not match the dlm architecture "
                           f"(missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]})")
    return model


def load_dlm_file(path: str, arch: dict[str, Any] | None = None) -> MaskedDiffusionLM:
    """Our own safetensors file (float32); the arch comes from the file's metadata unless given."""
    if arch is None:
        meta = read_metadata(path)
        if "mgen_arch" not in meta:
            raise WeightsError(f"{path} has no mgen dlm metadata; pass a config with its arch")
        arch = json.loads(meta["mgen_arch"])
    model = MaskedDiffusionLM.from_arch(arch)
    return load_dlm_state(model, hub.load_checkpoint(path), path).eval()


# -- training task ------------------------------------------------------------------------------------------
class DLMTask:
    """Trainer task for the masked diffusion objective (``mgen.train``)."""

    def __init__(self, model: MaskedDiffusionLM) -> None:
        self.model = model

    def loss(self, model: nn.Module, batch: Sequence[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        cfg = self.model.cfg
        return masked_diffusion_loss(model, batch[0], cfg.mask_id, generator, eps=cfg.eps)


def tokenizer_path(tokenizer_file: str, name: str = "dlm"):
    """``arch.tokenizer_file`` as a path: absolute / existing as given, else inside ``mgen/weights``."""
    if not tokenizer_file:
        raise UserError(f"{name}: a dlm config needs arch.tokenizer_file (a Hugging Face tokenizers JSON file)")
    p = Path(tokenizer_file)
    if not p.is_absolute() and not p.exists():
        p = hub.package_weights_dir() / tokenizer_file
    return p


#: the trainer builder of a joint sampler layer entry, while its config still says ``family: dlm``


def build_dlm_training(entry: Any, factory: Any) -> tuple[Any, Any, Any]:
    """(task, data, config) of a masked diffusion LM config for the one trainer (:mod:`mgen.train.builder`):
    the masked diffusion objective on the config's text windows."""
    cfg = DLMConfig.from_mapping(entry.arch)
    train, _, tok = factory.data.text_windows(entry, cfg.seq_len)
    if tok.vocab_size != cfg.vocab_size or tok.mask_id != cfg.mask_id:
        raise UserError(f"{entry.name}: tokenizer has {tok.vocab_size} entries / mask id {tok.mask_id}, "
                        f"arch says {cfg.vocab_size} / {cfg.mask_id}")
    tc = factory.config(entry.train)
    torch.manual_seed(tc.seed)
    model = MaskedDiffusionLM.from_arch(cfg)
    return DLMTask(model), [train], tc
