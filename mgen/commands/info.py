"""`mgen info`: the named models, where their weights are looked for, and the environment."""

from __future__ import annotations

import argparse
import json

HELP = "list the named models, their weights and the environment"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="show one model: its config and where its weights resolve (exit 2 if missing)")
    p.add_argument("--weights", default=None, help="weights file or folder to use instead of the looked-up ones")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--families", action="store_true", help="list the model families (the families table) and exit")


def _one(args: argparse.Namespace) -> int:
    import dataclasses

    from mgen import registry
    from mgen.resolver import resolve

    entry = registry.get(args.name)
    resolved = resolve(entry.name, weights=args.weights)
    from mgen.families import get_family

    data = dataclasses.asdict(entry)
    data["resolved_weights"] = str(resolved.path) if resolved.path else "(none needed: parameter-free)"
    fam = get_family(entry.family)
    data["kind"] = fam.kind
    data["classes"] = {"model": fam.model, "sampler": fam.sampler, "pipeline": fam.pipeline}
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    for key in ("name", "family", "kind", "description", "num_params", "tokenizer", "source", "path", "resolved_weights"):
        print(f"{key:17s} {data[key]}")
    print(f"{'classes':17s} " + ", ".join(f"{k}={v}" for k, v in data["classes"].items() if v))
    for key in ("arch", "sampler", "train"):
        if data[key]:
            print(f"{key:17s} " + ", ".join(f"{k}={v}" for k, v in data[key].items()))
    return 0


def _families(args: argparse.Namespace) -> int:
    from mgen.families import FAMILIES

    rows = [{"family": f.name, "kind": f.kind, "model": f.model, "sampler": f.sampler or "-",
             "pipeline": f.pipeline or "-", "tokenizers": ",".join(f.tokenizers) or "-",
             "converters": ",".join(f.converters) or "-", "recap": "yes" if f.recap else "no"} for f in FAMILIES.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths)).rstrip())
    return 0


def run(args: argparse.Namespace) -> int:
    import platform

    import torch

    from mgen import __version__, hub, registry
    from mgen.nn.attention import available_backends, resolve_backend

    if args.families:
        return _families(args)
    if args.name:
        return _one(args)
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
