"""diffusers' conventions, for every image pipeline, on tiny random weights: every component saved and loadable by
diffusers' component rule, identical pixels after save → load, ``torch_dtype``, ``pipe.dtype`` / ``pipe.device``,
``progress_bar`` (shown by default, silenced by ``set_progress_bar_config``), ``callback_on_step_end``,
``model_cpu_offload_seq``, ``from_pipe``."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

from mgen import registry

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _jitter(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def make_mar():
    from mgen.models.mar import MAR
    from mgen.pipelines.mar import MARPipeline
    from mgen.samplers.settings import SamplerSettings
    from mgen.tokenizers.patch import PatchTokenizer

    torch.manual_seed(0)
    m = MAR(img_size=16, vae_stride=4, patch_size=1, vae_embed_dim=16, encoder_embed_dim=32, encoder_depth=1,
            encoder_num_heads=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, class_num=10,
            buffer_size=2, diffloss_d=1, diffloss_w=32, num_sampling_steps=10, diffusion_batch_mul=2)
    tok = PatchTokenizer.from_arch(registry.get("patch-digits").arch)
    settings = SamplerSettings.for_sampler(MARPipeline.default_sampler, {"num_steps": 3, "head_steps": 3, "cfg": 2.0})
    return MARPipeline(tokenizer=tok, transformer=_jitter(m), scheduler=settings)


def make_maskgit(enat: bool = False):
    from mgen.samplers.settings import SamplerSettings
    from mgen.tokenizers.vq import VQTokenizer

    torch.manual_seed(0)
    vq = VQTokenizer.from_arch(registry.get("vq-digits").arch).eval()
    if enat:
        from mgen.models.enat import ENAT
        from mgen.pipelines.enat import ENATPipeline as cls

        model = ENAT(grid_size=4, hidden_dim=32, enc_depth=1, dec_depth=1, heads=4, codebook_size=256, num_classes=10)
        settings = {"num_steps": 3, "cfg": 1.5, "samp_temp": 1.0}
    else:
        from mgen.models.maskgit import MaskGITTransformer
        from mgen.pipelines.maskgit import MaskGITPipeline as cls

        model = MaskGITTransformer(grid_size=4, hidden_dim=32, depth=1, heads=4, mlp_dim=64, codebook_size=256,
                                   mask_token_id=256, num_classes=10)
        settings = {"num_steps": 3, "cfg": 1.5}
    return cls(_jitter(model), vq, SamplerSettings.for_sampler(cls.default_sampler, settings))


def make_dit(flow: bool = False):
    from mgen.samplers.settings import SamplerSettings
    from mgen.tokenizers.kl import KLTokenizer

    torch.manual_seed(0)
    vae = KLTokenizer.from_arch(registry.get("kl-digits").arch).eval()
    tiny = dict(input_size=4, patch_size=1, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=10)
    if flow:
        from mgen.models.lightningdit import LightningDiT
        from mgen.pipelines.rae_dit import RAEDiTPipeline as cls

        model = LightningDiT(**tiny, head_depth=1, head_hidden_size=48, head_num_heads=3, use_qknorm=True)
        settings = {"num_inference_steps": 3, "guidance_scale": 1.5}
    else:
        from mgen.models.dit import DiT
        from mgen.pipelines.dit import DiTPipeline as cls

        model = DiT(**tiny)
        settings = {"num_inference_steps": 3, "guidance_scale": 1.5}
    return cls(_jitter(model), vae, SamplerSettings.for_sampler(cls.default_sampler, settings))


MAKERS = {"mar": make_mar, "maskgit": make_maskgit, "enat": lambda: make_maskgit(enat=True), "dit": make_dit,
          "rae-dit": lambda: make_dit(flow=True)}


@pytest.fixture(params=list(MAKERS), scope="module")
def pipe(request):
    p = MAKERS[request.param]()
    p.set_progress_bar_config(disable=True)
    return p


def _run(pipe, **kw):
    return pipe(class_labels=[1, 2], generator=torch.Generator().manual_seed(0), output_type="pt", **kw).images


def test_save_load_every_component_identical_pixels(pipe, tmp_path):
    from mgen.pipelines import load_pipeline

    ref = _run(pipe)
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    names = [k for k in index if not k.startswith("_")]
    assert set(names) == {pipe.model_component, pipe.tokenizer_component, "scheduler"}
    assert not (set(p.name for p in (tmp_path / "p").iterdir()) - set(names) - {"model_index.json"})  # no extra files
    for name in names:  # diffusers' component rule
        module, cls = index[name]
        comp = getattr(importlib.import_module(module), cls).from_pretrained(tmp_path / "p" / name)
        assert type(comp).__name__ == cls
    for loaded in (type(pipe).from_pretrained(tmp_path / "p"), load_pipeline(tmp_path / "p")):
        loaded.set_progress_bar_config(disable=True)
        assert type(loaded) is type(pipe)
        assert loaded.scheduler.config.settings == pipe.scheduler.config.settings
        assert torch.equal(_run(loaded), ref)


def test_torch_dtype_and_properties(pipe, tmp_path):
    from mgen.pipelines import load_pipeline

    assert pipe.device == torch.device("cpu") and pipe.dtype == torch.float32
    pipe.save_pretrained(tmp_path / "p")
    low = load_pipeline(tmp_path / "p", torch_dtype=torch.bfloat16)
    low.set_progress_bar_config(disable=True)
    assert low.dtype == torch.bfloat16
    assert getattr(low, low.model_component).dtype == torch.bfloat16
    out = _run(low)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.equal(out, _run(low))  # same seed, same output in bf16 too


def test_progress_bar_shown_and_silenced(pipe, capsys):
    pipe.set_progress_bar_config(disable=False)
    _run(pipe)
    shown = capsys.readouterr().err
    pipe.set_progress_bar_config(disable=True)
    _run(pipe)
    assert "it/s" in shown or "s/it" in shown or "%|" in shown
    assert capsys.readouterr().err == ""


def test_callback_on_step_end(pipe):
    calls = []

    def cb(p, step, timestep, kwargs):
        assert p is pipe
        calls.append((step, sorted(kwargs)))
        return kwargs

    ref = _run(pipe)
    out = _run(pipe, callback_on_step_end=cb, callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs)
    assert torch.equal(out, ref)  # returning the tensors unchanged changes nothing
    assert len(calls) == pipe.sampler.total_steps and [c[0] for c in calls] == list(range(len(calls)))
    assert all(c[1] == sorted(pipe._callback_tensor_inputs) for c in calls)
    from mgen.errors import UserError

    with pytest.raises(UserError, match="callback_on_step_end_tensor_inputs"):
        _run(pipe, callback_on_step_end=cb, callback_on_step_end_tensor_inputs=["no_such_tensor"])


def test_offload_sequence_and_from_pipe(pipe):
    seq = pipe.model_cpu_offload_seq.split("->")
    assert set(seq) == {pipe.model_component, pipe.tokenizer_component}
    other = type(pipe).from_pipe(pipe)
    other.set_progress_bar_config(disable=True)
    assert getattr(other, other.model_component) is getattr(pipe, pipe.model_component)
    assert torch.equal(_run(other), _run(pipe))
