"""Command-line option types and checks shared by the subcommands: every number finite and in range, devices and
dtypes that exist on this machine, the ReCAP options. A bad value ends in one line and exit status 2 (argparse's
error path, or :class:`~mgen.errors.UserError`), before any weights are loaded."""

from __future__ import annotations

import argparse
import math
import shutil
from typing import Any, Callable

from mgen.errors import UserError

#: the largest seed a torch.Generator takes
MAX_SEED = 2**63 - 1
#: images a single ``mgen sample`` writes without ``--force``
MAX_SAMPLES = 10_000


def int_in(lo: int | None = None, hi: int | None = None, what: str = "an integer") -> Callable[[str], int]:
    """An argparse ``type=`` for integers in [lo, hi]."""
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            rng = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
            raise argparse.ArgumentTypeError(f"{value} is out of range ({rng})")
        return value
    parse.__name__ = "integer"
    return parse


def float_in(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type=`` for finite floats in [lo, hi] (``lo_open``: lo excluded)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if lo is not None and (value < lo or (lo_open and value == lo)):
            raise argparse.ArgumentTypeError(f"{value} must be {'>' if lo_open else '>='} {lo}")
        if hi is not None and value > hi:
            raise argparse.ArgumentTypeError(f"{value} must be <= {hi}")
        return value
    parse.__name__ = "number"
    return parse


SEED = int_in(0, MAX_SEED, "a seed (0..2^63-1)")
DTYPES = ("fp32", "bf16", "fp16")


def parse_device(name: str | None) -> Any:
    """``--device`` → a ``torch.device`` that exists here (default: cuda when available, else cpu)."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {name!r}: not a device (cpu, cuda, cuda:1, mps …)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError(f"--device {name}: MPS is not available on this machine")
    elif device.type != "cpu":
        raise UserError(f"--device {name}: unsupported device type {device.type!r} (cpu, cuda, mps)")
    return device


def parse_dtype(name: str | None, device: Any) -> Any:
    """``--dtype fp32|bf16|fp16`` → a torch dtype that runs on ``device`` (refused in one line otherwise)."""
    import torch

    if name is None or name == "fp32":
        return torch.float32
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name)
    if dtype is None:
        raise UserError(f"--dtype {name!r}: choose {', '.join(DTYPES)}")
    try:  # a tiny matmul + layer norm in that dtype, on that device
        x = torch.ones(4, 4, dtype=dtype, device=device)
        torch.nn.functional.layer_norm(x @ x, (4,))
    except (RuntimeError, TypeError) as e:
        raise UserError(f"--dtype {name}: this torch build cannot compute in {name} on {device} "
                        f"({str(e).splitlines()[0]})") from None
    return dtype


def check_compile(device: Any) -> None:
    """``--compile``: refuse in one line when torch.compile has no working backend here."""
    import torch

    if not hasattr(torch, "compile"):
        raise UserError("--compile: this torch has no torch.compile")
    if getattr(device, "type", "cpu") == "cpu" and not (shutil.which("cc") or shutil.which("gcc") or shutil.which("g++")):
        raise UserError("--compile: torch.compile's CPU backend (inductor) needs a C/C++ compiler; none was found")


# -- ReCAP ---------------------------------------------------------------------------------------------------------
def add_recap_arguments(p: argparse.ArgumentParser) -> None:
    """``--sampler recap`` / ``--recap-cache-steps N`` / ``--recap-pre-full-steps N`` / ``--recap-head-fast-ratio R``
    (shared by ``mgen sample`` and ``mgen eval``)."""
    g = p.add_argument_group("ReCAP context-feature reuse (MaskGIT, MAR)")
    if "--sampler" not in getattr(p, "_option_string_actions", {}):
        g.add_argument("--sampler", default=None,
                       help="images: default | recap (interleave full steps with cheap steps that reuse cached "
                            "attention K/V, ReCAP); text models: llada | dream | exact | joint | eb | …")
    g.add_argument("--recap-cache-steps", type=int_in(0, 64), default=None, metavar="N",
                   help="cheap steps after each full step (default 1; 0..64)")
    g.add_argument("--recap-pre-full-steps", type=int_in(0, 1024), default=None, metavar="N",
                   help="full-only steps before the full/cheap cycles (default 0)")
    g.add_argument("--recap-head-fast-ratio", type=float_in(0.0, 1.0, lo_open=True), default=None, metavar="R",
                   help="MAR: diffusion-head steps on cheap steps as a fraction in (0, 1] (official 0.4; default off)")


def recap_from_args(args: argparse.Namespace, family: Any, steps: int | None) -> dict[str, Any] | None:
    """The ``recap=`` pipeline argument from the options (None without ``--sampler recap``); ``family`` is the
    model's :class:`~mgen.families.Family` (its ``recap`` flag says whether ReCAP can drive it); ``steps``: the total
    step count when known."""
    sampler = getattr(args, "sampler", None) or "default"
    if sampler not in ("default", "recap"):
        raise UserError(f"--sampler {sampler!r}: image models take 'default' or 'recap'")
    cache_steps = getattr(args, "recap_cache_steps", None)
    pre = getattr(args, "recap_pre_full_steps", None)
    ratio = getattr(args, "recap_head_fast_ratio", None)
    if sampler != "recap":
        if cache_steps is not None or pre is not None or ratio is not None:
            raise UserError("--recap-* options need --sampler recap")
        return None
    if not family.recap:
        raise UserError(f"--sampler recap needs a generator that exposes its K/V cache; {family.name!r} models do not")
    cache_steps = 1 if cache_steps is None else cache_steps
    pre = 0 if pre is None else pre
    if steps is not None and pre > steps:
        raise UserError(f"--recap-pre-full-steps {pre} exceeds the total steps {steps}")
    if ratio is not None:
        from mgen.samplers.settings import SamplerSettings

        if "head_steps" not in SamplerSettings.for_sampler(family.sampler).allowed():
            raise UserError("--recap-head-fast-ratio applies to a diffusion head's steps (MAR) only")
    return {"pre_full_steps": pre, "cache_steps": cache_steps, "head_fast_ratio": ratio}


def refuse_inapplicable(args: argparse.Namespace, options: dict[str, str], allowed: set[str], what: str) -> None:
    """Refuse CLI options that the model's sampler does not take: ``options`` maps ``--flag`` → sampler field."""
    for flag, field in options.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is not None and field not in allowed:
            raise UserError(f"{flag} does not apply to {what}")
