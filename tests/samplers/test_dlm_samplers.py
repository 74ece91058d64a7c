"""dlm: LLaDA / Dream / exact samplers on a tiny random model — schedules, blocks, determinism, bad input."""

from __future__ import annotations

import pytest
import torch

from mgen.errors import UserError
from mgen.models.dlm import DLMConfig, MaskedDiffusionLM
from mgen.samplers.dlm import (DREAM_ALGS, DreamSampler, ExactSampler, LLaDASampler, get_num_transfer_tokens,
                               prepare_prompts)

MASK = 2


@pytest.fixture(scope="module")
def model() -> MaskedDiffusionLM:
    torch.manual_seed(0)
    return MaskedDiffusionLM(DLMConfig(vocab_size=40, dim=32, depth=2, num_heads=2, mlp_hidden=48)).eval()


class Recorder:
    """Which positions each step unmasked."""

    def __init__(self, start: torch.Tensor) -> None:
        self.prev = start.clone()
        self.steps: list[torch.Tensor] = []

    def __call__(self, step: int, timestep: float, state: dict) -> None:
        assert step == len(self.steps) and 0 <= timestep <= 1
        x = state["x"]
        newly = (self.prev == MASK) & (x != MASK)
        assert not bool(((self.prev != MASK) & (x != self.prev)).any()), "a decoded token changed"
        self.steps.append(newly.clone())
        self.prev = x.clone()


def test_num_transfer_tokens_matches_llada():
    counts = get_num_transfer_tokens(torch.tensor([10, 3, 8]), 4)
    assert counts.tolist() == [[3, 3, 2, 2], [1, 1, 1, 0], [2, 2, 2, 2]]


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_llada_fills_every_mask_once_within_blocks(model, remasking):
    s = LLaDASampler(steps=8, gen_length=16, block_length=4, temperature=1.0, remasking=remasking)
    prompts = [[5, 6, 7], [8, 9, 10]]
    x0, _, p = prepare_prompts(prompts, 16, MASK, 0)
    rec = Recorder(x0)
    out = s.sample(model, prompts, generator=torch.Generator().manual_seed(0), callback=rec)
    assert out.shape == (2, 19) and not bool((out == MASK).any())
    assert out[:, :3].tolist() == prompts
    total = torch.stack(rec.steps).sum(0)
    assert total[:, p:].eq(1).all() and total[:, :p].eq(0).all()
    assert len(rec.steps) == 8 and s.stats.full_forwards == 8
    for i, newly in enumerate(rec.steps):  # 2 steps per block, 2 tokens per step, inside block i // 2
        block = i // 2
        cols = newly.nonzero()[:, 1] - p
        assert newly.sum(1).tolist() == [2, 2]
        assert bool(((cols >= 4 * block) & (cols < 4 * (block + 1))).all())


def test_llada_cfg_and_deterministic_across_batch(model):
    s = LLaDASampler(steps=4, gen_length=8, block_length=8, temperature=0.8, cfg_scale=1.5)
    prompts = [[5, 6, 7], [8, 9, 10], [11, 12, 13]]
    both = s.sample(model, prompts, generator=torch.Generator().manual_seed(3))
    assert s.stats.full_forwards == 8  # conditional + unconditional per step
    again = s.sample(model, prompts, generator=torch.Generator().manual_seed(3))
    assert torch.equal(both, again)
    first = s.sample(model, prompts[:1], generator=torch.Generator().manual_seed(3))
    assert torch.equal(first[0], both[0])
    other = s.sample(model, prompts, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(other, both)


def test_prompts_of_different_lengths_match_single_runs(model):
    s = LLaDASampler(steps=4, gen_length=8, block_length=4, temperature=0.0)
    batch = s.sample(model, [[5, 6, 7, 8, 9], [10, 11]], generator=torch.Generator().manual_seed(0))
    alone = s.sample(model, [[10, 11]], generator=torch.Generator().manual_seed(0))
    assert batch[1, :3].tolist() == [0, 0, 0]  # left padding
    assert torch.equal(batch[1, 3:], alone[0])


def test_dream_per_step_counts(model):
    s = DreamSampler(steps=5, gen_length=16, alg="entropy", temperature=1.0)
    counts = s.transfer_counts(16)
    assert counts == [3, 3, 3, 3, 4] and sum(counts) == 16
    prompts = [[5, 6], [7, 8]]
    x0, _, _ = prepare_prompts(prompts, 16, MASK, 0)
    rec = Recorder(x0)
    out = s.sample(model, prompts, generator=torch.Generator().manual_seed(0), callback=rec)
    assert [int(n.sum(1)[0]) for n in rec.steps] == counts
    assert not bool((out == MASK).any())


@pytest.mark.parametrize("alg", DREAM_ALGS)
def test_dream_algs_complete_and_deterministic(model, alg):
    kw = dict(steps=4, gen_length=12, alg=alg, temperature=0.7, top_p=0.9, top_k=10)
    if alg == "topk_margin":
        kw["alg_temp"] = 0.5
    s = DreamSampler(**kw)
    prompts = [[5, 6, 7], [9, 10, 11]]
    a = s.sample(model, prompts, generator=torch.Generator().manual_seed(1))
    b = s.sample(model, prompts[1:], generator=torch.Generator().manual_seed(1))
    assert not bool((a == MASK).any())
    # per-sample generators: row 0 of a fresh run equals row 0 of the batch
    c = s.sample(model, prompts[:1], generator=torch.Generator().manual_seed(1))
    assert torch.equal(c[0], a[0])
    assert b.shape == (1, 15)


def test_exact_one_token_per_forward(model):
    s = ExactSampler(gen_length=6, temperature=1.0)
    x0, _, _ = prepare_prompts([[5, 6]], 6, MASK, 0)
    rec = Recorder(x0)
    out = s.sample(model, [[5, 6]], generator=torch.Generator().manual_seed(0), callback=rec)
    assert s.stats.full_forwards == 6 and all(int(n.sum()) == 1 for n in rec.steps)
    assert not bool((out == MASK).any())


def test_eos_stop_fills_after_eos():
    class EOSModel(torch.nn.Module):
        """Always most confident about EOS (id 1) at the first generated position."""
        mask_id, eos_id, pad_id = MASK, 1, 0

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, attention_mask=None):
            logits = torch.zeros(*x.shape, 10)
            logits[..., 5] = 1.0
            logits[:, 2, 1] = 50.0
            return logits

    s = LLaDASampler(steps=4, gen_length=8, block_length=4, temperature=0.0, eos="stop")
    out = s.sample(EOSModel(), [[7, 8]], generator=torch.Generator().manual_seed(0))
    assert out[0].tolist() == [7, 8, 1, 1, 1, 1, 1, 1, 1, 1]
    assert s.stats.full_forwards == 2  # the second block was never computed


@pytest.mark.parametrize("kwargs", [
    dict(gen_length=10, block_length=4, steps=5),
    dict(gen_length=8, block_length=4, steps=0),
    dict(gen_length=8, block_length=4, steps=9),
    dict(gen_length=8, block_length=4, steps=4, remasking="sideways"),
    dict(gen_length=8, block_length=4, steps=3),
])
def test_llada_bad_input(kwargs):
    with pytest.raises(UserError):
        LLaDASampler(**kwargs)


def test_bad_input_other(model):
    with pytest.raises(UserError):
        DreamSampler(steps=4, gen_length=8, alg="nope")
    with pytest.raises(UserError):
        LLaDASampler(steps=4, gen_length=8, block_length=8, cfg_scale=1.0).sample(model, [[]])


def test_mask_token_gets_no_probability_and_generate_matches_sampler(model):
    """MDLM's SUBS: the model itself never predicts [MASK]; generate() (LLaDA's names) drives LLaDASampler."""
    from mgen.samplers.dlm import generate

    logits = model(torch.tensor([[5, MASK, MASK, 7]]))
    assert bool((logits.softmax(-1)[..., MASK] == 0).all())
    prompts = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]])
    attn = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    out = generate(model, prompts, attn, steps=4, gen_length=8, block_length=4, temperature=1.0,
                   remasking="random", generator=torch.Generator().manual_seed(3))
    ref = LLaDASampler(steps=4, gen_length=8, block_length=4, temperature=1.0, remasking="random").sample(
        model, [[5, 6], [7, 8, 9, 10]], generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, ref) and out.shape == (2, 12)
    assert LLaDASampler().steps == 128 and LLaDASampler().block_length == 128 and LLaDASampler().cfg_scale == 0.0


def test_dream_counts_use_float32_grid_and_alg_temp(model):
    """Dream computes int(n·(1 − s/t)) with float32 tensors (generation_utils.py): the count follows that rounding."""
    from mgen.samplers.dlm import dream_transfer_count

    s = DreamSampler(steps=7, gen_length=24, alg="maskgit_plus")
    ts = torch.linspace(1, 1e-3, 8)
    for i in range(7):
        for n in (1, 5, 24, 100):
            want = n if i == 6 else int(torch.tensor(float(n)) * (1 - ts[i + 1] / ts[i]))
            assert dream_transfer_count(n, ts[i], ts[i + 1], i == 6) == want
    assert sum(s.transfer_counts(24)) == 24
    a = DreamSampler(steps=4, gen_length=8, alg="entropy", alg_temp=0.5, temperature=0.7, top_p=0.9, top_k=5)
    x1 = a.sample(model, [[5, 6, 7]], generator=torch.Generator().manual_seed(1))
    x2 = a.sample(model, [[9], [5, 6, 7]], generator=torch.Generator().manual_seed(1))
    assert not bool((x1 == MASK).any()) and not bool((x2 == MASK).any())
