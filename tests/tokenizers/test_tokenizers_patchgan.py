"""The optional PatchGAN hinge loss: one scalar whose gradients reach D only via L_D and G only via L_G."""

from __future__ import annotations

import torch

from mgen.tokenizers.patchgan import PatchDiscriminator, adversarial_terms

torch.set_num_threads(1)


def test_gradient_routing_and_start():
    torch.manual_seed(0)
    disc = PatchDiscriminator(3, ndf=8, n_layers=1).train()
    gen = torch.nn.Conv2d(3, 3, 1)
    real = torch.rand(4, 3, 16, 16) * 2 - 1
    noise = torch.randn(4, 3, 16, 16)
    assert disc(real).shape[:2] == (4, 1)

    before = adversarial_terms(disc, real, gen(noise), weight=0.5, start=1)  # step 1 <= start: off
    assert before.item() == 0.0 and int(disc.steps) == 1

    total = adversarial_terms(disc, real, gen(noise), weight=0.5, start=1)
    total.backward()
    g_disc = [p.grad.clone() for p in disc.parameters()]
    g_gen = [p.grad.clone() for p in gen.parameters()]

    for p in [*disc.parameters(), *gen.parameters()]:
        p.grad = None
    fake = gen(noise)
    d_loss = 0.5 * (torch.relu(1 - disc(real)).mean() + torch.relu(1 + disc(fake.detach())).mean())
    d_loss.backward()
    for a, p in zip(g_disc, disc.parameters()):
        torch.testing.assert_close(a, p.grad)
    for p in disc.parameters():
        p.grad = None
    (-0.5 * disc(gen(noise)).mean()).backward()
    for a, p in zip(g_gen, gen.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_kl_builder_with_discriminator(tmp_path):
    from mgen.registry import parse_entry
    from mgen.tokenizers.kl import KLTokenizer
    from mgen.train.tasks import build_training

    entry = parse_entry({"name": "kl-gan", "family": "kl",
                         "arch": {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "z_channels": 4, "resolution": 8},
                         "train": {"image_size": 8, "batch_size": 8, "max_steps": 2, "disc_weight": 0.1, "disc_layers": 1,
                                   "disc_channels": 8, "progress": False}})
    trainer = build_training(entry, out_dir=str(tmp_path / "run"))
    d0 = {k: v.clone() for k, v in trainer.unwrapped.discriminator.state_dict().items()}
    trainer.train()
    d1 = trainer.unwrapped.discriminator.state_dict()
    assert int(d1["steps"]) == 2 and not torch.equal(d0["main.0.weight"], d1["main.0.weight"])
    trainer.unwrapped.save_pretrained(tmp_path / "tok")  # the discriminator is not part of the tokenizer
    KLTokenizer.from_pretrained(tmp_path / "tok")


def test_rae_files_leave_out_the_discriminator(tmp_path):
    from transformers import ViTMAEConfig, ViTMAEModel

    from mgen.tokenizers.rae import RAETokenizer

    ViTMAEModel(ViTMAEConfig(image_size=8, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                             intermediate_size=64)).save_pretrained(tmp_path / "mae")
    tok = RAETokenizer.from_encoder(tmp_path / "mae", {"hidden_size": 32, "depth": 1, "num_heads": 4, "patch_size": 4})
    tok.discriminator = PatchDiscriminator(3, 8, 1)
    tok.save_file(tmp_path / "rae.safetensors")
    back = RAETokenizer.from_pretrained(tmp_path / "rae.safetensors")
    assert not hasattr(back, "discriminator")
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(back.decode(back.encode(x)), tok.decode(tok.encode(x)))
