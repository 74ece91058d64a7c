"""Text generation with masked diffusion LMs: :class:`DLMPipeline` (a ``diffusers.DiffusionPipeline``) and the
``mgen sample`` text path (:func:`add_text_arguments` / :func:`run_text`).

Argument names follow diffusers' ``LLaDA2Pipeline`` (diffusers 0.42.1, with ``BlockRefinementScheduler``) where
they mean the same thing (``prompt``, ``input_ids``, ``gen_length``, ``block_length``, ``num_inference_steps``,
``temperature``, ``top_p``, ``top_k``, ``eos_early_stop``, ``generator``, ``output_type``, ``return_dict``; output
``sequences`` / ``texts``). Where we differ (checked against diffusers 0.42.1):

- ``num_inference_steps``: theirs is *per block* (``BlockRefinementScheduler.get_num_transfer_tokens(block_length,
  steps)``); ours is the *total*, split evenly over the blocks (LLaDA generate.py's ``steps``), default 32 both.
- ``gen_length``: default 128 here, 2048 there. ``block_length``: ours defaults to ``gen_length`` (one block, as
  generate.py); theirs to the scheduler's 32, and their blocks are aligned to absolute positions (the prompt
  fills the first blocks); ours start right after the prompt (generate.py).
- ``eos_early_stop``: default False here (generate.py decodes every position), True there.
- Decoding rule: theirs commits every token above a confidence ``threshold`` (0.7; ``editing_threshold``,
  ``max_post_steps``, ``minimal_topk``, ``sampling_method``) — LLaDA2's refinement; ours follows LLaDA's
  generate.py / Dream's generation_utils.py exactly, chosen with ``sampler`` = ``llada`` | ``dream`` | ``exact``
  | ``joint`` (:mod:`mgen.samplers.dlm`, :mod:`mgen.samplers.joint`), plus ``remasking``, ``cfg_scale``, ``alg``,
  ``alg_temp``, ``tokens_per_step``. No chat template (``use_chat_template`` / ``messages``): these are base
  models. ``eos_token_id`` / ``mask_token_id`` come from the model; ``callback(step, x)`` and ``stream(step,
  texts)`` replace ``callback_on_step_end``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from mgen.errors import UserError, WeightsError


# -- loading -------------------------------------------------------------------------------------------------------
def load_text_model(model: str, weights: str | None = None, trust_remote_code: bool = False,
                    device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Any]:
    """(generator, tokenizer) for a registry name (family dlm), our safetensors file, or a transformers folder."""
    from mgen import hub
    from mgen.models.dlm import DLMConfig, load_dlm_file, read_metadata, tokenizer_path
    from mgen.models.dlm_data import TextTokenizer

    p = Path(str(model)).expanduser()
    if weights is None and p.is_dir():
        from mgen.models.dlm_adapters import load_hf_dlm

        return load_hf_dlm(p, trust_remote_code=trust_remote_code, device=device)
    res = hub.resolve(model, weights)
    if res.entry is not None and res.entry.family != "dlm":
        raise UserError(f"{res.entry.name} is a {res.entry.family} model, not a text model")
    if res.entry is not None and "base" in res.entry.arch:
        raise UserError(f"{res.entry.name} is a joint sampler layer; pass it as --joint-sampler with its base model")
    if res.path.is_dir():
        from mgen.models.dlm_adapters import load_hf_dlm

        return load_hf_dlm(res.path, trust_remote_code=trust_remote_code, device=device)
    if res.entry is not None:
        arch = res.entry.arch
    else:
        meta = read_metadata(str(res.path))
        if "mgen_arch" not in meta:
            raise WeightsError(f"{res.path}: not an mgen dlm file (no arch metadata); pass --model NAME --weights FILE")
        arch = json.loads(meta["mgen_arch"])
    net = load_dlm_file(str(res.path), arch).to(device)
    tok_file = DLMConfig.from_mapping(arch).tokenizer_file
    local = res.path.parent / tok_file if tok_file else None
    tok = TextTokenizer.from_file(local if local is not None and local.exists() else tokenizer_path(tok_file))
    if tok.mask_id != net.mask_id:
        raise WeightsError(f"tokenizer mask id {tok.mask_id} does not match the model's {net.mask_id}")
    return net, tok


def is_text_model_path(p: Path) -> bool:
    """A transformers model folder (config.json with a ``model_type``, not a diffusers component) or an mgen
    dlm safetensors file (``mgen_family: dlm`` in its metadata)."""
    p = Path(p)
    if p.is_dir():
        try:
            cfg = json.loads((p / "config.json").read_text())
        except (OSError, ValueError):
            return False
        return isinstance(cfg, dict) and "model_type" in cfg and "_class_name" not in cfg
    if p.suffix == ".safetensors":
        from mgen.models.dlm import read_metadata

        try:
            return read_metadata(str(p)).get("mgen_family") == "dlm"
        except WeightsError:
            return False
    return False


def load_joint_layer(name_or_path: str):
    from mgen import hub
    from mgen.models.joint_sampler import load_joint

    return load_joint(str(hub.resolve(name_or_path, what="joint sampler").path))


# -- pipeline ------------------------------------------------------------------------------------------------------
@dataclass
class DLMPipelineOutput(BaseOutput):
    sequences: torch.LongTensor
    texts: list[str] | None = None


def make_sampler(sampler: str, gen_length: int, steps: int, block_length: int | None, temperature: float,
                 remasking: str = "low_confidence", cfg_scale: float = 0.0, alg: str = "entropy",
                 alg_temp: float | None = None, top_p: float | None = None, top_k: int | None = None,
                 eps: float = 1e-3, tokens_per_step: int = 1, eos: str = "none"):
    from mgen.samplers.dlm import DreamSampler, ExactSampler, LLaDASampler
    from mgen.samplers.joint import JointSampler

    if sampler == "llada":
        if top_p is not None or top_k is not None:
            raise UserError("top-p / top-k belong to the dream sampler (LLaDA samples with Gumbel-max)")
        return LLaDASampler(steps=steps, gen_length=gen_length, block_length=block_length or gen_length,
                            temperature=temperature, cfg_scale=cfg_scale, remasking=remasking, eos=eos)
    if sampler == "dream":
        return DreamSampler(steps=steps, gen_length=gen_length, eps=eps, alg=alg, alg_temp=alg_temp,
                            temperature=temperature, top_p=top_p, top_k=top_k, eos=eos)
    if sampler == "exact":
        return ExactSampler(gen_length=gen_length, block_length=block_length, temperature=temperature, eos=eos)
    if sampler == "joint":
        return JointSampler(gen_length=gen_length, tokens_per_step=tokens_per_step, block_length=block_length,
                            temperature=temperature, eos=eos)
    raise UserError(f"unknown sampler {sampler!r}; choose from llada, dream, exact, joint")


class DLMPipeline(DiffusionPipeline):
    """Prompt text → generated text with a masked diffusion LM (ours or an adapter) and a DLM sampler."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, joint_sampler: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.register_modules(model=model, tokenizer=tokenizer, joint_sampler=joint_sampler)

    @classmethod
    def from_name(cls, model: str, weights: str | None = None, joint_sampler: str | None = None,
                  trust_remote_code: bool = False, device: str = "cpu") -> "DLMPipeline":
        net, tok = load_text_model(model, weights, trust_remote_code, device)
        layer = load_joint_layer(joint_sampler).to(device) if joint_sampler else None
        if layer is not None:
            layer.check_base(net)
        return cls(net, tok, layer)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, input_ids: torch.LongTensor | list[list[int]] | None = None,
                 gen_length: int = 128, block_length: int | None = None, num_inference_steps: int = 32,
                 temperature: float = 0.0, top_p: float | None = None, top_k: int | None = None,
                 sampler: str | None = None, remasking: str = "low_confidence", alg: str | None = None,
                 alg_temp: float | None = None, cfg_scale: float = 0.0, tokens_per_step: int | None = None,
                 eos_early_stop: bool = False, eos: str | None = None, generator: torch.Generator | None = None,
                 output_type: str = "text", return_dict: bool = True,
                 callback: Callable[[int, torch.Tensor], None] | None = None,
                 stream: Callable[[int, list[str]], None] | None = None) -> DLMPipelineOutput | tuple:
        """Generate; ``stream(step, texts)`` receives the partly decoded texts after every step."""
        if input_ids is None:
            if prompt is None:
                raise UserError("give a prompt (or input_ids)")
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            if any(not p for p in prompts):
                raise UserError("empty prompt: give some text to continue")
            input_ids = [self.tokenizer.encode(p) for p in prompts]
        if sampler is None:
            sampler = "joint" if (self.joint_sampler is not None or tokens_per_step is not None) else \
                ("dream" if alg else "llada")
        if tokens_per_step is not None and (not isinstance(tokens_per_step, int) or tokens_per_step < 1):
            raise UserError(f"tokens_per_step must be a positive integer (got {tokens_per_step!r})")
        if sampler == "joint" and tokens_per_step is None:
            tokens_per_step = 4
        eos_mode = eos or ("stop" if eos_early_stop else "none")
        s = make_sampler(sampler, gen_length, num_inference_steps, block_length, temperature, remasking, cfg_scale,
                         alg or "entropy", alg_temp, top_p, top_k, tokens_per_step=tokens_per_step or 1, eos=eos_mode)
        cb = callback
        if stream is not None:
            p_len = max(len(r) for r in input_ids) if not isinstance(input_ids, torch.Tensor) else input_ids.shape[-1]

            def cb(step: int, x: torch.Tensor) -> None:
                if callback is not None:
                    callback(step, x)
                stream(step, [self.tokenizer.decode(r[p_len:].tolist()) for r in x])
        kwargs = {"layer": self.joint_sampler} if sampler == "joint" else {}
        seqs = s.sample(self.model, input_ids, generator=generator, callback=cb, **kwargs)
        self.last_stats = s.stats
        p_len = seqs.shape[1] - gen_length
        texts = [self.tokenizer.decode(r[p_len:].tolist()) for r in seqs] if output_type == "text" else None
        if not return_dict:
            return (seqs, texts)
        return DLMPipelineOutput(sequences=seqs, texts=texts)


# -- the `mgen sample` text path ----------------------------------------------------------------------------------
TEXT_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--model",), dict(help="dlm model name (e.g. dlm-text), our .safetensors file, or a transformers folder")),
    (("--weights",), dict(default=None, help="weights file for --model NAME")),
    (("--prompt",), dict(action="append", default=None, help="prompt text (repeat for a batch)")),
    (("--gen-length",), dict(type=int, default=None, help="tokens to generate (default: the model's config)")),
    (("--steps",), dict(type=int, default=None, help="sampling steps (total, split over blocks)")),
    (("--block-length",), dict(type=int, default=None, help="semi-autoregressive block length")),
    (("--temperature",), dict(type=float, default=None)),
    (("--remasking",), dict(default=None, help="llada: low_confidence or random")),
    (("--alg",), dict(default=None, help="dream: origin, maskgit_plus, topk_margin, entropy (selects dream)")),
    (("--alg-temp",), dict(type=float, default=None)),
    (("--top-p",), dict(type=float, default=None)),
    (("--top-k",), dict(type=int, default=None)),
    (("--cfg-scale",), dict(type=float, default=0.0)),
    (("--sampler",), dict(default=None, help="llada | dream | exact | joint (default: from the other options)")),
    (("--joint-sampler",), dict(default=None, help="ADJUST layer name or file (e.g. joint-dlm-text)")),
    (("--tokens-per-step",), dict(type=int, default=None, help="tokens unmasked per full forward (joint)")),
    (("--eos",), dict(default="stop", help="none | stop | pad: what happens after an end-of-text token")),
    (("--stream",), dict(action="store_true", help="print the partly decoded text after every step")),
    (("--trust-remote-code",), dict(action="store_true",
                                    help="allow a model folder's own Python code to run (LLaDA / Dream need it)")),
    (("--seed",), dict(type=int, default=0)),
    (("--device",), dict(default="cpu")),
    (("--out",), dict(default=None, help="also write the text to this file")),
]


def add_text_arguments(p: argparse.ArgumentParser) -> None:
    """Add the text options that ``p`` does not define yet (so an image ``sample`` parser can share them)."""
    have = set(p._option_string_actions)
    for flags, kw in TEXT_OPTIONS:
        if not set(flags) & have:
            p.add_argument(*flags, **kw)


def run_text(args: argparse.Namespace) -> int:
    """``mgen sample --model dlm-text --prompt …``: prints the generated text (``--out FILE`` writes it too)."""
    from mgen import registry

    model = getattr(args, "model", None)
    if not model:
        raise UserError("--model is required (e.g. --model dlm-text)")
    prompts = getattr(args, "prompt", None)
    if not prompts or any(not p.strip() for p in prompts):
        raise UserError("--prompt is required and must not be empty")
    defaults: dict[str, Any] = {}
    try:
        entry = registry.get(model) if not Path(model).exists() else None
    except UserError:
        entry = None
    if entry is not None:
        defaults = dict(entry.sampler)
    def pick(value, key, default):
        return value if value is not None else defaults.get(key, default)

    gen_length = pick(args.gen_length, "gen_length", 64)
    steps = pick(args.steps, "steps", gen_length)
    if args.steps is None and args.gen_length is not None and steps > gen_length:
        steps = gen_length
    block = pick(args.block_length, "block_length", None)
    if block is not None and args.block_length is None and gen_length % block:
        block = gen_length
    temperature = args.temperature if args.temperature is not None else defaults.get("temperature", 0.0)
    remasking = args.remasking or defaults.get("remasking", "low_confidence")
    pipe = DLMPipeline.from_name(model, args.weights, args.joint_sampler, args.trust_remote_code, args.device)
    stream = None
    if args.stream:
        def stream(step: int, texts: list[str]) -> None:
            sys.stderr.write(f"[step {step}] {texts[0]!r}\n")
    out = pipe(prompt=prompts, gen_length=gen_length, block_length=block, num_inference_steps=steps,
               temperature=temperature, top_p=args.top_p, top_k=args.top_k, sampler=args.sampler,
               remasking=remasking, alg=args.alg, alg_temp=args.alg_temp, cfg_scale=args.cfg_scale,
               tokens_per_step=args.tokens_per_step, eos=args.eos,
               generator=torch.Generator().manual_seed(args.seed), stream=stream)
    texts = [p + t for p, t in zip(prompts, out.texts)]
    joined = "\n\n".join(texts)
    print(joined)
    target = text_out_path(getattr(args, "out", None))
    if target is not None:
        tmp = target.with_name(target.name + ".tmp")
        try:
            tmp.write_text(joined + "\n")
            os.replace(tmp, target)
        except OSError as e:
            raise UserError(f"cannot write {target}: {e.strerror or e}") from None
    return 0


IMAGE_OUT_DEFAULT = "samples"  # `mgen sample`'s image output folder default: not a request to write text


def text_out_path(out: str | None) -> Path | None:
    """Where ``--out`` asks the text to go: a file, or ``DIR/text.txt`` for an existing folder; None for none."""
    if not out or out == IMAGE_OUT_DEFAULT:
        return None
    p = Path(out).expanduser()
    return p / "text.txt" if p.is_dir() else p


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone text sampling entry point with mgen's error convention (one line, exit 2)."""
    from mgen.cli import _Parser

    p = _Parser(prog="mgen sample", description="sample text from a masked diffusion LM")
    add_text_arguments(p)
    args = p.parse_args(argv)
    try:
        return run_text(args)
    except UserError as e:
        sys.stderr.write(f"mgen sample: error: {e}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
