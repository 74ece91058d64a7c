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
        "MaskGITJaxVQTokenizer": "mgen.tokenizers.maskgit_jax_vq",
        "digits_images": "mgen.tokenizers.digits",
    }
    __all__ = ["Tokenizer", "load_tokenizer", *_LAZY]

    def __getattr__(name: str):
        if name in _LAZY:
            import importlib

            return getattr(importlib.import_module(_LAZY[name]), name)
        raise AttributeError(f"module 'mgen.tokenizers' has no attribute {name!r}")

    _CLASS_FAMILIES = {"AutoencoderKL": "kl", "VQModel": "vq", "RAETokenizer": "rae", "AutoencoderRAE": "rae",
                       "MaskGITJaxVQTokenizer": "maskgit-jax"}

    def load_tokenizer(path_or_name, weights=None):
        """Any mgen tokenizer from a registered name (its config's family; ``vq`` configs with
        ``arch.network: maskgit-jax`` are the MaskGIT (JAX) VQGAN) or a local file/folder.

        ``weights``: a file or folder to load with the class that the registered name selects (e.g.
        ``load_tokenizer("maskgit-vqgan-jax", weights="vqgan_jax_strongaug.ckpt")``)."""
        import json
        from pathlib import Path

        from mgen.errors import UserError

        p = Path(str(path_or_name)).expanduser()
        if not p.exists():
            from mgen import registry

            entry = registry.get(str(path_or_name))
            family = entry.family
            if family == "vq" and entry.arch.get("network") == "maskgit-jax":
                family = "maskgit-jax"
        else:
            if weights is not None:
                raise UserError(f"{path_or_name}: pass weights= only with a registered tokenizer name")
            family = None
            cfg = p / "config.json" if p.is_dir() else p.parent / "config.json"
            if p.is_dir() and (p / "config.json").is_file():
                cls_name = json.loads(cfg.read_text()).get("_class_name", "")
                family = _CLASS_FAMILIES.get(cls_name)
            elif p.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(p), "pt") as f:
                    meta = (f.metadata() or {}).get("config", "{}")
                cls_name = json.loads(meta).get("_class_name", "")
                family = _CLASS_FAMILIES.get(cls_name)
            elif p.is_file():  # an official checkpoint: tell the MaskGIT (JAX) VQGAN from taming's by its keys
                from mgen.tokenizers.maskgit_jax_vq import is_maskgit_jax_state_dict
                from mgen.tokenizers.vq import load_lightning_checkpoint

                from mgen.hub import iter_state_dicts

                ckpt = load_lightning_checkpoint(p)
                sd = iter_state_dicts(ckpt, ("state_dict", "model")) or ckpt
                if is_maskgit_jax_state_dict(sd):
                    family = "maskgit-jax"
                elif "quantize.embedding.weight" in sd:
                    family = "vq"
            if family is None:
                raise UserError(f"{p}: cannot tell which tokenizer this is; use KLTokenizer/VQTokenizer/RAETokenizer/"
                                "MaskGITJaxVQTokenizer.from_pretrained")
        cls = {"kl": "KLTokenizer", "vq": "VQTokenizer", "rae": "RAETokenizer",
               "maskgit-jax": "MaskGITJaxVQTokenizer"}.get(family)
        if cls is None:
            raise UserError(f"{path_or_name} is a {family!r} model, not a tokenizer")
        return __getattr__(cls).from_pretrained(weights if weights is not None else path_or_name)
