"""Metrics as a person reads them on a terminal: a headline with its interval and n, a short table, targets.

The CLI prints these; ``--json`` prints the metrics themselves instead. Nothing here knows a task: a model with
one label (binary, anomaly) shows each metric once, a model with several labels shows the averages and a row
per label.
"""

from __future__ import annotations

import math
from typing import Any

#: headline metric candidates, in order: the first one present leads the summary
HEADLINE = ("auroc_macro", "auroc", "accuracy")
#: printed names of metric keys (the averages keep their suffix: "AUROC (macro)")
NAMES = {
    "auroc": "AUROC", "average_precision": "average precision", "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy", "f1": "F1", "sensitivity": "sensitivity", "specificity": "specificity",
    "ece": "calibration error (ECE)", "brier": "Brier score", "exact_match": "exact match",
    "hamming_accuracy": "Hamming accuracy", "fpr": "false-positive rate", "fpr_target": "false-positive rate target",
    "threshold": "threshold", "loss": "loss",
}
#: overall rows of a model with one label (the per-label row already holds AUROC, sensitivity, ...)
SINGLE = ("accuracy", "balanced_accuracy", "ece", "brier", "fpr", "fpr_target")
#: overall rows without a per-label table (anomaly metrics are flat)
FLAT = ("auroc", "average_precision", "accuracy", "balanced_accuracy", "f1", "sensitivity", "specificity", "fpr",
        "fpr_target", "threshold", "ece", "brier")
#: overall rows of a model with several labels
AVERAGED = ("auroc_macro", "auroc_micro", "average_precision_macro", "f1_macro", "sensitivity_macro",
            "specificity_macro", "accuracy", "balanced_accuracy", "hamming_accuracy", "exact_match", "ece", "brier")
#: per-label columns: (key, title)
LABEL_COLUMNS = (("n", "n"), ("support", "pos"), ("auroc", "AUROC"), ("average_precision", "AP"),
                 ("sensitivity", "sens"), ("specificity", "spec"), ("f1", "F1"), ("threshold", "threshold"))


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def metric_name(key: str) -> str:
    """``auroc_macro`` -> ``AUROC (macro)``; ``ece`` -> ``calibration error (ECE)``."""
    base, _, avg = key.rpartition("_") if key.endswith(("_macro", "_micro", "_weighted")) else (key, "", "")
    return NAMES.get(base, base.replace("_", " ")) + (f" ({avg})" if avg else "")


def _pair(x: Any) -> tuple[float, float] | None:
    if isinstance(x, dict):
        lo, hi = x.get("low", x.get("lower")), x.get("high", x.get("upper"))
    elif isinstance(x, (list, tuple)) and len(x) == 2:
        lo, hi = x
    else:
        return None
    return (float(lo), float(hi)) if _num(lo) and _num(hi) else None


def interval(metrics: dict[str, Any], key: str) -> tuple[float, float] | None:
    """The 95 % interval of a metric when the metrics carry one (``ci.headline.<key>``, ``ci.<key>`` or
    ``<key>_ci``), else None."""
    ci = metrics.get("ci") if isinstance(metrics.get("ci"), dict) else {}
    for cand in ((ci.get("headline") or {}).get(key) if isinstance(ci.get("headline"), dict) else None, ci.get(key),
                 metrics.get(f"{key}_ci")):
        p = _pair(cand)
        if p is not None:
            return p
    return None


def label_interval(row: dict[str, Any], key: str) -> tuple[float, float] | None:
    """A per-label interval: ``row["wilson"][key]`` (or ``row["ci"][key]``, ``row["<key>_ci"]``)."""
    for holder in (row.get("wilson"), row.get("ci")):
        if isinstance(holder, dict):
            p = _pair(holder.get(key))
            if p is not None:
                return p
    return _pair(row.get(f"{key}_ci"))


def _f(x: Any, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if _num(x) else "n/a"


def headline(metrics: dict[str, Any], split: str | None = None) -> str:
    """One line: ``test: AUROC 0.960 (95% CI 0.910-0.990, n=20)``; the interval only when the metrics have one.

    Example:
        >>> headline({"auroc_macro": 0.96, "n": 20, "ci": {"headline": {"auroc_macro": {"low": 0.91, "high": 0.99}}}}, "test")
        'test: AUROC 0.960 (95% CI 0.910-0.990, n=20)'
    """
    key = next((k for k in HEADLINE if _num(metrics.get(k))), None)
    prefix = f"{split}: " if split else ""
    n = metrics.get("n")
    n_text = f"n={int(n)}" if _num(n) else "n=?"
    if key is None:
        return f"{prefix}no headline metric ({n_text})"
    ci = interval(metrics, key)
    name = NAMES.get(key.split("_macro")[0], key) if len(metrics.get("per_label") or {}) <= 1 else metric_name(key)
    inner = f"95% CI {_f(ci[0])}-{_f(ci[1])}, {n_text}" if ci else n_text
    return f"{prefix}{name} {_f(metrics[key])} ({inner})"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
            for r in rows]


def metrics_text(metrics: dict[str, Any], split: str | None = None) -> str:
    """The human summary of one split's metrics: headline, overall metrics, one row per label, targets, warnings.

    Example:
        >>> print(metrics_text({"auroc_macro": 0.9, "accuracy": 0.8, "n": 10}, "test").splitlines()[0])
        test: AUROC 0.900 (n=10)
    """
    lines = [headline(metrics, split)]
    per = metrics.get("per_label") if isinstance(metrics.get("per_label"), dict) else {}
    keys = SINGLE if len(per) == 1 else AVERAGED if per else FLAT
    overall = [[metric_name(k) if per and len(per) > 1 else NAMES.get(k, k), _f(metrics[k])] for k in keys if _num(metrics.get(k))]
    if overall:
        lines += ["", *_table([["metric", "value"], *overall])]
    if per:
        cols = [(k, t) for k, t in LABEL_COLUMNS if any(isinstance(r, dict) and r.get(k) is not None for r in per.values())]
        rows = [["label", *[t for _, t in cols]]]
        for label, r in per.items():
            r = r if isinstance(r, dict) else {}
            cells = []
            for k, _ in cols:
                v = r.get(k)
                if k in ("n", "support"):
                    cells.append(str(int(v)) if _num(v) else "-")
                    continue
                text = _f(v) if v is not None else "-"
                ci = label_interval(r, k)
                cells.append(f"{text} ({_f(ci[0], 2)}-{_f(ci[1], 2)})" if ci and v is not None else text)
            rows.append([str(label), *cells])
        lines += ["", *_table(rows)]
    checks = list(metrics.get("target_checks") or [])  # "AUROC 0.88 in 0.86-0.92: MET" (medlens.targets)
    for t in metrics.get("targets") or []:  # rows of medlens.targets.check_targets (reports)
        met = t.get("met")
        checks.append(f"target {t.get('metric')} {t.get('direction', '')} {t.get('target')}: {'n/a' if met is None else ('met' if met else 'NOT met')}")
    if checks:
        lines += ["", *checks]
    for w in metrics.get("warnings") or []:
        lines.append(f"warning: {w}")
    return "\n".join(lines)
