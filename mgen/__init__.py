"""mgen: one engine for masked and diffusion decoding.

The card's top-level folders ``samplers/``, ``tokenizers/`` and ``eval/`` are installed as
``mgen.samplers``, ``mgen.tokenizers`` and ``mgen.eval`` (setuptools ``package-dir``). When mgen is
imported straight from a source checkout that was not installed, the same mapping is made here by
adding the checkout's root to this package's search path.
"""

from __future__ import annotations

import os as _os

__version__ = "0.1.0"

_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "pyproject.toml")) and _os.path.isfile(
    _os.path.join(_root, "tokenizers", "__init__.py")
):
    # Source checkout: mgen.samplers / mgen.tokenizers / mgen.eval / mgen.configs live beside mgen/.
    __path__.append(_root)  # type: ignore[name-defined]

from mgen.errors import MgenError, UserError, WeightsError  # noqa: E402

__all__ = ["__version__", "MgenError", "UserError", "WeightsError"]
