"""mgen.tokenizers: latent tokenizers (VQ, KL-VAE, RAE) behind the Tokenizer protocol (docs/ARCHITECTURE.md).

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

    def load_tokenizer(path_or_name, weights=None, **kwargs):
        """Any mgen tokenizer: a registered name (``patch-digits``, ``kl16``, ``maskgit-vqgan-jax`` …, with ``weights``
        replacing the file the name would find), a YAML config, a saved tokenizer folder, a pipeline folder (its
        tokenizer component), a diffusers ``AutoencoderKL`` / ``VQModel`` folder or an official checkpoint (told apart
        by its keys). ``torch_dtype`` is honoured. A tokenizer module is returned as it is.

        The family comes from :mod:`mgen.families`; see :mod:`mgen.resolver` (docs/ARCHITECTURE.md, "Resolver")."""
        import torch

        from mgen.errors import UserError
        from mgen.families import family_of_class
        from mgen.resolver import PIPELINE_FOLDER, Spec, build_component, pipeline_index, resolve

        if isinstance(path_or_name, torch.nn.Module):
            return path_or_name
        if path_or_name is None:
            raise UserError("no tokenizer given")
        spec = resolve(path_or_name, weights, want=None)
        if spec.layout == PIPELINE_FOLDER:
            for name, value in pipeline_index(spec.path).items():
                fam = family_of_class(value[1]) if isinstance(value, list) and len(value) == 2 else None
                if fam is not None and fam.is_tokenizer:
                    return build_component(Spec(fam, "component-folder", path=spec.path / name), **kwargs).eval()
            raise UserError(f"{spec.path}: this pipeline folder holds no tokenizer")
        if not spec.family.is_tokenizer:
            raise UserError(f"{path_or_name} is a {spec.family.name!r} model, not a tokenizer")
        return build_component(spec, **kwargs).eval()
