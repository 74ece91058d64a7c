"""Tiny random-weight objects shared by several test modules."""

from __future__ import annotations

import torch

MAR_ARCH = dict(img_size=16, vae_stride=4, patch_size=1, vae_embed_dim=16, encoder_embed_dim=32, encoder_depth=1,
                encoder_num_heads=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, class_num=10,
                buffer_size=2, diffloss_d=1, diffloss_w=32, num_sampling_steps=10, diffusion_batch_mul=2)


def tiny_mar_pipeline(seed: int = 0):
    """A MARPipeline on a 2-layer random MAR and the digits patch tokenizer, 3 steps / 3 head steps, cfg 2."""
    from mgen import registry
    from mgen.models.mar import MAR
    from mgen.pipelines.mar import MARPipeline
    from mgen.samplers.settings import SamplerSettings
    from mgen.tokenizers.patch import PatchTokenizer

    torch.manual_seed(seed)
    m = MAR(**MAR_ARCH)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        m.diffloss.net.final_layer.linear.weight.mul_(0.1)
    tok = PatchTokenizer.from_arch(registry.get("patch-digits").arch)
    settings = SamplerSettings.for_sampler(MARPipeline.default_sampler, {"num_steps": 3, "head_steps": 3, "cfg": 2.0})
    pipe = MARPipeline(tokenizer=tok, transformer=m.eval(), scheduler=settings)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def official_mar_checkpoint(tmp_path) -> tuple:
    """The tiny MAR of :func:`tiny_mar_pipeline` saved as an official LTH14/mar ``.pth`` (``model``, ``model_ema``,
    ``args``) in ``tmp_path``: (path, number of tensors in the file)."""
    import argparse

    sd = tiny_mar_pipeline().transformer.state_dict()
    ckpt = tmp_path / "tiny.pth"
    torch.save({"model": sd, "model_ema": sd, "args": argparse.Namespace(
        model="custom", img_size=16, vae_stride=4, buffer_size=2, diffloss_d=1, diffloss_w=32, class_num=10,
        vae_embed_dim=16, patch_size=1, num_sampling_steps="10", diffusion_batch_mul=2)}, ckpt)
    return ckpt, 2 * len(sd)
