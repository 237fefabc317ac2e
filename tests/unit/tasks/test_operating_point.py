"""The deployed operating point of a classifier: rates with Wilson intervals from the named split, the word for the
number (a probability only below the documented calibration-error bound) and a note when the rates were measured
at another threshold than the deployed one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medlens.bundle import read_manifest
from medlens.tasks import task_of
from medlens.tasks.classification.metrics import classification_metrics
from medlens.tasks.classification.operating import ECE_BOUND, value_word
from tests.unit._bundles import random_bundle


def _metrics(threshold: float, calibrated: bool) -> dict:
    rng = np.random.default_rng(0)
    n = 4000  # enough rows that the binned calibration error of a calibrated score is well below the bound
    y = rng.integers(0, 2, n)
    # a calibrated score draws y ~ Bernoulli(p); the other squeezes scores towards 0.5 whatever the truth
    p = rng.uniform(0, 1, n)
    y = (rng.uniform(0, 1, n) < p).astype(int) if calibrated else y
    s = p if calibrated else np.where(y == 1, 0.6, 0.4) + rng.normal(0, 0.15, n)
    s = np.clip(s, 0, 1)
    return classification_metrics(s[:, None], np.eye(2)[y], "binary", ["normal", "abnormal"], [threshold])


@pytest.mark.parametrize("calibrated", [True, False])
def test_rates_intervals_and_wording(tmp_path: Path, calibrated: bool) -> None:
    test = _metrics(0.5, calibrated)
    b = random_bundle(tmp_path / "b", thresholds=[0.5], metrics={"val": _metrics(0.5, True), "test": test})
    m = read_manifest(b)
    task = task_of(m)
    op = task.operating_point(m)
    assert op["split"] == "test" and op["n"] == 4000  # test metrics exist: the test split, named
    sens = op["labels"]["abnormal"]["sensitivity"]
    per = test["per_label"]["abnormal"]
    assert sens["estimate"] == pytest.approx(per["tp"] / (per["tp"] + per["fn"]))
    assert sens["low"] < sens["estimate"] < sens["high"]
    for rate in ("specificity", "ppv", "npv"):
        assert op["labels"]["abnormal"][rate]["n"] > 0
    word = "probability" if test["ece"] < ECE_BOUND else "score"
    assert (word == "probability") == calibrated  # the two cases really fall on both sides of the bound
    assert op["value_word"] == word and task.presentation(m).value_name == word.capitalize()
    assert f"{test['ece']:.3f}" in op["calibration"] and f"{test['ece']:.3f}" in task.presentation(m).summary


def test_validation_when_no_test_split_and_a_stale_threshold_is_said(tmp_path: Path) -> None:
    b = random_bundle(tmp_path / "b", thresholds=[0.3], metrics={"val": _metrics(0.5, True)})
    op = task_of(read_manifest(b)).operating_point(read_manifest(b))
    assert op["split"] == "val" and "on the val split" in op["text"][0]
    assert "not at the deployed 0.300" in op["labels"]["abnormal"]["note"]


def test_no_metrics_means_no_operating_point_and_a_score() -> None:
    assert value_word({}) == ("score", None, None)
    assert value_word({"test": {"ece": ECE_BOUND}})[0] == "score"  # the bound itself is not below it


def test_multiclass_decides_by_argmax(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 90)
    s = rng.dirichlet([1, 1, 1], 90)
    met = classification_metrics(s, np.eye(3)[y], "multiclass", ["a", "b", "c"])
    b = random_bundle(tmp_path / "m", task="multiclass", names=("a", "b", "c"), metrics={"test": met})
    op = task_of(read_manifest(b)).operating_point(read_manifest(b))
    assert set(op["labels"]) == {"a", "b", "c"} and all(v["threshold"] is None for v in op["labels"].values())
    assert "the highest class" in op["text"][0]


def test_history_columns_say_at_half_where_a_threshold_of_0_5_was_used() -> None:
    from medlens.tasks import get_task

    binary, multi, multiclass = get_task("binary"), get_task("multilabel"), get_task("multiclass")
    for key in ("val/accuracy", "val/f1_macro", "val/raw_sensitivity_macro", "val/ema_accuracy", "val/tp"):
        assert binary.history_column(key) == key + "@0.5" and multi.history_column(key) == key + "@0.5"
    for key in ("val/auroc_macro", "val/loss", "val/ece", "val/threshold_f1", "train/loss", "epoch"):
        assert binary.history_column(key) == key
    assert multiclass.history_column("val/accuracy") == "val/accuracy"  # arg-max, as deployed


def test_patient_bootstrap_intervals_beside_wilson_when_patients_are_known(tmp_path: Path) -> None:
    """With patient ids the operating point carries percentile intervals that resample patients (the task's metrics
    hook stores them in the manifest under ``ci.per_label``), beside the Wilson ones; without ids it has none."""
    from medlens.tasks import get_task

    rng = np.random.default_rng(3)
    patients = np.repeat(np.arange(60), 4)  # 4 images per patient, the patient's label on all of them
    y = np.repeat(rng.integers(0, 2, 60), 4)
    s = np.clip(0.3 + 0.4 * y + np.repeat(rng.normal(0, 0.2, 60), 4) + rng.normal(0, 0.05, 240), 0, 1)[:, None]
    b0 = random_bundle(tmp_path / "b0", thresholds=[0.5])
    task = get_task("binary")
    grouped = task.metrics(s, np.eye(2)[y], read_manifest(b0), groups=[f"p{g}" for g in patients])
    plain = task.metrics(s, np.eye(2)[y], read_manifest(b0), groups=None)
    assert set(grouped["ci"]["per_label"]["abnormal"]) == {"sensitivity", "specificity", "precision", "npv"}
    assert plain["ci"]["per_label"]["abnormal"] == {}  # no patient ids: Wilson only

    m = read_manifest(random_bundle(tmp_path / "g", thresholds=[0.5], metrics={"test": grouped}))
    op = task_of(m).operating_point(m)
    ab = op["labels"]["abnormal"]
    assert op["bootstrap"]["unit"] == "patient" and op["bootstrap"]["n_patients"] == 60
    for rate in ("sensitivity", "specificity", "ppv", "npv"):
        boot, wil = ab["bootstrap"][rate], ab[rate]
        assert boot["estimate"] == pytest.approx(wil["estimate"])  # one point estimate, two intervals
        assert boot["low"] <= boot["estimate"] <= boot["high"]
        # 4 correlated images per patient: the patient interval is wider than Wilson's, which counts images
        assert boot["high"] - boot["low"] > wil["high"] - wil["low"]
    assert "(n=240) of 60 patients" in op["text"][0] and "patient bootstrap" in op["text"][0]
    assert "resampling the split's 60 patients" in op["interval_method"]

    m = read_manifest(random_bundle(tmp_path / "p", thresholds=[0.5], metrics={"test": plain}))
    op = task_of(m).operating_point(m)
    assert op["bootstrap"] is None and "bootstrap" not in op["labels"]["abnormal"] and "patient" not in op["text"][0]
