"""mgen.tokenizers: latent tokenizers (VQ, KL-VAE, RAE) behind the Tokenizer protocol of DESIGN.md.

This folder is installed as ``mgen.tokenizers``. When Python runs with the repository root on
``sys.path`` (``python -m ...`` or a notebook started in the root), a plain ``import tokenizers`` --
which ``transformers`` does -- would find this folder instead of Hugging Face's ``tokenizers``. The
guard below detects that case (the module is being imported under the top-level name) and hands the
import over to the first ``tokenizers`` package found elsewhere on ``sys.path``.
"""

if __name__ == "tokenizers":  # imported as the top-level name: step aside for Hugging Face's package
    import importlib.machinery as _machinery
    import importlib.util as _util
    import os as _os
    import sys as _sys

    _here = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    _path = [p for p in _sys.path if _os.path.abspath(p or _os.getcwd()) != _here]
    _spec = _machinery.PathFinder.find_spec("tokenizers", _path)
    if _spec is None or _spec.loader is None:
        del _sys.modules["tokenizers"]
        raise ModuleNotFoundError(
            "No module named 'tokenizers' (Hugging Face's); the folder found first is mgen's own "
            "tokenizers/, which is imported as 'mgen.tokenizers'",
            name="tokenizers",
        )
    _module = _util.module_from_spec(_spec)
    _sys.modules["tokenizers"] = _module
    _spec.loader.exec_module(_module)
else:
    from mgen.tokenizers.base import Tokenizer

    # The tokenizer classes import diffusers / transformers: load them on first use (PEP 562).
    _LAZY = {
        "KLTokenizer": "mgen.tokenizers.kl",
        "VQTokenizer": "mgen.tokenizers.vq",
        "VectorQuantizer": "mgen.tokenizers.vq",
        "RAETokenizer": "mgen.tokenizers.rae",
        "digits_images": "mgen.tokenizers.digits",
    }
    __all__ = ["Tokenizer", "load_tokenizer", *_LAZY]

    def __getattr__(name: str):
        if name in _LAZY:
            import importlib

            return getattr(importlib.import_module(_LAZY[name]), name)
        raise AttributeError(f"module 'mgen.tokenizers' has no attribute {name!r}")

    def load_tokenizer(path_or_name):
        """Any mgen tokenizer from a registered name (its config's family) or a local file/folder."""
        import json
        from pathlib import Path

        from mgen.errors import UserError

        p = Path(str(path_or_name)).expanduser()
        if not p.exists():
            from mgen import registry

            family = registry.get(str(path_or_name)).family
        else:
            family = None
            cfg = p / "config.json" if p.is_dir() else p.parent / "config.json"
            if p.is_dir() and (p / "config.json").is_file():
                cls_name = json.loads(cfg.read_text()).get("_class_name", "")
                family = {"AutoencoderKL": "kl", "VQModel": "vq", "RAETokenizer": "rae", "AutoencoderRAE": "rae"}.get(cls_name)
            elif p.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(p), "pt") as f:
                    meta = (f.metadata() or {}).get("config", "{}")
                cls_name = json.loads(meta).get("_class_name", "")
                family = {"AutoencoderKL": "kl", "VQModel": "vq", "RAETokenizer": "rae", "AutoencoderRAE": "rae"}.get(cls_name)
            if family is None:
                raise UserError(f"{p}: cannot tell which tokenizer this is; use KLTokenizer/VQTokenizer/RAETokenizer.from_pretrained")
        cls = {"kl": "KLTokenizer", "vq": "VQTokenizer", "rae": "RAETokenizer"}.get(family)
        if cls is None:
            raise UserError(f"{path_or_name} is a {family!r} model, not a tokenizer")
        return __getattr__(cls).from_pretrained(path_or_name)
