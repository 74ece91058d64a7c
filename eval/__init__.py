"""mgen.eval: FID / IS / KID / precision-recall on torch-fidelity's Inception, and digits metrics.

``from mgen.eval import evaluate``: see :func:`mgen.eval.evaluation.evaluate`. One metric per module:
:mod:`~mgen.eval.fid`, :mod:`~mgen.eval.isc`, :mod:`~mgen.eval.kid`, :mod:`~mgen.eval.prdc`; features
in :mod:`~mgen.eval.inception`; inputs in :mod:`~mgen.eval.inputs`; sampling straight from a model with
resumable, batch-invariant feature shards in :mod:`~mgen.eval.streaming`; the offline digits classifier
metrics in :mod:`~mgen.eval.digits`; every file written through :mod:`~mgen.eval.outputs` (atomic, one line on
a fault). IS, KID and precision/recall are torch-fidelity's own functions; FID is kept hand-written
(:mod:`~mgen.eval.fid` says why). ``mgen bench fid`` lives in :mod:`mgen.bench.fid`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["evaluate", "save_reference_stats", "digits_metrics", "stream_features"]


def __getattr__(name: str) -> Any:
    # lazy: importing mgen.eval must not import torch-fidelity / sklearn before they are needed
    import importlib

    # (the module is `evaluation`, not `evaluate`: a submodule named like the function would rebind
    # `mgen.eval.evaluate` to the module whenever it is imported before the function is looked up)
    where = {"evaluate": "evaluation", "save_reference_stats": "evaluation", "digits_metrics": "digits",
             "stream_features": "streaming"}
    if name not in where:
        raise AttributeError(name)
    mod = importlib.import_module(f"mgen.eval.{where[name]}")
    value = getattr(mod, name)
    globals()[name] = value
    return value
