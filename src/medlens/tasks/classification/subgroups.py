"""A classifier's performance per subgroup of one metadata column (``Task.subgroup_metrics``).

Per subgroup: images, patients, positives and negatives, and AUROC, sensitivity and specificity at the deployed
thresholds (binary: the positive class; multi-label: the macro mean over the labels defined in the subgroup, and
each label in ``per_label``), each with a percentile-bootstrap interval that resamples the subgroup's **patients**
(:func:`medlens.tasks.classification.uncertainty.bootstrap_indices` on the subgroup's rows; rows without a patient
id are their own patient).

The largest gap between subgroups (AUROC and sensitivity): the pair with the highest and the lowest point value,
among the subgroups large enough to read (all subgroups with a defined value when fewer than two are). Its interval
comes from paired resampling: patients are drawn from the whole column at once, so a patient seen in two subgroups
(a PA and an AP film) moves both, and the pair's difference is taken in each replicate. The pair is chosen on the
point values, so the interval does not allow for having picked the largest of several gaps (it is optimistic when
a column has many subgroups).

Size rule (:data:`SIZE_RULE`): a subgroup with fewer than 20 positives, fewer than 20 negatives, or positives from
fewer than 5 patients is too small to read; it is reported, flagged ``readable: false``, and warned about. For
multi-label models "positive" is an image with at least one finding and "negative" one with none; the labels that
break the rule inside a subgroup are listed (``labels_below_rule``), since the macro averages them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from medlens.tasks.classification.metrics import group_codes, label_view, predictions
from medlens.tasks.classification.uncertainty import bootstrap_indices

#: a subgroup needs this many positives, negatives and patients behind its positives to be read
MIN_POSITIVES = 20
MIN_NEGATIVES = 20
MIN_POSITIVE_PATIENTS = 5
SIZE_RULE = (f"a subgroup with fewer than {MIN_POSITIVES} positives, fewer than {MIN_NEGATIVES} negatives, or positives "
             f"from fewer than {MIN_POSITIVE_PATIENTS} patients is too small to read")
#: metrics per subgroup (report order) and those whose largest gap is measured
METRICS = ("auroc", "sensitivity", "specificity")
GAP_METRICS = ("auroc", "sensitivity")
#: fewer valid replicates than this: the interval is undefined
MIN_VALID = 20


class _Scored:
    """The scored columns of a split: scores, 0/1 truth, known-mask, decisions at the deployed thresholds, patients.

    Metrics take a weight per row: a bootstrap replicate is the subgroup's rows weighted by how often it drew each
    (whole patients at a time), so many replicates are scored at once as a (replicates x rows) matrix; with unit
    weights the figures are the plain ones (AUROC with ties counting one half, as :func:`binary_auroc`).
    """

    def __init__(self, scores: np.ndarray, targets: np.ndarray, kind: str, names: Sequence[str], thresholds: Sequence[float] | None,
                 groups: Sequence[Any] | None) -> None:
        self.s, y, self.known, self.names = label_view(scores, targets, kind, names)
        self.yb = (y > 0.5) & self.known
        self.neg = ~(y > 0.5) & self.known
        self.pred = predictions(self.s, kind, thresholds)
        self.codes = group_codes(groups, len(self.s))
        self.pos_row = self.yb.any(axis=1)  # an image with at least one positive finding
        self.neg_row = self.known.any(axis=1) & ~self.pos_row

    def values(self, rows: np.ndarray, w: np.ndarray, which: Sequence[str] = METRICS) -> dict[str, np.ndarray]:
        """Each metric per label for each weighting: ``w`` is (B, len(rows)) row weights; (B, labels), NaN undefined."""
        yb, neg, pred = self.yb[rows].astype(np.float64), self.neg[rows].astype(np.float64), self.pred[rows]
        out: dict[str, np.ndarray] = {}
        with np.errstate(invalid="ignore", divide="ignore"):
            if "sensitivity" in which:
                pos_w = w @ yb
                out["sensitivity"] = np.where(pos_w > 0, (w @ (yb * pred)) / pos_w, np.nan)
            if "specificity" in which:
                neg_w = w @ neg
                out["specificity"] = np.where(neg_w > 0, (w @ (neg * ~pred)) / neg_w, np.nan)
            if "auroc" in which:
                out["auroc"] = np.column_stack([self._auroc(rows, w, j) for j in range(len(self.names))]) if len(self.names) else \
                    np.zeros((len(w), 0))
        return out

    def _auroc(self, rows: np.ndarray, w: np.ndarray, j: int) -> np.ndarray:
        """Weighted AUROC of label ``j``: negatives' weight times the positive weight scored above them (ties one half)."""
        idx = rows[self.known[rows, j]]
        pos = np.flatnonzero(self.known[rows, j])
        if not len(idx):
            return np.full(len(w), np.nan)
        s = self.s[idx, j]
        order = np.argsort(-s, kind="mergesort")
        s, cols = s[order], pos[order]
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # blocks of tied scores, highest first
        wp = np.add.reduceat(w[:, cols] * self.yb[idx[order], j], starts, axis=1)
        wn = np.add.reduceat(w[:, cols] * self.neg[idx[order], j], starts, axis=1)
        above = np.cumsum(wp, axis=1) - wp
        den = wp.sum(axis=1) * wn.sum(axis=1)
        return np.where(den > 0, (wn * (above + 0.5 * wp)).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)

    def counts(self, rows: np.ndarray) -> dict[str, int]:
        pos, neg = self.pos_row[rows], self.neg_row[rows]
        return {"n": int(len(rows)), "patients": int(len(np.unique(self.codes[rows]))), "positives": int(pos.sum()),
                "negatives": int(neg.sum()), "positive_patients": int(len(np.unique(self.codes[rows][pos])))}

    def label_counts(self, rows: np.ndarray, j: int) -> dict[str, int]:
        pos = self.yb[rows, j]
        return {"positives": int(pos.sum()), "negatives": int(self.neg[rows, j].sum()),
                "positive_patients": int(len(np.unique(self.codes[rows][pos])))}


#: replicates scored together (bounds the memory of the weight matrix: CHUNK x rows)
CHUNK = 64


def _replicate_weights(codes: np.ndarray, n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Chunks of (replicates x n) row weights: how often each row was drawn by
    :func:`~medlens.tasks.classification.uncertainty.bootstrap_indices` (whole patients with replacement)."""
    chunk: list[np.ndarray] = []
    for idx in bootstrap_indices(codes, n, n_boot, seed):
        chunk.append(np.bincount(idx, minlength=n).astype(np.float64))
        if len(chunk) == CHUNK:
            yield np.stack(chunk)
            chunk = []
    if chunk:
        yield np.stack(chunk)


def _macro(v: np.ndarray) -> np.ndarray:
    """Mean over labels (last axis) of the defined values; NaN where none is."""
    ok = ~np.isnan(v)
    cnt = ok.sum(axis=-1)
    return np.where(cnt > 0, np.where(ok, v, 0.0).sum(axis=-1) / np.maximum(cnt, 1), np.nan)


def _entry(value: float, reps: np.ndarray, confidence: float) -> dict[str, Any]:
    vals = np.asarray(reps, dtype=np.float64)
    vals = vals[~np.isnan(vals)]
    a = (1.0 - confidence) / 2.0 * 100.0
    defined = value == value
    lo, hi = (float(x) for x in np.percentile(vals, [a, 100.0 - a])) if defined and vals.size >= MIN_VALID else (None, None)
    return {"value": float(value) if defined else None, "low": lo, "high": hi, "n_valid": int(vals.size)}


def _too_small(c: dict[str, int]) -> list[str]:
    why = []
    if c["positives"] < MIN_POSITIVES:
        why.append(f"{c['positives']} positive(s) (< {MIN_POSITIVES})")
    if c["negatives"] < MIN_NEGATIVES:
        why.append(f"{c['negatives']} negative(s) (< {MIN_NEGATIVES})")
    if c["positive_patients"] < MIN_POSITIVE_PATIENTS:
        why.append(f"positives from {c['positive_patients']} patient(s) (< {MIN_POSITIVE_PATIENTS})")
    return why


def subgroup_metrics(
    scores: np.ndarray, targets: np.ndarray, kind: str, label_names: Sequence[str], thresholds: Sequence[float] | None,
    groups: Sequence[Any] | None, levels: Sequence[str | None], n_boot: int = 500, confidence: float = 0.95, seed: int = 0,
) -> dict[str, Any]:
    """Metrics per subgroup of one column, with patient-bootstrap intervals, and the largest gaps.

    Args:
        scores: (N, K) probabilities (calibrated as deployed).
        targets: (N, L) targets, NaN unknown.
        kind: ``binary`` or ``multilabel``.
        label_names: the label space's names.
        thresholds: the deployed thresholds (None: 0.5).
        groups: a patient id per row (None: each row its own patient).
        levels: the subgroup of each row (None: missing, left out).
        n_boot: bootstrap replicates per subgroup and for the gaps.
        confidence: interval level.
        seed: bootstrap seed.

    Returns:
        ``{"metrics", "gap_metrics", "rule", "unit", "subgroups": {level: {n, patients, positives, negatives,
        positive_patients, auroc, sensitivity, specificity (each {value, low, high, n_valid}), readable, warnings,
        [per_label, labels_below_rule]}}, "gaps": {metric: {value, low, high, n_valid, high_group, low_group,
        readable, compared} | {value: None, reason}}, "warnings"}``.

    Example:
        >>> r = subgroup_metrics(p, t, "binary", ["normal", "pneumonia"], [0.4], pids, sex)  # doctest: +SKIP
        >>> r["subgroups"]["F"]["auroc"]["low"], r["gaps"]["sensitivity"]["value"]  # doctest: +SKIP
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, not {n_boot}")
    sc = _Scored(scores, targets, kind, label_names, thresholds, groups)
    lv = np.asarray([None if x is None else str(x) for x in levels], dtype=object)
    if len(lv) != len(sc.s):
        raise ValueError(f"{len(lv)} subgroup levels for {len(sc.s)} rows")
    per_label = len(sc.names) > 1
    order = list(dict.fromkeys(x for x in lv.tolist() if x is not None))
    subgroups: dict[str, dict[str, Any]] = {}
    for i, g in enumerate(order):
        rows = np.flatnonzero(lv == g)
        point = {m: v[0] for m, v in sc.values(rows, np.ones((1, len(rows)))).items()}
        chunks = [sc.values(rows, w) for w in _replicate_weights(sc.codes[rows], len(rows), n_boot, seed + i)]
        reps = {m: np.concatenate([c[m] for c in chunks]) for m in METRICS}  # (n_boot, labels)
        c = sc.counts(rows)
        why = _too_small(c)
        entry: dict[str, Any] = {**c}
        for m in METRICS:
            entry[m] = _entry(float(_macro(point[m])), _macro(reps[m]), confidence)
        entry["readable"] = not why
        entry["warnings"] = [f"{', '.join(why)}: too small to read"] if why else []
        if per_label:
            entry["per_label"] = {}
            below = []
            for j, name in enumerate(sc.names):
                lc = sc.label_counts(rows, j)
                if _too_small(lc):
                    below.append(name)
                entry["per_label"][name] = {**lc, **{m: _entry(float(point[m][j]), reps[m][:, j], confidence) for m in METRICS}}
            entry["labels_below_rule"] = below
        subgroups[g] = entry
    gaps = _gaps(sc, lv, order, subgroups, n_boot, confidence, seed + len(order))
    warnings = [w for g in gaps.values() for w in g.get("warnings", [])]
    below_counts = {g: len(e.get("labels_below_rule", [])) for g, e in subgroups.items()}
    if any(below_counts.values()):  # one line per column: the macro averages labels each too small to read alone
        warnings.append("labels below the size rule per subgroup: " + ", ".join(f"{g} {k}/{len(sc.names)}" for g, k in below_counts.items())
                        + " (the macro averages them; their own figures, under per_label, are not readable one by one)")
    return {
        "metrics": list(METRICS), "gap_metrics": list(GAP_METRICS), "rule": SIZE_RULE,
        "unit": "image" if groups is None else "patient", "subgroups": subgroups, "gaps": gaps, "warnings": warnings,
    }


def _gaps(sc: _Scored, lv: np.ndarray, order: list[str], subgroups: dict[str, dict[str, Any]], n_boot: int, confidence: float,
          seed: int) -> dict[str, dict[str, Any]]:
    """The largest gap per metric of :data:`GAP_METRICS`, with a paired patient-bootstrap interval."""
    out: dict[str, dict[str, Any]] = {}
    pairs: dict[str, tuple[str, str]] = {}
    for m in GAP_METRICS:
        defined = [g for g in order if subgroups[g][m]["value"] is not None]
        readable = [g for g in defined if subgroups[g]["readable"]]
        pool = readable if len(readable) >= 2 else defined
        if len(pool) < 2:
            out[m] = {"value": None, "reason": f"{m} is defined in {len(defined)} subgroup(s); a gap needs two"}
            continue
        hi = max(pool, key=lambda g: subgroups[g][m]["value"])
        lo = min(pool, key=lambda g: subgroups[g][m]["value"])
        pairs[m] = (hi, lo)
        ok = len(readable) >= 2
        out[m] = {"value": subgroups[hi][m]["value"] - subgroups[lo][m]["value"], "high_group": hi, "low_group": lo,
                  "readable": ok, "compared": len(pool),
                  "warnings": [] if ok else [f"the largest {m} gap ({hi} vs {lo}) involves a subgroup too small to read"]}
    if pairs:
        rows = np.flatnonzero(np.asarray([x is not None for x in lv.tolist()], dtype=bool))
        diffs: dict[str, list[np.ndarray]] = {m: [] for m in pairs}
        for w in _replicate_weights(sc.codes[rows], len(rows), n_boot, seed):  # paired: one draw for both subgroups
            for m, (hi, lo) in pairs.items():
                a, b = (lv[rows] == hi), (lv[rows] == lo)
                diffs[m].append(_macro(sc.values(rows[a], w[:, a], (m,))[m]) - _macro(sc.values(rows[b], w[:, b], (m,))[m]))
        for m in pairs:
            e = _entry(out[m]["value"], np.concatenate(diffs[m]), confidence)
            out[m].update(low=e["low"], high=e["high"], n_valid=e["n_valid"])
    return out
