"""``evaluate(threshold=..., thresholds_from=...)``: the operating point acts on the metrics and is recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from medlens.bundle import load_bundle
from medlens.evaluation import evaluate
from tests.unit._bundles import random_bundle

SIZE = 16


def data(task: str = "binary", k: int = 2) -> dict:
    return {"kind": "synthetic", "num_samples": 60, "num_labels": k, "image_size": SIZE, "channels": 1, "task": task}


def config(task: str = "binary", k: int = 2, **trainer) -> dict:
    return {"data": data(task, k), "trainer": {"threshold_method": "f1", **trainer}}


@pytest.fixture
def binary_bundle(tmp_path: Path) -> Path:
    return random_bundle(tmp_path / "b", image_size=SIZE, names=("negative", "positive"), thresholds=[0.5], config=config())


def test_threshold_zero_gives_sensitivity_one_and_is_recorded(binary_bundle: Path) -> None:
    low = evaluate(binary_bundle, threshold=0.0, record=True)
    high = evaluate(binary_bundle, threshold=1.0 - 1e-9, record=False)
    assert low.metrics["sensitivity_macro"] == 1.0
    assert low.metrics["specificity_macro"] == 0.0
    assert high.metrics["sensitivity_macro"] < 1.0 and high.metrics["specificity_macro"] > 0.0
    assert low.metrics["operating_point"] == {"source": "fixed", "thresholds": [0.0]}
    # recorded under its own key: the bundle's own test evaluation is not overwritten
    ev = load_bundle(binary_bundle).manifest.metrics["evaluations"]
    assert ev["test_threshold_0"]["metrics"]["operating_point"]["source"] == "fixed"
    assert load_bundle(binary_bundle).manifest.thresholds == [0.5]  # the bundle itself is unchanged


def test_default_records_the_bundle_thresholds(binary_bundle: Path) -> None:
    r = evaluate(binary_bundle, record=False)
    assert r.metrics["operating_point"] == {"source": "bundle", "thresholds": [0.5]}


def test_thresholds_from_val_retunes_on_validation(binary_bundle: Path) -> None:
    from medlens.config import config_from_dict
    from medlens.evaluation import dataset_splits
    from medlens.inference import Predictor
    from medlens.tasks.classification.metrics import tune_thresholds

    r = evaluate(binary_bundle, thresholds_from="val", record=False)
    point = r.metrics["operating_point"]
    assert point["source"] == "val" and point["method"] == "f1"
    b = load_bundle(binary_bundle)
    table, splits = dataset_splits(config_from_dict(b.manifest.config))
    val = table.subset(splits.val)
    want = tune_thresholds(Predictor(b).predict_table(val), val.targets, "binary", "f1")
    assert point["thresholds"] == pytest.approx(want)
    # another method from an override gives other thresholds, and says so
    y = evaluate(binary_bundle, thresholds_from="val", overrides=["trainer.threshold_method=fixed", "trainer.fixed_threshold=0.3"], record=False)
    assert y.metrics["operating_point"]["thresholds"] == [0.3]


def test_fixed_threshold_override_acts_when_the_method_is_fixed(tmp_path: Path) -> None:
    b = random_bundle(tmp_path / "b", image_size=SIZE, names=("negative", "positive"), thresholds=[0.5], config=config(threshold_method="fixed"))
    r = evaluate(b, overrides=["trainer.fixed_threshold=0.01"], record=False)
    assert r.metrics["operating_point"] == {"source": "fixed", "thresholds": [0.01]}
    assert r.metrics["operating_point"]["thresholds"] != evaluate(b, record=False).metrics["operating_point"]["thresholds"]


def test_fixed_threshold_override_is_refused_for_a_tuned_method(binary_bundle: Path) -> None:
    with pytest.raises(ValueError, match=r"task_options.fixed_threshold acts only with task_options.threshold_method: fixed.*--threshold 0.3"):
        evaluate(binary_bundle, overrides=["trainer.fixed_threshold=0.3"], record=False)
    with pytest.raises(ValueError, match="task_options.threshold_method acts in evaluate only with --thresholds-from val"):
        evaluate(binary_bundle, overrides=["trainer.threshold_method=youden"], record=False)


def test_threshold_and_val_together_or_unknown_source_are_refused(binary_bundle: Path) -> None:
    with pytest.raises(ValueError, match="two different operating points"):
        evaluate(binary_bundle, threshold=0.2, thresholds_from="val", record=False)
    with pytest.raises(ValueError, match="thresholds_from must be one of bundle, val"):
        evaluate(binary_bundle, thresholds_from="test", record=False)


def test_multiclass_has_no_threshold_to_set(tmp_path: Path) -> None:
    names = ("finding_0", "finding_1", "finding_2")
    b = random_bundle(tmp_path / "m", image_size=SIZE, task="multiclass", names=names, config=config("multiclass", 3))
    with pytest.raises(ValueError, match="arg-max.*no thresholds"):
        evaluate(b, threshold=0.5, record=False)
    with pytest.raises(ValueError, match="arg-max.*no thresholds"):
        evaluate(b, thresholds_from="val", record=False)
    assert evaluate(b, record=False).metrics["operating_point"] == {"source": "bundle", "thresholds": []}
