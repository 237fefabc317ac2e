"""Figure plumbing shared by every plot: an Agg figure (no ``pyplot``, no global backend), PNG bytes, panel grids.

Plots of a task live with the task (``medlens/tasks/<name>/plots.py``); run-level plots in :mod:`medlens.plots`.
Both build on these helpers, so every figure is drawn headless the same way.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from medlens._atomic import write_bytes_atomic

DPI = 100
#: inches per small-multiple panel
CELL = 2.6


def figure(width: float, height: float, constrained: bool = True):
    """A matplotlib Figure on an Agg canvas (constrained layout unless ``constrained=False``: slow with many panels)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


def to_png(fig) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def save_png(data: bytes, path: str | Path) -> Path:
    """Write PNG bytes to ``path`` atomically (temp file + rename).

    Example:
        >>> save_png(png_bytes, "roc.png")  # doctest: +SKIP
    """
    return write_bytes_atomic(path, data)


def grid(n: int, max_cols: int) -> tuple[int, int]:
    """(rows, cols) of a grid of ``n`` panels at most ``max_cols`` wide."""
    cols = max(1, min(max_cols, n))
    return int(math.ceil(n / cols)), cols


def panels(fig, n: int, max_cols: int, unit_square: bool = False):
    """A grid of n panels; with ``unit_square`` they share fixed [0, 1] axes and only outer panels get tick labels."""
    rows, cols = grid(n, max_cols)
    if unit_square:
        axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
        w, h = fig.get_size_inches()
        fig.subplots_adjust(left=0.55 / w, right=1 - 0.15 / w, bottom=0.5 / h, top=1 - 0.45 / h, wspace=0.12, hspace=0.42)
    else:
        axes = fig.subplots(rows, cols, squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    if unit_square:
        for ax in flat:
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.set_xticks([0, 0.5, 1])
            ax.set_yticks([0, 0.5, 1])
            ax.tick_params(labelsize=7)
        for i, ax in enumerate(flat[:n]):
            r, c = divmod(i, cols)
            if r + 1 < rows and i + cols < n:
                ax.tick_params(labelbottom=False)
            else:
                ax.tick_params(labelbottom=True)
            if c > 0:
                ax.tick_params(labelleft=False)
    return flat[:n]


def _undefined(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, color="0.4", wrap=True, transform=ax.transAxes)


def undefined(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, color="0.4", wrap=True, transform=ax.transAxes)
