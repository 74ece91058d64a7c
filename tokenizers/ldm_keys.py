"""Key mapping between the LDM / taming-transformers autoencoder layout and diffusers' modules.

The LDM convolutional autoencoder (Rombach et al., "High-Resolution Image Synthesis with Latent
Diffusion Models", CVPR 2022; code CompVis/latent-diffusion ``ldm/modules/diffusionmodules/model.py``,
reused by MAR as ``models/vae.py`` in LTH14/mar and by taming-transformers' VQGAN) is the same network
as diffusers' ``Encoder``/``Decoder`` (``AutoencoderKL``, ``VQModel``); only the parameter names
differ, and LDM's attention projections are 1×1 convolutions where diffusers uses linear layers.

LDM names (``encoder.down.{i}.block.{j}.conv1`` ...) are mapped to diffusers names
(``encoder.down_blocks.{i}.resnets.{j}.conv1`` ...). The decoder's ``up`` list is stored in LDM from
the highest resolution (index 0) to the lowest, while diffusers' ``up_blocks`` run in the order they
are applied (lowest resolution first): LDM ``decoder.up.{i}`` ↔ diffusers ``decoder.up_blocks.{n-1-i}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from mgen.errors import WeightsError

_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_ATTN_LINEAR = {"q", "k", "v", "proj_out"}


@dataclass(frozen=True)
class LDMArch:
    """Architecture numbers read off an LDM-layout state dict (names as in LDM's ``Encoder``)."""

    in_channels: int
    out_ch: int
    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    z_channels: int
    embed_dim: int
    encoder_attn_levels: tuple[int, ...]  # LDM level indices whose down blocks carry attention
    decoder_attn_levels: tuple[int, ...]
    double_z: bool = True

    @property
    def block_out_channels(self) -> tuple[int, ...]:
        return tuple(self.ch * m for m in self.ch_mult)

    def diffusers_config(self, prefix: str = "") -> dict:
        """Keyword arguments for diffusers' ``Encoder``/``Decoder``-based models (block types and widths)."""
        n = len(self.ch_mult)
        down = tuple(f"{'Attn' if i in self.encoder_attn_levels else ''}DownEncoderBlock2D" for i in range(n))
        # diffusers' up blocks run lowest resolution first: block k is LDM level n-1-k.
        up = tuple(f"{'Attn' if (n - 1 - k) in self.decoder_attn_levels else ''}UpDecoderBlock2D" for k in range(n))
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_ch,
            "down_block_types": down,
            "up_block_types": up,
            "block_out_channels": self.block_out_channels,
            "layers_per_block": self.num_res_blocks,
            "norm_num_groups": 32,
        }


def _levels(sd: dict[str, torch.Tensor], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sd for m in [rx.match(k)] if m})


def infer_ldm_arch(sd: dict[str, torch.Tensor], what: str = "checkpoint") -> LDMArch:
    """Read the architecture of an LDM autoencoder from its state dict's names and shapes."""
    try:
        ch, in_channels = sd["encoder.conv_in.weight"].shape[:2]
        levels = _levels(sd, r"encoder\.down\.(\d+)\.")
        n_blocks = len(_levels(sd, r"encoder\.down\.0\.block\.(\d+)\."))
        ch_mult = tuple(int(sd[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) // int(ch) for i in levels)
        enc_out = int(sd["encoder.conv_out.weight"].shape[0])
        z_channels = int(sd["decoder.conv_in.weight"].shape[1])
        out_ch = int(sd["decoder.conv_out.weight"].shape[0])
    except KeyError as e:
        raise WeightsError(f"{what}: not an LDM autoencoder state dict (missing {e.args[0]!r})") from None
    if levels != list(range(len(levels))) or not levels or n_blocks == 0:
        raise WeightsError(f"{what}: LDM encoder levels {levels} are not contiguous from 0")
    if "quant_conv.weight" in sd:
        embed_dim = int(sd["post_quant_conv.weight"].shape[1])  # post_quant_conv: embed_dim -> z_channels
    else:
        embed_dim = z_channels
    enc_attn = tuple(i for i in levels if f"encoder.down.{i}.attn.0.q.weight" in sd)
    dec_attn = tuple(i for i in levels if f"decoder.up.{i}.attn.0.q.weight" in sd)
    return LDMArch(int(in_channels), out_ch, int(ch), ch_mult, n_blocks, z_channels, embed_dim, enc_attn, dec_attn,
                   double_z=enc_out == 2 * z_channels)


def _resnet_or_attn(rest: str) -> str:
    """``block.{j}.conv1.weight`` → ``resnets.{j}.conv1.weight``; ``attn.{j}.q.weight`` → ``attentions.{j}.to_q.weight``."""
    kind, j, name, param = rest.split(".", 3)
    if kind in ("block",):
        if name not in _RESNET:
            raise KeyError(rest)
        return f"resnets.{j}.{_RESNET[name]}.{param}"
    if kind in ("attn",):
        return f"attentions.{j}.{_ATTN[name]}.{param}"
    raise KeyError(rest)


def _mid(rest: str) -> str:
    head, tail = rest.split(".", 1)
    name, param = tail.rsplit(".", 1)
    if head == "block_1":
        return f"mid_block.resnets.0.{_RESNET[name]}.{param}"
    if head == "block_2":
        return f"mid_block.resnets.1.{_RESNET[name]}.{param}"
    if head == "attn_1":
        return f"mid_block.attentions.0.{_ATTN[name]}.{param}"
    raise KeyError(rest)


def ldm_key_to_diffusers(key: str, num_levels: int) -> str:
    """The diffusers name of one LDM autoencoder parameter (raises KeyError for names it does not know)."""
    side, rest = key.split(".", 1)
    if side in ("quant_conv", "post_quant_conv"):
        return key
    if side not in ("encoder", "decoder"):
        raise KeyError(key)
    if rest.startswith(("conv_in.", "conv_out.")):
        return key
    if rest.startswith("norm_out."):
        return f"{side}.conv_norm_out.{rest.split('.', 1)[1]}"
    if rest.startswith("mid."):
        return f"{side}.{_mid(rest[4:])}"
    m = re.match(r"(down|up)\.(\d+)\.(.*)", rest)
    if not m:
        raise KeyError(key)
    kind, i, tail = m.group(1), int(m.group(2)), m.group(3)
    if kind == "down" and side == "encoder":
        block = f"encoder.down_blocks.{i}"
        if tail.startswith("downsample.conv."):
            return f"{block}.downsamplers.0.conv.{tail.rsplit('.', 1)[1]}"
    elif kind == "up" and side == "decoder":
        block = f"decoder.up_blocks.{num_levels - 1 - i}"
        if tail.startswith("upsample.conv."):
            return f"{block}.upsamplers.0.conv.{tail.rsplit('.', 1)[1]}"
    else:
        raise KeyError(key)
    return f"{block}.{_resnet_or_attn(tail)}"


def ldm_to_diffusers(sd: dict[str, torch.Tensor], num_levels: int, ignore_prefixes: tuple[str, ...] = ("loss.",),
                     what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Rename an LDM autoencoder state dict to diffusers' names; 1×1 attention convs become linear weights."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        if key.startswith(ignore_prefixes):
            continue
        try:
            new = ldm_key_to_diffusers(key, num_levels)
        except (KeyError, ValueError):
            unknown.append(key)
            continue
        if ".attentions." in new and new.endswith(".weight") and value.ndim == 4:
            if value.shape[2:] != (1, 1):
                raise WeightsError(f"{what}: attention weight {key} has shape {tuple(value.shape)}, expected a 1x1 conv")
            value = value[:, :, 0, 0]
        if "conv_shortcut" in new and value.ndim == 4 and value.shape[2:] != (1, 1):
            raise WeightsError(f"{what}: {key} is a 3x3 conv shortcut, which diffusers' blocks do not host")
        out[new] = value
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise WeightsError(f"{what}: {len(unknown)} parameter(s) outside the LDM autoencoder layout: {shown}")
    return out


def diffusers_to_ldm(sd: dict[str, torch.Tensor], num_levels: int) -> dict[str, torch.Tensor]:
    """The inverse of :func:`ldm_to_diffusers` (used to write checkpoints in the official layout)."""
    inv_res = {v: k for k, v in _RESNET.items()}
    inv_attn = {v: k for k, v in _ATTN.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        new = key
        m = re.match(r"(encoder|decoder)\.(down_blocks|up_blocks)\.(\d+)\.(.*)", key)
        if key.startswith(("quant_conv", "post_quant_conv")) or re.match(r"(encoder|decoder)\.conv_(in|out)\.", key):
            new = key
        elif ".conv_norm_out." in key:
            new = key.replace("conv_norm_out", "norm_out")
        elif ".mid_block." in key:
            side, rest = key.split(".mid_block.")
            kind, j, tail = rest.split(".", 2)
            if kind == "resnets":
                name, param = tail.rsplit(".", 1)
                new = f"{side}.mid.block_{int(j) + 1}.{inv_res[name]}.{param}"
            else:
                name, param = tail.rsplit(".", 1)
                new = f"{side}.mid.attn_1.{inv_attn[name]}.{param}"
        elif m:
            side, blocks, i, tail = m.group(1), m.group(2), int(m.group(3)), m.group(4)
            level = i if blocks == "down_blocks" else num_levels - 1 - i
            prefix = f"{side}.{'down' if blocks == 'down_blocks' else 'up'}.{level}"
            if tail.startswith(("downsamplers.0.conv.", "upsamplers.0.conv.")):
                new = f"{prefix}.{'downsample' if blocks == 'down_blocks' else 'upsample'}.conv.{tail.rsplit('.', 1)[1]}"
            else:
                kind, j, rest = tail.split(".", 2)
                name, param = rest.rsplit(".", 1)
                if kind == "resnets":
                    new = f"{prefix}.block.{j}.{inv_res[name]}.{param}"
                else:
                    new = f"{prefix}.attn.{j}.{inv_attn[name]}.{param}"
        else:
            raise KeyError(key)
        if (".attn." in new or ".attn_1." in new) and new.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]
        out[new] = value
    return out
