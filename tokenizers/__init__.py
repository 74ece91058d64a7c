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

    __all__ = ["Tokenizer"]
