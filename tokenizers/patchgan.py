"""Optional adversarial loss for tokenizer training: a PatchGAN discriminator with the hinge loss.

Discriminator: Isola et al., "Image-to-Image Translation with Conditional Adversarial Networks" (pix2pix,
CVPR 2017) PatchGAN, as used by VQGAN (Esser et al., CVPR 2021, §3.1, eq. 5) and the LDM autoencoders:
4×4 convolutions, stride 2 for ``n_layers`` steps, LeakyReLU(0.2), one logit per patch. Loss: hinge,
L_D = ½(E[relu(1 − D(x))] + E[relu(1 + D(x̂))]), L_G = −E[D(x̂)] (Lim & Ye 2017; taming's ``hinge_d_loss``),
switched on after ``start`` training steps (VQGAN starts the discriminator late).

mgen's trainer runs one optimizer on one scalar; :func:`adversarial_terms` therefore returns one scalar
whose gradient reaches the discriminator only through L_D (on detached reconstructions) and the
autoencoder only through L_G (evaluated with detached discriminator weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    """PatchGAN: (B, 3, H, W) images in [-1, 1] → (B, 1, h, w) real/fake logits."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False), nn.GroupNorm(1, ndf * mult),
                       nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # checkpointed with the model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def adversarial_terms(disc: PatchDiscriminator, real: torch.Tensor, fake: torch.Tensor, weight: float,
                      start: int = 0) -> torch.Tensor:
    """weight·L_G (gradient to the autoencoder only) + L_D (gradient to the discriminator only); 0 before ``start``."""
    from torch.func import functional_call

    if disc.training:
        disc.steps += 1
    if int(disc.steps) <= start or weight <= 0:
        return fake.new_zeros(()) + 0.0 * sum(p.sum() for p in disc.parameters())  # keep every parameter in the graph
    frozen = {k: v.detach() for k, v in disc.named_parameters()}
    g_loss = -functional_call(disc, frozen, (fake,)).mean()
    d_loss = 0.5 * (F.relu(1.0 - disc(real.detach())).mean() + F.relu(1.0 + disc(fake.detach())).mean())
    return weight * g_loss + d_loss
