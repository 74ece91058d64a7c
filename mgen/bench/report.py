"""The one report writer of every benchmark: ``NAME.json`` + ``NAME.md`` (a markdown table), written atomically.

A result is a mapping with a ``meta`` mapping (what was measured, on which machine, with which command) and a
``rows`` list of flat mappings (one table row each). :func:`machine` describes the machine that measured it, so
a committed number always says where it comes from.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from mgen.fileio import atomic_write


def machine() -> dict[str, Any]:
    """What measured the numbers: CPU / GPU, core count, torch version, threads."""
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "python": sys.version.split()[0],
                            "torch": torch.__version__, "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(), "processor": platform.processor() or platform.machine()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if v is None:
        return "–"
    return str(v)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows of flat mappings → a markdown table (columns: the union of keys in first-seen order)."""
    if not rows:
        return "(no rows)\n"
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns and not isinstance(r[k], (dict, list))]
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    body = "".join("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |\n" for r in rows)
    return head + body


def write_report(result: Mapping[str, Any], out_dir: str | os.PathLike, name: str,
                 title: str | None = None, columns: Sequence[str] | None = None) -> tuple[Path, Path]:
    """Write ``out_dir/name.json`` (the whole result) and ``out_dir/name.md`` (title, meta lines, the rows' table)."""
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    rows = list(result.get("rows", []))
    meta = dict(result.get("meta", {}))
    jpath, mpath = out / f"{name}.json", out / f"{name}.md"
    with atomic_write(jpath) as tmp:
        tmp.write_text(json.dumps(dict(result), indent=2, default=str) + "\n")
    lines = [f"# {title or name}", ""]
    lines += [f"- {k}: {_fmt(v) if not isinstance(v, (dict, list)) else json.dumps(v, default=str)}" for k, v in meta.items()]
    lines += ["", markdown_table(rows, columns)]
    with atomic_write(mpath) as tmp:
        tmp.write_text("\n".join(lines))
    return jpath, mpath


#: the methods a cost-vs-KL frontier chart draws, in legend order
FRONTIER_METHODS = ("marginal", "adjust", "eb", "eb+adjust", "exact")


def write_frontier_chart(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, ylabel: str,
                         ci_key: str | None = None, y_offset: float = 0.0, log_y: bool = False,
                         size: tuple[float, float] = (5.0, 3.5)) -> Path | None:
    """KL(q‖p)-vs-cost chart (``kl_q_p`` against ``ffe_flops_per_token``, one line per ``method``) as a PNG, written
    atomically; ``ci_key`` names a (low, high) interval drawn as error bars. Nothing (None) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=size)
    for name in FRONTIER_METHODS:
        pts = sorted((r["ffe_flops_per_token"], r["kl_q_p"], *(r[ci_key] if ci_key else ()))
                     for r in rows if r["method"] == name)
        if not pts:
            continue
        xs, ys = [p[0] for p in pts], [p[1] + y_offset for p in pts]
        if ci_key:
            ax.errorbar(xs, ys, yerr=[[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]], fmt="o-", capsize=3,
                        label=name)
        else:
            ax.plot(xs, ys, "o-", label=name)
    ax.set_xlabel("full-forward-equivalent FLOPs per token")
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    target = Path(path)
    with atomic_write(target) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return target
