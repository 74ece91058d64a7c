"""Recipe: the README table of shipped digits models (digits-FID and class accuracy at default settings).

    .venv/bin/python recipes/digits_table.py [--num-samples 500] [--work-root /tmp/mgen-digits-table]

Runs ``mgen eval --model NAME`` (default sampler settings, seed 0) for every registered ``*-digits``
generator whose weights are present, plus the training split as a reference row (the same number of
images, 50 per class), and prints a markdown table. Models whose weights are missing are listed as such.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

GENERATOR_FAMILIES = ("mar", "maskgit", "enat", "dit", "rae-dit")


def data_row(num: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from mgen.eval.digits import digits_metrics, digits_split

    x, y, _, _ = digits_split()
    per = max(1, num // 10)
    idx = torch.cat([torch.nonzero(y == c).flatten()[:per] for c in range(10)])
    x16 = F.interpolate(x[idx], size=(16, 16), mode="bilinear", align_corners=False).clamp(-1, 1).repeat(1, 3, 1, 1)
    return digits_metrics(x16, y[idx])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-samples", type=int, default=500)
    ap.add_argument("--work-root", default=None)
    args = ap.parse_args()
    from mgen import hub, registry
    from mgen.cli import main as mgen_main

    root = Path(args.work_root or tempfile.mkdtemp(prefix="mgen-digits-table-"))
    rows = []
    for e in registry.list_models():
        name = e.name
        if not name.endswith("-digits") or e.family not in GENERATOR_FAMILIES:
            continue
        if hub.find_weights(e) is None:
            rows.append(f"| {name} | – | – | weights not shipped |")
            continue
        out = root / f"{name}.json"
        rc = mgen_main(["eval", "--model", name, "--num-samples", str(args.num_samples), "--work-dir",
                        str(root / f"work-{name}"), "--json", str(out), "--no-progress"])
        if rc != 0:
            rows.append(f"| {name} | – | – | mgen eval failed (exit {rc}) |")
            continue
        r = json.loads(out.read_text())
        d = r.get("sampler_defaults") or {}
        rows.append(f"| {name} | {r['digits_fid']:.2f} | {100 * r['digits_accuracy']:.1f}% | "
                    f"{', '.join(f'{k}={v}' for k, v in d.items())} |")
    ref = data_row(args.num_samples)
    print(f"| model | digits-FID ↓ | accuracy ↑ | settings ({args.num_samples} samples, seed 0) |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    print(f"| *training split ({args.num_samples} images)* | {ref['digits_fid']:.2f} | "
          f"{100 * ref['digits_accuracy']:.1f}% | reference |")


if __name__ == "__main__":
    main()
