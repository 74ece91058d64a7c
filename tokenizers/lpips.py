"""LPIPS perceptual distance (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric", CVPR 2018, eq. 1), VGG16 variant, loaded from a user-given weights file.

d(x, x0) = Σ_l 1/(H_l W_l) Σ_{h,w} ‖ w_l ⊙ (ŷ_l − ŷ0_l)_{hw} ‖²₂ where ŷ_l are the channel-unit-normalised
VGG16 activations after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 and w_l the learned non-negative
per-channel weights ("lin" layers). Inputs in [-1, 1] are first shifted/scaled by the constants of the
reference implementation (``ScalingLayer``: shift (-.030, -.088, -.188), scale (.458, .448, .450)).

No weights can be downloaded here: pass a file holding both the VGG16 ``features.N.*`` tensors
(torchvision's ``vgg16`` layout, or the lpips package's ``net.sliceK.N.*``) and the five
``lin{0..4}.model.1.weight`` tensors (the lpips package's ``vgg.pth`` layout), or two files (VGG16, lin) to
:meth:`LPIPS.from_files`. :meth:`LPIPS.from_vgg_file` takes only the VGG16 file and reads the lin weights from
the file the optional ``lpips`` package ships (``lpips/weights/v0.1/vgg.pth``, found without importing it).

Why this module is hand-written rather than ``lpips.LPIPS`` (PyPI ``lpips`` 0.1.4, Zhang et al.'s release): that
class builds its backbone with torchvision's ``vgg16(pretrained=True)``, which downloads the ImageNet weights
from the network at construction; mgen runs offline. ``lpips.LPIPS(net="vgg", pnet_rand=True)`` avoids the
download and loads the shipped lin weights, and with the VGG16 tensors of the same local file copied into its
``net.sliceK`` it gives the numbers of this module: measured max |Δ| = 1.5e-8 (relative 1.2e-7, float32 CPU,
16² and 64² inputs; ``tests/tokenizers/test_tokenizers_lpips_package.py``), i.e. rounding only (a 1×1 conv
there, a weighted channel sum here). Kept anyway: ``lpips`` is not a dependency of mgen (it pulls torchvision
and scipy and prints on construction), its module is not frozen (its parameters require grad),
it runs the backbone twice where this runs one batch of both images, and a second code path would have to be
kept identical. What the package gives offline, its lin weights file, is used by :meth:`LPIPS.from_vgg_file`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from mgen.errors import WeightsError

_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_TAPS = (3, 8, 15, 22, 29)  # indices (in torchvision's vgg16.features) of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_WIDTHS = (64, 128, 256, 512, 512)


# Hand-written, not the lpips package's LPIPS: that one fetches its VGG16 backbone from the network (torchvision
# pretrained=True) and mgen runs offline; with pnet_rand=True and this module's weights it agrees to 1.5e-8
# (module docstring; tests/tokenizers/test_tokenizers_lpips_package.py).
class LPIPS(nn.Module):
    """Frozen LPIPS-VGG distance; ``forward(x, y)`` → (B,) distances for images in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.ReLU(inplace=False)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.lins = nn.ParameterList([nn.Parameter(torch.ones(1, w, 1, 1)) for w in _WIDTHS])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    @classmethod
    def from_file(cls, path: str | Path) -> "LPIPS":
        from mgen.hub import load_checkpoint

        return cls._from_state(load_checkpoint(path), str(path))

    @classmethod
    def from_files(cls, vgg_path: str | Path, lin_path: str | Path) -> "LPIPS":
        from mgen.hub import load_checkpoint

        return cls._from_state({**load_checkpoint(vgg_path), **load_checkpoint(lin_path)}, f"{vgg_path} + {lin_path}")

    @classmethod
    def from_vgg_file(cls, vgg_path: str | Path) -> "LPIPS":
        """VGG16 tensors from ``vgg_path``, lin weights from the file the optional ``lpips`` package ships."""
        shipped = lpips_package_lin_file()
        if shipped is None:
            raise WeightsError(f"{vgg_path}: the lin weights come from the lpips package, which is not installed "
                               "(pip install lpips, or pass its vgg.pth to LPIPS.from_files)")
        return cls.from_files(vgg_path, shipped)

    @classmethod
    def _from_state(cls, sd: dict, what: str) -> "LPIPS":
        m = cls()
        want = {k: v.shape for k, v in m.features.state_dict().items()}
        feats = {}
        for k, shape in want.items():
            v = sd.get(f"features.{k}", sd.get(f"net.slice{_slice_of(k)}.{k}"))
            if v is None:
                raise WeightsError(f"{what}: LPIPS needs VGG16 tensor features.{k} (torchvision vgg16 layout)")
            if tuple(v.shape) != tuple(shape):
                raise WeightsError(f"{what}: features.{k} has shape {tuple(v.shape)}, expected {tuple(shape)}")
            feats[k] = v.float()
        m.features.load_state_dict(feats)
        for i, w in enumerate(_WIDTHS):
            v = sd.get(f"lin{i}.model.1.weight")
            if v is None or v.numel() != w:
                raise WeightsError(f"{what}: LPIPS needs lin{i}.model.1.weight with {w} values (the lpips package's vgg.pth)")
            m.lins[i].data.copy_(v.float().reshape(1, w, 1, 1))
        for p in m.parameters():
            if not torch.isfinite(p).all():
                raise WeightsError(f"{what}: LPIPS weights contain NaN or infinite values")
        return m

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, y]).float()
        h = (h - self.shift) / self.scale
        total = torch.zeros(x.shape[0], device=x.device)
        tap = 0
        for i, layer in enumerate(self.features):
            h = layer(h)
            if tap < len(_TAPS) and i == _TAPS[tap]:
                a, b = h.chunk(2)
                a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                total = total + (self.lins[tap] * (a - b).pow(2)).sum(1).mean(dim=(1, 2))
                tap += 1
                if tap == len(_TAPS):
                    break
        return total

    def train(self, mode: bool = True) -> "LPIPS":
        return super().train(False)  # always frozen


def lpips_package_lin_file(version: str = "0.1") -> Path | None:
    """The lin-layer weights the ``lpips`` package ships for VGG (``lpips/weights/v{version}/vgg.pth``, the
    path its ``LPIPS.__init__`` loads), or None when the package is not installed. The package is located, not
    imported (importing it imports torchvision)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / f"v{version}" / "vgg.pth"
    return path if path.is_file() else None


def _slice_of(key: str) -> int:
    idx = int(key.split(".")[0])
    return next(s + 1 for s, t in enumerate(_TAPS) if idx <= t)
