"""The loss / learning-rate curve of a training run (``RUN/curves.png`` beside ``RUN/log.jsonl``).

matplotlib is an optional extra (``pip install 'mgen[plot]'``): it is imported here only, through its
object-oriented API (``Figure`` + the Agg canvas), so that plotting never changes the caller's pyplot backend.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from mgen.errors import UserError
from mgen.fileio import atomic_write

INSTALL_HINT = "pip install 'mgen[plot]' (or pip install matplotlib)"


def available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):  # a None entry in sys.modules (tests hide it this way) raises ValueError
        return False


def require() -> None:
    """Refuse in one line when a plot was asked for explicitly and matplotlib is missing."""
    if not available():
        raise UserError(f"a training plot needs matplotlib, which is not installed: {INSTALL_HINT}")


def read_log(path: str | os.PathLike) -> list[dict]:
    """The records of the last run in a ``log.jsonl``, in step order.

    A run resumed from an earlier checkpoint logs some steps again, and a run started afresh in the same folder
    starts again from its first steps: a record drops every earlier one of the same or a later step."""
    records: list[dict] = []
    for line in Path(path).read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:  # a line cut by a kill
            continue
        if not isinstance(rec, dict) or "step" not in rec:
            continue
        if records and rec["step"] <= records[-1]["step"]:  # a resumed (or restarted) run logs these steps anew
            records = [r for r in records if r["step"] < rec["step"]]
        records.append(rec)
    return records


def write_curves(log_path: str | os.PathLike, png_path: str | os.PathLike, title: str | None = None) -> Path:
    """Draw loss (log scale when positive) and learning rate against the step; written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_log(log_path)
    steps = [r["step"] for r in records]
    fig = Figure(figsize=(8, 3.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_lr = fig.subplots(1, 2)
    losses = [r.get("loss", float("nan")) for r in records]
    ax_loss.plot(steps, losses, color="tab:blue", linewidth=1.2)
    if losses and all(v > 0 for v in losses):
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss")
    ax_loss.grid(True, alpha=0.3)
    ax_lr.plot(steps, [r.get("lr", float("nan")) for r in records], color="tab:orange", linewidth=1.2)
    ax_lr.set_xlabel("step")
    ax_lr.set_ylabel("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax_lr.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    png_path = Path(png_path)
    with atomic_write(png_path) as tmp:
        fig.savefig(tmp, format="png")
    return png_path
