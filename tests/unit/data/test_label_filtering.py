"""One label rule for every reader: labels outside ``data.label_names`` are filtered with one warning per source,
and multi-label labels without a positive image are dropped by ``read_dataset`` with one warning, whatever the source.

The same small dataset is written as a class-folder tree, a CSV, a JSONL file and a SQLite database (and a
Hugging Face parquet file for the multi-label case); every reader must give the same label space and targets.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens.config import config_from_dict
from medlens.data.labels import LabelSpace
from medlens.data.readers import read_dataset
from medlens.data.readers.nih import match_listing
from medlens.data.samples import SampleTable

FILTER = "outside data.label_names"
EMPTY = "with no positive image"


def data_cfg(**data):
    return config_from_dict({"data": data}).data


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def _by_image(t) -> dict[str, list[float]]:
    """Targets keyed by the image's real path (ids differ between readers; files do not)."""
    return {os.path.realpath(p): t.targets[i].tolist() for i, p in enumerate(t.images)}


def _messages(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if needle in r.getMessage()]


def _sqlite(tmp_path: Path, names: tuple[str, ...], task: str, paths: list[str], targets: np.ndarray) -> str:
    pytest.importorskip("sqlalchemy")
    from medlens.data import db

    url = f"sqlite:///{tmp_path / 'labels.db'}"
    engine = db.init_db(url)
    ids = [Path(p).stem for p in paths]
    db.import_table(engine, SampleTable(LabelSpace(names, task), ids, paths, targets, source="test"), "d", "ls")  # type: ignore[arg-type]
    engine.dispose()
    return url


# ------------------------------------------------------------------ single-label: rows of other classes are left out
CLASSES = ["a", "b", "c", "a", "b", "c", "a", "b", "c", "b"]  # 'c' (3 rows) is not requested


@pytest.fixture
def single(tmp_path: Path) -> dict:
    root = tmp_path / "tree"
    rel = [f"{c}/{c}{i}.png" for i, c in enumerate(CLASSES)]
    for i, r in enumerate(rel):
        _png(root / r, 20 * i)
    (root / "labels.csv").write_text("path,label\n" + "".join(f"{r},{c}\n" for r, c in zip(rel, CLASSES, strict=True)))
    (root / "labels.jsonl").write_text("".join(json.dumps({"filename": r, "labels": c}) + "\n" for r, c in zip(rel, CLASSES, strict=True)))
    paths = [str(root / r) for r in rel]
    onehot = np.eye(3, dtype=np.float32)[["abc".index(c) for c in CLASSES]]
    url = _sqlite(tmp_path, ("a", "b", "c"), "multiclass", paths, onehot)
    return {
        "folder": dict(kind="folder", root=str(root)),
        "csv": dict(kind="csv", path=str(root / "labels.csv"), label_column="label"),
        "jsonl": dict(kind="jsonl", path=str(root / "labels.jsonl")),
        "sql": dict(kind="sql", url=url, dataset="d", label_set="ls"),
    }


def test_single_label_sources_filter_the_same_rows(single: dict, caplog: pytest.LogCaptureFixture) -> None:
    results = {}
    for kind, cfg in single.items():
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="medlens.data"):
            t = read_dataset(data_cfg(**cfg, label_names=["b", "a"]))
        msgs = _messages(caplog, FILTER)
        assert len(msgs) == 1, (kind, msgs)  # one line per source, not one per row
        assert "3 rows" in msgs[0] and "{'c': 3}" in msgs[0] and "rows are dropped" in msgs[0], (kind, msgs[0])
        assert t.label_space == LabelSpace(("b", "a"), "binary"), kind
        results[kind] = _by_image(t)
    expected = {p: ([1.0, 0.0] if "/b/" in p else [0.0, 1.0]) for p in results["folder"]}
    assert len(expected) == 7 and not any("/c/" in p for p in expected)
    for kind, got in results.items():
        assert got == expected, kind


def test_without_label_names_every_class_is_kept(single: dict, caplog: pytest.LogCaptureFixture) -> None:
    for kind, cfg in single.items():
        with caplog.at_level(logging.WARNING, logger="medlens.data"):
            t = read_dataset(data_cfg(**cfg))
        assert t.label_space == LabelSpace(("a", "b", "c"), "multiclass") and len(t) == 10, kind
    assert not _messages(caplog, FILTER)


# ------------------------------------------------------------------ multi-label: labels are dropped from rows
#  'z' is not requested (3 rows name it, one names only it); 'w' is requested but no image is positive for it
ROWS = [["x"], ["x", "z"], ["y"], ["y", "z"], ["z"], ["x", "y"]]
ALL = ("w", "x", "y", "z")
REQUEST = ["y", "x", "w"]


@pytest.fixture
def multi(tmp_path: Path) -> dict:
    root = tmp_path / "ml"
    rel = [f"img{i}.png" for i in range(len(ROWS))]
    for i, r in enumerate(rel):
        _png(root / r, 30 * i)
    (root / "labels.csv").write_text("path,findings\n" + "".join(f"{r},{'|'.join(labs)}\n" for r, labs in zip(rel, ROWS, strict=True)))
    (root / "labels.jsonl").write_text("".join(json.dumps({"filename": r, "labels": labs}) + "\n" for r, labs in zip(rel, ROWS, strict=True)))
    paths = [str(root / r) for r in rel]
    hot = np.array([[float(n in labs) for n in ALL] for labs in ROWS], dtype=np.float32)  # 'w': a known negative everywhere
    url = _sqlite(tmp_path, ALL, "multilabel", paths, hot)
    cfgs = {
        "csv": dict(kind="csv", path=str(root / "labels.csv"), label_column="findings", task="multilabel"),
        "jsonl": dict(kind="jsonl", path=str(root / "labels.jsonl")),
        "sql": dict(kind="sql", url=url, dataset="d", label_set="ls"),
    }
    try:
        import datasets

        ds = datasets.Dataset.from_dict({"image": paths, "labels": ROWS})
        ds.to_parquet(str(root / "labels.parquet"))
        cfgs["hf"] = dict(kind="hf", path=str(root / "labels.parquet"), label_column="labels", cache_dir=str(tmp_path / "hfc"))
    except ImportError:
        pass
    return cfgs


def test_multi_label_sources_drop_the_same_labels_and_keep_the_rows(multi: dict, caplog: pytest.LogCaptureFixture) -> None:
    results = {}
    for kind, cfg in multi.items():
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="medlens.data"):
            t = read_dataset(data_cfg(**cfg, label_names=REQUEST))
        msgs = _messages(caplog, FILTER)
        assert len(msgs) == 1, (kind, msgs)
        assert "3 rows" in msgs[0] and "{'z': 3}" in msgs[0] and "rows, which are kept" in msgs[0], (kind, msgs[0])
        empty = _messages(caplog, EMPTY)  # 'w': requested, known negative, never positive -> dropped, once, with counts
        assert len(empty) == 1 and "'w'" in empty[0] and "0 positive of 6 known" in empty[0], (kind, empty)
        assert t.label_space == LabelSpace(("y", "x"), "multilabel"), kind
        results[kind] = _by_image(t)
    first = next(iter(results.values()))
    assert sorted(first.values()) == sorted([[0, 1], [0, 1], [1, 0], [1, 0], [0, 0], [1, 1]])  # the 'z'-only row: all negative
    for kind, got in results.items():
        assert got == first, kind


def test_labels_without_positives_are_dropped_for_every_source_not_only_sql(multi: dict, caplog: pytest.LogCaptureFixture) -> None:
    for kind, cfg in multi.items():
        if kind == "sql":
            continue  # 'w' is in the label set; the list-based sources never name it, so it is not a label there
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="medlens.data"):
            t = read_dataset(data_cfg(**cfg, label_names=["x", "w"]))
        assert t.label_space.names == ("x",), kind
        assert len(_messages(caplog, EMPTY)) == 1, kind
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medlens.data"):
        t = read_dataset(data_cfg(**multi["sql"]))
    assert t.label_space.names == ("x", "y", "z") and len(_messages(caplog, EMPTY)) == 1


def test_nih_filters_labels_outside_label_names_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    header = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"
    rows = [("1.png", "Effusion|Mass"), ("2.png", "Mass"), ("3.png", "No Finding"), ("4.png", "Effusion|Pnuemonia")]
    for name, _ in rows:
        _png(tmp_path / "imgs" / name, 50)
    (tmp_path / "d.csv").write_text(header + "".join(f"{n},{lab},0,{i},50,F,PA\n" for i, (n, lab) in enumerate(rows)))
    with caplog.at_level(logging.WARNING, logger="medlens.data"):
        t = read_dataset(data_cfg(kind="nih", path=str(tmp_path / "d.csv"), image_root=str(tmp_path / "imgs"), label_names=["Effusion"]))
    assert t.label_space.names == ("Effusion",) and t.targets[:, 0].tolist() == [1, 0, 0, 1]
    msgs = _messages(caplog, FILTER)
    assert len(msgs) == 1 and "3 rows" in msgs[0] and "'Mass': 2" in msgs[0] and "'Pnuemonia': 1" in msgs[0]


# ------------------------------------------------------------------ data.images listings are matched in O(n)
def test_a_20k_listing_is_matched_in_linear_time(caplog: pytest.LogCaptureFixture) -> None:
    n = 20_000
    index = [f"{i:08d}_000.png" for i in range(n)]
    listed = [f"images/{x}" for x in index[::-1]] + ["images/not_in_table.png"]
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="medlens.data"):
        rel = match_listing(listed, index, {}, "test_list.txt", "Data_Entry_2017.csv")
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.5, f"{elapsed:.2f} s for {n} names"  # the old per-name set rebuild took minutes
    assert len(rel) == n + 1 and rel[index[5]] == f"images/{index[5]}"
    assert len(_messages(caplog, "listed images are not in")) == 1
