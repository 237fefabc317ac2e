"""Leakage-safe train/val/test splits and k-fold.

* The dataset's own split is used when it has one (``method: auto`` / ``predefined``).
* Otherwise samples are split by **group** (patient/exam) when groups exist, so no group lands in two splits,
  and stratified by label:
  - binary/multiclass: groups are ordered by a seeded hash inside each class stratum and cut at the
    fractions. A group's position depends only on its id and the seed, so adding rows moves at most a few
    groups near the cut points (a random permutation would reshuffle everything).
  - multi-label: iterative stratification (Sechidis et al., 2011) over groups, weighted by group size, with the
    seeded hash as the order; deterministic for a given seed.
* :func:`find_group_leaks` lists every group that appears in more than one split.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medlens.data.samples import SampleTable

SPLIT_NAMES = ("train", "val", "test")
SPLIT_ALIASES = {
    "train": "train", "training": "train", "tr": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test", "holdout": "test",
}


class LeakageError(ValueError):
    """A patient/exam group appears in more than one split."""


def normalize_split_name(name: str | None, where: str = "") -> str | None:
    """Map train/valid/validation/test spellings to train/val/test; None stays None."""
    if name is None or (isinstance(name, float) and np.isnan(name)) or str(name).strip() == "":
        return None
    key = str(name).strip().lower()
    if key not in SPLIT_ALIASES:
        raise ValueError(f"{where}unknown split name {name!r}; expected one of train, val/valid, test")
    return SPLIT_ALIASES[key]


@dataclass
class Splits:
    """Row indices per split, and how they were made."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    method: str
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def sizes(self) -> dict[str, int]:
        return {k: int(len(v)) for k, v in self.as_dict().items()}


def _hash01(seed: int, key: str) -> float:
    h = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0**64


def _group_keys(table: SampleTable) -> np.ndarray:
    """Group id per row; rows without a group are their own group."""
    if table.groups is None:
        return np.asarray([f"__id__{i}" for i in table.ids], dtype=object)
    return np.asarray([g if g is not None else f"__id__{i}" for g, i in zip(table.groups, table.ids, strict=True)], dtype=object)


def _group_index(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique groups (in first-seen order) and the group number of each row."""
    uniq, first, inv = np.unique(keys.astype(str), return_index=True, return_inverse=True)
    order = np.argsort(first)
    remap = np.empty_like(order)
    remap[order] = np.arange(len(order))
    return uniq[order], remap[inv]


def _group_labels(table: SampleTable, inv: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per group: summed positive counts per label (N_g, K) and group size."""
    y = np.nan_to_num(table.targets, nan=0.0)
    counts = np.zeros((n_groups, y.shape[1]), dtype=np.float64)
    np.add.at(counts, inv, y)
    sizes = np.bincount(inv, minlength=n_groups).astype(np.float64)
    return counts, sizes


def _iterative_stratify(
    labels: np.ndarray, weights: np.ndarray, fractions: list[float], order_key: np.ndarray
) -> np.ndarray:
    """Assign items (groups) to subsets with the given fractions, balancing every label.

    Args:
        labels: (N, K) positive counts per item.
        weights: (N,) item sizes (samples per group).
        fractions: desired share of each subset (sums to 1).
        order_key: (N,) deterministic tie-break order (seeded hash).

    Returns:
        (N,) subset number per item.
    """
    n, k = labels.shape
    r = np.asarray(fractions, dtype=np.float64)
    want = r * weights.sum()  # samples still wanted per subset
    want_l = r[:, None] * labels.sum(axis=0)[None, :]  # positives still wanted per subset and label
    assign = np.full(n, -1, dtype=np.int64)
    remaining = np.ones(n, dtype=bool)
    pos = labels > 0
    while remaining.any():
        rem_counts = (pos & remaining[:, None]).sum(axis=0)
        active = np.where(rem_counts > 0)[0]
        if len(active) == 0:
            items = np.where(remaining)[0]
            label = None
        else:
            label = active[np.argmin(rem_counts[active])]  # the rarest label first
            items = np.where(remaining & pos[:, label])[0]
        items = items[np.argsort(order_key[items], kind="stable")]
        for i in items:
            if label is None:
                score = want
                cand = np.flatnonzero(score == score.max())
            else:
                score = want_l[:, label]
                cand = np.flatnonzero(score == score.max())
                if len(cand) > 1:
                    sub = want[cand]
                    cand = cand[sub == sub.max()]
            j = cand[int(order_key[i] * 1e6) % len(cand)] if len(cand) > 1 else cand[0]
            assign[i] = j
            want[j] -= weights[i]
            want_l[j] -= labels[i]
            remaining[i] = False
    return assign


def _strata_cut(strata: np.ndarray, order_key: np.ndarray, fractions: list[float]) -> np.ndarray:
    """Within each stratum, order by hash and cut at the cumulative fractions."""
    assign = np.zeros(len(strata), dtype=np.int64)
    cum = np.cumsum(fractions)[:-1]
    for s in np.unique(strata):
        idx = np.where(strata == s)[0]
        idx = idx[np.argsort(order_key[idx], kind="stable")]
        n = len(idx)
        cuts = [int(round(c * n)) for c in cum]
        start = 0
        for j, end in enumerate([*cuts, n]):
            assign[idx[start:end]] = j
            start = end
    return assign


def _assign_groups(table: SampleTable, fractions: list[float], seed: int) -> np.ndarray:
    """Subset number per row, group-wise and stratified."""
    keys = _group_keys(table)
    uniq, inv = _group_index(keys)
    counts, sizes = _group_labels(table, inv, len(uniq))
    order = np.asarray([_hash01(seed, str(g)) for g in uniq])
    if table.label_space.values:
        # numeric targets: stratum of a group is the quintile of its mean first target (-1 when unknown)
        v = table.targets[:, 0].astype(np.float64)
        known = ~np.isnan(v)
        sums = np.bincount(inv[known], weights=v[known], minlength=len(uniq))
        n_known = np.bincount(inv[known], minlength=len(uniq))
        means = np.where(n_known > 0, sums / np.maximum(n_known, 1), np.nan)
        edges = np.nanquantile(means, [0.2, 0.4, 0.6, 0.8]) if np.isfinite(means).any() else np.array([])
        strata = np.where(np.isnan(means), -1, np.searchsorted(edges, np.nan_to_num(means), side="right"))
        g_assign = _strata_cut(strata, order, fractions)
    elif table.label_space.exclusive:
        # stratum of a group: its most frequent class (-1 when all unknown)
        strata = np.where(counts.sum(axis=1) > 0, counts.argmax(axis=1), -1)
        g_assign = _strata_cut(strata, order, fractions)
    else:
        g_assign = _iterative_stratify(counts, sizes, fractions, order)
    return g_assign[inv]


def split_indices(
    table: SampleTable,
    method: str = "auto",
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    allow_group_leakage: bool = False,
) -> Splits:
    """Split a table into train/val/test row indices.

    Args:
        table: samples.
        method: ``auto`` (predefined if present, else group/stratified), ``predefined``, ``stratified``, ``group``.
        val_fraction: share of samples for validation when the split is made here.
        test_fraction: share for test when the split is made here.
        seed: split seed.
        allow_group_leakage: do not raise when a predefined split puts one group in two splits.

    Returns:
        :class:`Splits`.

    Example:
        >>> s = split_indices(table, val_fraction=0.2, test_fraction=0.2, seed=0)  # doctest: +SKIP
    """
    notes: list[str] = []
    has_predefined = table.splits is not None and any(s is not None for s in table.splits)
    if method == "predefined" and not has_predefined:
        raise ValueError(f"{table.source}: split.method is 'predefined' but the dataset has no split column")
    if method in ("auto", "predefined") and has_predefined:
        sp = np.asarray([s if s is not None else "" for s in table.splits], dtype=object)
        idx = {k: np.where(sp == k)[0] for k in SPLIT_NAMES}
        unassigned = np.where(sp == "")[0]
        if len(unassigned):
            notes.append(f"{len(unassigned)} rows without a split were put in train")
            idx["train"] = np.sort(np.concatenate([idx["train"], unassigned]))
        if len(idx["train"]) == 0:
            raise ValueError(f"{table.source}: the predefined split has no training rows")
        if len(idx["val"]) == 0 and val_fraction > 0:
            # carve validation out of train, group-wise and stratified
            sub = table.subset(idx["train"])
            a = _assign_groups(sub, [1 - val_fraction, val_fraction], seed)
            idx["val"] = idx["train"][a == 1]
            idx["train"] = idx["train"][a == 0]
            notes.append(f"no predefined validation split: {len(idx['val'])} rows carved from train by group")
        splits = Splits(idx["train"], idx["val"], idx["test"], "predefined", notes)
        leaks = find_group_leaks(table, splits)
        if leaks and not allow_group_leakage:
            example = ", ".join(f"{g} ({'/'.join(s)})" for g, s in list(leaks.items())[:5])
            raise LeakageError(
                f"{table.source}: {len(leaks)} groups appear in more than one predefined split, e.g. {example}. "
                "Use split.method: group to re-split by group, or set split.allow_group_leakage: true."
            )
        if leaks:
            notes.append(f"{len(leaks)} groups appear in more than one split (allowed by config)")
        return splits
    if method == "kfold":
        raise ValueError("split.method 'kfold' is used by `medlens cv`; use kfold_indices() for folds")
    if method == "group" and (table.groups is None or all(g is None for g in table.groups)):
        # a row-wise split here would silently put one patient's images in two splits
        raise ValueError(
            f"{table.source}: split.method is 'group' but the samples have no group ids "
            "(set the reader's group column, e.g. data.group_column)"
        )
    train_frac = 1.0 - val_fraction - test_fraction
    if train_frac <= 0:
        raise ValueError(f"val_fraction + test_fraction must be < 1 (got {val_fraction} + {test_fraction})")
    a = _assign_groups(table, [train_frac, val_fraction, test_fraction], seed)
    used = "group" if table.groups is not None else "stratified"
    return Splits(np.where(a == 0)[0], np.where(a == 1)[0], np.where(a == 2)[0], used, notes)


def kfold_indices(table: SampleTable, folds: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Group-aware, stratified k-fold: a list of (train_rows, val_rows), one per fold.

    No group appears in two folds' validation parts, and every row is in exactly one validation part.
    """
    if folds < 2:
        raise ValueError("folds must be >= 2")
    a = _assign_groups(table, [1.0 / folds] * folds, seed)
    out = []
    for f in range(folds):
        val = np.where(a == f)[0]
        train = np.where(a != f)[0]
        if len(val) == 0:
            raise ValueError(f"{table.source}: fold {f} is empty; use fewer folds (there are too few groups)")
        out.append((train, val))
    return out


def find_group_leaks(table: SampleTable, splits: Splits | dict[str, np.ndarray]) -> dict[str, list[str]]:
    """Every group that appears in more than one split, with the splits it appears in."""
    if table.groups is None:
        return {}
    parts = splits.as_dict() if isinstance(splits, Splits) else splits
    seen: dict[str, set[str]] = {}
    for name, rows in parts.items():
        for g in set(table.groups[rows].tolist()):
            if g is None:
                continue
            seen.setdefault(g, set()).add(name)
    order = {n: i for i, n in enumerate(SPLIT_NAMES)}
    return {g: sorted(s, key=lambda x: order.get(x, 99)) for g, s in sorted(seen.items()) if len(s) > 1}


# ------------------------------------------------------------------------------------------ k-fold plans
class FoldLeakError(ValueError):
    """A group appears in the held-out parts of two folds, or in two parts of one fold."""


def groups_of(table: SampleTable, rows: np.ndarray) -> set[str]:
    """The groups (patients) of some rows; a row without a group is its own group."""
    if table.groups is None:
        return {f"__id__{i}" for i in table.ids[rows]}
    return {g if g is not None else f"__id__{i}" for g, i in zip(table.groups[rows], table.ids[rows], strict=True)}


def fold_plan(table: SampleTable, folds: int = 5, seed: int = 0, val_fraction: float = 0.15) -> list[Splits]:
    """One :class:`Splits` per fold: train, inner validation (from the training part), test = the held-out fold.

    Raises :class:`FoldLeakError` if a group would be held out in two folds or straddle a fold's parts.

    Example:
        >>> plan = fold_plan(table, folds=5, seed=0)  # doctest: +SKIP
        >>> [len(s.test) for s in plan]  # doctest: +SKIP
        [156, 156, 156, 156, 156]
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.split.val_fraction must be in (0, 1) for cross-validation (the inner validation share), not {val_fraction}")
    parts = kfold_indices(table, folds, seed)
    plan = []
    for f, (train_rows, test_rows) in enumerate(parts):
        sub = table.subset(train_rows)
        sub.splits = None  # the dataset's own split plays no part in k-fold
        inner = split_indices(sub, method="stratified", val_fraction=val_fraction, test_fraction=0.0, seed=seed + 1000 + f)
        fit_rows = np.concatenate([inner.train, inner.test])  # a zero test share may still get a few rows
        splits = Splits(
            np.sort(train_rows[fit_rows]), np.sort(train_rows[inner.val]), np.sort(test_rows), "kfold",
            [f"fold {f} of {folds}: held-out {len(test_rows)} rows; inner validation {len(inner.val)} rows"],
        )
        leaks = find_group_leaks(table, splits)
        if leaks:
            raise FoldLeakError(f"{table.source}: fold {f}: groups in two parts, e.g. {list(leaks)[:5]}")
        plan.append(splits)
    check_disjoint_folds(table, [s.test for s in plan])
    return plan


def check_disjoint_folds(table: SampleTable, held_out: list[np.ndarray]) -> None:
    """Raise :class:`FoldLeakError` if any group (patient) is in two folds' held-out parts.

    Example:
        >>> check_disjoint_folds(table, [s.test for s in fold_plan(table)])  # doctest: +SKIP
    """
    owner: dict[str, int] = {}
    for f, rows in enumerate(held_out):
        for g in groups_of(table, np.asarray(rows)):
            if g in owner and owner[g] != f:
                raise FoldLeakError(f"{table.source}: group {g!r} is held out in folds {owner[g]} and {f}")
            owner[g] = f


def cv_plan(table: SampleTable, folds: int = 5, seed: int = 0, val_fraction: float = 0.15, holdout: str = "none",
            test_fraction: float = 0.15, allow_group_leakage: bool = False) -> tuple[list[Splits], Splits | None]:
    """The folds of ``medlens cv`` and the split whose test rows they keep out (``data.split.cv_holdout``).

    ``holdout: none`` folds over every row (:func:`fold_plan`; no held-out split). Any split method (``auto``,
    ``predefined``, ``stratified``, ``group``) first splits the table that way, as training would, and folds over
    its train + validation rows only: its test rows are in no fold's training, inner validation or held-out part,
    so they can be read once at the end (e.g. by the ``--ensemble`` bundle of the folds).

    Returns:
        (one :class:`Splits` per fold, row indices of the whole table; the held-out split or None).

    Example:
        >>> plan, held = cv_plan(table, folds=5, holdout="auto")  # doctest: +SKIP
        >>> set(held.test.tolist()).isdisjoint(np.concatenate([s.train for s in plan]).tolist())  # doctest: +SKIP
        True
    """
    if holdout == "none":
        return fold_plan(table, folds, seed, val_fraction), None
    base = split_indices(table, holdout, val_fraction, test_fraction, seed, allow_group_leakage)
    if len(base.test) == 0:
        raise ValueError(f"{table.source}: data.split.cv_holdout: {holdout} leaves no test rows to hold out "
                         "(set data.split.test_fraction > 0, or cv_holdout: none)")
    rows = np.sort(np.concatenate([base.train, base.val])).astype(np.int64)
    sub = table.subset(rows)
    sub.splits = None
    note = f"{len(base.test)} test rows of the {base.method} split held out of every fold (data.split.cv_holdout: {holdout})"
    plan = [Splits(rows[p.train], rows[p.val], rows[p.test], "kfold", [*p.notes, note]) for p in fold_plan(sub, folds, seed, val_fraction)]
    if np.intersect1d(np.concatenate([np.concatenate([p.train, p.val, p.test]) for p in plan]), base.test).size:
        raise FoldLeakError(f"{table.source}: a held-out test row is in a fold")  # the invariant the final reading rests on
    return plan, base


def fold_splits(table: SampleTable, folds: int, fold: int, seed: int = 0, val_fraction: float = 0.15, holdout: str = "none",
                test_fraction: float = 0.15, allow_group_leakage: bool = False) -> Splits:
    """The splits of one fold (as training made them); used when a config says ``split.method: kfold``.

    Example:
        >>> s = fold_splits(table, folds=5, fold=2, seed=0)  # doctest: +SKIP
    """
    if not 0 <= fold < folds:
        raise ValueError(f"data.split.fold must be in 0..{folds - 1}, not {fold}")
    return cv_plan(table, folds, seed, val_fraction, holdout, test_fraction, allow_group_leakage)[0][fold]


def config_fold_splits(table: SampleTable, split: Any) -> Splits:
    """:func:`fold_splits` of a config's ``data.split`` section (a fold bundle re-creating its fold)."""
    return fold_splits(table, split.folds, split.fold, split.seed, split.val_fraction, split.cv_holdout, split.test_fraction,
                       split.allow_group_leakage)
