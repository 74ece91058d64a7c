"""The one FLOP counter of mgen's benchmarks (``mgen bench enat``, ``mgen bench recap``, …).

FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode` (matmul-type operations; a multiply-add
counts as 2 FLOPs). Attention runs through mgen's ``math`` backend while counting: FlopCounterMode sees its two
matmuls, whereas the CPU fused SDPA kernel is not counted; the FLOPs of attention are the same for every backend,
so the count holds for all of them.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator

from torch.utils.flop_counter import FlopCounterMode


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """Route :func:`mgen.nn.attention.attention` through the ``math`` backend (``MGEN_ATTN=math``) inside the block."""
    old = os.environ.get("MGEN_ATTN")
    os.environ["MGEN_ATTN"] = "math"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MGEN_ATTN", None)
        else:
            os.environ["MGEN_ATTN"] = old


def count_flops(fn: Callable[[], Any]) -> int:
    """Total FLOPs of ``fn()``."""
    with math_attention(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def count_call_flops(obj: Any, method: str, fn: Callable[[], Any]) -> int:
    """FLOPs of the calls to ``obj.<method>`` made while ``fn()`` runs; the rest of ``fn``'s work is not counted
    (e.g. MAR's diffusion head, when ``method`` is its transformer's ``condition``). The method is wrapped on the
    instance for the duration of the call and restored afterwards."""
    original = getattr(obj, method)
    had_own = method in vars(obj)
    total = [0]

    def counted(*args: Any, **kwargs: Any) -> Any:
        with FlopCounterMode(display=False) as counter:
            out = original(*args, **kwargs)
        total[0] += int(counter.get_total_flops())
        return out

    setattr(obj, method, counted)
    try:
        with math_attention():
            fn()
    finally:
        if had_own:
            setattr(obj, method, original)
        else:
            delattr(obj, method)
    return total[0]
