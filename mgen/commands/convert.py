"""`mgen convert KIND SRC OUT`: convert official checkpoints to safetensors folders.

Each converter is registered in :data:`CONVERTERS` as ``kind: (description, fn)`` where
``fn(src: Path, out: Path, **opts) -> None`` reads the official file ``src`` and writes a folder ``out``
that the matching ``from_pretrained`` loads (safetensors + config). Converters import their model code
lazily, so ``mgen convert --help`` stays fast. Extra ``--opt key=value`` pairs are passed as ``opts``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from mgen.errors import UserError

HELP = "convert official checkpoints to safetensors pipeline folders"


def _kl16(src: Path, out: Path, **opts: Any) -> None:
    from mgen.tokenizers.kl import convert_ldm_checkpoint

    convert_ldm_checkpoint(src, out, **opts)


def _maskgit_vqgan(src: Path, out: Path, **opts: Any) -> None:
    from mgen.tokenizers.vq import convert_maskgit_vqgan

    convert_maskgit_vqgan(src, out, **opts)


def _maskgit_vqgan_jax(src: Path, out: Path, **opts: Any) -> None:
    from mgen.tokenizers.maskgit_jax_vq import convert_maskgit_jax_vqgan

    convert_maskgit_jax_vqgan(src, out, **opts)


def _rae(src: Path, out: Path, **opts: Any) -> None:
    from mgen.tokenizers.rae import convert_official_rae

    convert_official_rae(src, out, **opts)


def _maskgit(src: Path, out: Path, **opts: Any) -> None:
    from mgen.models.maskgit import convert_checkpoint

    convert_checkpoint(src, out, **opts)


def _enat(src: Path, out: Path, **opts: Any) -> None:
    from mgen.models.enat import convert_checkpoint

    convert_checkpoint(src, out, **opts)


def _mar(src: Path, out: Path, **opts: Any) -> None:
    from mgen.pipelines.mar import convert_official_checkpoint

    convert_official_checkpoint(src, out, **opts)


#: kind -> (one-line description, converter(src, out, **opts)). Other areas add their own entries.
CONVERTERS: dict[str, tuple[str, Callable[..., None]]] = {
    "kl16": ("MAR's official LDM KL-16 VAE kl16.ckpt -> KLTokenizer safetensors folder", _kl16),
    "maskgit-vqgan": ("valeoai/Maskgit-pytorch VQGAN last.ckpt -> VQTokenizer safetensors folder", _maskgit_vqgan),
    "maskgit-vqgan-jax": ("MaskGIT (JAX) VQGAN vqgan_jax_strongaug.ckpt (ENAT, MAGE) -> MaskGITJaxVQTokenizer "
                          "safetensors folder", _maskgit_vqgan_jax),
    "rae": ("bytetriper/RAE decoder model.pt -> RAETokenizer folder (--opt encoder=DIR --opt decoder_config=DIR "
            "[--opt stats=stat.pt --opt encoder_input_size=224])", _rae),
    "maskgit": ("valeoai/Maskgit-pytorch MaskGIT_ImageNet_256.pth -> MaskGIT safetensors folder", _maskgit),
    "enat": ("LeapLabTHU/ENAT nnet_ema.pth -> ENAT safetensors folder (--opt config=enat-l)", _enat),
    "mar": ("LTH14/mar checkpoint-last.pth -> MARPipeline folder (EMA; --opt config=mar-b --opt tokenizer=kl16.ckpt)", _mar),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", nargs="?", help="what to convert: one of the kinds listed by `mgen convert --list`")
    p.add_argument("src", nargs="?", help="the official checkpoint file")
    p.add_argument("out", nargs="?", help="output folder (created; must not already hold a model)")
    p.add_argument("--list", action="store_true", help="list the known kinds and exit")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="converter option (repeatable), e.g. --opt scaling_factor=0.2325")
    p.add_argument("--force", action="store_true", help="overwrite an existing output folder")


def _parse_opts(pairs: list[str]) -> dict[str, Any]:
    import yaml

    opts: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"--opt {pair!r}: expected KEY=VALUE")
        k, v = pair.split("=", 1)
        opts[k.strip()] = yaml.safe_load(v)
    return opts


def run(args: argparse.Namespace) -> int:
    if args.list or args.kind is None:
        for kind, (desc, _) in CONVERTERS.items():
            print(f"{kind:16s} {desc}")
        if args.kind is None and not args.list:
            raise UserError("usage: mgen convert KIND SRC OUT (kinds listed above)")
        return 0
    if args.kind not in CONVERTERS:
        raise UserError(f"unknown conversion {args.kind!r}; known: {', '.join(CONVERTERS)}")
    if args.src is None or args.out is None:
        raise UserError(f"usage: mgen convert {args.kind} SRC OUT")
    src, out = Path(args.src).expanduser(), Path(args.out).expanduser()
    if not src.exists():
        raise UserError(f"{src}: no such file")
    occupied = any(out.iterdir()) if out.is_dir() else out.exists()
    if occupied and not args.force:
        raise UserError(f"{out}: already exists (pass --force to overwrite)")
    opts = _parse_opts(args.opt)
    _, fn = CONVERTERS[args.kind]
    import inspect

    try:
        inspect.signature(fn).bind(src, out, **opts)
    except TypeError as e:
        raise UserError(f"convert {args.kind}: bad option ({e})") from None
    fn(src, out, **opts)
    print(f"wrote {out}")
    return 0
