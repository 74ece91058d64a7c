"""PNG grids a person can look at: torchvision's make_grid, upscaled by an integer nearest-neighbour factor to at
least 256 px on the long side by default, --upscale / --nrow honoured, per-sample PNGs at native size."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision.utils import make_grid as tv_make_grid

from mgen.cli import main
from mgen.images import GRID_MIN_SIDE, grid_upscale, make_grid, save_grid


def test_make_grid_is_torchvisions():
    x = torch.rand(7, 3, 5, 6) * 2 - 1
    for n in (None, 2, 3, 10):
        assert torch.equal(make_grid(x, nrow=n), tv_make_grid(x, nrow=n or 3, padding=2, pad_value=1.0))


def test_default_grid_is_upscaled_to_256_nearest(tmp_path):
    x = torch.rand(10, 3, 16, 16) * 2 - 1
    native = make_grid(x)
    f = grid_upscale(*native.shape[-2:])
    assert max(native.shape[-2:]) * f >= GRID_MIN_SIDE > max(native.shape[-2:]) * (f - 1)
    with Image.open(save_grid(x, tmp_path / "g.png")) as im:
        assert im.size == (native.shape[-1] * f, native.shape[-2] * f)
        big = torch.tensor(list(im.getdata()), dtype=torch.int64).reshape(im.size[1], im.size[0], -1)
    assert torch.equal(big[::f, ::f], big[f - 1::f, f - 1::f])  # every source pixel is an f×f square
    with Image.open(save_grid(x, tmp_path / "one.png", nrow=10, upscale=1)) as im:
        assert im.size == (10 * 18 + 2, 20)


def test_sample_cli_grid_options(tmp_path):
    out = tmp_path / "o"
    assert main(["sample", "--model", "maskgit-digits", "--num", "4", "--steps", "2", "--nrow", "4", "--upscale", "3",
                 "--no-progress", "--out", str(out)]) == 0
    with Image.open(out / "grid.png") as im:
        assert im.size == ((4 * 18 + 2) * 3, 20 * 3)
    with Image.open(out / "0000.png") as im:
        assert im.size == (16, 16)  # per-sample PNGs stay at native resolution
    assert main(["sample", "--model", "maskgit-digits", "--num", "4", "--steps", "2", "--no-progress", "--out",
                 str(tmp_path / "d")]) == 0
    with Image.open(tmp_path / "d" / "grid.png") as im:
        assert max(im.size) >= GRID_MIN_SIDE
