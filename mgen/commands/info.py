"""`mgen info`: the named models, where their weights are looked for, and the environment."""

from __future__ import annotations

import argparse
import json

HELP = "list the named models, their weights and the environment"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the table as JSON")


def run(args: argparse.Namespace) -> int:
    import platform

    import torch

    from mgen import __version__, hub, registry
    from mgen.nn.attention import available_backends, resolve_backend

    rows = []
    for e in registry.list_models():
        found = hub.find_weights(e)
        places = hub.candidates(e)
        where = str(found) if found else ("; ".join(c.label for c in places) or "-")
        rows.append({"name": e.name, "family": e.family, "params": e.num_params or "?",
                     "tokenizer": e.tokenizer or "-", "weights": where, "present": found is not None})
    if args.json:
        print(json.dumps({"version": __version__, "models": rows}, indent=2))
        return 0
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"mgen {__version__} | torch {torch.__version__} | python {platform.python_version()} | device {device} | "
          f"attention {resolve_backend()} (available: {', '.join(available_backends())})")
    print(f"weights home: {hub.mgen_home()}  (set MGEN_HOME to change)")
    print()
    cols = ["name", "family", "params", "tokenizer", "present", "weights"]
    table = [[str(r[c]) if c != "present" else ("yes" if r[c] else "no") for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)).rstrip())
    return 0
