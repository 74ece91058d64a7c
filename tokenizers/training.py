"""What the tokenizers' training tasks share: their own train settings, the optional PatchGAN discriminator."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mgen.tokenizers.patchgan import PatchDiscriminator, adversarial_terms


def _train_settings(entry: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``entry.train`` into the tokenizer's own settings and the shared TrainConfig's."""
    own_keys = {"kl_weight", "recon", "image_size", "perceptual_weights", "perceptual_weight", "commit_weight",
                "noise_tau", "encoder", "stats_samples", "mae_steps", "mae_lr", "mae_mask_ratio",
                "disc_weight", "disc_start", "disc_layers", "disc_channels"}
    own = {k: v for k, v in entry.train.items() if k in own_keys}
    rest = {k: v for k, v in entry.train.items() if k not in own_keys}
    return own, rest


def load_perceptual(own: dict[str, Any]) -> nn.Module | None:
    """The LPIPS network of ``train.perceptual_weights`` (a local file), or None without it."""
    from mgen.tokenizers.lpips import LPIPS

    return LPIPS.from_file(own["perceptual_weights"]) if own.get("perceptual_weights") else None


def attach_discriminator(model: nn.Module, own: dict[str, Any]) -> tuple[float, int]:
    """With ``disc_weight`` > 0 in the train settings, register a PatchGAN as ``model.discriminator``
    (so the shared trainer optimises and checkpoints it); returns (weight, start step)."""
    weight = float(own.get("disc_weight", 0.0))
    if weight > 0:
        model.discriminator = PatchDiscriminator(3, int(own.get("disc_channels", 64)), int(own.get("disc_layers", 3)))
    return weight, int(own.get("disc_start", 0))


def adversarial_loss(model: nn.Module, x: torch.Tensor, rec: torch.Tensor, weight: float, start: int) -> torch.Tensor | float:
    disc = getattr(getattr(model, "module", model), "discriminator", None)  # (unwrap DDP)
    if disc is None or weight <= 0:
        return 0.0
    return adversarial_terms(disc, x.float(), rec.float(), weight, start)
