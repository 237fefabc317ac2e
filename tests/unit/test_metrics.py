"""medlens.tasks.classification.metrics agrees with scikit-learn to 1e-9 on random inputs, incl. unknown labels and labels without positives."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from medlens.tasks.classification.metrics import (
    average_precision,
    best_threshold,
    binary_auroc,
    classification_metrics,
    metric_value,
    pr_points,
    roc_points,
    sweep_thresholds,
    threshold_sweep,
    tune_thresholds,
)

TOL = 1e-9
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def close(ours, ref) -> bool:
    """Ours (None = undefined) against a reference (NaN = undefined)."""
    ref = float(ref)
    if math.isnan(ref):
        return ours is None
    return ours is not None and abs(ours - ref) <= TOL


def _scores(rng: np.random.Generator, shape, ties: bool) -> np.ndarray:
    s = rng.random(shape)
    return np.round(s, 1) if ties else s


def _prf(y, pred, average="binary", **kw):
    return skm.precision_recall_fscore_support(y, pred, average=average, zero_division=np.nan, **kw)


def _zero_weight(values: np.ndarray, weights: np.ndarray) -> bool:
    """True when the labels where a metric is defined have no positives at all: the weighted mean is 0/0."""
    v = np.asarray(values, dtype=float)
    return float(np.asarray(weights, dtype=float)[~np.isnan(v)].sum()) == 0.0


def _check_binary_label(d: dict, s: np.ndarray, y: np.ndarray, thr: float) -> None:
    """One label's metrics on its known rows against scikit-learn."""
    y = y.astype(int)
    pred = (s >= thr).astype(int)
    both = 0 < y.sum() < len(y)
    assert close(d["auroc"], skm.roc_auc_score(y, s) if both else float("nan"))
    assert close(d["average_precision"], skm.average_precision_score(y, s) if y.sum() > 0 else float("nan"))
    if len(y) == 0:
        assert d["precision"] is None and d["recall"] is None and d["accuracy"] is None
        return
    p, r, f, _ = _prf(y, pred, labels=[0, 1])
    assert close(d["precision"], p) and close(d["recall"], r) and close(d["f1"], f)
    assert d["sensitivity"] == d["recall"]
    spec = skm.recall_score(1 - y, 1 - pred, zero_division=np.nan)
    assert close(d["specificity"], spec)
    assert close(d["accuracy"], skm.accuracy_score(y, pred))
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    assert (d["tp"], d["fp"], d["tn"], d["fn"]) == (tp, fp, tn, fn)
    assert d["support"] == y.sum() and d["n"] == len(y)
    if y.sum() == 0:  # no positives: undefined, never 0 or 1
        assert d["auroc"] is None and d["average_precision"] is None and d["recall"] is None


@st.composite
def multilabel_case(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    n = draw(st.integers(4, 60))
    k = draw(st.integers(1, 5))
    ties = draw(st.booleans())
    masked = draw(st.booleans())
    no_pos = draw(st.booleans())
    rng = np.random.default_rng(seed)
    probs = _scores(rng, (n, k), ties)
    y = (rng.random((n, k)) < rng.uniform(0.1, 0.6, size=k)).astype(np.float64)
    if no_pos:
        y[:, rng.integers(k)] = 0.0  # a label with no positives
    mask = rng.random((n, k)) > 0.25 if masked else np.ones((n, k), bool)
    mask[rng.integers(n), :] = True  # every label has at least one known row
    targets = np.where(mask, y, np.nan)
    thr = rng.uniform(0.2, 0.8, size=k)
    return probs, targets, thr, masked


@SETTINGS
@given(multilabel_case())
def test_multilabel_matches_sklearn(case):
    probs, targets, thr, masked = case
    n, k = probs.shape
    names = [f"l{j}" for j in range(k)]
    m = classification_metrics(probs, targets, "multilabel", names, thr, warn=False)
    known = ~np.isnan(targets)
    y = np.nan_to_num(targets).astype(int)
    pred = (probs >= thr).astype(int)
    ref: dict[str, list[float]] = {x: [] for x in ("auroc", "average_precision", "precision", "recall", "f1", "specificity", "accuracy")}
    for j, name in enumerate(names):
        kj = known[:, j]
        d = m["per_label"][name]
        _check_binary_label(d, probs[kj, j], y[kj, j], thr[j])
        assert d["threshold"] == pytest.approx(thr[j])
        for x in ref:
            v = d[x]
            ref[x].append(float("nan") if v is None else v)
    ref_vals = ref
    # macro = mean over labels where defined; weighted by known positives
    supports = np.array([m["per_label"][nm]["support"] for nm in names], dtype=float)
    for x, vals in ref.items():
        v = np.asarray(vals)
        ok = ~np.isnan(v)
        assert close(m[f"{x}_macro"], v[ok].mean() if ok.any() else float("nan"))
        w = supports[ok]
        assert close(m[f"{x}_weighted"], np.average(v[ok], weights=w) if ok.any() and w.sum() > 0 else float("nan"))
    # micro over all known entries
    yk, pk, sk = y[known], pred[known], probs[known]
    p, r, f, _ = _prf(yk, pk, labels=[0, 1])
    assert close(m["precision_micro"], p) and close(m["recall_micro"], r) and close(m["f1_micro"], f)
    assert close(m["specificity_micro"], skm.recall_score(1 - yk, 1 - pk, zero_division=np.nan))
    assert close(m["auroc_micro"], skm.roc_auc_score(yk, sk) if 0 < yk.sum() < len(yk) else float("nan"))
    assert close(m["average_precision_micro"], skm.average_precision_score(yk, sk) if yk.sum() else float("nan"))
    assert close(m["hamming_accuracy"], skm.accuracy_score(yk, pk))
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == tuple(int(v) for v in skm.confusion_matrix(yk, pk, labels=[0, 1]).ravel()[[3, 1, 0, 2]])
    if not masked and k > 1:  # scikit-learn's own multi-label averages (it reads one column as binary)
        for avg in ("macro", "micro", "weighted"):
            p, r, f, _ = _prf(y, pred, average=avg)
            for name, ref in (("precision", p), ("recall", r), ("f1", f)):
                if avg == "weighted" and _zero_weight(np.asarray(ref_vals[name]), supports):
                    continue  # scikit-learn falls back to an unweighted mean; we report undefined (checked above)
                assert close(m[f"{name}_{avg}"], ref), (name, avg)
        assert close(m["exact_match"], skm.accuracy_score(y, pred))
        assert close(m["hamming_accuracy"], 1.0 - skm.hamming_loss(y, pred))
        if all(0 < y[:, j].sum() < n for j in range(k)):
            for avg in ("macro", "micro", "weighted"):
                assert close(m[f"auroc_{avg}"], skm.roc_auc_score(y, probs, average=avg))
                assert close(m[f"average_precision_{avg}"], skm.average_precision_score(y, probs, average=avg))
    if masked:  # exact match over the known labels of rows with any known label
        agree = ((pred == y) | ~known).all(axis=1)
        assert close(m["exact_match"], agree[known.any(axis=1)].mean())


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(3, 80), st.booleans(), st.sampled_from(["mixed", "no_pos", "no_neg"]))
def test_binary_matches_sklearn(seed, n, ties, kind):
    rng = np.random.default_rng(seed)
    s = _scores(rng, n, ties)
    y = (rng.random(n) < 0.4).astype(float)
    if kind == "no_pos":
        y[:] = 0
    elif kind == "no_neg":
        y[:] = 1
    targets = np.stack([1 - y, y], axis=1)
    targets[rng.random(n) < 0.2] = np.nan  # unknown rows
    thr = float(rng.uniform(0.1, 0.9))
    m = classification_metrics(s[:, None], targets, "binary", ["neg", "pos"], [thr], warn=False)
    known = ~np.isnan(targets[:, 1])
    d = m["per_label"]["pos"]
    assert list(m["per_label"]) == ["pos"]
    _check_binary_label(d, s[known], y[known], thr)
    assert m["auroc_macro"] == d["auroc"] and m["accuracy"] == d["accuracy"] and m["f1_macro"] == d["f1"]
    assert m["confusion_matrix"] == [[d["tn"], d["fp"]], [d["fn"], d["tp"]]]
    if kind == "no_pos":
        assert m["auroc_macro"] is None and m["recall_macro"] is None


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(6, 80), st.integers(3, 6), st.booleans())
def test_multiclass_matches_sklearn(seed, n, k, drop_class):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = rng.integers(0, k - 1 if drop_class else k, size=n)  # drop_class: the last class never occurs
    targets = np.eye(k)[y]
    unknown = rng.random(n) < 0.15
    targets[unknown] = np.nan
    names = [f"c{j}" for j in range(k)]
    m = classification_metrics(probs, targets, "multiclass", names, warn=False)
    kn = ~unknown
    yk, pk = y[kn], probs[kn]
    pred = pk.argmax(axis=1)
    assert close(m["accuracy"], skm.accuracy_score(yk, pred))
    assert m["confusion_matrix"] == skm.confusion_matrix(yk, pred, labels=list(range(k))).tolist()
    p, r, f, _ = _prf(yk, pred, average=None, labels=list(range(k)))
    for j, name in enumerate(names):
        d = m["per_label"][name]
        assert close(d["precision"], p[j]) and close(d["recall"], r[j]) and close(d["f1"], f[j])
        yj = (yk == j).astype(int)
        assert close(d["auroc"], skm.roc_auc_score(yj, pk[:, j]) if 0 < yj.sum() < len(yj) else float("nan"))
    support = np.bincount(yk, minlength=k)
    per_class = dict(zip(("precision", "recall", "f1"), _prf(yk, pred, average=None, labels=list(range(k)))[:3], strict=False))
    for avg in ("macro", "weighted", "micro"):
        p, r, f, _ = _prf(yk, pred, average=avg, labels=list(range(k)))
        for name, ref in (("precision", p), ("recall", r), ("f1", f)):
            if avg == "weighted" and _zero_weight(per_class[name], support):
                assert m[f"{name}_weighted"] is None  # scikit-learn falls back to an unweighted mean here
            else:
                assert close(m[f"{name}_{avg}"], ref), (name, avg)
    if len(set(yk.tolist())) == k:
        assert close(m["auroc_macro"], skm.roc_auc_score(yk, pk, multi_class="ovr", average="macro"))
        assert close(m["auroc_weighted"], skm.roc_auc_score(yk, pk, multi_class="ovr", average="weighted"))
    if drop_class:
        assert m["per_label"][names[-1]]["auroc"] is None and m["per_label"][names[-1]]["recall"] is None


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(2, 80), st.booleans())
def test_curves_match_sklearn(seed, n, ties):
    rng = np.random.default_rng(seed)
    s = _scores(rng, n, ties)
    y = (rng.random(n) < 0.5).astype(int)
    if 0 < y.sum() < n:
        fpr, tpr, thr = roc_points(s, y)
        rf, rt, rthr = skm.roc_curve(y, s, drop_intermediate=False)
        np.testing.assert_allclose(fpr, rf, atol=TOL)
        np.testing.assert_allclose(tpr, rt, atol=TOL)
        np.testing.assert_allclose(thr[1:], rthr[1:], atol=TOL)
        assert close(binary_auroc(s, y), skm.roc_auc_score(y, s))
    else:
        assert math.isnan(binary_auroc(s, y)) and len(roc_points(s, y)[0]) == 0
    if y.sum() > 0:
        r, p, _ = pr_points(s, y)
        sp, sr, _ = skm.precision_recall_curve(y, s)
        np.testing.assert_allclose(r, sr[::-1], atol=TOL)
        np.testing.assert_allclose(p, sp[::-1], atol=TOL)
        assert close(average_precision(s, y), skm.average_precision_score(y, s))


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(4, 80), st.booleans(), st.floats(0.05, 1.0))
def test_threshold_sweep_is_optimal(seed, n, ties, target):
    rng = np.random.default_rng(seed)
    s = _scores(rng, n, ties)
    y = (rng.random(n) < 0.4).astype(int)
    sw = threshold_sweep(s, y, target)
    if not 0 < y.sum() < n:
        assert sw["max_f1"] is None and sw["youden"] is None and sw["sensitivity"] is None
        assert best_threshold(s, y) == 0.5
        return
    # max F1 over every threshold of scikit-learn's precision-recall curve
    sp, sr, _ = skm.precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * sp * sr / (sp + sr))
    mf = sw["max_f1"]
    assert abs(mf["f1"] - f1.max()) <= TOL
    assert abs(skm.f1_score(y, s >= mf["threshold"]) - mf["f1"]) <= TOL  # the threshold really gives it
    # Youden's J over scikit-learn's ROC curve
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    yj = sw["youden"]
    assert abs(yj["youden_j"] - (tpr - fpr).max()) <= TOL
    assert abs(skm.recall_score(y, s >= yj["threshold"]) - yj["sensitivity"]) <= TOL
    assert abs(skm.recall_score(1 - y, s < yj["threshold"]) - yj["specificity"]) <= TOL
    # required sensitivity: reached, with the best specificity any such threshold allows
    ss = sw["sensitivity"]
    assert ss["sensitivity"] >= target - 1e-12
    assert abs(skm.recall_score(y, s >= ss["threshold"]) - ss["sensitivity"]) <= TOL
    assert abs(ss["specificity"] - (1 - fpr[tpr >= target - 1e-12]).max()) <= TOL
    assert best_threshold(s, y, "youden") == yj["threshold"]
    assert best_threshold(s, y, "sensitivity", target) == ss["threshold"]


def test_sweep_and_tune_per_label_with_unknowns():
    rng = np.random.default_rng(0)
    probs = rng.random((50, 3))
    targets = (rng.random((50, 3)) < 0.4).astype(float)
    targets[:10, 1] = np.nan
    targets[:, 2] = 0.0  # no positives
    sw = sweep_thresholds(probs, targets, "multilabel", ["a", "b", "c"], 0.8)
    assert sw["c"]["max_f1"] is None
    known = ~np.isnan(targets[:, 1])
    assert sw["b"] == threshold_sweep(probs[known, 1], targets[known, 1], 0.8)
    thr = tune_thresholds(probs, targets, "multilabel", "youden")
    assert thr[1] == sw["b"]["youden"]["threshold"] and thr[2] == 0.5
    binary = tune_thresholds(probs[:, :1], np.stack([1 - targets[:, 0], targets[:, 0]], 1), "binary", "sensitivity", 0.8)
    assert binary == [sw["a"]["sensitivity"]["threshold"]]
    assert tune_thresholds(probs, targets, "multiclass") == []


def test_inverted_score_warns(caplog):
    y = np.array([0, 0, 1, 1.0])
    targets = np.stack([1 - y, y], axis=1)
    with caplog.at_level(logging.WARNING, logger="medlens.tasks.classification.metrics"):
        m = classification_metrics(np.array([[.9], [.8], [.2], [.1]]), targets, "binary", ["n", "p"])
    assert m["auroc_macro"] == 0.0
    assert any("inverted" in r.getMessage() for r in caplog.records)
    assert any("inverted" in w for w in m["warnings"])


def test_undefined_labels_are_none_and_reported():
    probs = np.array([[.9, .2], [.1, .7], [.8, .4]])
    targets = np.array([[1, 0], [0, 0], [np.nan, 0]], dtype=float)
    m = classification_metrics(probs, targets, "multilabel", ["a", "b"], warn=False)
    b = m["per_label"]["b"]
    assert b["auroc"] is None and b["average_precision"] is None and b["sensitivity"] is None
    assert b["specificity"] == pytest.approx(2 / 3) and b["n"] == 3
    assert m["per_label"]["a"]["n"] == 2 and m["auroc_macro"] == 1.0  # macro over the defined label only
    assert any("'b' has no positives" in w for w in m["warnings"])
    assert metric_value(m, "auroc/b") is None and metric_value(m, "auroc/a") == 1.0


def test_explicit_mask_equals_nan_targets():
    rng = np.random.default_rng(3)
    probs, y = rng.random((30, 3)), (rng.random((30, 3)) < .5).astype(float)
    mask = rng.random((30, 3)) > .3
    a = classification_metrics(probs, y, "multilabel", list("abc"), mask=mask, warn=False)
    b = classification_metrics(probs, np.where(mask, y, np.nan), "multilabel", list("abc"), warn=False)
    assert a == b


def test_bad_shapes_name_the_problem():
    with pytest.raises(ValueError, match="thresholds"):
        classification_metrics(np.zeros((2, 2)), np.zeros((2, 2)), "multilabel", ["a", "b"], [0.5])
    with pytest.raises(ValueError, match="unknown task"):
        classification_metrics(np.zeros((2, 2)), np.zeros((2, 2)), "regression", ["a", "b"])
