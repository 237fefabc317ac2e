"""Splits: deterministic, stratified, stable when rows are added, and group leakage impossible."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medlens.data.labels import LabelSpace
from medlens.data.samples import SampleTable
from medlens.data.splits import LeakageError, find_group_leaks, kfold_indices, split_indices


def make_table(
    classes: np.ndarray | None = None,
    multi: np.ndarray | None = None,
    groups: list[str] | None = None,
    splits: list[str | None] | None = None,
    ids: list[str] | None = None,
) -> SampleTable:
    """A table of file-less samples: binary/multiclass from ``classes`` or multi-label from ``multi``."""
    if multi is not None:
        targets = np.asarray(multi, dtype=np.float32)
        space = LabelSpace(tuple(f"l{j}" for j in range(targets.shape[1])), "multilabel")
    else:
        classes = np.asarray(classes)
        k = max(2, int(classes.max()) + 1)
        targets = np.eye(k, dtype=np.float32)[classes]
        space = LabelSpace(tuple(f"c{j}" for j in range(k)), "binary" if k == 2 else "multiclass")
    n = len(targets)
    ids = ids or [f"img{i:05d}" for i in range(n)]
    return SampleTable(space, ids, [f"{i}.png" for i in ids], targets, groups, splits, source="test")


def _all_rows(s) -> np.ndarray:
    return np.concatenate([s.train, s.val, s.test])


def _check_partition(s, n: int) -> None:
    rows = _all_rows(s)
    assert len(rows) == n, "every row exactly once"
    assert np.array_equal(np.sort(rows), np.arange(n))


# ------------------------------------------------------------------ determinism and stratification
def test_same_seed_same_split_other_seed_differs() -> None:
    rng = np.random.default_rng(0)
    t = make_table(rng.integers(0, 2, 500))
    a = split_indices(t, seed=3)
    b = split_indices(t, seed=3)
    c = split_indices(t, seed=4)
    for k in ("train", "val", "test"):
        assert np.array_equal(a.as_dict()[k], b.as_dict()[k])
    assert not np.array_equal(a.test, c.test)
    _check_partition(a, 500)


def test_row_order_does_not_change_assignment() -> None:
    """A group's split depends on its id and the seed, not on where it sits in the file."""
    rng = np.random.default_rng(1)
    cls = rng.integers(0, 2, 300)
    t = make_table(cls)
    perm = rng.permutation(300)
    t2 = make_table(cls[perm], ids=[t.ids[i] for i in perm])
    a, b = split_indices(t, seed=0), split_indices(t2, seed=0)
    for k in ("train", "val", "test"):
        assert set(t.ids[a.as_dict()[k]]) == set(t2.ids[b.as_dict()[k]])


@pytest.mark.parametrize("k", [2, 4])
def test_stratification_keeps_class_ratios(k: int) -> None:
    rng = np.random.default_rng(2)
    p = np.array([0.7, 0.3]) if k == 2 else np.array([0.55, 0.25, 0.15, 0.05])
    cls = rng.choice(k, size=2000, p=p)
    t = make_table(cls)
    s = split_indices(t, val_fraction=0.15, test_fraction=0.15, seed=0)
    _check_partition(s, 2000)
    overall = np.bincount(cls, minlength=k) / len(cls)
    for name, rows in s.as_dict().items():
        share = np.bincount(cls[rows], minlength=k) / len(rows)
        assert np.abs(share - overall).max() < 0.01, (name, share, overall)
    sizes = s.sizes()
    assert abs(sizes["val"] - 300) <= k and abs(sizes["test"] - 300) <= k


def test_adding_rows_moves_few_existing_rows() -> None:
    rng = np.random.default_rng(3)
    cls = rng.integers(0, 2, 1000)
    t = make_table(cls)
    more = np.concatenate([cls, rng.integers(0, 2, 100)])  # 10 % more rows at the end
    t2 = make_table(more)
    a, b = split_indices(t, seed=0), split_indices(t2, seed=0)

    def where(s, n):
        out = np.empty(n, dtype=object)
        for name, rows in s.as_dict().items():
            out[rows] = name
        return out

    before, after = where(a, 1000), where(b, 1100)[:1000]
    moved = int((before != after).sum())
    assert moved <= 30, f"{moved} of 1000 existing rows changed split after adding 100 rows"


def test_rows_without_labels_are_split_too() -> None:
    t = make_table(np.array([0, 1] * 50))
    t.targets[:10] = np.nan
    s = split_indices(t, seed=0)
    _check_partition(s, 100)


# ------------------------------------------------------------------ group leakage
def test_group_split_keeps_patients_together() -> None:
    rng = np.random.default_rng(4)
    groups = [f"p{g}" for g in rng.integers(0, 80, 400)]
    t = make_table(rng.integers(0, 2, 400), groups=groups)
    s = split_indices(t, seed=0)
    assert s.method == "group"
    assert find_group_leaks(t, s) == {}
    _check_partition(s, 400)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(5, 150),
    n_groups=st.integers(1, 40),
    k=st.integers(2, 4),
    multilabel=st.booleans(),
    val=st.sampled_from([0.0, 0.1, 0.2, 0.3]),
    test=st.sampled_from([0.0, 0.1, 0.25]),
    seed=st.integers(0, 10_000),
    data=st.data(),
)
def test_group_leakage_impossible(n, n_groups, k, multilabel, val, test, seed, data) -> None:
    """Property: for any groups and labels, no group is in two splits and every row is in exactly one."""
    group_ids = data.draw(st.lists(st.integers(0, n_groups - 1), min_size=n, max_size=n))
    groups = [None if g == 0 and seed % 3 == 0 else f"g{g}" for g in group_ids]  # some rows without a group
    rng = np.random.default_rng(seed)
    if multilabel:
        t = make_table(multi=(rng.random((n, k)) < 0.3).astype(np.float32), groups=groups)
    else:
        t = make_table(rng.integers(0, k, n), groups=groups)
    s = split_indices(t, val_fraction=val, test_fraction=test, seed=seed)
    _check_partition(s, n)
    assert find_group_leaks(t, s) == {}
    if val == 0:
        assert len(s.val) == 0
    if test == 0:
        assert len(s.test) == 0


def test_find_group_leaks_reports_groups_and_splits() -> None:
    t = make_table(np.array([0, 1, 0, 1]), groups=["a", "a", "b", "c"])
    leaks = find_group_leaks(t, {"train": np.array([0, 2]), "val": np.array([1]), "test": np.array([3])})
    assert leaks == {"a": ["train", "val"]}


def test_group_method_without_groups_is_an_error() -> None:
    t = make_table(np.array([0, 1] * 20))
    with pytest.raises(ValueError, match="group"):
        split_indices(t, method="group")


# ------------------------------------------------------------------ predefined splits
def test_predefined_split_is_used() -> None:
    sp = ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    t = make_table(np.array([0, 1] * 5), splits=sp)
    s = split_indices(t)
    assert s.method == "predefined"
    assert s.train.tolist() == [0, 1, 2, 3, 4, 5] and s.val.tolist() == [6, 7] and s.test.tolist() == [8, 9]


def test_predefined_split_without_val_carves_val_by_group() -> None:
    rng = np.random.default_rng(5)
    groups = [f"p{i // 3}" for i in range(120)]
    sp = ["train"] * 90 + ["test"] * 30
    t = make_table(rng.integers(0, 2, 120), groups=groups, splits=sp)
    s = split_indices(t, val_fraction=0.2, seed=0)
    assert len(s.val) > 0 and set(s.val) <= set(range(90))
    assert find_group_leaks(t, s) == {}
    _check_partition(s, 120)


def test_predefined_split_with_leaking_groups() -> None:
    groups = ["p1", "p2", "p3", "p1", "p4", "p5"]
    sp = ["train", "train", "train", "val", "test", "test"]
    t = make_table(np.array([0, 1, 0, 1, 0, 1]), groups=groups, splits=sp)
    with pytest.raises(LeakageError, match="p1"):
        split_indices(t)
    s = split_indices(t, allow_group_leakage=True)
    assert any("allowed" in n for n in s.notes)
    # re-splitting by group removes the leak
    s2 = split_indices(t, method="group", val_fraction=0.2, test_fraction=0.2)
    assert find_group_leaks(t, s2) == {}


def test_predefined_method_without_split_column_is_an_error() -> None:
    with pytest.raises(ValueError, match="predefined"):
        split_indices(make_table(np.array([0, 1] * 5)), method="predefined")


# ------------------------------------------------------------------ multi-label
def test_iterative_stratification_spreads_rare_labels() -> None:
    rng = np.random.default_rng(6)
    n = 1000
    y = np.zeros((n, 4), dtype=np.float32)
    y[:, 0] = rng.random(n) < 0.4  # common
    y[:, 1] = rng.random(n) < 0.1
    rare = rng.choice(n, 20, replace=False)
    y[:, 2] = 0
    y[rare, 2] = 1  # 20 positives: 14 / 3 / 3 expected
    very_rare = rng.choice(n, 7, replace=False)
    y[:, 3] = 0
    y[very_rare, 3] = 1  # 7 positives: 4.9 / 1.05 / 1.05 wanted
    t = make_table(multi=y)
    s = split_indices(t, val_fraction=0.15, test_fraction=0.15, seed=0)
    _check_partition(s, n)
    per = {k: y[rows].sum(axis=0) for k, rows in s.as_dict().items()}
    assert per["val"][2] >= 2 and per["test"][2] >= 2 and per["train"][2] >= 12
    assert per["val"][3] == 1 and per["test"][3] == 1, per
    for rows in s.as_dict().values():
        assert abs(y[rows, 0].mean() - y[:, 0].mean()) < 0.03


@pytest.mark.parametrize("seed", range(8))
def test_multilabel_zero_fraction_subset_stays_empty(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random((97, 3)) < rng.uniform(0.05, 0.5, 3)).astype(np.float32)
    groups = [f"p{g}" for g in rng.integers(0, 40, 97)]
    t = make_table(multi=y, groups=groups)
    s = split_indices(t, val_fraction=0.2, test_fraction=0.0, seed=seed)
    assert len(s.test) == 0
    _check_partition(s, 97)
    folds = kfold_indices(t, folds=3, seed=seed)
    assert sum(len(v) for _, v in folds) == 97


def test_multilabel_split_is_deterministic_and_group_safe() -> None:
    rng = np.random.default_rng(7)
    y = (rng.random((300, 5)) < 0.2).astype(np.float32)
    groups = [f"p{g}" for g in rng.integers(0, 60, 300)]
    t = make_table(multi=y, groups=groups)
    a, b = split_indices(t, seed=1), split_indices(t, seed=1)
    assert all(np.array_equal(a.as_dict()[k], b.as_dict()[k]) for k in ("train", "val", "test"))
    assert find_group_leaks(t, a) == {}


# ------------------------------------------------------------------ k-fold
@pytest.mark.parametrize("multilabel", [False, True])
def test_kfold_group_safe_and_complete(multilabel: bool) -> None:
    rng = np.random.default_rng(8)
    n = 300
    groups = [f"p{g}" for g in rng.integers(0, 70, n)]
    if multilabel:
        t = make_table(multi=(rng.random((n, 3)) < 0.3).astype(np.float32), groups=groups)
    else:
        t = make_table(rng.integers(0, 2, n), groups=groups)
    folds = kfold_indices(t, folds=5, seed=0)
    assert len(folds) == 5
    seen_groups: dict[str, int] = {}
    all_val = []
    for f, (train, val) in enumerate(folds):
        assert set(train).isdisjoint(val)
        assert len(train) + len(val) == n
        for g in set(t.groups[val].tolist()):
            assert g not in seen_groups, f"group {g} in the val part of folds {seen_groups[g]} and {f}"
            seen_groups[g] = f
        assert set(t.groups[train].tolist()).isdisjoint(t.groups[val].tolist())
        all_val.append(val)
    assert np.array_equal(np.sort(np.concatenate(all_val)), np.arange(n))
    again = kfold_indices(t, folds=5, seed=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))


def test_kfold_too_few_groups() -> None:
    t = make_table(np.array([0, 1, 0, 1]), groups=["a", "a", "b", "b"])
    with pytest.raises(ValueError, match="fewer folds"):
        kfold_indices(t, folds=3)
