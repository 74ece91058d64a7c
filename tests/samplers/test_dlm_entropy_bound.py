"""Entropy-bounded sampling for masked DLMs: transformers' accept rule, bound -> 0 = exact sampler, EB + ADJUST."""

from __future__ import annotations

import pytest
import torch

from mgen.errors import UserError
from mgen.models.dlm import DLMConfig, MaskedDiffusionLM
from mgen.samplers.dlm import ExactSampler, model_logits, prepare_prompts
from mgen.samplers.entropy_bound import EntropyBoundSampler, eb_accept

MASK = 2
PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]


@pytest.fixture(scope="module")
def model(one_thread) -> MaskedDiffusionLM:
    torch.manual_seed(0)
    return MaskedDiffusionLM(DLMConfig(vocab_size=40, dim=32, depth=2, num_heads=2, mlp_hidden=48)).eval()


def _transformers_accept(logits: torch.Tensor, bound: float) -> torch.Tensor:
    gen = pytest.importorskip("transformers.models.diffusion_gemma.generation_diffusion_gemma")
    b, n, v = logits.shape
    eb = gen.EntropyBoundSampler(gen.EntropyBoundSamplerConfig(entropy_bound=float(bound)), canvas_length=n,
                                 vocab_size=v, max_denoising_steps=1)
    cur = torch.zeros(b, n, dtype=torch.long)
    return eb.accept_canvas(cur, torch.ones_like(cur), logits, 1).bool()


@pytest.mark.parametrize("bound", [1e-9, 0.05, 0.3, 1.0, 4.0, 100.0])
def test_accept_set_equals_transformers_on_same_logits(bound):
    torch.manual_seed(1)
    logits = torch.randn(4, 12, 40) * torch.linspace(0.5, 6, 12)[None, :, None]
    assert torch.equal(eb_accept(logits, bound), _transformers_accept(logits, bound))


@pytest.fixture(scope="module")
def dlm_text(one_thread):
    """The shipped dlm-text model (trained: its entropies spread over nats, unlike a random tiny model's)."""
    from mgen.pipelines.dlm import load_text_model

    net, tok = load_text_model("dlm-text")
    return net, [tok.encode(t) for t in ("The function returns", "A list is", "import os\n")]


@pytest.mark.parametrize("bound", [0.5, 6.0, 15.0, 40.0])
def test_first_step_of_sampler_takes_transformers_set(dlm_text, bound):
    """The positions the sampler unmasks in its first step = accept_canvas on the model's logits of that block."""
    net, prompts = dlm_text
    bl = 16
    x0, attn, p = prepare_prompts(prompts, 32, net.mask_id, net.pad_id)
    logits = model_logits(net, x0, attn, forbid_mask=True)
    expected = _transformers_accept(logits[:, p:p + bl], bound)
    seen = {}

    def cb(step, t, state):
        if step == 0:
            seen["x"] = state["x"].clone()
            return {"x": torch.where(state["x"] == net.mask_id, 7, state["x"])}  # stop after the first step

    EntropyBoundSampler(gen_length=32, block_length=bl, entropy_bound=bound).sample(
        net, prompts, generator=torch.Generator().manual_seed(0), callback=cb)
    got = seen["x"][:, p:p + bl] != net.mask_id
    assert torch.equal(got, expected)
    assert bool((got.sum(1) >= 1).all())
    if bound >= 15.0:
        assert int(got.sum()) > 3  # several tokens per row accepted


@pytest.mark.parametrize("temperature,block", [(1.0, None), (0.7, 4), (0.0, 8)])
def test_bound_to_zero_is_the_exact_sampler(model, temperature, block):
    equal = 0
    for seed in range(4):
        eb = EntropyBoundSampler(gen_length=8, entropy_bound=1e-12, block_length=block, temperature=temperature)
        ex = ExactSampler(gen_length=8, block_length=block, temperature=temperature, order="entropy")
        a = eb.sample(model, PROMPTS, generator=torch.Generator().manual_seed(seed))
        b = ex.sample(model, PROMPTS, generator=torch.Generator().manual_seed(seed))
        equal += int(torch.equal(a, b))
        assert eb.stats.full_forwards == ex.stats.full_forwards == 8
    assert equal == 4


def test_larger_bound_fewer_forwards_batch_invariant(model):
    s = EntropyBoundSampler(gen_length=16, entropy_bound=5.0, block_length=8)
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    out = s.sample(model, PROMPTS, generator=gens)
    assert not bool((out == MASK).any())
    assert s.stats.full_forwards < 16 and bool((s.tokens_per_forward > 1).all())
    for i in range(3):
        solo = s.sample(model, [PROMPTS[i]], generator=[torch.Generator().manual_seed(i)])
        assert torch.equal(solo[0, -16:], out[i, -16:])


def test_eb_adjust_hybrid(model):
    from mgen.models.joint_sampler import JointSamplerLayer

    layer = JointSamplerLayer(model.cfg).eval()  # untrained: final gain 0, the layer returns h_prev exactly
    for seed in range(3):
        plain = EntropyBoundSampler(gen_length=12, entropy_bound=4.0)
        hyb = EntropyBoundSampler(gen_length=12, entropy_bound=4.0)
        a = plain.sample(model, PROMPTS, generator=torch.Generator().manual_seed(seed))
        b = hyb.sample(model, PROMPTS, generator=torch.Generator().manual_seed(seed), layer=layer)
        assert torch.equal(a, b) and hyb.stats.sampler_passes > 0
    torch.nn.init.ones_(layer.norm.weight)  # a layer that changes the logits: still a complete, capped sample
    s = EntropyBoundSampler(gen_length=12, entropy_bound=12.0, max_tokens_per_step=3)
    out = s.sample(model, PROMPTS, generator=torch.Generator().manual_seed(0), layer=layer)
    assert not bool((out == MASK).any()) and s.stats.full_forwards >= 4


def test_callback_replaces_state(model):
    def cb(step, t, state):
        x = state["x"].clone()
        x[x == MASK] = 7  # fill everything: the sampler stops after this step
        return {"x": x}

    s = EntropyBoundSampler(gen_length=8, entropy_bound=0.1)
    out = s.sample(model, PROMPTS, generator=torch.Generator().manual_seed(0), callback=cb)
    assert s.stats.full_forwards == 1 and not bool((out == MASK).any()) and s.total_steps == 8


@pytest.mark.parametrize("bound", [0.0, -0.5])
def test_bound_must_be_positive(bound):
    with pytest.raises(UserError, match="entropy bound"):
        EntropyBoundSampler(entropy_bound=bound)


def test_model_without_mask_token():
    class NoMask(torch.nn.Module):
        mask_id = None
        pad_id = 0

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

    with pytest.raises(UserError, match="no mask token"):
        EntropyBoundSampler(gen_length=4).sample(NoMask(), [[1, 2]])


def test_pipeline_sampler_eb(dlm_text):
    from mgen.pipelines.dlm import DLMPipeline

    net, prompts = dlm_text
    pipe = DLMPipeline.from_pretrained("dlm-text")
    pipe.set_progress_bar_config(disable=True)
    out = pipe(input_ids=prompts, sampler="eb", entropy_bound=6.0, gen_length=16,
               generator=torch.Generator().manual_seed(0), output_type="ids")
    direct = EntropyBoundSampler(gen_length=16, entropy_bound=6.0).sample(
        pipe.model, prompts, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.sequences, direct)
    with pytest.raises(UserError, match="entropy bound"):
        pipe(input_ids=prompts, sampler="eb", entropy_bound=0.0, gen_length=16)


def test_cli_entropy_bound(capsys):
    from mgen.cli import main as cli_main

    args = ["sample", "--model", "dlm-text", "--prompt", "The list", "--gen-length", "8", "--seed", "0"]
    assert cli_main(args + ["--sampler", "eb", "--entropy-bound", "0"]) == 2
    err = capsys.readouterr().err
    assert "entropy bound must be > 0" in err and len(err.strip().splitlines()) == 1
    assert cli_main(args + ["--entropy-bound", "6"]) == 0  # --entropy-bound alone selects eb
    assert capsys.readouterr().out.startswith("The list")


def test_teacher_tokens_score_the_samplers_own_strings(model):
    from mgen.models.joint_sampler import JointSamplerLayer

    layer = JointSamplerLayer(model.cfg).eval()
    torch.nn.init.ones_(layer.norm.weight)
    for lay in (None, layer):
        s = EntropyBoundSampler(gen_length=8, entropy_bound=4.0)
        x = s.sample(model, PROMPTS, generator=torch.Generator().manual_seed(3), layer=lay)
        lq, fwd = s.log_q.clone(), s.row_forwards.clone()
        y = s.sample(model, PROMPTS, layer=lay, teacher_tokens=x[:, -8:])
        assert torch.equal(x, y) and torch.allclose(s.log_q, lq) and torch.equal(s.row_forwards, fwd)
