"""LightningDiT and DiT^DH: flow-matching diffusion transformers of the RAE recipe.

LightningDiT (Yao et al. 2025, "Reconstruction vs. Generation", §4) modernises DiT's block with RMSNorm,
SwiGLU, 2-D RoPE and (optionally) qk-norm. DiT^DH (Zheng et al. 2025, "Diffusion Transformers with
Representation Autoencoders", §5) puts a wide, shallow diffusion head on top of that trunk (DDT,
Wang et al. 2025): the trunk maps the noisy latent to per-token conditions s = SiLU(t + trunk(x)), and
``head_depth`` blocks of width ``head_hidden_size`` (2 × 2048 for XL) re-embed the noisy latent and
denoise it, modulated token-wise by s. ``head_depth = 0`` gives a plain LightningDiT.

``model(x, t, y)``: x (B, C, H, W) noisy latents at flow time t ∈ [0, 1] (t = 1 noise, see
:mod:`mgen.samplers.flow`), y (B,) class labels (``num_classes`` = null class) → velocity (B, C, H, W).
Parameter names follow the RAE release (``s_embedder``, ``x_embedder``, ``s_projector``, ``blocks.i``
for trunk then head blocks, ``mlp.w12`` / ``mlp.w3``, ``t_embedder.W``, ``final_layer``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from mgen.errors import UserError, WeightsError
from mgen.models.dit import PatchEmbed, _finish, unpatchify
from mgen.nn import Attention, FourierTimestepEmbedder, LabelEmbedder, Mlp, Rope2D, SwiGLU, sincos_2d
from mgen.nn.precision import KeepFP32Mixin
from mgen.tokenizers.latents import decode_latents


@dataclass
class LightningDiTConfig:
    """Architecture numbers (the ``arch:`` section of ``configs/rae-dit-*.yaml`` / ``lightningdit-*.yaml``)."""

    input_size: int = 16
    patch_size: int = 1
    in_channels: int = 768
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    use_qknorm: bool = False
    use_swiglu: bool = True
    use_rope: bool = True
    use_rmsnorm: bool = True
    use_pos_embed: bool = True
    wo_shift: bool = False
    head_depth: int = 2  # DDT head blocks; 0 = plain LightningDiT
    head_hidden_size: int = 2048
    head_num_heads: int = 16
    fourier_seed: int = 0  # the fixed Gaussian Fourier features of the time embedding
    learn_sigma: bool = False  # plain LightningDiT only: 2C outputs, the first C are returned (RAE release)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "arch") -> "LightningDiTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UserError(f"{where}: unknown LightningDiT settings {sorted(unknown)}; allowed: {sorted(known)}")
        cfg = cls(**dict(data))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.input_size % self.patch_size:
            raise UserError(f"LightningDiT: input_size {self.input_size} is not divisible by patch_size {self.patch_size}")
        for width, heads, what in ((self.hidden_size, self.num_heads, "hidden_size"),
                                   (self.head_hidden_size, self.head_num_heads, "head_hidden_size")):
            if what == "head_hidden_size" and self.head_depth == 0:
                continue
            if width % heads:
                raise UserError(f"LightningDiT: {what} {width} is not divisible by its number of heads {heads}")
            if self.use_rope and (width // heads) % 4:
                raise UserError(f"LightningDiT: 2-D RoPE needs a head dimension divisible by 4 ({what}/heads = {width // heads})")
        if self.head_depth < 0 or self.depth < 1:
            raise UserError("LightningDiT: depth must be >= 1 and head_depth >= 0")
        if self.learn_sigma and self.head_depth:
            raise UserError("LightningDiT: learn_sigma exists only without the DDT head (head_depth: 0)")

    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size


def _modulate(x: torch.Tensor, shift: torch.Tensor | None, scale: torch.Tensor) -> torch.Tensor:
    """x·(1 + scale) + shift for per-sample (B, 1, D) or per-token (B, N, D) modulation."""
    x = x * (1 + scale)
    return x if shift is None else x + shift


def _norm(dim: int, rms: bool) -> nn.Module:
    return nn.RMSNorm(dim, eps=1e-6) if rms else nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


class LightningBlock(nn.Module):
    """adaLN-Zero block with RMSNorm, SwiGLU, qk-norm and RoPE options (LightningDiT / DDT block).

    The condition ``c`` is (B, D) (one per sample) or (B, N, D) (one per token, in the DDT head).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, cfg: LightningDiTConfig) -> None:
        super().__init__()
        rms = cfg.use_rmsnorm
        self.norm1 = _norm(dim, rms)
        self.attn = Attention(dim, num_heads, qkv_bias=True, qk_norm=cfg.use_qknorm,
                              norm_layer=(lambda d: nn.RMSNorm(d, eps=1e-6)) if rms else nn.LayerNorm)
        self.norm2 = _norm(dim, rms)
        hidden = int(dim * mlp_ratio)
        # LightningDiT keeps the MLP's parameter count: SwiGLU hidden = 2/3 of the GELU MLP's.
        self.mlp = SwiGLU(dim, int(2 / 3 * hidden)) if cfg.use_swiglu else Mlp(dim, hidden, act_layer=lambda: nn.GELU(approximate="tanh"))
        self.wo_shift = cfg.wo_shift
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, (4 if cfg.wo_shift else 6) * dim, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: Rope2D | None = None, backend: str | None = None) -> torch.Tensor:
        if c.ndim == 2:
            c = c.unsqueeze(1)
        # the modulation runs in its own dtype (float32 for per-sample conditions under reduced precision)
        mods = self.adaLN_modulation(c.to(self.adaLN_modulation[-1].weight.dtype)).to(x.dtype)
        if self.wo_shift:
            scale1, gate1, scale2, gate2 = mods.chunk(4, dim=-1)
            shift1 = shift2 = None
        else:
            shift1, scale1, gate1, shift2, scale2, gate2 = mods.chunk(6, dim=-1)
        x = x + gate1 * self.attn(_modulate(self.norm1(x), shift1, scale1), rope=rope, backend=backend)
        return x + gate2 * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) → Linear to p·p·C; per-sample or per-token condition."""

    def __init__(self, dim: int, patch_size: int, out_channels: int, rms: bool) -> None:
        super().__init__()
        self.norm_final = _norm(dim, rms)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if c.ndim == 2:
            c = c.unsqueeze(1)
        shift, scale = self.adaLN_modulation(c.to(self.adaLN_modulation[-1].weight.dtype)).to(x.dtype).chunk(2, dim=-1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


class LightningDiT(KeepFP32Mixin, ModelMixin, ConfigMixin):
    """LightningDiT trunk with an optional DDT head (DiT^DH of the RAE paper), a diffusers ``ModelMixin``.

    ``LightningDiT(**arch)`` builds a random-weight model from an ``arch:`` mapping (the fields of
    :class:`LightningDiTConfig`, kept as ``self.arch``); :meth:`from_arch` validates the keys.
    ``save_pretrained`` is ModelMixin's; :meth:`from_pretrained` also reads RAE's release checkpoints,
    the old mgen layout and registry names.

    Precision: under ``.to(torch.bfloat16)`` / ``torch_dtype=`` the per-sample conditioning stays float32
    — the Fourier time embedding (``t_embedder``, its fixed ``W`` included), the class table, the trunk
    blocks' adaLN modulation (and the final layer's without a head), the position and RoPE tables. The DDT
    head's modulation is per token (as costly as an MLP) and runs in the model's dtype.
    """

    _keep_fp32 = ("t_embedder", "y_embedder", "pos_embed", "rope", "head_rope")

    def keeps_fp32(self, name: str) -> bool:
        if super().keeps_fp32(name):
            return True
        parts = name.split(".")
        if "adaLN_modulation" not in parts:
            return False
        if parts[0] == "blocks":  # trunk blocks: one condition row per sample
            return int(parts[1]) < self.arch.depth
        return parts[0] == "final_layer" and self.arch.head_depth == 0

    @register_to_config
    def __init__(
        self,
        input_size: int = 16,
        patch_size: int = 1,
        in_channels: int = 768,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        use_qknorm: bool = False,
        use_swiglu: bool = True,
        use_rope: bool = True,
        use_rmsnorm: bool = True,
        use_pos_embed: bool = True,
        wo_shift: bool = False,
        head_depth: int = 2,
        head_hidden_size: int = 2048,
        head_num_heads: int = 16,
        fourier_seed: int = 0,
        learn_sigma: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(input_size, (LightningDiTConfig, Mapping)):  # the old ``LightningDiT(LightningDiTConfig(...))`` form
            c = input_size if isinstance(input_size, LightningDiTConfig) else LightningDiTConfig.from_mapping(input_size)
            self.register_to_config(**dataclasses.asdict(c))
        else:
            c = LightningDiTConfig(
                input_size=input_size, patch_size=patch_size, in_channels=in_channels, hidden_size=hidden_size,
                depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, class_dropout_prob=class_dropout_prob,
                num_classes=num_classes, use_qknorm=use_qknorm, use_swiglu=use_swiglu, use_rope=use_rope,
                use_rmsnorm=use_rmsnorm, use_pos_embed=use_pos_embed, wo_shift=wo_shift, head_depth=head_depth,
                head_hidden_size=head_hidden_size, head_num_heads=head_num_heads, fourier_seed=fourier_seed,
                learn_sigma=learn_sigma)
        c.validate()
        self.arch = c
        self.in_channels = self.out_channels = c.in_channels
        self.num_classes = c.num_classes
        self.attn_backend: str | None = None
        head = c.head_depth > 0
        out_width = c.head_hidden_size if head else c.hidden_size
        p = c.patch_size
        if head:
            self.s_embedder = PatchEmbed(p, c.in_channels, c.hidden_size)
            self.x_embedder = PatchEmbed(p, c.in_channels, c.head_hidden_size)
            self.s_projector = nn.Linear(c.hidden_size, c.head_hidden_size) if c.hidden_size != c.head_hidden_size else nn.Identity()
        else:
            self.x_embedder = PatchEmbed(p, c.in_channels, c.hidden_size)
        g = torch.Generator().manual_seed(c.fourier_seed)
        self.t_embedder = FourierTimestepEmbedder(c.hidden_size, generator=g)
        self.y_embedder = LabelEmbedder(c.num_classes, c.hidden_size, c.class_dropout_prob)
        if c.use_pos_embed:
            self.register_buffer("pos_embed", sincos_2d(c.hidden_size, c.grid_size).unsqueeze(0), persistent=True)
        else:
            self.pos_embed = None
        self.rope = Rope2D(c.hidden_size // c.num_heads, c.grid_size) if c.use_rope else None
        self.head_rope = Rope2D(c.head_hidden_size // c.head_num_heads, c.grid_size) if (c.use_rope and head) else None
        blocks = [LightningBlock(c.hidden_size, c.num_heads, c.mlp_ratio, c) for _ in range(c.depth)]
        blocks += [LightningBlock(c.head_hidden_size, c.head_num_heads, c.mlp_ratio, c) for _ in range(c.head_depth)]
        self.blocks = nn.ModuleList(blocks)
        self.final_layer = FinalLayer(out_width, p, c.in_channels * (2 if c.learn_sigma else 1), c.use_rmsnorm)
        self.initialize_weights()

    @classmethod
    def from_arch(cls, arch: Mapping[str, Any] | LightningDiTConfig, where: str = "arch") -> "LightningDiT":
        """A random-weight model from an ``arch:`` mapping (unknown or inconsistent settings: :class:`UserError`)."""
        cfg = arch if isinstance(arch, LightningDiTConfig) else LightningDiTConfig.from_mapping(arch, where=where)
        cfg.validate()
        return cls(**dataclasses.asdict(cfg))

    def initialize_weights(self) -> None:
        """DiT / LightningDiT initialisation: xavier linears, zero adaLN-Zero modulation and output."""
        def basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.apply(basic)
        for emb in (getattr(self, "s_embedder", None), self.x_embedder):
            if emb is not None:
                w = emb.proj.weight.data
                nn.init.xavier_uniform_(w.view(w.shape[0], -1))
                nn.init.zeros_(emb.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for prm in (self.final_layer.adaLN_modulation[-1].weight, self.final_layer.adaLN_modulation[-1].bias,
                    self.final_layer.linear.weight, self.final_layer.linear.bias):
            nn.init.zeros_(prm)

    @property
    def dtype(self) -> torch.dtype:
        return self.x_embedder.proj.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.x_embedder.proj.weight.device

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> None:
        c = self.arch
        if x.ndim != 4 or x.shape[1] != c.in_channels:
            raise UserError(f"LightningDiT expects latents (B, {c.in_channels}, H, W); got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % c.patch_size or w % c.patch_size:
            raise UserError(f"latent size {h}x{w} is not divisible by the patch size {c.patch_size}")
        if (h, w) != (c.input_size, c.input_size):
            raise UserError(f"this model was built for {c.input_size}x{c.input_size} latents; got {h}x{w}")
        if t.ndim != 1 or t.shape[0] != x.shape[0] or y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise UserError(f"t and y must have shape ({x.shape[0]},); got {tuple(t.shape)} and {tuple(y.shape)}")

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Velocity prediction v(x_t, t, y) (RAE Eq. 1 target ε − x); ``x`` is cast to the model's dtype,
        the output is in it (the time and class conditions are float32, see the class docstring)."""
        self.check_inputs(x, t, y)
        c = self.arch
        grid = (x.shape[-2] // c.patch_size, x.shape[-1] // c.patch_size)
        x = x.to(self.dtype)
        temb = self.t_embedder(t.to(torch.float32))
        yemb = self.y_embedder(y, self.training, generator=generator)
        be = self.attn_backend
        if c.head_depth == 0:  # plain LightningDiT: c = t + y
            cond = temb + yemb
            h = self.x_embedder(x)
            if self.pos_embed is not None:
                h = h + self.pos_embed.to(h.dtype)
            for block in self.blocks:
                h = block(h, cond, rope=self.rope, backend=be)
            out = unpatchify(self.final_layer(h, cond), c.patch_size, c.in_channels * (2 if c.learn_sigma else 1), grid)
            return out[:, : c.in_channels]  # learn_sigma: the variance half is dropped, as in RAE's forward
        cond = F.silu(temb + yemb)  # DDT: c = SiLU(t + y)
        s = self.s_embedder(x)
        if self.pos_embed is not None:
            s = s + self.pos_embed.to(s.dtype)
        for block in self.blocks[: c.depth]:
            s = block(s, cond, rope=self.rope, backend=be)
        s = self.s_projector(F.silu(temb.unsqueeze(1) + s).to(s.dtype))  # per-token condition for the head
        h = self.x_embedder(x)
        for block in self.blocks[c.depth:]:
            h = block(h, s, rope=self.head_rope, backend=be)
        return unpatchify(self.final_layer(h, s), c.patch_size, c.in_channels, grid)

    # -- weights ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, config: str | LightningDiTConfig | Mapping[str, Any] | None = None,
                        weights: str | os.PathLike | None = None, map_location: str | torch.device = "cpu",
                        **kwargs: Any) -> "LightningDiT":
        """Load a folder written by :meth:`save_pretrained` (diffusers' own loader), a folder of the old
        mgen layout (``config.json`` + ``model.safetensors``), a safetensors / ``.pt`` state dict (RAE's
        release layout; EMA weights preferred), or a registry name (``rae-dit-digits``).

        ``config``: a registry name, a YAML path, a :class:`LightningDiTConfig` or an ``arch`` mapping for
        files without their own. ``torch_dtype`` (or ``dtype``) is honoured on every path; the other
        diffusers loading options are forwarded for diffusers folders and ignored elsewhere. Eval mode.
        """
        from mgen import hub

        torch_dtype = kwargs.pop("torch_dtype", None) or kwargs.pop("dtype", None)
        kwargs.pop("dtype", None)
        subfolder = kwargs.pop("subfolder", None)
        cfg = _config_from(config)
        p = Path(path).expanduser()
        if subfolder:
            p = p / subfolder
        if weights is not None or not p.exists():
            resolved = hub.resolve(str(path), weights)
            if cfg is None and resolved.entry is not None:
                cfg = LightningDiTConfig.from_mapping(resolved.entry.arch, where=resolved.entry.path)
            p = Path(resolved.path)
        if p.is_dir() and (p / "transformer").is_dir() and not (p / "config.json").exists():
            p = p / "transformer"
        if p.is_dir():
            meta = json.loads((p / "config.json").read_text()) if (p / "config.json").exists() else {}
            owner = meta.get("_class_name")
            if owner == cls.__name__:  # our own ModelMixin folder
                return _finish(super().from_pretrained(str(p), **kwargs), map_location, torch_dtype)
            if owner is not None:
                raise WeightsError(f"{p}: the folder holds a {owner}, not a {cls.__name__}")
            if cfg is None and meta:
                cfg = LightningDiTConfig.from_mapping(meta, where=str(p / "config.json"))
            p = p / "model.safetensors"
        ckpt = hub.load_checkpoint(p)
        for key in ("ema", "model", "state_dict"):  # RAE's train.py writes {"model", "ema", ...}; sampling uses "ema"
            if key in ckpt and isinstance(ckpt[key], dict):
                ckpt = ckpt[key]
                break
        state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}
        if cfg is None:
            cfg = infer_config(state, p)
        # RAE stores its RoPE tables as buffers; ours are recomputed.
        state = {k: v for k, v in state.items() if "feat_rope." not in k}
        model = cls.from_arch(cfg)
        own = model.state_dict()
        if "pos_embed" in own and "pos_embed" not in state:
            state["pos_embed"] = own["pos_embed"]
        bad = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if bad or missing or unexpected:
            what = (f"{bad[0]} has shape {tuple(state[bad[0]].shape)}, expected {tuple(own[bad[0]].shape)}" if bad
                    else f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}")
            raise WeightsError(f"{p}: checkpoint does not match the config ({what})")
        model.load_state_dict(state)
        return _finish(model, map_location, torch_dtype)


def looks_like(state_dict: Mapping[str, Any]) -> bool:
    """Whether a state dict (or a training checkpoint holding ``ema`` / ``model``) is a LightningDiT / DiT^DH
    of the RAE release: its Fourier time embedding (``t_embedder.W``) and patch embedder(s). Keys only."""
    sd = _inner_state(state_dict)
    return ("t_embedder.W" in sd and "x_embedder.proj.weight" in sd and "y_embedder.embedding_table.weight" in sd
            and "final_layer.linear.weight" in sd)


def _inner_state(ckpt: Mapping[str, Any]) -> Mapping[str, Any]:
    for key in ("ema", "model", "state_dict"):
        if isinstance(ckpt.get(key), Mapping):
            ckpt = ckpt[key]
            break
    return {str(k).removeprefix("module.").removeprefix("_orig_mod."): v for k, v in ckpt.items()}


# RAE / DiT paper widths → heads (S 384/6, B 768/12, L 1024/16, XL 1152/16; the DDT head 2048/16).
HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1152: 16, 2048: 16}


def infer_config(state: Mapping[str, torch.Tensor], where: Any = "checkpoint") -> LightningDiTConfig:
    """Architecture of a RAE ``DiTwDDTHead`` / ``LightningDiT`` state dict from its shapes; head counts
    from :data:`HEADS_BY_WIDTH` (pass ``config=`` for other widths)."""
    try:
        head = "s_embedder.proj.weight" in state
        w = state["s_embedder.proj.weight" if head else "x_embedder.proj.weight"]
        hidden, in_ch, p = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
        n_blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        widths = [int(state[f"blocks.{i}.adaLN_modulation.1.weight"].shape[1]) for i in range(n_blocks)]
        depth = n_blocks
        if head:  # the trunk is the leading run of blocks of the trunk width; equal widths: RAE's 2-block head
            depth = next((i for i in range(n_blocks) if widths[i] != hidden), n_blocks - 2)
        head_width = int(state["x_embedder.proj.weight"].shape[0]) if head else 2048
        rows = int(state["y_embedder.embedding_table.weight"].shape[0])
        mods = int(state["blocks.0.adaLN_modulation.1.weight"].shape[0]) // hidden
        out = int(state["final_layer.linear.weight"].shape[0]) // (p * p)
        rms = "blocks.0.norm1.weight" in state
        qk = "blocks.0.attn.q_norm.weight" in state
        swiglu = "blocks.0.mlp.w12.weight" in state
        mlp_hidden = state["blocks.0.mlp.w3.weight"].shape[1] if swiglu else state["blocks.0.mlp.fc1.weight"].shape[0]
        n_tok = int(state["pos_embed"].shape[1]) if "pos_embed" in state else None
        rope = any("feat_rope." in k for k in state)  # RAE saves its RoPE tables as buffers
    except (KeyError, ValueError, IndexError) as e:
        raise WeightsError(f"{where}: not a LightningDiT / DiT^DH state dict (cannot read {e}); pass config=") from None
    heads, head_heads = HEADS_BY_WIDTH.get(hidden), HEADS_BY_WIDTH.get(head_width)
    if heads is None or (head and head_heads is None):
        raise UserError(f"{where}: cannot infer the number of heads for width {hidden if heads is None else head_width}; "
                        "pass config= (a registry name such as rae-dit-xl, or an arch mapping)")
    if n_tok is None:
        raise UserError(f"{where}: no pos_embed to read the latent size from; pass config=")
    # SwiGLU hidden = int(2/3 · mlp_ratio · width) (LightningDiT keeps the GELU MLP's parameter count)
    ratio = next((r for r in (4.0, 2.0, 3.0, 8.0) if int(2 / 3 * int(hidden * r)) == mlp_hidden), None) if swiglu \
        else mlp_hidden / hidden
    if ratio is None:
        raise UserError(f"{where}: cannot infer mlp_ratio from an MLP of width {mlp_hidden}; pass config=")
    grid = int(round(n_tok ** 0.5))
    return LightningDiTConfig(
        input_size=grid * p, patch_size=p, in_channels=in_ch, hidden_size=hidden, depth=depth, num_heads=heads,
        mlp_ratio=float(ratio), class_dropout_prob=0.1, num_classes=rows - 1,  # the last row: the null class
        use_qknorm=qk, use_swiglu=swiglu, use_rope=rope, use_rmsnorm=rms, use_pos_embed=True, wo_shift=mods == 4,
        head_depth=n_blocks - depth if head else 0, head_hidden_size=head_width, head_num_heads=head_heads or 16,
        learn_sigma=(not head) and out == 2 * in_ch)


def _config_from(config: str | os.PathLike | LightningDiTConfig | Mapping[str, Any] | None) -> LightningDiTConfig | None:
    """``config=`` of :meth:`LightningDiT.from_pretrained`: a registry name, a YAML path, a config or an arch
    mapping. A registry entry of another architecture fails the arch validation (UserError)."""
    from mgen import registry

    if config is None or isinstance(config, LightningDiTConfig):
        return config
    if isinstance(config, Mapping):
        return LightningDiTConfig.from_mapping(config)
    name = os.fspath(config)
    entry = registry.load_config_file(name) if name.endswith((".yaml", ".yml")) else registry.get(name)
    return LightningDiTConfig.from_mapping(entry.arch, where=f"{entry.name} ({entry.path})")


# -- training (``mgen train --config configs/rae-dit-*.yaml``) ----------------------------------------

class FlowTrainTask:
    """Flow-matching objective (:func:`mgen.samplers.flow.flow_matching_loss`) with RAE's shifted
    logit-normal times, and a class-grid preview through the tokenizer."""

    def __init__(self, model: LightningDiT, own: Mapping[str, Any], sampler: Mapping[str, Any],
                 tokenizer: nn.Module | None = None) -> None:
        from mgen.samplers.flow import rae_shift

        self.model, self.tokenizer, self.sampler = model, tokenizer, dict(sampler)
        c = model.config
        shift = own.get("time_shift", "auto")
        self.shift = rae_shift(c.in_channels, c.input_size, c.input_size) if shift == "auto" else float(shift)
        self.distribution = own.get("time_distribution", "logit-normal")
        self.mu, self.sigma = float(own.get("time_mu", 0.0)), float(own.get("time_sigma", 1.0))
        self.preview_steps = int(own.get("preview_steps", 25))

    def loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> torch.Tensor:
        from mgen.samplers.flow import flow_matching_loss

        x, y = batch
        return flow_matching_loss(model, x, y, generator, self.distribution, self.shift, self.mu, self.sigma,
                                  label_dropout_generator=True)

    @torch.no_grad()
    def sample_grid(self, model: nn.Module, generator: torch.Generator) -> torch.Tensor:
        from mgen.samplers.flow import FlowSampler

        n = min(model.config.num_classes, 10)
        s = FlowSampler.from_mapping(self.sampler, num_inference_steps=self.preview_steps)
        lat = s.sample(model, torch.arange(n).repeat(2), generator=generator)
        return decode_latents(self.tokenizer, lat).cpu() if self.tokenizer is not None else lat[:, :3].cpu()


def build_flow_training(entry: Any, factory: Any) -> tuple[Any, Any, Any]:
    """(task, data, config) of a LightningDiT / DiT^DH registry entry for the one trainer (:mod:`mgen.train.builder`;
    ``mgen train --config configs/rae-dit-*.yaml``)."""
    from mgen.models.dit import split_train_settings, training_data

    own, rest = split_train_settings(entry.train)
    cfg = factory.config(rest)
    torch.manual_seed(cfg.seed)
    model = LightningDiT.from_arch(entry.arch, where=entry.path)
    data, tok = training_data(entry, own, factory.data)
    return FlowTrainTask(model, own, entry.sampler, tok), data, cfg
