"""DiT: diffusion model with a transformer backbone (Peebles & Xie, "Scalable Diffusion Models with
Transformers", ICCV 2023; github.com/facebookresearch/DiT).

The network follows §3.2 of the paper: a patch embedding of the latent (``x_embedder``), a fixed 2-D
sin-cos position embedding (``pos_embed``), timestep and class embedders whose sum ``c`` conditions
``depth`` adaLN-Zero blocks (Fig. 3), and a final adaLN layer that predicts, per patch, the noise ε and
(with ``learn_sigma``) the interpolation value v of the learned variance (Nichol & Dhariwal 2021, Eq. 15).
Parameter names are the official ones, so ``DiT-XL-2-256x256.pt`` loads as a plain state dict; a
diffusers ``DiTTransformer2DModel`` folder loads through :func:`convert_diffusers_state_dict`. The model
is a diffusers ``ModelMixin`` + ``ConfigMixin`` (the component contract of docs/ARCHITECTURE.md).

``model(x, t, y)``: x (B, C, H, W) latents, t (B,) diffusion timesteps (0..999, may be fractional),
y (B,) long class labels (``num_classes`` is the null class of classifier-free guidance) →
(B, 2C or C, H, W).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from mgen.errors import UserError, WeightsError
from mgen.nn import AdaLNBlock, LabelEmbedder, TimestepEmbedder, modulate, sincos_2d
from mgen.nn.precision import KeepFP32Mixin
from mgen.tokenizers.latents import decode_latents
from mgen.tokenizers import load_tokenizer


@dataclass
class DiTConfig:
    """Architecture numbers of a DiT (Table 1 of the paper; the ``arch:`` section of ``configs/dit-*.yaml``).

    ``timestep_freq_shift`` and ``mlp_norm_eps`` default to the official model; diffusers'
    ``DiTTransformer2DModel`` differs in both (frequency denominator half-1, and ``norm_eps`` in the
    pre-MLP LayerNorm), and models loaded from a diffusers folder take diffusers' values so that they
    reproduce that implementation's forward exactly. ``per_block_embedders``: diffusers gives every block
    its own timestep/class embedder (``norm1.emb``; the final layer uses block 0's); converted official
    checkpoints hold identical copies and load as one shared embedder, models trained or initialised in
    diffusers keep one per block (extra keys ``block_t_embedders.i`` / ``block_y_embedders.i`` for
    blocks 1…depth−1).
    """

    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    learn_sigma: bool = True
    timestep_freq_shift: float = 0.0
    mlp_norm_eps: float = 1e-6
    per_block_embedders: bool = False  # diffusers-native: every block owns its timestep/class embedder

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "arch") -> "DiTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UserError(f"{where}: unknown DiT settings {sorted(unknown)}; allowed: {sorted(known)}")
        cfg = cls(**dict(data))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.input_size % self.patch_size:
            raise UserError(f"DiT: input_size {self.input_size} is not divisible by patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise UserError(f"DiT: hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.hidden_size % 4:
            raise UserError("DiT: hidden_size must be a multiple of 4 (2-D sin-cos position embedding)")
        for name in ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "num_classes"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"DiT: {name} must be >= 1")

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size


class PatchEmbed(nn.Module):
    """Non-overlapping p×p patches → tokens with one strided convolution (ViT; key ``proj`` as timm's)."""

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int, bias: bool = True) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def unpatchify(x: torch.Tensor, patch_size: int, channels: int, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h·w, p·p·C) tokens → (B, C, h·p, w·p); token channels are ordered (p_row, p_col, C) as in DiT."""
    h, w = grid
    p = patch_size
    x = x.reshape(x.shape[0], h, w, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(x.shape[0], channels, h * p, w * p)


class FinalLayer(nn.Module):
    """adaLN (shift, scale; no gate) → Linear to p·p·out_channels (DiT ``FinalLayer``)."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        lin = self.adaLN_modulation[-1]
        shift, scale = self.adaLN_modulation(c.to(lin.weight.dtype)).to(x.dtype).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(KeepFP32Mixin, ModelMixin, ConfigMixin):
    """Class-conditional diffusion transformer (Peebles & Xie 2023), a diffusers ``ModelMixin``.

    ``DiT(**arch)`` builds a random-weight model from a registry entry's ``arch:`` mapping (the fields
    of :class:`DiTConfig`, kept as ``self.arch``; ``self.config`` is diffusers' frozen copy of them);
    :meth:`from_arch` does the same with validation of the keys. ``save_pretrained`` is ModelMixin's
    (``config.json`` + ``diffusion_pytorch_model.safetensors``, official parameter names);
    :meth:`from_pretrained` also reads the official ``.pt`` files, diffusers ``DiTTransformer2DModel``
    folders, the old mgen layout and registry names.

    Precision: under ``.to(torch.bfloat16)`` / ``torch_dtype=`` the conditioning path — timestep and
    class embedders, every adaLN modulation (one (B, D) row per sample, ~0.2% of the FLOPs) and the
    position table — stays float32 (:class:`~mgen.nn.precision.KeepFP32Mixin`); the token stream runs
    in the model's dtype, and the modulation values are cast to it where they are applied.
    """

    _keep_fp32 = ("t_embedder", "y_embedder", "block_t_embedders", "block_y_embedders", "adaLN_modulation", "pos_embed")

    @register_to_config
    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        timestep_freq_shift: float = 0.0,
        mlp_norm_eps: float = 1e-6,
        per_block_embedders: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(input_size, (DiTConfig, Mapping)):  # the old ``DiT(DiTConfig(...))`` form
            c = input_size if isinstance(input_size, DiTConfig) else DiTConfig.from_mapping(input_size)
            self.register_to_config(**dataclasses.asdict(c))
        else:
            c = DiTConfig(input_size=input_size, patch_size=patch_size, in_channels=in_channels, hidden_size=hidden_size,
                          depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, class_dropout_prob=class_dropout_prob,
                          num_classes=num_classes, learn_sigma=learn_sigma, timestep_freq_shift=timestep_freq_shift,
                          mlp_norm_eps=mlp_norm_eps, per_block_embedders=per_block_embedders)
        c.validate()
        self.arch = c
        self.in_channels, self.out_channels = c.in_channels, c.out_channels
        self.patch_size, self.num_heads, self.num_classes = c.patch_size, c.num_heads, c.num_classes
        self.attn_backend: str | None = None  # None: $MGEN_ATTN / auto
        self.x_embedder = PatchEmbed(c.patch_size, c.in_channels, c.hidden_size)
        self.t_embedder = TimestepEmbedder(c.hidden_size, freq_shift=c.timestep_freq_shift)
        self.y_embedder = LabelEmbedder(c.num_classes, c.hidden_size, c.class_dropout_prob)
        # Fixed sin-cos embedding; persistent so that the official state dict's ``pos_embed`` loads.
        self.register_buffer("pos_embed", sincos_2d(c.hidden_size, c.grid_size).unsqueeze(0), persistent=True)
        self.blocks = nn.ModuleList([AdaLNBlock(c.hidden_size, c.num_heads, mlp_ratio=c.mlp_ratio) for _ in range(c.depth)])
        if c.per_block_embedders:
            self.block_t_embedders = nn.ModuleList(
                [TimestepEmbedder(c.hidden_size, freq_shift=c.timestep_freq_shift) for _ in range(c.depth - 1)])
            self.block_y_embedders = nn.ModuleList(
                [LabelEmbedder(c.num_classes, c.hidden_size, c.class_dropout_prob) for _ in range(c.depth - 1)])
        for block in self.blocks:
            block.norm2.eps = c.mlp_norm_eps
        self.final_layer = FinalLayer(c.hidden_size, c.patch_size, c.out_channels)
        self.initialize_weights()

    @classmethod
    def from_arch(cls, arch: Mapping[str, Any] | DiTConfig, where: str = "arch") -> "DiT":
        """A random-weight DiT from an ``arch:`` mapping (unknown or inconsistent settings: :class:`UserError`)."""
        cfg = arch if isinstance(arch, DiTConfig) else DiTConfig.from_mapping(arch, where=where)
        cfg.validate()
        return cls(**dataclasses.asdict(cfg))

    def initialize_weights(self) -> None:
        """DiT's initialisation (§3.2 "adaLN-Zero"): xavier linears, zero adaLN and output layers."""
        def basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.apply(basic)
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        ys = [self.y_embedder] + list(getattr(self, "block_y_embedders", []))
        ts = [self.t_embedder] + list(getattr(self, "block_t_embedders", []))
        for y_emb, t_emb in zip(ys, ts):
            nn.init.normal_(y_emb.embedding_table.weight, std=0.02)
            nn.init.normal_(t_emb.mlp[0].weight, std=0.02)
            nn.init.normal_(t_emb.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for p in (self.final_layer.adaLN_modulation[-1].weight, self.final_layer.adaLN_modulation[-1].bias,
                  self.final_layer.linear.weight, self.final_layer.linear.bias):
            nn.init.zeros_(p)

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype of the token stream (the float32 conditioning parts aside)."""
        return self.x_embedder.proj.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.x_embedder.proj.weight.device

    # -- forward ---------------------------------------------------------------------------------
    def check_inputs(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> None:
        c = self.arch
        if x.ndim != 4:
            raise UserError(f"DiT expects latents (B, C, H, W); got shape {tuple(x.shape)}")
        if x.shape[1] != c.in_channels:
            raise UserError(f"DiT expects {c.in_channels} latent channels; got {x.shape[1]}")
        h, w = x.shape[-2:]
        if h % c.patch_size or w % c.patch_size:
            raise UserError(f"latent size {h}x{w} is not divisible by the patch size {c.patch_size}")
        if (h, w) != (c.input_size, c.input_size):
            raise UserError(f"this DiT was built for {c.input_size}x{c.input_size} latents; got {h}x{w}")
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise UserError(f"timesteps must have shape ({x.shape[0]},); got {tuple(t.shape)}")
        if y is not None and (y.ndim != 1 or y.shape[0] != x.shape[0]):
            raise UserError(f"class labels must have shape ({x.shape[0]},); got {tuple(y.shape)}")

    def condition(self, t: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """c = t_embedder(t) + y_embedder(y) (label dropout to the null class while training); float32
        when the embedders are (always, under reduced precision)."""
        return self.t_embedder(t) + self.y_embedder(y, self.training, generator=generator)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """ε (and variance interpolation v) prediction for latents ``x`` at timesteps ``t``, classes ``y``.

        ``x`` is cast to the model's dtype; the output is in the model's dtype. ``generator`` drives the
        label dropout in training mode (classifier-free guidance training).
        """
        self.check_inputs(x, t, y)
        c = self.arch
        grid = (x.shape[-2] // c.patch_size, x.shape[-1] // c.patch_size)
        x = x.to(self.dtype)
        h = self.x_embedder(x) + self.pos_embed.to(x.dtype)
        cond = self.condition(t, y, generator)
        conds = [cond] * len(self.blocks)
        if c.per_block_embedders:
            conds[1:] = [te(t) + ye(y, self.training, generator=generator)
                         for te, ye in zip(self.block_t_embedders, self.block_y_embedders)]
        for block, cb in zip(self.blocks, conds):
            h = _block_forward(block, h, cb, self.attn_backend)
        h = self.final_layer(h, cond)
        return unpatchify(h, c.patch_size, c.out_channels, grid)

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float,
                         guidance_channels: int | None = 3) -> torch.Tensor:
        """Classifier-free guidance batched as the official ``forward_with_cfg`` (Ho & Salimans 2022).

        ``x``/``t``/``y`` hold the conditional half followed by the unconditional half (labels =
        ``num_classes``). The first half of ``x`` is evaluated twice, ε_u + s·(ε_c − ε_u) is formed on
        the first ``guidance_channels`` output channels (3 in the official code "for exact
        reproducibility"; ``None`` = all ``in_channels``), and both halves receive the guided value.
        The guidance arithmetic and the result are float32 whatever the model's dtype.
        """
        half = x[: len(x) // 2]
        out = self.forward(torch.cat([half, half], dim=0), t, y).float()
        k = self.in_channels if guidance_channels is None else int(guidance_channels)
        eps, rest = out[:, :k], out[:, k:]
        cond, uncond = torch.split(eps, len(eps) // 2, dim=0)
        guided = uncond + cfg_scale * (cond - uncond)
        return torch.cat([torch.cat([guided, guided], dim=0), rest], dim=1)

    # -- weights ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, config: str | DiTConfig | Mapping[str, Any] | None = None,
                        weights: str | os.PathLike | None = None, map_location: str | torch.device = "cpu",
                        **kwargs: Any) -> "DiT":
        """Load a DiT from a folder written by :meth:`save_pretrained` (diffusers' own loader), an official
        ``.pt`` state dict (or a training checkpoint holding ``ema`` / ``model``), a safetensors file, a
        diffusers ``DiTTransformer2DModel`` folder (or a pipeline folder with ``transformer/``), a folder
        of the old mgen layout (``config.json`` + ``model.safetensors``), or a registry name.

        ``config``: a registry name (``"dit-xl-2"``), a YAML path, a :class:`DiTConfig` or an ``arch``
        mapping, for files that do not carry their own; when omitted it is read from the folder's
        ``config.json`` or inferred from the checkpoint's shapes. ``torch_dtype`` (or ``dtype``) is
        honoured on every path; the other diffusers loading options (``low_cpu_mem_usage``,
        ``device_map``, ``variant``, ``use_safetensors``, …) are forwarded to diffusers for its own
        folders and ignored elsewhere. The model is returned in eval mode.
        """
        from mgen import hub

        torch_dtype = kwargs.pop("torch_dtype", None) or kwargs.pop("dtype", None)
        kwargs.pop("dtype", None)
        subfolder = kwargs.pop("subfolder", None)
        cfg: DiTConfig | None = _config_from(config)
        p = Path(path).expanduser()
        if subfolder:
            p = p / subfolder
        if weights is not None or not p.exists():
            resolved = hub.resolve(str(path), weights)
            if cfg is None and resolved.entry is not None:
                cfg = DiTConfig.from_mapping(resolved.entry.arch, where=resolved.entry.path)
            p = Path(resolved.path)
        diffusers_cfg: dict[str, Any] | None = None
        if p.is_dir():
            if (p / "transformer").is_dir() and not (p / "config.json").exists():
                p = p / "transformer"
            cfg_json = p / "config.json"
            meta = json.loads(cfg_json.read_text()) if cfg_json.exists() else {}
            owner = meta.get("_class_name")
            if owner == cls.__name__:  # our own ModelMixin folder
                model = super().from_pretrained(str(p), **kwargs)
                return _finish(model, map_location, torch_dtype)
            if owner is not None and owner not in DIFFUSERS_DIT_CLASSES:
                raise WeightsError(f"{p}: the folder holds a {owner}, not a {cls.__name__}")
            files = [p / n for n in ("diffusion_pytorch_model.safetensors", "model.safetensors",
                                     "diffusion_pytorch_model.bin", "pytorch_model.bin")]
            files = [f for f in files if f.exists()]
            if not files:
                raise WeightsError(f"{p}: no weights file (diffusion_pytorch_model.safetensors or model.safetensors)")
            if owner is not None or "num_attention_heads" in meta:
                diffusers_cfg = meta
            elif meta and cfg is None:
                cfg = DiTConfig.from_mapping(meta, where=str(cfg_json))
            file = files[0]
        else:
            file = p
            sib = p.parent / "config.json"
            if sib.exists() and p.name.startswith("diffusion_pytorch_model"):
                meta = json.loads(sib.read_text())
                if meta.get("_class_name") == cls.__name__:
                    return _finish(super().from_pretrained(str(p.parent), **kwargs), map_location, torch_dtype)
                diffusers_cfg = meta
        state = _unwrap_checkpoint(hub.load_checkpoint(file), file)
        if any(k.startswith("transformer_blocks.") for k in state):
            if diffusers_cfg is None and cfg is None:
                raise WeightsError(f"{file}: diffusers DiT weights without their config.json; pass config= (e.g. dit-xl-2)")
            shared = diffusers_embedders_shared(state)
            if cfg is None:
                cfg = config_from_diffusers(diffusers_cfg, state)
            else:  # keep the caller's architecture, take diffusers' numerical conventions
                eps = float((diffusers_cfg or {}).get("norm_eps", DIFFUSERS_NORM_EPS))
                cfg = dataclasses.replace(cfg, timestep_freq_shift=1.0, mlp_norm_eps=eps)
            cfg = dataclasses.replace(cfg, per_block_embedders=not shared)
            state = convert_diffusers_state_dict(state)
        if cfg is None:
            cfg = infer_config(state)
        model = cls.from_arch(cfg)
        _load(model, state, file)
        return _finish(model, map_location, torch_dtype)


DIFFUSERS_DIT_CLASSES = ("DiTTransformer2DModel", "Transformer2DModel")


def _finish(model: nn.Module, map_location: str | torch.device | None, torch_dtype: torch.dtype | None) -> Any:
    """Device, dtype (float32 parts kept, see :class:`KeepFP32Mixin`) and eval mode, as diffusers' loaders."""
    if map_location is not None:
        model = model.to(map_location)
    if torch_dtype is not None:
        if not isinstance(torch_dtype, torch.dtype):
            raise UserError(f"torch_dtype must be a torch.dtype (e.g. torch.bfloat16); got {torch_dtype!r}")
        model = model.to(torch_dtype)
    return model.eval()


def _block_forward(block: AdaLNBlock, x: torch.Tensor, c: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """One adaLN-Zero block (:class:`~mgen.nn.AdaLNBlock`'s forward) with an explicit attention backend
    (benchmarks compare backends) and mixed precision: the modulation runs in its own (float32) dtype and
    its shift/scale/gate are cast to the token stream's dtype. In float32 this is exactly ``block(x, c)``."""
    lin = block.adaLN_modulation[-1]
    mods = block.adaLN_modulation(c.to(lin.weight.dtype)).to(x.dtype)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods.chunk(6, dim=1)
    x = x + gate_msa.unsqueeze(1) * block.attn(modulate(block.norm1(x), shift_msa, scale_msa), backend=backend)
    return x + gate_mlp.unsqueeze(1) * block.mlp(modulate(block.norm2(x), shift_mlp, scale_mlp))


def _config_from(config: str | os.PathLike | DiTConfig | Mapping[str, Any] | None) -> DiTConfig | None:
    """``config=`` of :meth:`DiT.from_pretrained`: a registry name, a YAML path, a DiTConfig or an arch mapping.
    A registry entry of another architecture fails the arch validation (unknown settings: UserError)."""
    from mgen import registry

    if config is None or isinstance(config, DiTConfig):
        return config
    if isinstance(config, Mapping):
        return DiTConfig.from_mapping(config)
    if isinstance(config, (str, os.PathLike)):
        name = os.fspath(config)
        entry = registry.load_config_file(name) if name.endswith((".yaml", ".yml")) else registry.get(name)
        return DiTConfig.from_mapping(entry.arch, where=f"{entry.name} ({entry.path})")
    raise UserError(f"config must be a registry name, a YAML path, a DiTConfig or a mapping; got {type(config).__name__}")


def _unwrap_checkpoint(ckpt: dict[str, Any], file: Path) -> dict[str, torch.Tensor]:
    """Official train.py checkpoints hold {"model", "ema", "opt", "args"}; sample.py uses "ema"."""
    for key in ("ema", "model", "state_dict"):
        if key in ckpt and isinstance(ckpt[key], dict):
            ckpt = ckpt[key]
            break
    state = {k.removeprefix("module."): v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise WeightsError(f"{file}: no tensors found in the checkpoint")
    return state


def _load(model: nn.Module, state: dict[str, torch.Tensor], file: Path) -> tuple[list[str], list[str]]:
    own = model.state_dict()
    if "pos_embed" not in state and "pos_embed" in own:  # fixed sin-cos table: recompute when absent
        state = {**state, "pos_embed": own["pos_embed"]}
    bad = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise WeightsError(f"{file}: checkpoint does not match the config: {k} has shape {tuple(state[k].shape)}, "
                           f"the model expects {tuple(own[k].shape)} (pass the right config=)")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise WeightsError(f"{file}: not a DiT checkpoint for this config ({what})")
    model.load_state_dict(state, strict=True)
    return missing, unexpected


def looks_like(state_dict: Mapping[str, Any]) -> bool:
    """Whether a state dict (or a training checkpoint holding ``ema`` / ``model``) is a DiT: the official
    layout (sinusoidal ``t_embedder.mlp``, ``y_embedder``, adaLN ``blocks``, no Fourier ``t_embedder.W``) or
    diffusers' ``DiTTransformer2DModel``. Keys only, nothing is loaded."""
    sd: Mapping[str, Any] = state_dict
    for key in ("ema", "model", "state_dict"):
        if isinstance(sd.get(key), Mapping):
            sd = sd[key]
            break
    keys = {str(k).removeprefix("module.") for k in sd}
    official = {"x_embedder.proj.weight", "t_embedder.mlp.0.weight", "y_embedder.embedding_table.weight",
                "final_layer.adaLN_modulation.1.weight", "blocks.0.adaLN_modulation.1.weight"}
    if official <= keys:
        return "t_embedder.W" not in keys and "s_embedder.proj.weight" not in keys
    return {"pos_embed.proj.weight", "proj_out_1.weight",
            "transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight"} <= keys


def infer_config(state: Mapping[str, torch.Tensor]) -> DiTConfig:
    """Architecture from an official state dict's shapes; num_heads from the registry's DiT sizes."""
    try:
        w = state["x_embedder.proj.weight"]
        hidden, in_ch, p = w.shape[0], w.shape[1], w.shape[2]
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        out = state["final_layer.linear.weight"].shape[0] // (p * p)
        rows = state["y_embedder.embedding_table.weight"].shape[0]
        n_patches = state["pos_embed"].shape[1] if "pos_embed" in state else None
        mlp_hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    except (KeyError, ValueError) as e:
        raise WeightsError(f"not a DiT state dict (cannot read {e})") from None
    # DiT paper, Table 1: head counts per width (S 6, B 12, L 16, XL 16).
    heads = {384: 6, 768: 12, 1024: 16, 1152: 16}.get(hidden)
    if heads is None:
        raise UserError(f"cannot infer num_heads for hidden size {hidden}; pass config= (a registry name or arch mapping)")
    grid = int(round((n_patches or 256) ** 0.5))
    return DiTConfig(input_size=grid * p, patch_size=p, in_channels=in_ch, hidden_size=hidden, depth=depth,
                     num_heads=heads, mlp_ratio=mlp_hidden / hidden, class_dropout_prob=0.1,
                     num_classes=rows - 1, learn_sigma=out == 2 * in_ch)  # the last row is the null class


# -- diffusers DiTTransformer2DModel ------------------------------------------------------------------

DIFFUSERS_NORM_EPS = 1e-5  # DiTTransformer2DModel's default norm_eps (used by its pre-MLP LayerNorm)


def config_from_diffusers(meta: Mapping[str, Any] | None, state: Mapping[str, torch.Tensor]) -> DiTConfig:
    """Our config from a diffusers ``DiTTransformer2DModel`` / ``Transformer2DModel`` config.json."""
    meta = dict(meta or {})
    try:
        heads = int(meta["num_attention_heads"])
        head_dim = int(meta["attention_head_dim"])
        in_ch = int(meta["in_channels"])
        depth = int(meta["num_layers"])
        patch = int(meta["patch_size"])
        sample = int(meta["sample_size"])
    except KeyError as e:
        raise WeightsError(f"diffusers config.json lacks {e}; cannot build the DiT") from None
    out_ch = int(meta.get("out_channels") or in_ch)
    hidden = heads * head_dim
    rows = state["transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight"].shape[0]
    num_classes = int(meta.get("num_embeds_ada_norm") or rows - 1)
    ff = state["transformer_blocks.0.ff.net.0.proj.weight"].shape[0]
    return DiTConfig(input_size=sample, patch_size=patch, in_channels=in_ch, hidden_size=hidden, depth=depth,
                     num_heads=heads, mlp_ratio=ff / hidden, class_dropout_prob=0.1 if rows > num_classes else 0.0,
                     num_classes=num_classes, learn_sigma=out_ch == 2 * in_ch,
                     timestep_freq_shift=1.0, mlp_norm_eps=float(meta.get("norm_eps", DIFFUSERS_NORM_EPS)))


def diffusers_embedders_shared(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether every block's ``norm1.emb`` equals block 0's (a converted official DiT) or not."""
    for k, v in state.items():
        if ".norm1.emb." in k and not k.startswith("transformer_blocks.0."):
            ref = state.get("transformer_blocks.0." + k.split(".", 2)[2])
            if ref is None or not torch.equal(ref, v):
                return False
    return True


def convert_diffusers_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``DiTTransformer2DModel`` keys → official DiT keys.

    diffusers stores a copy of the timestep/class embedders in every block and uses block 0's for the
    final layer (``proj_out_1``); separate q/k/v projections are concatenated into ``qkv``. Identical
    copies become the official shared ``t_embedder`` / ``y_embedder``; differing ones (a model
    initialised or trained in diffusers) are kept per block (``block_t_embedders.{i-1}``,
    ``block_y_embedders.{i-1}`` for block i ≥ 1, see :class:`DiTConfig`).
    """
    out: dict[str, torch.Tensor] = {}
    emb = "transformer_blocks.0.norm1.emb."
    shared = diffusers_embedders_shared(state)
    out["x_embedder.proj.weight"] = state["pos_embed.proj.weight"]
    out["x_embedder.proj.bias"] = state["pos_embed.proj.bias"]
    for i, j in (("0", "linear_1"), ("2", "linear_2")):
        for s in ("weight", "bias"):
            out[f"t_embedder.mlp.{i}.{s}"] = state[f"{emb}timestep_embedder.{j}.{s}"]
    out["y_embedder.embedding_table.weight"] = state[f"{emb}class_embedder.embedding_table.weight"]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("transformer_blocks."))
    for b in range(depth):
        src, dst = f"transformer_blocks.{b}.", f"blocks.{b}."
        for s in ("weight", "bias"):
            out[f"{dst}attn.qkv.{s}"] = torch.cat([state[f"{src}attn1.to_{n}.{s}"] for n in "qkv"], dim=0)
            out[f"{dst}attn.proj.{s}"] = state[f"{src}attn1.to_out.0.{s}"]
            out[f"{dst}mlp.fc1.{s}"] = state[f"{src}ff.net.0.proj.{s}"]
            out[f"{dst}mlp.fc2.{s}"] = state[f"{src}ff.net.2.{s}"]
            out[f"{dst}adaLN_modulation.1.{s}"] = state[f"{src}norm1.linear.{s}"]
        if b > 0 and not shared:
            e = f"{src}norm1.emb."
            for i, j in (("0", "linear_1"), ("2", "linear_2")):
                for s in ("weight", "bias"):
                    out[f"block_t_embedders.{b - 1}.mlp.{i}.{s}"] = state[f"{e}timestep_embedder.{j}.{s}"]
            out[f"block_y_embedders.{b - 1}.embedding_table.weight"] = state[f"{e}class_embedder.embedding_table.weight"]
    for s in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{s}"] = state[f"proj_out_1.{s}"]
        out[f"final_layer.linear.{s}"] = state[f"proj_out_2.{s}"]
    if "pos_embed.pos_embed" in state:  # diffusers keeps the fixed table as a non-persistent buffer
        out["pos_embed"] = state["pos_embed.pos_embed"]
    return out


# -- training (``mgen train --config configs/dit-*.yaml``) ----------------------------------------------

TASK_KEYS = {"dataset", "image_size", "time_distribution", "time_mu", "time_sigma", "time_shift", "preview_steps"}


def split_train_settings(train: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``train:`` → (this model's own settings, the shared TrainConfig's)."""
    own = {k: v for k, v in train.items() if k in TASK_KEYS}
    return own, {k: v for k, v in train.items() if k not in TASK_KEYS}


def training_data(entry: Any, own: Mapping[str, Any], data: Any) -> tuple[tuple[torch.Tensor, torch.Tensor], nn.Module]:
    """((scaled latents, labels), tokenizer) of a DiT / LightningDiT config: the offline digits under its tokenizer
    (``data`` is :mod:`mgen.train.data`, handed over by the trainer factory)."""
    if own.get("dataset", "digits") != "digits" or not entry.tokenizer:
        raise UserError(f"{entry.name}: only the offline digits data set can be used for training here "
                        "(set train.dataset: digits and a digits tokenizer)")
    tok = load_tokenizer(entry.tokenizer)
    return data.digits_latents(tok, size=int(own.get("image_size", 16))), tok


class DiTTrainTask:
    """DiT's diffusion objective (:func:`mgen.samplers.ddpm.ddpm_training_loss`) + a class-grid preview."""

    def __init__(self, model: DiT, sampler: Mapping[str, Any], tokenizer: nn.Module | None = None, preview_steps: int = 50) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.diffusion = {k: sampler[k] for k in ("num_train_timesteps", "beta_start", "beta_end") if k in sampler}
        self.sampler = dict(sampler)
        self.preview_steps = preview_steps

    def loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> torch.Tensor:
        from mgen.samplers.ddpm import ddpm_training_loss

        x, y = batch
        return ddpm_training_loss(model, x, y, generator, **self.diffusion)

    @torch.no_grad()
    def sample_grid(self, model: nn.Module, generator: torch.Generator) -> torch.Tensor:
        from mgen.samplers.ddpm import DDPMSampler

        n = min(model.config.num_classes, 10)
        labels = torch.arange(n).repeat(2)
        s = DDPMSampler.from_mapping(self.sampler, num_inference_steps=self.preview_steps)
        lat = s.sample(model, labels, generator=generator)
        return decode_latents(self.tokenizer, lat).cpu() if self.tokenizer is not None else lat[:, :3].cpu()


def build_dit_training(entry: Any, factory: Any) -> tuple[Any, Any, Any]:
    """(task, data, config) of a DiT registry entry for the one trainer (:mod:`mgen.train.builder`;
    ``mgen train --config configs/dit-*.yaml``)."""
    own, rest = split_train_settings(entry.train)
    cfg = factory.config(rest)
    torch.manual_seed(cfg.seed)
    model = DiT.from_arch(entry.arch, where=entry.path)
    data, tok = training_data(entry, own, factory.data)
    task = DiTTrainTask(model, entry.sampler, tok, int(own.get("preview_steps", 50)))
    return task, data, cfg
