"""Bootstrap CIs: whole patients are resampled when samples have groups."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medlens.tasks.classification.uncertainty import bootstrap_ci, bootstrap_indices, group_codes


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["p1", "p2", "p3", "p4", "p5", None]), min_size=1, max_size=40), st.integers(0, 1000))
def test_replicates_are_unions_of_whole_groups(groups, seed):
    n = len(groups)
    codes = group_codes(groups, n)
    n_groups = codes.max() + 1
    for idx in bootstrap_indices(groups, n, n_boot=20, seed=seed):
        mult = np.bincount(idx, minlength=n)
        for g in range(n_groups):
            rows = np.flatnonzero(codes == g)
            assert len(set(mult[rows].tolist())) == 1  # a group's rows are drawn together, the same number of times
        # exactly n_groups draws of groups per replicate
        draws = sum(mult[np.flatnonzero(codes == g)[0]] for g in range(n_groups))
        assert draws == n_groups


def test_rows_without_group_are_their_own_group():
    assert group_codes(["a", None, "a", None, ""], 5).tolist() == [0, 1, 0, 2, 3]
    assert group_codes(None, 3).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="2 groups for 3 samples"):
        group_codes(["a", "b"], 3)


def _data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 2)) < 0.4).astype(float)
    probs = np.clip(0.35 * y + rng.random((n, 2)) * 0.65, 0, 1)
    return probs, y


def test_deterministic_for_a_seed_and_contains_the_estimate():
    probs, y = _data(120, 0)
    a = bootstrap_ci(probs, y, "multilabel", ["a", "b"], n_boot=200, seed=3)
    b = bootstrap_ci(probs, y, "multilabel", ["a", "b"], n_boot=200, seed=3)
    assert a == b
    h = a["headline"]["auroc_macro"]
    assert h["low"] <= h["value"] <= h["high"] and h["n_valid"] == 200
    assert a["unit"] == "sample" and a["n_units"] == 120
    assert set(a["per_label"]["a"]) >= {"auroc", "sensitivity", "specificity"}
    assert "exact_match" in a["headline"] and "ece" in a["headline"]


def test_group_bootstrap_of_duplicated_patients_equals_patient_level_bootstrap():
    """Five identical images per patient carry no more information than one: the CI must not shrink."""
    probs, y = _data(60, 1)
    rep = 5
    groups = np.repeat([f"pt{i}" for i in range(60)], rep)
    dup_p, dup_y = np.repeat(probs, rep, axis=0), np.repeat(y, rep, axis=0)
    by_group = bootstrap_ci(dup_p, dup_y, "multilabel", ["a", "b"], groups=groups, n_boot=300, seed=7)
    per_patient = bootstrap_ci(probs, y, "multilabel", ["a", "b"], n_boot=300, seed=7)
    assert by_group["unit"] == "group" and by_group["n_units"] == 60 and by_group["n_samples"] == 300
    for k, v in per_patient["headline"].items():
        for f in ("value", "low", "high"):
            assert by_group["headline"][k][f] == pytest.approx(v[f], abs=1e-12), (k, f)
    # resampling images instead would pretend to 5x the data: a much narrower (wrong) interval
    by_row = bootstrap_ci(dup_p, dup_y, "multilabel", ["a", "b"], n_boot=300, seed=7)
    w = lambda r: r["headline"]["auroc_macro"]["high"] - r["headline"]["auroc_macro"]["low"]  # noqa: E731
    assert w(by_group) > 1.5 * w(by_row)


def test_rare_and_undefined_labels():
    probs, y = _data(80, 2)
    y[:, 1] = 0.0
    y[3, 1] = 1.0  # one positive: most replicates miss it
    ci = bootstrap_ci(probs, y, "multilabel", ["a", "b"], n_boot=100, seed=0)
    auc_b = ci["per_label"]["b"]["auroc"]
    assert auc_b["value"] is not None and auc_b["n_valid"] < 100
    y[3, 1] = 0.0
    ci = bootstrap_ci(probs, y, "multilabel", ["a", "b"], n_boot=50, seed=0)
    assert ci["per_label"]["b"]["auroc"] == {"value": None, "low": None, "high": None, "n_valid": 0}


def test_binary_with_groups_and_unknown_rows():
    rng = np.random.default_rng(4)
    n = 90
    y = (rng.random(n) < 0.5).astype(float)
    t = np.stack([1 - y, y], 1)
    t[:9] = np.nan
    p = np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1)[:, None]
    ci = bootstrap_ci(p, t, "binary", ["neg", "pos"], [0.5], groups=[f"g{i // 3}" for i in range(n)], n_boot=100)
    assert ci["n_units"] == 30 and list(ci["per_label"]) == ["pos"]
    assert "exact_match" not in ci["headline"]
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(p, t, "binary", ["neg", "pos"], confidence=95)


# ------------------------------------------------------------------------------------------ small n: Wilson, warnings, bands
def _wilson_by_hand(k: int, n: int) -> tuple[float, float]:
    z = 1.959963984540054  # the 97.5% normal quantile
    p = k / n
    c = (2 * n * p + z * z) / (2 * (n + z * z))
    h = z * np.sqrt(z * z + 4 * n * p * (1 - p)) / (2 * (n + z * z))
    return c - h, c + h


def test_positives_from_one_patient_get_a_warning_and_wilson_intervals():
    from medlens.tasks.classification.metrics import classification_metrics

    # 5 positives, all from patient p0; 40 negatives from 20 other patients
    groups = ["p0"] * 5 + [f"n{i // 2}" for i in range(40)]
    y = np.r_[np.ones(5), np.zeros(40)]
    s = np.r_[[0.9, 0.8, 0.7, 0.3, 0.6], np.linspace(0.0, 0.65, 40)]  # threshold 0.5: TP 4, FN 1; FP 10, TN 30
    targets = np.stack([1 - y, y], axis=1)
    m = classification_metrics(s[:, None], targets, "binary", ["normal", "nodule"], [0.5], groups=groups)
    d = m["per_label"]["nodule"]
    assert (d["tp"], d["fn"], d["fp"], d["tn"]) == (4, 1, 10, 30)
    assert d["positive_groups"] == 1 and d["small_sample"] is True
    assert any("'nodule'" in w and "5 positive(s) from 1 patient" in w and "bootstrap" in w for w in m["warnings"])
    w = d["wilson"]
    for key, (k, n) in {"sensitivity": (4, 5), "specificity": (30, 40), "ppv": (4, 14), "npv": (30, 31)}.items():
        lo, hi = _wilson_by_hand(k, n)
        assert (w[key]["k"], w[key]["n"]) == (k, n)
        assert w[key]["low"] == pytest.approx(lo, abs=1e-12) and w[key]["high"] == pytest.approx(hi, abs=1e-12)
    assert w["sensitivity"]["low"] == pytest.approx(0.3755, abs=1e-4) and w["sensitivity"]["high"] == pytest.approx(0.9638, abs=1e-4)
    assert m["wilson"]["accuracy"]["k"] == 34 and m["wilson"]["accuracy"]["n"] == 45  # headline (binary: the one label)
    # enough positives from enough patients: no warning
    many = classification_metrics(np.r_[s, s][:, None], np.r_[targets, targets], "binary", ["normal", "nodule"], [0.5],
                                  groups=[f"q{i}" for i in range(90)])
    assert many["per_label"]["nodule"]["small_sample"] is False and not any("bootstrap" in x for x in many["warnings"])


def test_wilson_edges():
    from medlens.tasks.classification.metrics import wilson_interval

    assert wilson_interval(0, 0)["low"] is None
    w = wilson_interval(0, 7)
    assert w["low"] == 0.0 and w["high"] == pytest.approx(_wilson_by_hand(0, 7)[1])
    assert wilson_interval(7, 7)["high"] == 1.0


def test_curve_bands_contain_the_curve_and_mark_the_deployed_threshold():
    from medlens.tasks.classification.metrics import roc_points
    from medlens.tasks.classification.uncertainty import curve_bands

    rng = np.random.default_rng(3)
    n = 150
    y = (rng.random((n, 2)) < 0.4).astype(float)
    p = np.clip(0.35 * y + 0.65 * rng.random((n, 2)), 0, 1)
    groups = [f"g{i // 3}" for i in range(n)]
    thr = [0.42, 0.61]
    b = curve_bands(p, y, "multilabel", ["a", "b"], thr, groups=groups, n_boot=300, seed=1)
    assert b["unit"] == "group" and len(b["grid"]) == 101
    for j, name in enumerate(["a", "b"]):
        e = b["labels"][name]
        for curve, key in (("roc", "tpr"), ("pr", "precision")):
            c, lo, hi = (np.array(e[curve][k]) for k in (key, "low", "high"))
            assert (lo <= c + 1e-12).all() and (c <= hi + 1e-12).all() and (hi - lo).max() > 0.05
        # the ROC step curve at the grid is the real curve's best TPR at FPR <= f
        fpr, tpr, _ = roc_points(p[:, j], y[:, j])
        assert e["roc"]["tpr"][50] == tpr[fpr <= 0.5].max()
        op = e["operating_point"]
        pos, neg = p[y[:, j] == 1, j], p[y[:, j] == 0, j]
        assert op["threshold"] == thr[j]
        assert op["tpr"] == pytest.approx(np.mean(pos >= thr[j])) and op["fpr"] == pytest.approx(np.mean(neg >= thr[j]))
        assert op["precision"] == pytest.approx(np.sum(pos >= thr[j]) / np.sum(p[:, j] >= thr[j]))
