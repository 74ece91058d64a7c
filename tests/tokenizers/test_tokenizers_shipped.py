"""The shipped digits tokenizers (mgen/weights/{kl,vq,rae}-digits.safetensors) load by name and reconstruct
held-out digits at the PSNR their recipe measured (mgen/weights/<name>.json)."""

from __future__ import annotations

import json

import pytest
import torch

from mgen.hub import package_weights_dir
from mgen.tokenizers import Tokenizer, load_tokenizer
from mgen.tokenizers.digits import digits_images
from mgen.tokenizers.kl import psnr

torch.set_num_threads(1)


@pytest.mark.parametrize("name,shape", [("kl-digits", (4, 4, 4)), ("vq-digits", (4, 4)), ("rae-digits", (64, 4, 4))])
def test_shipped_digits_tokenizer(name, shape):
    path = package_weights_dir() / f"{name}.safetensors"
    assert path.stat().st_size <= 5 * 1024 * 1024
    info = json.loads((package_weights_dir() / f"{name}.json").read_text())
    tok = load_tokenizer(name).eval()
    assert isinstance(tok, Tokenizer)
    x, _ = digits_images("test", size=16)
    with torch.no_grad():
        z = tok.encode(x)
        assert tuple(z.shape[1:]) == shape
        rec = tok.decode(z)  # the decoder output, unclamped like the official decoders
        assert rec.shape == x.shape and rec.min() >= -1.5 and rec.max() <= 1.5
        value = psnr(rec.clamp(-1, 1), x)  # as the images are written (pipelines and PNG writers clamp)
    assert value == pytest.approx(info["psnr_test_db"], abs=0.05)
    assert value > 18.0  # well above the 13.6 dB of predicting the mean training image
    if name == "vq-digits":
        assert z.dtype == torch.long and int(z.max()) < tok.codebook_size
    else:
        assert torch.equal(tok.encode(x[:5]), z[:5]) or torch.allclose(tok.encode(x[:5]), z[:5], atol=1e-5)
