"""ReCAP as a pipeline argument and as ``mgen sample`` / ``mgen eval`` options (bad input → exit 2)."""

from __future__ import annotations

import pytest
import torch
import yaml

from mgen.cli import main
from mgen.errors import UserError


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    from mgen import registry
    from mgen.models.enat import ENAT
    from mgen.models.maskgit import MaskGITTransformer
    from mgen.tokenizers.vq import VQTokenizer

    d = tmp_path_factory.mktemp("recap_parts")
    torch.manual_seed(0)
    VQTokenizer.from_config(registry.get("vq-digits").arch).save_pretrained(d / "vq")
    mg = dict(grid_size=4, hidden_dim=32, depth=2, heads=4, mlp_dim=64, codebook_size=256, mask_token_id=256,
              num_classes=10, dropout=0.0)
    en = dict(grid_size=4, hidden_dim=32, enc_depth=1, dec_depth=1, heads=4, codebook_size=256, num_classes=10)
    MaskGITTransformer(mg).save_pretrained(d / "mg")
    ENAT(en).save_pretrained(d / "en")
    for name, fam, arch, sampler in (("mg", "maskgit", mg, {"num_steps": 6, "cfg": 1.0}),
                                     ("en", "enat", en, {"num_steps": 4, "cfg": 1.0, "samp_temp": 1.0})):
        (d / f"{name}.yaml").write_text(yaml.safe_dump({"name": f"tiny-{name}", "family": fam, "arch": arch,
                                                          "sampler": sampler, "tokenizer": str(d / "vq")}))
    return d


def test_maskgit_pipeline_recap_argument(parts):
    from mgen.pipelines.maskgit import MaskGITPipeline

    pipe = MaskGITPipeline.from_pretrained(parts / "mg", config=str(parts / "mg.yaml"))
    g = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    base = pipe([1, 2, 3], generator=g(), output_type="latent").images
    same = pipe([1, 2, 3], generator=g(), output_type="latent", recap={"cache_steps": 0}).images
    assert torch.equal(base, same)
    r3 = pipe([1, 2, 3], generator=g(), output_type="latent", recap={"pre_full_steps": 1, "cache_steps": 1}).images
    r1 = pipe([1], generator=g(), output_type="latent", recap={"pre_full_steps": 1, "cache_steps": 1}).images
    assert torch.equal(r3[:1], r1) and r3.shape == (3, 4, 4)
    imgs = pipe([5, 6], generator=g(), output_type="pt", recap=True).images
    assert imgs.shape == (2, 3, 16, 16)
    with pytest.raises(UserError, match="exceed the total steps"):
        pipe([1], generator=g(), recap={"pre_full_steps": 7})


def test_enat_pipeline_refuses_recap(parts):
    from mgen.pipelines.enat import ENATPipeline

    pipe = ENATPipeline.from_pretrained(parts / "en", config=str(parts / "en.yaml"))
    with pytest.raises(UserError, match="MaskGIT and MAR"):
        pipe([1], generator=torch.Generator().manual_seed(0), recap=True)


def test_mar_pipeline_recap_argument():
    from mgen.models.mar import MAR
    from mgen.pipelines.mar import MARPipeline

    torch.manual_seed(0)
    m = MAR(img_size=16, vae_stride=4, patch_size=1, vae_embed_dim=4, encoder_embed_dim=32, encoder_depth=1,
            encoder_num_heads=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, class_num=5,
            buffer_size=2, diffloss_d=1, diffloss_w=32, num_sampling_steps=10).eval()
    pipe = MARPipeline(tokenizer=None, transformer=m)
    out = pipe([1, 2], num_inference_steps=6, head_steps=5, generator=torch.Generator().manual_seed(0),
               output_type="latent", recap={"cache_steps": 1, "head_fast_ratio": 0.4}).images
    assert out.shape == (2, 4, 4, 4)
    assert pipe.last_sampler.last_stats["cheap"] == 3


@pytest.mark.parametrize("argv", [
    ["sample", "--model", "maskgit-digits", "--sampler", "recap", "--recap-cache-steps", "-1"],
    ["sample", "--model", "maskgit-digits", "--sampler", "recap", "--recap-pre-full-steps", "9"],
    ["sample", "--model", "maskgit-digits", "--steps", "4", "--sampler", "recap", "--recap-pre-full-steps", "5"],
    ["sample", "--model", "dit-digits", "--sampler", "recap"],
    ["sample", "--model", "maskgit-digits", "--recap-cache-steps", "2"],
    ["sample", "--model", "maskgit-digits", "--sampler", "recap", "--recap-head-fast-ratio", "0.4"],
    ["sample", "--model", "maskgit-digits", "--sampler", "bogus"],
    ["eval", "--model", "dit-digits", "--digits", "--sampler", "recap"],
    ["eval", "--model", "maskgit-digits", "--digits", "--sampler", "recap", "--recap-cache-steps", "-2"],
    ["bench", "recap", "--model", "dit-digits", "--random-weights"],
    ["bench", "recap", "--model", "maskgit-digits", "--random-weights", "--steps", "4", "--pre-full-steps", "5"],
])
def test_cli_bad_input_exits_2(argv, tmp_path, capsys):
    assert main(argv + (["--out", str(tmp_path)] if argv[0] in ("sample", "bench") else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
