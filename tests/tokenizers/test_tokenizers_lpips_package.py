"""mgen's LPIPS against the lpips package (PyPI ``lpips``, optional): same numbers with the package's backbone
built without download (``pnet_rand=True``) and loaded from mgen's local VGG16 file; the package's shipped lin
weights through ``LPIPS.from_vgg_file``."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from mgen.errors import WeightsError
from mgen.tokenizers import lpips as mgen_lpips
from mgen.tokenizers.lpips import LPIPS, _slice_of

torch.set_num_threads(1)


def _vgg_file(tmp_path):
    torch.manual_seed(0)
    vgg = {f"features.{k}": torch.randn_like(v) * 0.05 for k, v in LPIPS().features.state_dict().items()}
    torch.save(vgg, tmp_path / "vgg16.pth")
    return vgg


@pytest.mark.parametrize("size", [16, 64])
def test_matches_the_lpips_package_with_a_local_backbone(tmp_path, size):
    lpips = pytest.importorskip("lpips")
    vgg = _vgg_file(tmp_path)
    ours = LPIPS.from_vgg_file(tmp_path / "vgg16.pth")
    pkg = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False).eval()  # pnet_rand: no torchvision download
    sd = pkg.state_dict()
    for k in LPIPS().features.state_dict():
        sd[f"net.slice{_slice_of(k)}.{k}"] = vgg[f"features.{k}"]
    pkg.load_state_dict(sd)
    for i in range(5):  # the same shipped lin weights on both sides
        assert torch.equal(ours.lins[i].reshape(-1), pkg.state_dict()[f"lin{i}.model.1.weight"].reshape(-1))
    g = torch.Generator().manual_seed(size)
    x, y = torch.rand(4, 3, size, size, generator=g) * 2 - 1, torch.rand(4, 3, size, size, generator=g) * 2 - 1
    with torch.no_grad():
        a, b = ours(x, y), pkg(x, y).reshape(-1)
    assert (a - b).abs().max().item() <= 1e-6  # measured 1.5e-8 (relative 1.2e-7)
    # the comparison can fail: without the lin weights (all ones) the distance is another number
    unweighted = LPIPS.from_vgg_file(tmp_path / "vgg16.pth")
    for w in unweighted.lins:
        w.data.fill_(1.0)
    with torch.no_grad():
        assert (unweighted(x, y) - b).abs().max().item() > 1e-3
    # the package's own file layout (net.sliceK.*) loads into mgen's module with the same result
    both = {k: v for k, v in sd.items() if k.startswith(("net.", "lin"))}
    torch.save(both, tmp_path / "pkg_layout.pth")
    assert torch.equal(LPIPS.from_file(tmp_path / "pkg_layout.pth")(x, y), a)


def test_from_vgg_file_without_the_package(tmp_path, monkeypatch):
    _vgg_file(tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(mgen_lpips.importlib.util, "find_spec", lambda name, *a: None if name == "lpips" else real(name, *a))
    with pytest.raises(WeightsError, match="lpips package, which is not installed"):
        LPIPS.from_vgg_file(tmp_path / "vgg16.pth")
    with pytest.raises(WeightsError, match="lin0"):  # from_file stays strict
        LPIPS.from_file(tmp_path / "vgg16.pth")
