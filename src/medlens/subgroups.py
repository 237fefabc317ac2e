"""Performance per subgroup (sex, age band, view, body site, ...) from the data's metadata columns.

``medlens evaluate`` and ``medlens report`` slice the evaluated split by metadata columns and ask the task for each
subgroup's figures (:meth:`medlens.tasks.Task.subgroup_metrics`; a classifier gives n, patients, positives, AUROC,
sensitivity and specificity at the deployed threshold, each with a patient-bootstrap interval, the largest gap
between subgroups with a paired-bootstrap interval, and the size rule that flags subgroups too small to read). This
module is task-free: it picks and bands the columns, orders the subgroups, gathers the warnings, and renders what
the task returned (a text table, an HTML table and a forest plot).

Columns come from ``SampleTable.metadata``: a CSV source's ``data.metadata_columns`` (JSONL/SQL:
``data.metadata_fields``) are enough, fusion (``data.metadata``) need not be on; the NIH reader gives ``age``,
``sex`` and ``view``. By default every metadata column with 2 to :data:`MAX_LEVELS` (12) levels is used; a named
column is used whatever its number of levels, and an unknown name is an error listing the available ones.

Levels: a missing value (empty, None, NaN) belongs to no subgroup (counted as ``missing``). A numeric column with
more than 12 distinct values is banded: a column whose name is or contains the word ``age`` (``age``, ``Patient
Age``) into the fixed bands ``<40``, ``40-59``, ``60-79``, ``>=80`` years (:data:`AGE_BANDS`), any other into
quartiles of the evaluated rows (labelled by their ranges, so they depend on the split). Numeric columns with 12
values or fewer, and text columns, keep their values as levels.

Why not Fairlearn's ``MetricFrame``: it slices metrics well, but its bootstrap (``n_boot``) resamples rows, not
patients, so images of one patient would count as independent evidence and the intervals would be too narrow; the
largest gap needs a paired patient resample, which it has no way to express; and the per-subgroup metrics must be
the task's own (the same AUROC, thresholds and size rules as the rest of the evaluation), which the task already
computes. Adding a dependency (scikit-learn is not one of medlens') for the slicing alone would buy nothing.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medlens.htmlkit import ci_text, esc, fmt, html_img, html_table

if TYPE_CHECKING:
    from medlens.bundle import Manifest
    from medlens.tasks import Task

log = logging.getLogger("medlens.subgroups")

#: a column with more levels than this is left out of the default selection (name it to use it)
MAX_LEVELS = 12
#: age bands in years: (low inclusive or None, high exclusive or None, label)
AGE_BANDS: tuple[tuple[float | None, float | None, str], ...] = (
    (None, 40, "<40"), (40, 60, "40-59"), (60, 80, "60-79"), (80, None, ">=80"))
#: bootstrap replicates of ``medlens evaluate``'s subgroup intervals (the report uses its --n-boot)
DEFAULT_BOOT = 500
#: display names of the metrics tasks return
METRIC_NAMES = {"auroc": "AUROC", "sensitivity": "sensitivity", "specificity": "specificity"}


@dataclass
class SubgroupColumn:
    """One metadata column cut into subgroups.

    Attributes:
        name: the column's name.
        levels: each row's subgroup (None: missing).
        order: the subgroups in display order.
        banding: how numbers were banded (empty: the values are the levels).
        missing: rows without a value.
    """

    name: str
    levels: list[str | None]
    order: list[str]
    banding: str
    missing: int


def _missing(v: Any) -> bool:
    """None, NaN, NA/NaT or a blank string."""
    if v is None or (isinstance(v, str) and not v.strip()):
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):  # an array-like cell is a value
        return False


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    try:
        x = float(str(v).strip())
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _num_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def is_age(name: str) -> bool:
    """Whether a column holds ages by its name (the word ``age``: ``age``, ``Patient Age``, ``age_years``).

    Example:
        >>> is_age("Patient Age"), is_age("age_years"), is_age("image_count")
        (True, True, False)
    """
    return re.search(r"(?<![a-z])age(?![a-z])", name.lower()) is not None


def column_levels(name: str, values: Sequence[Any], max_levels: int = MAX_LEVELS) -> SubgroupColumn:
    """A column's subgroups: its values, or bands when it is numeric with more than ``max_levels`` values.

    Example:
        >>> c = column_levels("Patient Age", [25, 45, 61, 85, None] + list(range(20, 40)))
        >>> c.levels[:5], c.order, c.missing
        (['<40', '40-59', '60-79', '>=80', None], ['<40', '40-59', '60-79', '>=80'], 1)
    """
    raw = [None if _missing(v) else v for v in values]
    present = [v for v in raw if v is not None]
    nums = [_number(v) for v in present]
    numeric = bool(present) and all(x is not None for x in nums)
    missing = len(raw) - len(present)
    if numeric and len(set(nums)) > max_levels:
        xs = [None if v is None else _number(v) for v in raw]
        if is_age(name):
            def band(x: float) -> str:
                return next(lbl for lo, hi, lbl in AGE_BANDS if (lo is None or x >= lo) and (hi is None or x < hi))
            banding = "age bands in years: " + ", ".join(lbl for _, _, lbl in AGE_BANDS)
            order_all = [lbl for _, _, lbl in AGE_BANDS]
        else:
            edges = sorted(set(np.quantile(np.asarray(nums, dtype=np.float64), [0.25, 0.5, 0.75]).tolist()))
            lo_all, hi_all = min(nums), max(nums)  # type: ignore[type-var]
            bounds = [lo_all, *edges, hi_all]
            labels = [f"{_num_text(a)}-{_num_text(b)}" for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

            def band(x: float) -> str:
                return labels[min(int(np.searchsorted(edges, x, side="right")), len(labels) - 1)]
            banding = "quartiles of the evaluated rows"
            order_all = labels
        levels = [None if x is None else band(x) for x in xs]
        used = set(levels)
        return SubgroupColumn(name, levels, [lbl for lbl in dict.fromkeys(order_all) if lbl in used], banding, missing)
    if numeric:
        levels = [None if v is None else _num_text(_number(v)) for v in raw]  # type: ignore[arg-type]
        order = sorted({lv for lv in levels if lv is not None}, key=float)
    else:
        levels = [None if v is None else str(v).strip() for v in raw]
        order = sorted({lv for lv in levels if lv is not None}, key=lambda s: (s.lower(), s))
    return SubgroupColumn(name, levels, order, "", missing)


def subgroup_columns(metadata: pd.DataFrame | None, columns: Sequence[str] | None = None,
                     max_levels: int = MAX_LEVELS) -> tuple[list[SubgroupColumn], dict[str, str]]:
    """The columns to slice by, and the metadata columns left out of the default selection (with why).

    Args:
        metadata: the evaluated rows' metadata (``SampleTable.metadata``).
        columns: the columns asked for (None: every column with 2 to ``max_levels`` levels).
        max_levels: the most levels a column of the default selection may have.

    Raises:
        ValueError: a named column the metadata lacks (naming the available ones), or columns named when the data
            has no metadata.

    Example:
        >>> cols, skipped = subgroup_columns(table.metadata, ["Patient Gender"])  # doctest: +SKIP
    """
    available = [] if metadata is None else [str(c) for c in metadata.columns]
    if columns:
        if not available:
            raise ValueError(f"subgroups: the data has no metadata columns, so {', '.join(map(repr, columns))} cannot be sliced; "
                             "name them in data.metadata_columns (CSV) or data.metadata_fields (JSONL, SQL)")
        for c in columns:
            if c not in available:
                raise ValueError(f"subgroups: no metadata column {c!r}; the data's metadata columns are: {', '.join(available)}")
        assert metadata is not None
        return [column_levels(c, metadata[c].tolist(), max_levels) for c in dict.fromkeys(columns)], {}
    out, skipped = [], {}
    for c in available:
        assert metadata is not None
        col = column_levels(c, metadata[c].tolist(), max_levels)
        if 2 <= len(col.order) <= max_levels:
            out.append(col)
        else:
            skipped[c] = f"{len(col.order)} level(s) (the default takes 2-{max_levels}; name the column to use it)"
    return out, skipped


def parse_columns(text: str | None) -> list[str] | None:
    """``--subgroups`` text -> columns: None (not given: the default selection), ``[]`` for ``none``, else the
    comma-separated names.

    Example:
        >>> parse_columns("Patient Gender, View Position"), parse_columns("none"), parse_columns(None)
        (['Patient Gender', 'View Position'], [], None)
    """
    if text is None:
        return None
    if text.strip().lower() == "none":
        return []
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise ValueError("--subgroups: give column names separated by commas, or none")
    return names


def subgroup_performance(
    task: Task, scores: np.ndarray, targets: np.ndarray, manifest: Manifest, groups: Sequence[Any] | None,
    metadata: pd.DataFrame | None, columns: Sequence[str] | None = None, n_boot: int = DEFAULT_BOOT,
    confidence: float = 0.95, seed: int = 0,
) -> dict[str, Any] | None:
    """The task's figures per subgroup of each column (``metrics["subgroups"]`` of ``evaluate --json``).

    Args:
        task: the bundle's task.
        scores: the split's scores, as deployed.
        targets: the split's targets.
        manifest: the bundle's manifest (thresholds).
        groups: patient ids per row (the bootstrap resamples patients).
        metadata: the split's metadata rows.
        columns: the columns to slice by (None: the default selection; ``[]``: none).
        n_boot, confidence, seed: the bootstrap settings.

    Returns:
        None when the task has no subgroup metrics (a named column then raises instead), else ``{"columns": {name:
        {"banding", "missing", "levels", "subgroups": {level: {...}}, "gaps": {metric: {...}}}}, "skipped",
        "metrics", "rule", "unit", "n_boot", "confidence", "seed", "selection", "warnings", ["note"]}``.

    Raises:
        ValueError: an unknown column, or columns named for a task without subgroup metrics.

    Example:
        >>> sg = subgroup_performance(task, probs, table.targets, manifest, table.groups, table.metadata)  # doctest: +SKIP
        >>> sg["columns"]["Patient Gender"]["gaps"]["auroc"]["value"]  # doctest: +SKIP
    """
    if columns is not None and len(columns) == 0:
        return None
    cols, skipped = subgroup_columns(metadata, columns)
    probe = task.subgroup_metrics(np.asarray(scores)[:0], np.asarray(targets)[:0], manifest, None, [], n_boot=1, confidence=confidence)
    if probe is None:
        if columns:
            raise ValueError(f"subgroups: {task.name} models ({task.kind}) have no subgroup metrics")
        return None
    out: dict[str, Any] = {
        "selection": "asked" if columns else "default", "columns": {}, "skipped": skipped, "metrics": probe.get("metrics", []),
        "rule": probe.get("rule", ""), "unit": probe.get("unit"), "n_boot": int(n_boot), "confidence": float(confidence),
        "seed": int(seed), "warnings": [],
    }
    if not cols:
        out["note"] = ("the data has no metadata columns: name them in data.metadata_columns (CSV) or data.metadata_fields "
                       "(JSONL, SQL) to see performance per subgroup" if metadata is None or not len(metadata.columns) else
                       "no metadata column has 2-12 levels; name one with --subgroups")
        return out
    for i, col in enumerate(cols):
        r = task.subgroup_metrics(scores, targets, manifest, groups, col.levels, n_boot=n_boot, confidence=confidence, seed=seed + 1000 * i)
        assert r is not None
        subs = {lv: r["subgroups"][lv] for lv in col.order if lv in r["subgroups"]}
        out["columns"][col.name] = {"banding": col.banding, "missing": col.missing, "levels": list(subs), "subgroups": subs,
                                    "gaps": r.get("gaps", {})}
        out["unit"] = r.get("unit", out["unit"])
        for lv, e in subs.items():
            out["warnings"] += [f"{col.name} = {lv}: {w}" for w in e.get("warnings", [])]
        out["warnings"] += [f"{col.name}: {w}" for w in r.get("warnings", [])]
    return out


# ------------------------------------------------------------------------------------------ text
def _name(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric)


def _ci(e: dict[str, Any] | None) -> str:
    if not e or e.get("value") is None:
        return "-"
    if e.get("low") is None:
        return f"{e['value']:.3f}"
    return f"{e['value']:.3f} ({e['low']:.2f}-{e['high']:.2f})"


def _gap_text(metric: str, g: dict[str, Any], level: float) -> str:
    if g.get("value") is None:
        return f"{_name(metric)}: no gap ({g.get('reason', 'undefined')})"
    ci = "CI n/a" if g.get("low") is None else f"{level:.0f}% CI {g['low']:+.3f} to {g['high']:+.3f}"
    excludes = g.get("low") is not None and (g["low"] > 0 or g["high"] < 0)
    return (f"{_name(metric)} {g['value']:.3f} ({g['high_group']} vs {g['low_group']}; {ci}"
            + ("; excludes 0" if excludes else "") + (")" if g.get("readable", True) else "; a subgroup too small to read)"))


def _rows(sg: dict[str, Any]) -> list[list[str]]:
    head = ["column", "subgroup", "n", "patients", "pos", "neg", *[_name(m) for m in sg["metrics"]], ""]
    rows = [head]
    for name, col in sg["columns"].items():
        for lv, e in col["subgroups"].items():
            rows.append([name, lv, str(e.get("n", "")), str(e.get("patients", "")), str(e.get("positives", "")),
                         str(e.get("negatives", "")), *[_ci(e.get(m)) for m in sg["metrics"]], "" if e.get("readable", True) else "small"])
    return rows


def subgroups_text(sg: dict[str, Any] | None) -> str:
    """The subgroup table for the console (``medlens evaluate`` without --json): one row per subgroup, the largest
    gaps, the warnings.

    Example:
        >>> print(subgroups_text(result.metrics["subgroups"]))  # doctest: +SKIP
    """
    if not sg:
        return ""
    if not sg.get("columns"):
        return f"subgroups: {sg.get('note', 'none')}"
    level = 100 * sg["confidence"]
    lines = [f"subgroups ({level:.0f}% CI from {sg['n_boot']} {sg.get('unit') or 'row'}-level bootstrap replicates; "
             "decisions at the deployed threshold):"]
    rows = _rows(sg)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for name, col in sg["columns"].items():
        gaps = col.get("gaps") or {}
        if gaps:
            lines.append(f"largest gap, {name}: " + "; ".join(_gap_text(m, g, level) for m, g in gaps.items()))
    if sg.get("rule"):
        lines.append(f"size rule: {sg['rule']}")
    lines += [f"warning: {w}" for w in sg.get("warnings", [])]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ figure and HTML
def forest_png(sg: dict[str, Any]) -> bytes | None:
    """A forest plot: one row per subgroup (grouped by column), one panel per metric, the point and its interval;
    subgroups too small to read in grey. None when there is nothing to draw.

    Example:
        >>> png = forest_png(result.metrics["subgroups"])  # doctest: +SKIP
    """
    from medlens.figures import figure, to_png

    cols = sg.get("columns") or {}
    metrics = sg.get("metrics") or []
    if not cols or not metrics:
        return None
    labels: list[str] = []
    entries: list[dict[str, Any] | None] = []
    for name, col in cols.items():
        labels.append(name)
        entries.append(None)  # a header row
        for lv, e in col["subgroups"].items():
            labels.append(f"{lv} (n={e.get('n', '?')})")
            entries.append(e)
    n = len(labels)
    fig = figure(1.6 + 2.6 * len(metrics), 0.8 + 0.26 * n)
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    y = np.arange(n)[::-1]
    for ax, m in zip(axes, metrics, strict=True):
        for yi, e in zip(y, entries, strict=True):
            if e is None:
                ax.axhline(yi, color="0.85", lw=0.6)
                continue
            v = e.get(m) or {}
            if v.get("value") is None:
                continue
            color = "C0" if e.get("readable", True) else "0.6"
            if v.get("low") is not None:
                ax.plot([v["low"], v["high"]], [yi, yi], color=color, lw=1.4)
            ax.plot([v["value"]], [yi], marker="s", ms=4.5, color=color, ls="none")
        ax.set_xlim(-0.02, 1.02)
        ax.set_title(_name(m), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", color="0.92", lw=0.6)
    axes[0].set_yticks(y, [lb if e is not None else lb.upper() for lb, e in zip(labels, entries, strict=True)], fontsize=7)
    axes[0].set_ylim(-0.7, n - 0.3)
    level = int(round(100 * sg.get("confidence", 0.95)))
    fig.suptitle(f"per subgroup with {level}% patient-bootstrap intervals (grey: too small to read)", fontsize=9)
    return to_png(fig)


def subgroups_html(sg: dict[str, Any] | None) -> str:
    """The report's "Subgroups" section: the method, one table per column with its largest gaps, the forest plot
    and the warnings (every value escaped)."""
    if not sg:
        return ""
    parts = ["<h2>Subgroups</h2>"]
    if not sg.get("columns"):
        parts.append(f'<p class="muted">{esc(sg.get("note", "no subgroups"))}</p>')
        return "".join(parts)
    level = 100 * sg["confidence"]
    parts.append(f"<p>Performance per subgroup of the evaluated split, decisions at the deployed threshold. Intervals: "
                 f"{level:.0f}% percentile bootstrap over {sg['n_boot']} replicates resampling {esc(sg.get('unit') or 'row')}s "
                 "within each subgroup; the largest gap's interval resamples patients of the whole column at once (paired). "
                 f"Size rule: {esc(sg.get('rule') or 'n/a')}.</p>")
    metrics = sg["metrics"]
    for name, col in sg["columns"].items():
        extra = [col["banding"]] if col.get("banding") else []
        if col.get("missing"):
            extra.append(f"{col['missing']} row(s) without a value left out")
        parts.append(f"<h3>{esc(name)}</h3>" + (f'<p class="muted">{esc("; ".join(extra))}</p>' if extra else ""))
        rows = []
        for lv, e in col["subgroups"].items():
            rows.append([esc(lv), fmt(e.get("n")), fmt(e.get("patients")), fmt(e.get("positives")), fmt(e.get("negatives")),
                         *[ci_text(e.get(m)) for m in metrics],
                         "yes" if e.get("readable", True) else '<span class="notmet">too small</span>'])
        parts.append(html_table(["subgroup", "n", "patients", "positives", "negatives", *[esc(_name(m)) for m in metrics], "readable"], rows))
        gaps = col.get("gaps") or {}
        if gaps:
            parts.append("<p>Largest gap: " + "; ".join(esc(_gap_text(m, g, level)) for m, g in gaps.items()) + ".</p>")
    if sg.get("skipped"):
        parts.append('<p class="muted">Not sliced by default: ' + esc("; ".join(f"{c}: {why}" for c, why in sg["skipped"].items())) + "</p>")
    parts.append(html_img(forest_png(sg), "forest plot of the metrics per subgroup"))
    parts.extend(f'<div class="warn">{esc(w)}</div>' for w in sg.get("warnings", []))
    return "".join(parts)
