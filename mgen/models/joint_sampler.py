"""ADJUST's approximate joint sampling layer (Bansal & Sanghavi 2025, "Enabling Approximate Joint Sampling in
Diffusion LMs", arXiv:2509.22738, §3): one light decoder layer on top of a *frozen* masked diffusion LM.

After one full forward of the base model, the layer is run once per newly unmasked token to refresh the
hidden states (and so the logits) so that the next token is sampled conditioned on the ones just chosen:

    z   = Linear_{2d→d}( [ RMSNorm(h_prev) ; RMSNorm(E(x)) ] )      h_prev: base final hidden states (after its
    z   = DecoderLayer(z)   (bidirectional attention + MLP, the       final norm; shifted like its logits),
                             base architecture's block)              E(x): frozen base token embeddings of the
    h   = h_prev + RMSNorm(z)                                         whole current sequence
    q   = softmax(LMHead_base(h))                                     (frozen base head)

One set of weights is shared across passes; each pass's h feeds the next. Training (``JointTask``) minimises
KL(p_base ‖ q) on the positions still masked after an unroll of n passes along trajectories of the base model
decoding one token per full forward (lowest entropy first), with n ~ softmax(0.5^0, 0.5^1, …) over 1..k−1 and
back-propagation through the unroll.

Our choice (not from the paper): the final RMSNorm's gain starts at zero, so an untrained layer returns h_prev
exactly and reproduces marginal sampling; training moves it away from there.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mgen.errors import UserError, WeightsError
from mgen.models.dlm import DLMBlock, DLMConfig, MaskedDiffusionLM, key_mask


class JointSamplerLayer(nn.Module):
    """The ADJUST sampler layer for a base model with config ``base_cfg`` (see module docstring)."""

    def __init__(self, base_cfg: DLMConfig, base_fingerprint: str = "", base_name: str = "") -> None:
        super().__init__()
        d = base_cfg.dim
        self.base_cfg = base_cfg
        self.base_fingerprint = base_fingerprint
        self.base_name = base_name
        self.norm_h = nn.RMSNorm(d, eps=base_cfg.norm_eps)
        self.norm_e = nn.RMSNorm(d, eps=base_cfg.norm_eps)
        self.proj = nn.Linear(2 * d, d, bias=False)
        self.block = DLMBlock(base_cfg)
        self.norm = nn.RMSNorm(d, eps=base_cfg.norm_eps)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.norm.weight)

    def forward(self, base: MaskedDiffusionLM, hidden: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One sampler pass: (logits, new hidden) for the current sequence ``input_ids``."""
        b, n = input_ids.shape
        with torch.no_grad():
            e = base.embed_tokens(input_ids)
        z = self.proj(torch.cat([self.norm_h(hidden), self.norm_e(e)], dim=-1))
        rope = base.rope_for(attention_mask, b, n, z.device, z.dtype)
        z = self.block(z, key_mask(attention_mask), rope)
        h = hidden + self.norm(z)
        return base.head(h), h

    def check_base(self, base: MaskedDiffusionLM) -> None:
        """Refuse a base model other than the one this layer was trained on (stored weights fingerprint)."""
        if getattr(base, "cfg", None) is None or base.cfg.dim != self.base_cfg.dim or \
                base.cfg.vocab_size != self.base_cfg.vocab_size:
            raise UserError("this joint sampler was trained for another base model (different width or vocabulary)")
        if self.base_fingerprint and base.fingerprint() != self.base_fingerprint:
            raise UserError(f"this joint sampler was trained for another base model "
                            f"({self.base_name or 'unknown'}, fingerprint {self.base_fingerprint}; "
                            f"the given model's is {base.fingerprint()})")


def save_joint(layer: JointSamplerLayer, path: str, dtype: torch.dtype = torch.float16) -> None:
    from mgen.hub import save_safetensors

    state = {k: v.detach().to(dtype).contiguous() for k, v in layer.state_dict().items()}
    save_safetensors(state, path, metadata={
        "mgen_family": "joint-sampler", "mgen_base_arch": json.dumps(layer.base_cfg.to_dict()),
        "mgen_base_fingerprint": layer.base_fingerprint, "mgen_base_name": layer.base_name})


def load_joint(path: str) -> JointSamplerLayer:
    from mgen.hub import load_checkpoint
    from mgen.models.dlm import read_metadata

    meta = read_metadata(path)
    if meta.get("mgen_family") != "joint-sampler":
        raise WeightsError(f"{path} is not a joint sampler layer (no mgen joint-sampler metadata)")
    layer = JointSamplerLayer(DLMConfig.from_mapping(json.loads(meta["mgen_base_arch"])),
                              meta.get("mgen_base_fingerprint", ""), meta.get("mgen_base_name", ""))
    state = {k: v.float() for k, v in load_checkpoint(path).items()}
    missing, unexpected = layer.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(f"{path}: weights do not match the joint sampler layer")
    return layer.eval()


# -- training ---------------------------------------------------------------------------------------------------
def unroll_depth_probs(k: int) -> torch.Tensor:
    """P(n) for n = 1..k−1: softmax of (0.5^0, 0.5^1, …) (ADJUST training, per batch)."""
    if k < 2:
        raise UserError("a joint sampler needs tokens_per_step k >= 2 to train")
    return torch.softmax(torch.tensor([0.5 ** i for i in range(k - 1)]), 0)


@torch.no_grad()
def make_trajectories(base: MaskedDiffusionLM, windows: torch.Tensor, prompt_len: int, gen_len: int,
                      generator: torch.Generator, temperature: float = 1.0, batch_size: int = 64
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode the last ``gen_len`` tokens of each window one per full forward (lowest entropy first).

    Returns (final sequences (N, prompt_len+gen_len), order (N, gen_len): the position unmasked at each step).
    """
    from mgen.samplers.dlm import ExactSampler

    prompts = windows[:, :prompt_len]
    finals, orders = [], []
    for s in range(0, prompts.shape[0], batch_size):
        rows = prompts[s:s + batch_size]
        order = torch.zeros(rows.shape[0], gen_len, dtype=torch.long)
        prev = {"x": None}

        def record(step: int, x: torch.Tensor, prev=prev, order=order) -> None:
            newly = (x != base.mask_id) & (prev["x"] == base.mask_id)
            order[:, step - 1] = newly.float().argmax(1)
            prev["x"] = x.clone()

        from mgen.samplers.dlm import prepare_prompts

        prev["x"], _, _ = prepare_prompts(rows, gen_len, base.mask_id, base.pad_id)
        x = ExactSampler(gen_length=gen_len, order="entropy", temperature=temperature).sample(
            base, rows, generator=generator, callback=record)
        finals.append(x)
        orders.append(order)
    return torch.cat(finals), torch.cat(orders)


def state_at(final: torch.Tensor, order: torch.Tensor, step: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Sequences after ``step`` (B,) unmaskings: positions order[step:] masked again."""
    gen_len = order.shape[1]
    later = torch.arange(gen_len, device=order.device)[None] >= step[:, None]  # (B, G)
    x = final.clone()
    pos = order.masked_fill(~later, 0)
    masked = torch.zeros_like(final, dtype=torch.bool).scatter(1, pos, later)
    return x.masked_fill(masked, mask_id)


class JointTask:
    """Trainer task: unrolled KL(p_base ‖ q_sampler) on still-masked positions (module docstring)."""

    def __init__(self, layer: JointSamplerLayer, base: MaskedDiffusionLM, k: int) -> None:
        self.model = layer
        self.base = base.eval().requires_grad_(False)
        self.k = k
        self.depth_probs = unroll_depth_probs(k)

    def loss(self, model: nn.Module, batch: Sequence[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        final, order = batch
        b, gen_len = order.shape
        n = int(torch.multinomial(self.depth_probs, 1, generator=generator)) + 1
        s = torch.randint(0, gen_len - n + 1, (b,), generator=generator)
        mask_id = self.base.mask_id
        with torch.no_grad():
            _, h = self.base.forward_with_hidden(state_at(final, order, s, mask_id))
            target_x = state_at(final, order, s + n, mask_id)
            p_log = self.base(target_x).float().log_softmax(-1)
        for j in range(1, n + 1):
            logits, h = model(self.base, h, state_at(final, order, s + j, mask_id))
        q_log = logits.float().log_softmax(-1)
        still = target_x == mask_id
        kl = (p_log.exp() * (p_log - q_log)).sum(-1)
        return kl[still].mean() if bool(still.any()) else kl.sum() * 0


JOINT_ARCH_KEYS = {"base", "tokens_per_step", "prompt_len", "gen_len", "num_trajectories", "temperature"}


def load_base(name_or_path: str) -> tuple[MaskedDiffusionLM, Any]:
    """The frozen base model (registry name or our safetensors file) — float32, eval."""
    from mgen import hub, registry
    from mgen.models.dlm import load_dlm_file

    res = hub.resolve(name_or_path)
    arch = res.entry.arch if res.entry is not None and res.entry.family == "dlm" else None
    return load_dlm_file(str(res.path), arch), res.entry


def build_joint_training(entry, out_dir=None, max_steps=None, batch_size=None, seed=None):
    """Trainer for ``configs/joint-<base>.yaml``: trajectories of the base (cached in out_dir), then the layer."""
    from pathlib import Path

    from mgen.models.dlm import build_text_data
    from mgen.train.trainer import TrainConfig, Trainer

    unknown = set(entry.arch) - JOINT_ARCH_KEYS
    if unknown:
        raise UserError(f"unknown joint sampler arch keys {sorted(unknown)}; allowed: {sorted(JOINT_ARCH_KEYS)}")
    a = {"tokens_per_step": 4, "prompt_len": 16, "gen_len": 32, "num_trajectories": 512, "temperature": 1.0,
         **entry.arch}
    base, base_entry = load_base(a["base"])
    if base_entry is None:
        raise UserError("the joint sampler's base must be a registered dlm model (its data comes from its config)")
    tc = TrainConfig.from_mapping(entry.train, out_dir=out_dir or f"runs/{entry.name}", max_steps=max_steps,
                                  batch_size=batch_size, seed=seed)
    cache = Path(tc.out_dir) / "trajectories.pt"
    fp = base.fingerprint()
    data = torch.load(cache, weights_only=True) if cache.exists() else None
    if data is None or data.get("fingerprint") != fp:
        train, _, _ = build_text_data(base_entry, base.cfg.seq_len)
        g = torch.Generator().manual_seed(tc.seed)
        idx = torch.randperm(train.shape[0], generator=g)[: a["num_trajectories"]]
        windows = train[idx, : a["prompt_len"] + a["gen_len"]]
        final, order = make_trajectories(base, windows, a["prompt_len"], a["gen_len"], g, a["temperature"])
        cache.parent.mkdir(parents=True, exist_ok=True)
        data = {"final": final, "order": order, "fingerprint": fp}
        torch.save(data, cache)
    torch.manual_seed(tc.seed)
    layer = JointSamplerLayer(base.cfg, fp, base_entry.name)
    return Trainer(JointTask(layer, base, int(a["tokens_per_step"])), [data["final"], data["order"]], tc)
