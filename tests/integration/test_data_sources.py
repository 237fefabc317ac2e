"""One dataset, four ways in: NIH1000 through ``nih``, ``csv``, and ``sql`` (SQLite and PostgreSQL) gives the
same samples, labels and splits; JSONL and SQL sources train a multi-label model end to end; the shipped data
configs load."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from medlens.config import config_from_dict, load_config
from medlens.data import db
from medlens.data.readers import read_dataset
from medlens.data.samples import SampleTable
from medlens.data.splits import split_indices
from medlens.training import train
from tests.conftest import ROOT, tiny_config

pytest.importorskip("sqlalchemy")


def nih_table(nih_dir: Path) -> SampleTable:
    return read_dataset(config_from_dict({"data": {
        "kind": "nih", "path": str(nih_dir / "Data_Entry_2017_v2020.csv.gz"), "image_root": str(nih_dir)}}).data)


def csv_table(nih_dir: Path) -> SampleTable:
    return read_dataset(config_from_dict({"data": {
        "kind": "csv", "path": str(nih_dir / "nih1000_labels.csv"), "label_column": "Finding Labels",
        "no_finding": "No Finding", "group_column": "Patient ID", "split_column": "split"}}).data)


def sql_table(url: str, dataset: str) -> SampleTable:
    return read_dataset(config_from_dict({"data": {
        "kind": "sql", "url": url, "dataset": dataset, "label_set": "nih14", "metadata_fields": ["age", "sex", "view"]}}).data)


def by_id(t: SampleTable) -> dict:
    """The table's content keyed by sample id (readers may list rows in different orders)."""
    o = np.argsort(t.ids.astype(str))
    return {
        "ids": t.ids[o].tolist(), "images": [str(Path(p).resolve()) for p in t.images[o]], "targets": t.targets[o],
        "groups": t.groups[o].tolist(), "splits": t.splits[o].tolist(), "labels": t.label_space,
    }


def split_ids(t: SampleTable, **kw) -> dict[str, list[str]]:
    s = split_indices(t, allow_group_leakage=True, **kw)
    return {k: sorted(t.ids[v].tolist()) for k, v in s.as_dict().items()}


def assert_same(a: SampleTable, b: SampleTable) -> None:
    x, y = by_id(a), by_id(b)
    assert x["labels"] == y["labels"]
    assert x["ids"] == y["ids"] and x["images"] == y["images"]
    np.testing.assert_array_equal(x["targets"], y["targets"])
    assert x["groups"] == y["groups"] and x["splits"] == y["splits"]
    # the same splits, whether predefined or re-made by patient with a seed
    assert split_ids(a) == split_ids(b)
    assert split_ids(a, method="group", val_fraction=0.2, test_fraction=0.2, seed=7) == \
        split_ids(b, method="group", val_fraction=0.2, test_fraction=0.2, seed=7)


@pytest.fixture(scope="module")
def nih_reference(nih_dir: Path) -> SampleTable:
    return nih_table(nih_dir)


def test_nih_and_csv_readers_agree(nih_dir: Path, nih_reference: SampleTable) -> None:
    assert len(nih_reference) == 1000
    assert_same(nih_reference, csv_table(nih_dir))


def test_sqlite_import_from_csv_reads_back_identical(nih_dir: Path, nih_reference: SampleTable, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nih.db'}"
    engine = db.init_db(url)
    db.import_table(engine, csv_table(nih_dir), "nih1000", "nih14")  # imported from the CSV reader's table
    engine.dispose()
    t = sql_table(url, "nih1000")
    assert_same(nih_reference, t)
    # the shipped SQL config reads the same database
    cfg = load_config(ROOT / "configs" / "nih_sql.yaml", [f"data.url={url}"])
    assert_same(nih_reference, read_dataset(cfg.data))


@pytest.mark.postgres
def test_postgresql_import_reads_back_identical(pg_url: str, nih_reference: SampleTable) -> None:
    name = f"nih1000_{uuid.uuid4().hex[:8]}"
    engine = db.init_db(pg_url)
    try:
        s = db.import_table(engine, nih_reference, name, "nih14")
        assert s.images == 1000 and s.annotations == 14000
        t = sql_table(pg_url, name)
        assert_same(nih_reference, t)
        # metadata survives the database: age stays a number
        o1, o2 = np.argsort(nih_reference.ids.astype(str)), np.argsort(t.ids.astype(str))
        assert nih_reference.metadata.iloc[o1]["age"].tolist() == t.metadata.iloc[o2]["age"].tolist()
        small = read_dataset(config_from_dict({"data": {"kind": "sql", "url": pg_url, "dataset": name, "label_set": "nih14", "chunk_size": 64}}).data)
        np.testing.assert_array_equal(small.targets, t.targets)  # server-side cursor in small chunks
    finally:
        db.delete_dataset(engine, name)
        engine.dispose()


# ------------------------------------------------------------------ training from JSONL and SQL
LABELS = ["Atelectasis", "Effusion", "Infiltration"]


def _subset(nih: SampleTable, n: int = 240) -> SampleTable:
    rows = np.argsort(nih.ids.astype(str))[:n]
    sub = nih.subset(rows)
    keep = [list(sub.label_space.names).index(x) for x in LABELS]
    return SampleTable(type(sub.label_space)(tuple(LABELS), "multilabel"), sub.ids, sub.images, sub.targets[:, keep],
                       sub.groups, None, sub.metadata, source="nih subset")


def _train_and_check(cfg_dict: dict) -> None:
    result = train(config_from_dict(cfg_dict))
    manifest = json.loads((result.bundle_dir / "manifest.json").read_text())
    assert manifest["label_names"] == LABELS and manifest["task"] == "multilabel"
    assert len(manifest["thresholds"]) == len(LABELS)
    val = result.metrics["val"]
    assert 0.0 <= val["auroc_macro"] <= 1.0
    assert result.data_summary["splits"]["train"] > result.data_summary["splits"]["val"] > 0
    print("metrics", {k: val[k] for k in ("auroc_macro",)}, result.data_summary["splits"])


@pytest.mark.slow
@pytest.mark.heavy  # 18 s; the SQL source trains the same multi-label model from a table in the default run
def test_jsonl_source_trains_a_multilabel_model(nih_reference: SampleTable, tmp_path: Path) -> None:
    sub = _subset(nih_reference)
    lines = []
    for i in range(len(sub)):
        labs = [LABELS[j] for j in range(len(LABELS)) if sub.targets[i, j] == 1]
        lines.append(json.dumps({"filename": sub.images[i], "labels": labs, "patient": sub.groups[i], "id": sub.ids[i]}))
    (tmp_path / "nih.jsonl").write_text("\n".join(lines) + "\n")
    data = {"kind": "jsonl", "path": str(tmp_path / "nih.jsonl"), "group_field": "patient", "id_field": "id",
            "label_names": LABELS, "image_size": 32, "channels": 1, "split": {"method": "group", "val_fraction": 0.25, "test_fraction": 0.2}}
    _train_and_check(tiny_config(tmp_path, data))


@pytest.mark.slow
def test_sql_source_trains_a_multilabel_model(nih_reference: SampleTable, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'train.db'}"
    engine = db.init_db(url)
    db.import_table(engine, _subset(nih_reference), "sub", "three")
    engine.dispose()
    data = {"kind": "sql", "url": url, "dataset": "sub", "label_set": "three", "image_size": 32, "channels": 1,
            "split": {"method": "group", "val_fraction": 0.25, "test_fraction": 0.2}}
    _train_and_check(tiny_config(tmp_path, data))


# ------------------------------------------------------------------ shipped configs
@pytest.mark.parametrize("name", ["nih.yaml", "nih_sql.yaml", "jsonl_example.yaml"])
def test_shipped_data_configs_load_with_paths_next_to_them(name: str) -> None:
    cfg = load_config(ROOT / "configs" / name)
    d = cfg.data
    if d.kind == "sql":
        assert d.url == "sqlite:///" + str((ROOT / "data" / "nih1000.db").resolve())
    else:
        assert Path(d.path).is_absolute() and Path(d.image_root).is_absolute()


def test_shipped_nih_config_reads_the_shared_set(nih_dir: Path) -> None:
    cfg = load_config(ROOT / "configs" / "nih.yaml", [f"data.path={nih_dir / 'Data_Entry_2017_v2020.csv.gz'}", f"data.image_root={nih_dir}"])
    t = read_dataset(cfg.data)
    assert len(t) == 1000 and t.label_space.num_labels == 14
