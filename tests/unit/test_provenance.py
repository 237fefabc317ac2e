"""The training-data record: names without host paths or secrets, counts per split and class, the generated-data
mark set by the synthetic reader (the demo's data), and how every surface reads a bundle with and without it."""

from __future__ import annotations

from pathlib import Path

import pytest

from medlens.bundle import read_manifest
from medlens.provenance import (
    GENERATED_BANNER,
    NOT_RECORDED,
    source_name,
    training_data_record,
    training_data_view,
)
from tests.unit._bundles import random_bundle


@pytest.mark.parametrize(("data", "name"), [
    ({"kind": "csv", "path": "/home/ana/study/labels.csv"}, "labels.csv"),
    ({"kind": "folder", "root": "/data/chest_xray/"}, "chest_xray"),
    ({"kind": "jsonl", "path": "C:\\Users\\ana\\ann.jsonl"}, "ann.jsonl"),
    ({"kind": "hf", "path": "https://user:token@huggingface.co/datasets/org/derm"}, "derm"),
    ({"kind": "medmnist", "flag": "pneumoniamnist", "path": "/root/.cache/x.npz"}, "pneumoniamnist"),
    ({"kind": "sql", "url": "postgresql://u:pw@db/x", "dataset": "chest", "label_set": "findings"}, "chest / findings"),
    ({"kind": "sql", "url": "sqlite:////srv/a.db", "schema": {"images": {"table": "frames"}}, "label_set": "polyps"}, "frames / polyps"),
    ({"kind": "synthetic"}, "generated blobs"),
    ({"kind": "webdataset", "urls": {"train": "https://u:tok@host/x/train-{000..009}.tar", "val": "v.tar"}}, "train-{000..009}.tar"),
])
def test_source_name_is_a_base_name_never_a_path_or_secret(data: dict, name: str) -> None:
    got = source_name(data)
    assert got == name
    assert "/home" not in got and "token" not in got and "pw" not in got


def test_record_counts_and_view() -> None:
    rec = training_data_record({"kind": "csv", "path": "/x/y.csv"},
                               {"train": (7, {"neg": {"positive": 4}, "pos": {"positive": 3}}), "val": (2, {"neg": {"positive": 1}, "pos": {"positive": 1}})},
                               generated=False, population="adults, one site", intended_use="triage research", when="2026-01-02")
    assert rec["n"] == {"train": 7, "val": 2} and rec["per_class"]["train"] == {"neg": 4, "pos": 3}
    view = training_data_view(rec)
    assert view["banner"] is None and view["recorded"] and not view["generated"]
    assert view["summary"] == "trained 2026-01-02 on csv y.csv: train n=7, val n=2; population: adults, one site"
    gen = training_data_view({**rec, "generated": True})
    assert gen["banner"] == GENERATED_BANNER
    assert training_data_view(None) == {"recorded": False, "generated": None, "banner": None, "summary": NOT_RECORDED}


def test_the_demo_data_is_marked_generated_at_its_source() -> None:
    from medlens.demo import demo_config
    from medlens.tasks import read_table

    table = read_table(demo_config("runs", "synthetic", None))
    assert table.provenance == {"generated": True}
    assert table.subset([0, 1]).provenance == {"generated": True}  # kept through the splits


def test_manifest_round_trip_and_older_bundles(tmp_path: Path) -> None:
    old = random_bundle(tmp_path / "old")
    assert read_manifest(old).training_data is None
    rec = training_data_record({"kind": "synthetic"}, {"train": (2, {"a": {"positive": 1}, "b": {"positive": 1}})}, generated=True)
    new = random_bundle(tmp_path / "new", training_data=rec)
    assert read_manifest(new).training_data == rec


def test_public_model_info_and_records_carry_the_view(tmp_path: Path) -> None:
    import numpy as np

    from medlens.inference import Predictor
    from medlens.serve.public import public_model_info
    from medlens.tasks import task_of

    rec = training_data_record({"kind": "synthetic"}, {"train": (2, {"a": {"positive": 1}, "b": {"positive": 1}})}, generated=True)
    p = Predictor.from_bundle(random_bundle(tmp_path / "b", training_data=rec))
    assert public_model_info(p.manifest)["training_data"]["banner"] == GENERATED_BANNER
    pred = p.predict_one(np.zeros((32, 32), np.uint8))
    record = task_of(p.manifest).record(pred, p.manifest)
    assert record["training_data"] == {"summary": training_data_view(rec)["summary"], "generated": True, "banner": GENERATED_BANNER}
