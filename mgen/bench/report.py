"""The one report writer of every benchmark: ``NAME.json`` + ``NAME.md`` (a markdown table), written atomically.

A result is a mapping with a ``meta`` mapping (what was measured, on which machine, with which command) and a
``rows`` list of flat mappings (one table row each). :func:`machine` describes the machine that measured it, so
a committed number always says where it comes from.

It is also the one chart writer: :func:`write_chart` draws series of :class:`ChartPoint` as a PNG (atomically);
a benchmark module's ``chart(result, path)`` says what to draw (``mgen bench NAME --plot`` and ``mgen bench plot
FILE.json``), :func:`write_frontier_chart` is the joint benches' KL-vs-cost chart. matplotlib is the optional
``mgen[plot]`` extra; :func:`require_plot` refuses a chart in one line without it.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from mgen.errors import UserError
from mgen.fileio import atomic_write
from mgen.train import plot as train_plot


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


@dataclass(frozen=True)
class ChartPoint:
    """One marker of a chart: ``x``, ``y``, an optional text ``label`` drawn beside it and an optional
    (``low``, ``high``) interval of ``y`` drawn as an error bar."""

    x: float
    y: float
    label: str | None = None
    low: float | None = None
    high: float | None = None


def plot_available() -> bool:
    """Whether matplotlib (the optional ``mgen[plot]`` extra) can be imported: :func:`mgen.train.plot.available`."""
    return train_plot.available()


def require_plot(what: str = "a benchmark chart (--plot)") -> None:
    """Refuse in one line (:class:`UserError`, exit 2) when a chart was asked for and matplotlib is missing; called
    before any benchmark work runs."""
    if not plot_available():
        raise UserError(f"{what} needs matplotlib, which is not installed: {train_plot.INSTALL_HINT}")


def write_chart(series: Mapping[str, Sequence[ChartPoint]], path: str | os.PathLike, xlabel: str, ylabel: str,
                title: str | None = None, log_x: bool = False, log_y: bool = False,
                size: tuple[float, float] = (5.0, 3.5), connect: bool = True) -> Path:
    """The chart writer of every benchmark: one line (or, ``connect=False``, one set of markers) per series, in the
    mapping's order, points sorted by x; a point's ``label`` is written beside it and its (low, high) interval drawn
    as an error bar. The PNG is written atomically (no half-written file). Needs matplotlib: callers that were asked
    for a chart call :func:`require_plot` first; it is drawn through the object-oriented API (``Figure`` + the Agg
    canvas), so the caller's pyplot backend is never changed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    style = "o-" if connect else "o"
    for name, points in series.items():
        pts = sorted(points, key=lambda p: p.x)
        if not pts:
            continue
        xs, ys = [p.x for p in pts], [p.y for p in pts]
        if any(p.low is not None and p.high is not None for p in pts):
            err = [[p.y - p.low if p.low is not None else 0.0 for p in pts],
                   [p.high - p.y if p.high is not None else 0.0 for p in pts]]
            line = ax.errorbar(xs, ys, yerr=err, fmt=style, capsize=3, label=name).lines[0]
        else:
            (line,) = ax.plot(xs, ys, style, label=name)
        for p in pts:
            if p.label:
                ax.annotate(p.label, (p.x, p.y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                            color=line.get_color())
    ax.margins(0.12)  # room for the point labels
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log_x:
        ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title, fontsize=8)
    ax.legend(fontsize=8)
    target = Path(path)
    with atomic_write(target) as tmp:
        fig.savefig(tmp, format="png")
    return target


def write_frontier_chart(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, ylabel: str,
                         ci_key: str | None = None, y_offset: float = 0.0, log_y: bool = False,
                         size: tuple[float, float] = (5.0, 3.5)) -> Path | None:
    """KL(q‖p)-vs-cost chart (``kl_q_p`` against ``ffe_flops_per_token``, one line per ``method``) as a PNG through
    :func:`write_chart`; ``ci_key`` names a (low, high) interval drawn as error bars. Nothing (None) without
    matplotlib (the joint benches draw it whenever they can)."""
    if not plot_available():
        return None
    series: dict[str, list[ChartPoint]] = {}
    for name in FRONTIER_METHODS:
        pts = [ChartPoint(r["ffe_flops_per_token"], r["kl_q_p"] + y_offset,
                          low=r[ci_key][0] + y_offset if ci_key else None,
                          high=r[ci_key][1] + y_offset if ci_key else None)
               for r in rows if r["method"] == name]
        if pts:
            series[name] = pts
    return write_chart(series, path, "full-forward-equivalent FLOPs per token", ylabel, log_y=log_y, size=size)


def read_result(path: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """A benchmark result JSON → (its kind, the result in the current shape ``{"meta": ..., "rows": [...]}``).

    The kind is ``meta.bench``; two older committed layouts are read too: ``recap`` results with the meta keys at
    the top level, and ``enat`` results with a ``config`` mapping instead of ``meta``. A missing or unreadable file,
    or a JSON that is not a benchmark result, is one :class:`UserError`."""
    p = Path(path).expanduser()
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise UserError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{p}: not a readable JSON file ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: not a benchmark result (a JSON object with meta.bench and rows)")
    rows = data.get("rows")
    rows = [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
    meta = data.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get("bench"), str):
        return meta["bench"], {**data, "meta": meta, "rows": rows}
    if isinstance(data.get("bench"), str):  # older layout: the meta keys at the top level
        return data["bench"], {"meta": {k: v for k, v in data.items() if k != "rows"}, "rows": rows}
    if isinstance(data.get("config"), dict) and rows and all("flops_vs_maskgit" in r for r in rows):
        return "enat", {"meta": {"bench": "enat", **data["config"]}, "rows": rows}  # older ENAT layout
    raise UserError(f"{p}: not a benchmark result (a JSON object with meta.bench and rows)")
