"""dlm joint sampling (ADJUST): k=1 is exact decoding, the untrained layer is marginal sampling, costs,
base-model fingerprint check, training on trajectories lowers the KL and resumes."""

from __future__ import annotations

import pytest
import torch

from mgen.errors import UserError
from mgen.models.dlm import DLMConfig, MaskedDiffusionLM
from mgen.models.joint_sampler import (JointSamplerLayer, JointTask, load_joint, make_trajectories, save_joint,
                                       state_at, unroll_depth_probs)
from mgen.samplers.dlm import ExactSampler
from mgen.samplers.joint import JointSampler

CFG = DLMConfig(vocab_size=30, dim=32, depth=2, num_heads=2, mlp_hidden=48)


@pytest.fixture(scope="module")
def base() -> MaskedDiffusionLM:
    torch.manual_seed(0)
    m = MaskedDiffusionLM(CFG).eval()
    with torch.no_grad():  # sharper logits than the 0.02-std init, so that joint and marginal differ visibly
        m.tok_emb.weight.mul_(20)
    return m


def trained_looking_layer(base) -> JointSamplerLayer:
    torch.manual_seed(1)
    layer = JointSamplerLayer(CFG, base.fingerprint(), "tiny")
    with torch.no_grad():
        layer.norm.weight.fill_(1.0)
    return layer.eval()


def test_k1_equals_exact_sampling(base):
    prompts = [[5, 6, 7], [8, 9, 10]]
    exact = ExactSampler(gen_length=8, order="entropy", temperature=1.0).sample(
        base, prompts, generator=torch.Generator().manual_seed(0))
    s = JointSampler(gen_length=8, tokens_per_step=1, temperature=1.0)
    joint = s.sample(base, prompts, layer=trained_looking_layer(base), generator=torch.Generator().manual_seed(0))
    assert torch.equal(exact, joint)
    assert s.stats.full_forwards == 8 and s.stats.sampler_passes == 0


def test_untrained_layer_is_marginal_and_costs(base):
    prompts = [[5, 6, 7]]
    s = JointSampler(gen_length=8, tokens_per_step=4, temperature=1.0)
    marginal = s.sample(base, prompts, generator=torch.Generator().manual_seed(2))
    assert s.stats.full_forwards == 2 and s.stats.sampler_passes == 0
    fresh = JointSamplerLayer(CFG, base.fingerprint()).eval()  # final norm gain 0: the layer is the identity
    same = s.sample(base, prompts, layer=fresh, generator=torch.Generator().manual_seed(2))
    assert torch.equal(marginal, same)
    assert s.stats.full_forwards == 2 and s.stats.sampler_passes == 6  # k-1 passes per full forward
    joint = s.sample(base, prompts, layer=trained_looking_layer(base), generator=torch.Generator().manual_seed(2))
    assert not bool((joint == base.mask_id).any())


def test_layer_for_another_base_is_refused(base, tmp_path):
    layer = trained_looking_layer(base)
    save_joint(layer, str(tmp_path / "j.safetensors"), dtype=torch.float32)
    loaded = load_joint(str(tmp_path / "j.safetensors"))
    assert loaded.base_fingerprint == base.fingerprint() and loaded.base_name == "tiny"
    torch.manual_seed(5)
    other = MaskedDiffusionLM(CFG).eval()
    with pytest.raises(UserError, match="another base model"):
        JointSampler(gen_length=4, tokens_per_step=2).sample(other, [[5]], layer=loaded)


def test_state_at_and_depth_probs():
    final = torch.tensor([[9, 8, 7, 6, 5]])
    order = torch.tensor([[4, 2, 3]])
    assert state_at(final, order, torch.tensor([0]), 1).tolist() == [[9, 8, 1, 1, 1]]
    assert state_at(final, order, torch.tensor([1]), 1).tolist() == [[9, 8, 1, 1, 5]]
    assert state_at(final, order, torch.tensor([3]), 1).tolist() == [[9, 8, 7, 6, 5]]
    p = unroll_depth_probs(4)
    assert p.shape == (3,) and p[0] > p[1] > p[2]
    with pytest.raises(UserError):
        unroll_depth_probs(1)


def test_training_lowers_kl_and_resumes(base, tmp_path):
    from mgen.train.trainer import TrainConfig, Trainer

    g = torch.Generator().manual_seed(0)
    windows = torch.randint(3, 30, (32, 12), generator=g)
    final, order = make_trajectories(base, windows, 4, 8, g)
    assert sorted(order[0].tolist()) == list(range(4, 12))

    def make():
        torch.manual_seed(0)
        layer = JointSamplerLayer(CFG, base.fingerprint())
        cfg = TrainConfig.from_mapping(dict(lr=3e-3, batch_size=16, max_steps=20, checkpoint_every=10, log_every=5,
                                            progress=False), out_dir=str(tmp_path / "run"))
        return Trainer(JointTask(layer, base, 4), [final, order], cfg)

    tr = make()
    task = tr.task

    def eval_loss(layer):
        gen = torch.Generator().manual_seed(9)
        with torch.no_grad():
            return sum(float(task.loss(layer, [final, order], gen)) for _ in range(6)) / 6

    before = eval_loss(tr.unwrapped)
    tr.train(stop_after=10)
    tr2 = make()
    tr2.train(resume=True)
    assert tr2.step == 20
    after = eval_loss(tr2.unwrapped)
    assert after < 0.8 * before


def test_sampler_distributions_are_normalised_and_log_q_matches_replay():
    """Over every string of a small vocabulary, exact / marginal / ADJUST path probabilities sum to 1, and the
    log q the sampler records while sampling is the one the benchmark's replay computes."""
    import itertools

    from mgen.bench.joint import exact_log_prob, replay_log_q

    cfg = DLMConfig(vocab_size=8, dim=32, depth=1, num_heads=2, mlp_hidden=32)
    torch.manual_seed(3)
    small = MaskedDiffusionLM(cfg).eval()
    with torch.no_grad():
        small.tok_emb.weight.mul_(30)
    layer = JointSamplerLayer(cfg, small.fingerprint()).eval()
    with torch.no_grad():
        layer.norm.weight.fill_(1.0)
    allx = torch.tensor([[5, *t] for t in itertools.product(range(8), repeat=3)])
    allx = allx[(allx[:, 1:] != small.mask_id).all(1)]
    assert float(exact_log_prob(small, allx, 1).exp().sum()) == pytest.approx(1.0, abs=1e-6)
    for lay in (None, layer):
        assert float(replay_log_q(small, lay, allx, 1, 2).exp().sum()) == pytest.approx(1.0, abs=1e-6)
    s = JointSampler(gen_length=3, tokens_per_step=2, temperature=1.0)
    x = s.sample(small, [[5]] * 4, layer=layer, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(s.log_q, replay_log_q(small, layer, x, 1, 2))
