"""Subgroup performance (medlens.subgroups, the classification task's hook): columns and bands, the size rule and
its warnings (a subgroup whose positives all come from one patient), patient-bootstrap intervals that agree with a
plain loop over the project's bootstrap helper, the paired gap, the text, HTML and forest plot."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medlens.bundle import Manifest
from medlens.data.labels import LabelSpace
from medlens.data.transforms import resolve_preprocessing
from medlens.subgroups import (
    column_levels,
    forest_png,
    parse_columns,
    subgroup_columns,
    subgroup_performance,
    subgroups_html,
    subgroups_text,
)
from medlens.tasks import get_task
from medlens.tasks.classification.metrics import binary_auroc, classification_metrics
from medlens.tasks.classification.uncertainty import bootstrap_indices


def manifest(kind: str = "binary", names: tuple[str, ...] = ("normal", "abnormal"), thresholds: list[float] | None = None) -> Manifest:
    k = 1 if kind == "binary" else len(names)
    return Manifest(architecture={"type": "classifier"}, label_space=LabelSpace(names, kind), preprocessing=resolve_preprocessing(32, 1),
                    thresholds=[0.5] * k if thresholds is None and kind != "multiclass" else (thresholds or []))


def binary_split(seed: int = 0, n: int = 240):
    """Scores that separate the classes well in sex F and poorly in sex M; one or two images per patient."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(np.float32)
    sex = np.where(np.arange(n) % 2 == 0, "F", "M")
    noise = np.where(sex == "F", 0.15, 0.6)
    p = np.clip(0.3 + 0.4 * y + rng.normal(0, 1, n) * noise, 0, 1).astype(np.float32)
    targets = np.stack([1 - y, y], axis=1)
    groups = [f"p{i // 2 * 2 + (i % 2)}" if i % 4 < 2 else f"q{i // 4}_{i % 2}" for i in range(n)]
    return p[:, None], targets, groups, sex


# ------------------------------------------------------------------------------------------ columns
def test_age_columns_are_banded_and_other_numbers_by_quartile():
    ages = [25, 39, 40, 59, 60, 79, 80, 95, None, "", *range(20, 40)]
    c = column_levels("Patient Age", ages)
    assert c.levels[:10] == ["<40", "<40", "40-59", "40-59", "60-79", "60-79", ">=80", ">=80", None, None]
    assert c.order == ["<40", "40-59", "60-79", ">=80"] and c.missing == 2 and "40-59" in c.banding
    q = column_levels("bmi", list(range(100)))
    assert len(q.order) == 4 and q.banding.startswith("quartiles") and q.order[0].startswith("0-")
    assert sum(lv == q.order[0] for lv in q.levels) == 25
    few = column_levels("Follow-up #", ["2", "10", "1", "2.0"])  # numbers, few values: kept, in numeric order
    assert few.order == ["1", "2", "10"] and few.levels == ["2", "10", "1", "2"] and few.banding == ""
    text = column_levels("sex", ["male", "female", " male ", np.nan, "unknown"])
    assert text.order == ["female", "male", "unknown"] and text.levels[2] == "male" and text.missing == 1


def test_default_selection_takes_2_to_12_levels_and_named_columns_are_checked():
    meta = pd.DataFrame({"Patient Gender": ["M", "F"] * 20, "Patient Age": [str(20 + i * 2) for i in range(40)],
                         "site": ["A"] * 40, "id": [f"x{i}" for i in range(40)]})
    cols, skipped = subgroup_columns(meta)
    assert [c.name for c in cols] == ["Patient Gender", "Patient Age"]
    assert set(skipped) == {"site", "id"} and "1 level" in skipped["site"] and "40 level" in skipped["id"]
    cols, _ = subgroup_columns(meta, ["id"])  # named: used whatever its number of levels
    assert len(cols[0].order) == 40
    with pytest.raises(ValueError, match=r"no metadata column 'Nope'.*Patient Gender, Patient Age, site, id"):
        subgroup_columns(meta, ["Patient Gender", "Nope"])
    with pytest.raises(ValueError, match="has no metadata columns.*data.metadata_columns"):
        subgroup_columns(None, ["sex"])
    assert parse_columns(" a , b ") == ["a", "b"] and parse_columns("None") == [] and parse_columns(None) is None
    with pytest.raises(ValueError, match="--subgroups"):
        parse_columns(" , ")


# ------------------------------------------------------------------------------------------ metrics
def test_binary_subgroups_match_the_plain_metrics_and_a_plain_bootstrap_loop():
    p, t, groups, sex = binary_split()
    m = manifest(thresholds=[0.5])
    meta = pd.DataFrame({"sex": sex})
    sg = subgroup_performance(get_task("binary"), p, t, m, groups, meta, n_boot=200, seed=3)
    col = sg["columns"]["sex"]
    assert col["levels"] == ["F", "M"] and sg["unit"] == "patient" and sg["selection"] == "default"
    assert sum(e["n"] for e in col["subgroups"].values()) == len(p)
    for i, g in enumerate(["F", "M"]):
        rows = np.flatnonzero(sex == g)
        plain = classification_metrics(p[rows], t[rows], "binary", ["normal", "abnormal"], [0.5], warn=False)
        e = col["subgroups"][g]
        assert e["auroc"]["value"] == pytest.approx(plain["auroc_macro"])
        assert e["sensitivity"]["value"] == pytest.approx(plain["sensitivity_macro"])
        assert e["specificity"]["value"] == pytest.approx(plain["specificity_macro"])
        assert e["positives"] == int(t[rows, 1].sum()) and e["negatives"] == int(t[rows, 0].sum())
        assert e["patients"] == len({groups[r] for r in rows})
        # the interval: the same patient draws (bootstrap_indices, seed + subgroup index) scored row by row
        sub_groups = [groups[r] for r in rows]
        reps = [binary_auroc(p[rows[idx], 0], t[rows[idx], 1]) for idx in bootstrap_indices(sub_groups, len(rows), 200, 3 + 1000 * 0 + i)]
        lo, hi = np.percentile([r for r in reps if r == r], [2.5, 97.5])
        assert e["auroc"]["low"] == pytest.approx(lo) and e["auroc"]["high"] == pytest.approx(hi)
        assert e["auroc"]["low"] <= e["auroc"]["value"] <= e["auroc"]["high"]
    gap = col["gaps"]["auroc"]
    assert gap["high_group"] == "F" and gap["low_group"] == "M"
    assert gap["value"] == pytest.approx(col["subgroups"]["F"]["auroc"]["value"] - col["subgroups"]["M"]["auroc"]["value"])
    assert gap["low"] > 0 and gap["readable"] is True  # F separates far better: the paired interval excludes 0
    assert set(col["gaps"]) == {"auroc", "sensitivity"}


def test_a_subgroup_with_all_positives_from_one_patient_warns():
    rng = np.random.default_rng(1)
    # subgroup A: 25 positive images, all of patient "solo", and 30 negatives of 30 patients; subgroup B: 25 positives
    # of 25 patients and 30 negatives of 30 patients
    groups = ["solo"] * 25 + [f"a{i}" for i in range(30)] + [f"bp{i}" for i in range(25)] + [f"bn{i}" for i in range(30)]
    y = np.r_[np.ones(25), np.zeros(30), np.ones(25), np.zeros(30)]
    site = ["A"] * 55 + ["B"] * 55
    p = np.clip(0.3 + 0.3 * y + rng.normal(0, 0.2, len(y)), 0, 1)[:, None]
    t = np.stack([1 - y, y], axis=1)
    sg = subgroup_performance(get_task("binary"), p, t, manifest(), groups, pd.DataFrame({"site": site}), ["site"], n_boot=100)
    a, b = sg["columns"]["site"]["subgroups"]["A"], sg["columns"]["site"]["subgroups"]["B"]
    assert (a["positives"], a["positive_patients"], a["readable"]) == (25, 1, False)
    assert b["readable"] is True and b["warnings"] == []
    assert any(w.startswith("site = A: ") and "positives from 1 patient(s) (< 5)" in w for w in sg["warnings"])
    assert not any(w.startswith("site = B") for w in sg["warnings"])
    assert "fewer than 5 patients" in sg["rule"]
    gap = sg["columns"]["site"]["gaps"]["auroc"]
    assert gap["readable"] is False and any("site: the largest auroc gap" in w for w in sg["warnings"])
    text = subgroups_text(sg)
    assert "warning: site = A" in text and "small" in text


def test_multilabel_gives_the_macro_and_each_label_and_counts_images_with_any_finding():
    rng = np.random.default_rng(2)
    n, names = 160, ("Effusion", "Mass", "Hernia")
    y = (rng.random((n, 3)) < [0.4, 0.3, 0.0]).astype(np.float32)
    y[::7, 1] = np.nan  # unknown labels stay out of their label's figures
    p = np.clip(0.3 * np.nan_to_num(y) + rng.random((n, 3)) * 0.7, 0, 1).astype(np.float32)
    view = np.where(rng.random(n) < 0.5, "PA", "AP")
    groups = [f"p{i // 3}" for i in range(n)]
    sg = subgroup_performance(get_task("multilabel"), p, y, manifest("multilabel", names, [0.5, 0.5, 0.5]), groups,
                              pd.DataFrame({"View Position": view}), n_boot=60)
    e = sg["columns"]["View Position"]["subgroups"]["PA"]
    rows = np.flatnonzero(view == "PA")
    plain = classification_metrics(p[rows], y[rows], "multilabel", list(names), [0.5] * 3, warn=False)
    assert e["auroc"]["value"] == pytest.approx(plain["auroc_macro"])  # the macro over labels defined here (Hernia: none)
    assert e["per_label"]["Mass"]["auroc"]["value"] == pytest.approx(plain["per_label"]["Mass"]["auroc"])
    assert e["per_label"]["Hernia"]["auroc"]["value"] is None and "Hernia" in e["labels_below_rule"]
    below = [w for w in sg["warnings"] if "labels below the size rule" in w]  # one line for the column, not one per subgroup
    assert len(below) == 1 and below[0].startswith("View Position: ") and f"PA {len(e['labels_below_rule'])}/3" in below[0]
    anyfinding = (np.nan_to_num(y[rows]) > 0.5).any(axis=1)
    assert e["positives"] == int(anyfinding.sum()) and e["negatives"] == int((~anyfinding).sum())


def test_tasks_without_subgroup_metrics_and_data_without_metadata():
    p = np.full((4, 3), 1 / 3)
    t = np.eye(3)[[0, 1, 2, 0]]
    m = manifest("multiclass", ("a", "b", "c"))
    meta = pd.DataFrame({"sex": ["F", "M", "F", "M"]})
    assert subgroup_performance(get_task("multiclass"), p, t, m, None, meta) is None  # default selection: quietly none
    with pytest.raises(ValueError, match="have no subgroup metrics"):
        subgroup_performance(get_task("multiclass"), p, t, m, None, meta, ["sex"])
    pb, tb, groups, _ = binary_split(n=40)
    none = subgroup_performance(get_task("binary"), pb, tb, manifest(), groups, None)
    assert none["columns"] == {} and "data.metadata_columns" in none["note"]
    assert subgroups_text(none).startswith("subgroups: the data has no metadata")
    assert subgroup_performance(get_task("binary"), pb, tb, manifest(), groups, None, []) is None  # --subgroups none


def test_html_escapes_levels_and_embeds_the_forest_plot():
    p, t, groups, sex = binary_split(n=120)
    odd = np.where(sex == "F", "<script>x</script>", "M & co")
    sg = subgroup_performance(get_task("binary"), p, t, manifest(), groups, pd.DataFrame({"who": odd}), n_boot=40)
    html = subgroups_html(sg)
    assert "<h2>Subgroups</h2>" in html and "<script>" not in html and "&lt;script&gt;" in html and "M &amp; co" in html
    assert 'src="data:image/png;base64,' in html and "Largest gap" in html
    png = forest_png(sg)
    assert png is not None and png[:8] == b"\x89PNG\r\n\x1a\n"
