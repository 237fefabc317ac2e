"""The deployed operating point as a clinician reads it: sensitivity, specificity, PPV and NPV at the bundle's
thresholds, each with its Wilson 95 % interval and counts, from the test split when the bundle has test metrics
(else validation), named with its n; and whether the number shown may be called a probability.

The number is called a **probability** only when the split's expected calibration error is below
:data:`ECE_BOUND` (0.05: on average the stated value is within 5 points of the observed frequency); otherwise it is
a **score**, and the calibration error is shown beside it. Intervals are Wilson score intervals of the counts at
the deployed threshold and, when the split has patient ids, percentile bootstrap intervals that resample patients
(the replicates of the headline interval, :meth:`ClassificationTask.metrics`, stored under ``ci.per_label``): images
of one patient are not independent, so the patient interval is the honest one when patients have several images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: the expected calibration error below which the model's output is called a probability (else a score)
ECE_BOUND = 0.05
#: the rates shown, in order, with their names on every surface
RATES = (("sensitivity", "sensitivity"), ("specificity", "specificity"), ("ppv", "PPV"), ("npv", "NPV"))
#: each rate's name among the per-label metrics (what the patient bootstrap resamples)
METRIC_OF = {"sensitivity": "sensitivity", "specificity": "specificity", "ppv": "precision", "npv": "npv"}
#: the per-label metrics bootstrapped for the operating point when the split has patient ids
BOOTSTRAP_RATES = tuple(METRIC_OF.values())


def value_word(metrics: dict[str, Any] | None) -> tuple[str, float | None, str | None]:
    """(``probability`` or ``score``, the ECE, the split it was measured on) for a bundle's metrics.

    Example:
        >>> value_word({"test": {"ece": 0.27}})
        ('score', 0.27, 'test')
        >>> value_word({"val": {"ece": 0.02}})
        ('probability', 0.02, 'val')
    """
    split = _split(metrics or {})
    if split is None:
        return "score", None, None
    ece = (metrics or {})[split].get("ece")
    ece = float(ece) if isinstance(ece, (int, float)) and ece == ece else None
    return ("probability" if ece is not None and ece < ECE_BOUND else "score"), ece, split


def _split(metrics: dict[str, Any]) -> str | None:
    for split in ("test", "val"):
        m = metrics.get(split)
        if isinstance(m, dict) and (m.get("per_label") or m.get("ece") is not None):
            return split
    return None


def _rate_text(name: str, w: dict[str, Any], boot: dict[str, Any] | None = None) -> str:
    est, lo, hi = w.get("estimate"), w.get("low"), w.get("high")
    if est is None or est != est:
        return f"{name} - (0/{w.get('n', 0)})"
    extra = ""
    if boot and boot.get("low") is not None and boot.get("high") is not None:
        extra = f"; patient bootstrap {boot['low']:.2f}-{boot['high']:.2f}"
    return f"{name} {est:.2f} (95% CI {lo:.2f}-{hi:.2f}; {w.get('k')}/{w.get('n')}{extra})"


def _patient_bootstrap(m: dict[str, Any]) -> dict[str, Any] | None:
    """The split's bootstrap record when it resampled patients and holds the rates, else None."""
    ci = m.get("ci")
    if not isinstance(ci, dict) or ci.get("unit") != "group":
        return None
    per = ci.get("per_label") or {}
    if not any(isinstance(d, dict) and any(k in d for k in BOOTSTRAP_RATES) for d in per.values()):
        return None
    return ci


def operating_point(metrics: dict[str, Any] | None, labels: Sequence[str], thresholds: dict[str, float | None]) -> dict[str, Any] | None:
    """The operating point of ``labels`` (the findings that decide) from a bundle's metrics.

    Args:
        metrics: ``manifest.metrics`` (``test`` and/or ``val``: the metrics of :func:`classification_metrics`).
        labels: the findings shown (binary: the positive class).
        thresholds: each finding's deployed threshold (None: arg-max).

    Returns:
        None when the bundle has no split metrics; else ``split``, ``n``, ``value_word``, ``ece``, ``ece_bound``,
        ``calibration`` (one sentence), ``interval_method``, ``bootstrap`` (``unit`` "patient", ``n_boot``,
        ``n_patients``, ``confidence``; None when the split has no patient ids), ``labels`` (per finding:
        ``threshold``, the rates as ``{estimate, low, high, k, n}`` (Wilson), ``bootstrap`` (the rates as
        ``{estimate, low, high, n_valid}``, resampling patients; absent without patient ids), ``text``; ``note``
        when the metrics were measured at another threshold) and ``text`` (one line per finding, the split named).

    Example:
        >>> w = {"estimate": 0.8, "low": 0.5, "high": 0.9, "k": 8, "n": 10}
        >>> m = {"test": {"n": 20, "ece": 0.1, "per_label": {"p": {"threshold": 0.4, "wilson": {
        ...     "sensitivity": w, "specificity": w, "ppv": w, "npv": w}}}}}
        >>> operating_point(m, ["p"], {"p": 0.4})["text"][0][:60]
        'p on the test split (n=20), threshold 0.400: sensitivity 0.80'
    """
    word, ece, split = value_word(metrics)
    if split is None:
        return None
    m = (metrics or {})[split]
    n = m.get("n")
    per_label = m.get("per_label") or {}
    ci = _patient_bootstrap(m)
    out_labels: dict[str, Any] = {}
    lines = []
    for label in labels:
        d = per_label.get(label) or {}
        wilson = d.get("wilson") or {}
        if not wilson:
            continue
        measured = d.get("threshold")
        deployed = thresholds.get(label)
        rates = {key: wilson.get(key) or {} for key, _ in RATES}
        boot_label = ((ci or {}).get("per_label") or {}).get(label) or {}
        boot = {key: {"estimate": (boot_label.get(metric) or {}).get("value"), "low": (boot_label.get(metric) or {}).get("low"),
                      "high": (boot_label.get(metric) or {}).get("high"), "n_valid": (boot_label.get(metric) or {}).get("n_valid")}
                for key, metric in METRIC_OF.items()} if boot_label else None
        at = "the highest class" if deployed is None else f"threshold {deployed:.3f}"
        who = "" if ci is None else f" of {ci.get('n_units')} patients"
        text = f"{label} on the {split} split (n={n}){who}, {at}: " + "; ".join(
            _rate_text(name, rates[key], None if boot is None else boot[key]) for key, name in RATES)
        entry: dict[str, Any] = {"threshold": deployed, **rates, "text": text}
        if boot is not None:
            entry["bootstrap"] = boot
        if deployed is not None and isinstance(measured, (int, float)) and abs(float(measured) - float(deployed)) > 1e-9:
            entry["note"] = (f"measured at threshold {float(measured):.3f}, not at the deployed {deployed:.3f}: "
                             "these rates do not describe the deployed threshold")
            entry["text"] = text + f" [{entry['note']}]"
        out_labels[label] = entry
        lines.append(entry["text"])
    if ece is None:
        calibration = f"calibration error not measured on the {split} split: the number is a score, not a probability"
    elif word == "probability":
        calibration = f"calibration error (ECE) {ece:.3f} on the {split} split, below {ECE_BOUND:g}: the number reads as a probability"
    else:
        calibration = (f"calibration error (ECE) {ece:.3f} on the {split} split, not below {ECE_BOUND:g}: the number is a score, "
                       "not a probability")
    method = "Wilson 95 % score interval of the counts at the threshold"
    bootstrap = None
    if ci is not None:
        bootstrap = {"unit": "patient", "n_boot": ci.get("n_boot"), "n_patients": ci.get("n_units"), "confidence": ci.get("confidence"),
                     "method": "percentile bootstrap resampling patients"}
        method += (f"; patient bootstrap: {int(round(100 * float(ci.get('confidence') or 0.95)))} % percentile interval over "
                   f"{ci.get('n_boot')} replicates resampling the split's {ci.get('n_units')} patients")
    return {"split": split, "n": n, "value_word": word, "ece": ece, "ece_bound": ECE_BOUND, "calibration": calibration,
            "interval_method": method, "bootstrap": bootstrap, "labels": out_labels, "text": lines}
