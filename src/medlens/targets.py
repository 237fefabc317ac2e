"""Config ``targets:``: lower bounds, upper bounds and ranges, checked one way everywhere.

A target is a number or a range. A number is a lower bound (``auroc_macro: 0.86`` means at least 0.86), or an
upper bound for metrics where lower is better (ECE, Brier, loss). A range (``[0.86, 0.92]`` or
``{min: 0.86, max: 0.92}``) must hold at both ends; either end may be left out.

:func:`check_targets` is the single rule (reports, cross-validation and the console lines use it);
:func:`format_target_checks` turns it into lines such as ``AUROC 0.88 in 0.86-0.92: MET``.

Example:
    >>> format_target_checks({"auroc_macro": 0.88}, {"auroc_macro": [0.86, 0.92]})
    ['target auroc_macro 0.8800 in 0.86-0.92: MET']
"""

from __future__ import annotations

from typing import Any

from medlens.tasks import Task
from medlens.tasks.base import lookup_metric


def target_bounds(name: str, target: Any, task: Task | None = None) -> tuple[float | None, float | None]:
    """``(min, max)`` of one target: a number is a lower bound (upper for metrics the task says are lower-is-better).

    Example:
        >>> from medlens.tasks import get_task
        >>> b = get_task("binary")
        >>> target_bounds("auroc_macro", 0.8, b), target_bounds("ece", 0.05, b), target_bounds("f1_macro", [0.7, 0.9], b)
        ((0.8, None), (None, 0.05), (0.7, 0.9))
    """
    if isinstance(target, dict):
        lo, hi = target.get("min"), target.get("max")
    elif isinstance(target, list | tuple):
        lo, hi = target
    elif hasattr(target, "min") and hasattr(target, "max"):  # config.TargetRange
        lo, hi = target.min, target.max
    else:
        x = float(target)
        lower = task.lower_is_better(name) if task is not None else name.split("/")[0] == "loss"
        return (None, x) if lower else (x, None)
    return (None if lo is None else float(lo)), (None if hi is None else float(hi))


def _within(x: float | None, lo: float | None, hi: float | None) -> bool | None:
    if x is None:
        return None
    return (lo is None or x >= lo) and (hi is None or x <= hi)


def _describe(lo: float | None, hi: float | None) -> tuple[str, str]:
    """(direction, text) of a bound: ('>=', '0.86'), ('<=', '0.05') or ('in', '0.86-0.92')."""
    if lo is not None and hi is not None:
        return "in", f"{lo:g}-{hi:g}"
    return (">=", f"{lo:g}") if lo is not None else ("<=", f"{hi:g}")


def check_targets(targets: dict[str, Any], metrics: dict[str, Any], ci: dict[str, Any] | None = None,
                  task: Task | None = None) -> list[dict[str, Any]]:
    """Compare metrics with config targets: met / not met, and whether the whole CI meets it too.

    Targets name a headline metric (``auroc_macro``) or a per-label one (``auroc/Effusion``). The rows keep the
    keys of the former ``report.check_targets`` (``metric``, ``target``, ``direction``, ``value``, ``ci_bound``,
    ``met``, ``met_at_ci_bound``, ``note``) and add ``min``/``max``; ``target`` is the number for a one-sided
    target and ``[min, max]`` for a range. ``ci_bound`` is the conservative CI end for a one-sided target;
    for a range ``met_at_ci_bound`` asks that the whole interval lies in it.

    Example:
        >>> check_targets({"auroc_macro": [0.8, 0.9]}, {"auroc_macro": 0.85})[0]["met"]
        True
    """
    rows = []
    lookup = task.metric_value if task is not None else lookup_metric
    for name, target in targets.items():
        lo, hi = target_bounds(name, target, task)
        flat = metrics.get(name)  # a flat key wins ("auroc/Effusion" in a cross-validation summary), then per_label
        value = float(flat) if isinstance(flat, int | float) and not isinstance(flat, bool) and flat == flat else lookup(metrics, name)
        entry = None
        if ci is not None:
            if "/" in name:
                m, lb = name.split("/", 1)
                entry = ci.get("per_label", {}).get(lb, {}).get(m)
            else:
                entry = (ci.get("headline") or ci).get(name)
        low = None if entry is None else entry.get("low")
        high = None if entry is None else entry.get("high")
        direction, _ = _describe(lo, hi)
        if direction == "in":
            bound = None
            met_ci = None if low is None or high is None else bool(low >= lo and high <= hi)
            tgt: Any = [lo, hi]
        else:
            bound = high if direction == "<=" else low
            met_ci = _within(bound, lo, hi)
            tgt = lo if direction == ">=" else hi
        known = name in metrics or ("/" in name and name.split("/", 1)[1] in metrics.get("per_label", {}))
        rows.append({
            "metric": name, "target": tgt, "min": lo, "max": hi, "direction": direction, "value": value,
            "ci_bound": bound, "met": _within(value, lo, hi), "met_at_ci_bound": met_ci,
            "note": "" if known else "unknown metric for this task",
        })
    return rows


def format_target_checks(metrics: dict[str, Any], targets: dict[str, Any], task: Task | None = None) -> list[str]:
    """One line per target, e.g. ``target auroc_macro 0.8800 in 0.86-0.92: MET`` (``NOT MET``, ``n/a``).

    Args:
        metrics: one split's metrics (``result.metrics["test"]``).
        targets: the config's ``targets`` section.
        task: the model's task (which metrics are lower-is-better, how per-label metrics are found).

    Example:
        >>> from medlens.tasks import get_task
        >>> format_target_checks({"ece": 0.08}, {"ece": 0.05}, get_task("binary"))
        ['target ece 0.0800 <= 0.05: NOT MET']
    """
    lines = []
    for row in check_targets(targets, metrics, task=task):
        direction, text = _describe(row["min"], row["max"])
        value = "n/a" if row["value"] is None else f"{row['value']:.4f}"
        verdict = "n/a" if row["met"] is None else ("MET" if row["met"] else "NOT MET")
        note = f" ({row['note']})" if row["note"] else ""
        lines.append(f"target {row['metric']} {value} {direction} {text}: {verdict}{note}")
    return lines
