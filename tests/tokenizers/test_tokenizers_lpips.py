"""LPIPS (VGG16) from user-given weight files: layout checks, metric properties, torchvision reference."""

from __future__ import annotations

import pytest
import torch

from mgen.errors import WeightsError
from mgen.tokenizers.lpips import LPIPS

torch.set_num_threads(1)


def _weights(tmp_path):
    torch.manual_seed(0)
    ref = LPIPS()
    vgg = {f"features.{k}": torch.randn_like(v) * 0.05 for k, v in ref.features.state_dict().items()}
    lin = {f"lin{i}.model.1.weight": torch.rand(1, w, 1, 1) for i, w in enumerate((64, 128, 256, 512, 512))}
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save(lin, tmp_path / "vgg.pth")
    torch.save({**vgg, **lin}, tmp_path / "both.pth")
    return vgg, lin


def test_lpips_properties_and_files(tmp_path):
    _weights(tmp_path)
    a = LPIPS.from_file(tmp_path / "both.pth")
    b = LPIPS.from_files(tmp_path / "vgg16.pth", tmp_path / "vgg.pth")
    x, y = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    d = a(x, y)
    assert d.shape == (2,) and (d > 0).all()
    torch.testing.assert_close(a(x, x), torch.zeros(2))
    torch.testing.assert_close(a(y, x), d)
    torch.testing.assert_close(b(x, y), d)
    with pytest.raises(WeightsError, match="lin0"):
        LPIPS.from_file(tmp_path / "vgg16.pth")


def test_lpips_matches_torchvision_vgg_reference(tmp_path):
    tv = pytest.importorskip("torchvision")
    vgg, lin = _weights(tmp_path)
    net = tv.models.vgg16(weights=None).features.eval()
    net.load_state_dict({k[len("features."):]: v for k, v in vgg.items()})
    x, y = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    expect = torch.zeros(2)
    hx, hy = (x - shift) / scale, (y - shift) / scale
    start = 0
    for i, end in enumerate((4, 9, 16, 23, 30)):
        hx, hy = net[start:end](hx), net[start:end](hy)
        start = end
        nx = hx / (hx.norm(dim=1, keepdim=True) + 1e-10)
        ny = hy / (hy.norm(dim=1, keepdim=True) + 1e-10)
        expect += (lin[f"lin{i}.model.1.weight"] * (nx - ny) ** 2).sum(1).mean(dim=(1, 2))
    torch.testing.assert_close(LPIPS.from_file(tmp_path / "both.pth")(x, y), expect, rtol=1e-4, atol=1e-6)
