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
