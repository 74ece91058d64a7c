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

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from mgen import hub, registry
from mgen.errors import UserError, WeightsError
from mgen.fileio import atomic_write
from mgen.models.dlm import (DLMBlock, DLMConfig, MaskedDiffusionLM, _as_device, _is_diffusers_folder, _module_to,
                             key_mask, load_dlm_file, read_metadata)
from mgen.samplers.dlm import ExactSampler, prepare_prompts

#: the training settings a joint layer's registry ``arch:`` holds next to ``base`` (configs/joint-dlm-text.yaml)
JOINT_DEFAULTS: dict[str, Any] = {"tokens_per_step": 4, "prompt_len": 16, "gen_len": 32, "num_trajectories": 512,
                                  "temperature": 1.0}
JOINT_ARCH_KEYS = {"base", *JOINT_DEFAULTS}


class JointSamplerLayer(ModelMixin, ConfigMixin):
    """The ADJUST sampler layer for a base model whose arch is ``base_arch`` (see module docstring).

    A diffusers ``ModelMixin + ConfigMixin``. Two ways to build one with random weights:
    ``JointSamplerLayer(base_arch={...dlm arch...}, base_fingerprint=..., base_name=...)``, or from a registry
    entry's ``arch:`` mapping, ``JointSamplerLayer(**entry.arch)`` / :meth:`from_arch` (``base`` names the registered
    base model, whose arch is looked up). The training settings (``tokens_per_step``, …) are kept in the config;
    ``tokens_per_step`` is the pipeline's default k.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, base_arch: Mapping[str, Any] | DLMConfig | None = None, base_fingerprint: str = "",
                 base_name: str = "", base: str | None = None, tokens_per_step: int = 4, prompt_len: int = 16,
                 gen_len: int = 32, num_trajectories: int = 512, temperature: float = 1.0) -> None:
        super().__init__()
        if base_arch is None:
            if not base:
                raise UserError("a joint sampler layer needs its base model: base_arch (an arch mapping) or base "
                                "(a registered dlm name)")
            base_arch = registry.get(str(base)).arch
            base_name = base_name or str(base)
        base_cfg = base_arch if isinstance(base_arch, DLMConfig) else DLMConfig.from_mapping(dict(base_arch))
        self.register_to_config(base_arch=base_cfg.to_dict(), base_name=base_name)
        d = base_cfg.dim
        self.base_cfg = base_cfg
        self.base_fingerprint = base_fingerprint
        self.base_name = base_name
        #: the generation length the layer was trained on (None when a bare file does not say; see load_joint)
        self.trained_gen_length: int | None = int(gen_len)
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

    @classmethod
    def from_arch(cls, arch: Mapping[str, Any]) -> "JointSamplerLayer":
        """Random weights for a registry entry's ``arch:`` (``base`` + training settings; unknown keys refused)."""
        unknown = set(arch) - JOINT_ARCH_KEYS - {"base_arch", "base_fingerprint", "base_name"}
        if unknown:
            raise UserError(f"unknown joint sampler arch keys {sorted(unknown)}; allowed: {sorted(JOINT_ARCH_KEYS)}")
        return cls(**dict(arch))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, config: Any = None,
                        **kwargs: Any) -> "JointSamplerLayer":
        """A saved diffusers folder, our safetensors file (base arch and fingerprint in its metadata) or a
        registry name (``joint-dlm-text``). ``torch_dtype`` honoured; other loader kwargs accepted."""
        torch_dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)  # diffusers 0.42 name: dtype
        kwargs.pop("torch_dtype", None)
        path = Path(os.fspath(pretrained_model_name_or_path)).expanduser()
        sub = kwargs.get("subfolder")
        if (path / sub if sub else path).is_dir() and _is_diffusers_folder(path / sub if sub else path):
            layer = super().from_pretrained(os.fspath(path), **kwargs)
        else:
            res = hub.resolve(pretrained_model_name_or_path, what="joint sampler")
            if res.path.is_dir():
                raise WeightsError(f"{res.path}: not a saved JointSamplerLayer folder")
            arch = res.entry.arch if res.entry is not None else _joint_arch(config)
            settings = {k: v for k, v in arch.items() if k in JOINT_DEFAULTS}
            layer = load_joint(str(res.path), **settings)
            if _as_device(kwargs.get("device_map")) is not None:
                layer = layer.to(_as_device(kwargs.get("device_map")))
        if torch_dtype is not None:
            layer = layer.to(torch_dtype)
        return layer.eval()

    def to(self, *args: Any, **kwargs: Any) -> "JointSamplerLayer":
        return _module_to(self, *args, **kwargs)  # see mgen.models.dlm._module_to

    def check_base(self, base: MaskedDiffusionLM) -> None:
        """Refuse a base model other than the one this layer was trained on (stored weights fingerprint)."""
        if getattr(base, "cfg", None) is None or base.cfg.dim != self.base_cfg.dim or \
                base.cfg.vocab_size != self.base_cfg.vocab_size:
            raise UserError("this joint sampler was trained for another base model (different width or vocabulary)")
        if self.base_fingerprint and base.fingerprint() != self.base_fingerprint:
            raise UserError(f"this joint sampler was trained for another base model "
                            f"({self.base_name or 'unknown'}, fingerprint {self.base_fingerprint}; "
                            f"the given model's is {base.fingerprint()})")


def _joint_arch(config: Any) -> dict[str, Any]:
    """A joint layer's registry ``arch`` from ``config`` (a registry name, a YAML path or a mapping); {} for None."""
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    p = Path(os.fspath(config)).expanduser()
    entry = registry.load_config_file(p) if p.suffix in (".yaml", ".yml") and p.exists() else registry.get(str(config))
    return dict(entry.arch)


def save_joint(layer: JointSamplerLayer, path: str, dtype: torch.dtype = torch.float16) -> None:
    """One safetensors file with the base's arch and fingerprint in its metadata (the shipped format)."""
    state = {k: v.detach().to(dtype).contiguous() for k, v in layer.state_dict().items()}
    hub.save_safetensors(state, path, metadata={
        "mgen_family": "joint-sampler", "mgen_base_arch": json.dumps(layer.base_cfg.to_dict()),
        "mgen_base_fingerprint": layer.base_fingerprint, "mgen_base_name": layer.base_name,
        **({"mgen_gen_len": str(layer.trained_gen_length)} if layer.trained_gen_length else {})})


def load_joint(path: str, **settings: Any) -> JointSamplerLayer:
    """Our safetensors file (``save_joint``) as a float32 layer; ``settings``: the entry's training settings."""
    meta = read_metadata(path)
    if meta.get("mgen_family") != "joint-sampler":
        raise WeightsError(f"{path} is not a joint sampler layer (no mgen joint-sampler metadata)")
    known = "gen_len" in settings or "mgen_gen_len" in meta  # the entry's arch, else the file's metadata
    if "gen_len" not in settings and "mgen_gen_len" in meta:
        settings = {**settings, "gen_len": int(meta["mgen_gen_len"])}
    layer = JointSamplerLayer(base_arch=json.loads(meta["mgen_base_arch"]),
                              base_fingerprint=meta.get("mgen_base_fingerprint", ""),
                              base_name=meta.get("mgen_base_name", ""), **settings)
    if not known:
        layer.trained_gen_length = None
    state = {k: v.float() for k, v in hub.load_checkpoint(path).items()}
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
    prompts = windows[:, :prompt_len]
    finals, orders = [], []
    for s in range(0, prompts.shape[0], batch_size):
        rows = prompts[s:s + batch_size]
        order = torch.zeros(rows.shape[0], gen_len, dtype=torch.long)
        prev = {"x": None}

        def record(step: int, timestep: float, state: dict[str, torch.Tensor], prev=prev, order=order) -> None:
            x = state["x"]
            newly = (x != base.mask_id) & (prev["x"] == base.mask_id)
            order[:, step] = newly.float().argmax(1).cpu()
            prev["x"] = x.clone()

        prev["x"], _, _ = prepare_prompts(rows, gen_len, base.mask_id, base.pad_id, base.device)
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


def load_base(name_or_path: str) -> tuple[MaskedDiffusionLM, Any]:
    """The frozen base model (registry name, our safetensors file or a saved folder) — float32, eval — and its
    registry entry (None for a path)."""
    p = Path(str(name_or_path)).expanduser()
    if p.is_dir():
        return MaskedDiffusionLM.from_pretrained(p), None
    res = hub.resolve(name_or_path)
    if res.entry is not None and "base" in res.entry.arch:
        raise UserError(f"{res.entry.name} is a joint sampler layer, not a base language model")
    return load_dlm_file(str(res.path), res.entry.arch if res.entry is not None else None), res.entry


def build_joint_training(entry: Any, factory: Any) -> tuple[Any, Any, Any]:
    """(task, data, config) of ``configs/joint-<base>.yaml`` for the one trainer (:mod:`mgen.train.builder`):
    trajectories of the base (cached in the run folder), then the layer."""

    unknown = set(entry.arch) - JOINT_ARCH_KEYS
    if unknown:
        raise UserError(f"unknown joint sampler arch keys {sorted(unknown)}; allowed: {sorted(JOINT_ARCH_KEYS)}")
    a = {**JOINT_DEFAULTS, **entry.arch}
    base, base_entry = load_base(a["base"])
    if base_entry is None:
        raise UserError("the joint sampler's base must be a registered dlm model (its data comes from its config)")
    tc = factory.config(entry.train)
    cache = Path(tc.out_dir) / "trajectories.pt"
    fp = base.fingerprint()
    data = torch.load(cache, weights_only=True) if cache.exists() else None
    if data is None or data.get("fingerprint") != fp:
        train, _, _ = factory.data.text_windows(base_entry, base.cfg.seq_len)
        g = torch.Generator().manual_seed(tc.seed)
        idx = torch.randperm(train.shape[0], generator=g)[: a["num_trajectories"]]
        windows = train[idx, : a["prompt_len"] + a["gen_len"]]
        final, order = make_trajectories(base, windows, a["prompt_len"], a["gen_len"], g, a["temperature"])
        data = {"final": final, "order": order, "fingerprint": fp}
        with atomic_write(cache) as tmp:
            torch.save(data, tmp)
    torch.manual_seed(tc.seed)
    layer = JointSamplerLayer(base_arch=base.cfg.to_dict(), base_fingerprint=fp, base_name=base_entry.name,
                              **{k: a[k] for k in JOINT_DEFAULTS})
    return JointTask(layer, base, int(a["tokens_per_step"])), [data["final"], data["order"]], tc
