"""The ``mgen sample`` text path: options and the run for masked diffusion LMs (``--model dlm-text --prompt …``).

Only argument parsing and printing live here; generation is :class:`mgen.pipelines.dlm.DLMPipeline`. The image
``sample`` command (:mod:`mgen.commands.sample`) shares these options through :func:`add_text_arguments` and
hands text models to :func:`run_text`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from mgen.errors import UserError
from mgen.fileio import atomic_write
from mgen.pipelines.dlm import DLMPipeline

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

TEXT_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--model",), dict(help="dlm model name (e.g. dlm-text), our .safetensors file, a saved pipeline folder, or "
                             "a transformers folder")),
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
    (("--cfg-scale",), dict(type=float, default=None)),
    (("--sampler",), dict(default=None, help="llada | dream | exact | joint | eb | llada2 | "
                                                 "diffusion_gemma (default: from the other options / the model)")),
    (("--joint-sampler",), dict(default=None, help="ADJUST layer name or file (e.g. joint-dlm-text)")),
    (("--tokens-per-step",), dict(type=int, default=None, help="tokens unmasked per full forward (joint)")),
    (("--entropy-bound",), dict(type=float, default=None,
                                help="eb: unmask while sum(H) - max(H) <= G per forward (selects --sampler eb)")),
    (("--eos",), dict(default="stop", help="none | stop | pad: what happens after an end-of-text token")),
    (("--stream",), dict(action="store_true", help="print the partly decoded text after every step")),
    (("--trust-remote-code",), dict(action="store_true",
                                    help="allow a model folder's own Python code to run (LLaDA / Dream need it)")),
    (("--dtype",), dict(default=None, help="fp32 | bf16 | fp16: the model's precision (sampling math stays fp32)")),
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


def parse_dtype(value: Any) -> torch.dtype | None:
    """``--dtype`` (fp32 / bf16 / fp16, or a torch dtype) → a torch dtype; None: as stored (float32)."""
    if value is None or isinstance(value, torch.dtype):
        return value
    if value not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)} (got {value!r})")
    return DTYPES[value]


def run_text(args: argparse.Namespace) -> int:
    """``mgen sample --model dlm-text --prompt …``: prints the generated text (``--out FILE`` writes it too).

    Unset options come from the model's config ``sampler:`` settings (saved in the pipeline's ``scheduler``)."""
    model = getattr(args, "model", None)
    if not model:
        raise UserError("--model is required (e.g. --model dlm-text)")
    prompts = getattr(args, "prompt", None)
    if not prompts or any(not p.strip() for p in prompts):
        raise UserError("--prompt is required and must not be empty")
    dtype = parse_dtype(getattr(args, "dtype", None))
    pipe = DLMPipeline.from_pretrained(model, weights=args.weights, joint_sampler=args.joint_sampler,
                                       trust_remote_code=args.trust_remote_code, device=args.device,
                                       torch_dtype=dtype)
    stream = None
    if getattr(args, "no_progress", False):
        pipe.set_progress_bar_config(disable=True)
    if args.stream:
        pipe.set_progress_bar_config(disable=True)  # the streamed lines replace the bar

        def stream(step: int, texts: list[str]) -> None:
            sys.stderr.write(f"[step {step + 1}] {texts[0]!r}\n")
    out = pipe(prompt=prompts, gen_length=args.gen_length, block_length=args.block_length,
               num_inference_steps=args.steps, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
               sampler=args.sampler or ("eb" if getattr(args, "entropy_bound", None) is not None else None),
               entropy_bound=getattr(args, "entropy_bound", None),
               remasking=args.remasking, alg=args.alg, alg_temp=args.alg_temp,
               cfg_scale=args.cfg_scale, tokens_per_step=args.tokens_per_step, eos=args.eos,
               generator=torch.Generator().manual_seed(args.seed), stream=stream)
    texts = [p + t for p, t in zip(prompts, out.texts)]
    joined = "\n\n".join(texts)
    print(joined)
    target = text_out_path(getattr(args, "out", None))
    if target is not None:
        try:
            with atomic_write(target) as tmp:
                tmp.write_text(joined + "\n")
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


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line and exits with 2 (mgen's convention)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone text sampling entry point with mgen's error convention (one line, exit 2)."""
    p = _OneLineParser(prog="mgen sample", description="sample text from a masked diffusion LM")
    add_text_arguments(p)
    args = p.parse_args(argv)
    try:
        return run_text(args)
    except UserError as e:  # WeightsError is a UserError
        sys.stderr.write(f"mgen sample: error: {e}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
