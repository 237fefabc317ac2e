"""``kind: jsonl``: one object per line, configurable fields, examination groups, line numbers in errors."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens.config import config_from_dict
from medlens.data.readers import read_dataset


def data_cfg(**data):
    return config_from_dict({"data": {"kind": "jsonl", **data}}).data


def write_images(root: Path, names: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.fromarray(np.full((8, 8), 100, np.uint8)).save(root / n)


def write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


ROWS = [
    {"labels": ["polyp", "blood"], "old_examination_id": 25, "old_id": 479228, "filename": "479228.jpg"},
    {"labels": ["polyp"], "old_examination_id": 25, "old_id": 479229, "filename": "479229.jpg"},
    {"labels": [], "old_examination_id": 26, "old_id": 500001, "filename": "500001.jpg"},
    {"labels": ["ulcer"], "old_examination_id": 27, "old_id": 500002, "filename": "500002.jpg"},
]


@pytest.fixture
def kvasir(tmp_path: Path) -> Path:
    write_images(tmp_path / "images", [r["filename"] for r in ROWS])
    return write_jsonl(tmp_path / "labels.jsonl", ROWS)


def test_reads_the_issue_example_with_examination_groups(kvasir: Path) -> None:
    t = read_dataset(data_cfg(path=str(kvasir), image_root=str(kvasir.parent / "images")))
    assert t.label_space.task == "multilabel"
    assert t.label_space.names == ("blood", "polyp", "ulcer")
    assert t.targets.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1]]
    assert t.groups.tolist() == ["25", "25", "26", "27"]  # the examination id is the default group
    assert t.ids.tolist() == ["479228.jpg", "479229.jpg", "500001.jpg", "500002.jpg"]
    assert all(Path(p).is_file() for p in t.images)


def test_configurable_fields_ids_splits_and_metadata(tmp_path: Path) -> None:
    write_images(tmp_path, ["a.png", "b.png", "c.png"])
    rows = [
        {"img": "a.png", "findings": ["x"], "exam": "e1", "uid": 1, "fold": "train", "age": 50},
        {"img": "b.png", "findings": ["y"], "exam": "e2", "uid": 2, "fold": "valid", "age": 60},
        {"img": "c.png", "findings": ["x", "y"], "exam": "e3", "uid": 3, "fold": "test", "age": None},
    ]
    p = write_jsonl(tmp_path / "d.jsonl", rows)
    t = read_dataset(data_cfg(path=str(p), image_field="img", labels_field="findings", group_field="exam",
                              id_field="uid", split_field="fold", metadata_fields=["age"]))
    assert t.ids.tolist() == ["1", "2", "3"]
    assert t.splits.tolist() == ["train", "val", "test"]
    assert t.groups.tolist() == ["e1", "e2", "e3"]
    assert t.metadata["age"].tolist()[:2] == [50, 60]
    assert t.images[0] == str(tmp_path / "a.png")  # image_root defaults to the JSONL's folder


def test_missing_labels_are_unknown_not_negative(tmp_path: Path) -> None:
    write_images(tmp_path, ["a.png", "b.png", "c.png"])
    p = write_jsonl(tmp_path / "d.jsonl", [
        {"filename": "a.png", "labels": ["x"]}, {"filename": "b.png", "labels": None}, {"filename": "c.png", "labels": ["y"]},
    ])
    t = read_dataset(data_cfg(path=str(p)))
    assert np.isnan(t.targets[1]).all()
    assert t.groups is None  # the default group field is absent everywhere: no groups, no error
    t2 = read_dataset(data_cfg(path=str(p), unknown_labels="negative"))
    assert t2.targets[1].tolist() == [0.0, 0.0]


def test_single_string_labels_give_a_binary_task(tmp_path: Path) -> None:
    write_images(tmp_path, ["a.png", "b.png"])
    p = write_jsonl(tmp_path / "d.jsonl", [{"filename": "a.png", "labels": "normal"}, {"filename": "b.png", "labels": "tumour"}])
    t = read_dataset(data_cfg(path=str(p)))
    assert t.label_space.task == "binary"
    assert t.class_index().tolist() == [0, 1]


def test_malformed_line_names_its_line_number(kvasir: Path) -> None:
    text = kvasir.read_text().splitlines()
    text.insert(2, '{"filename": "x.jpg", "labels": ["polyp"')  # line 3 is cut off
    kvasir.write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match=r"labels\.jsonl: line 3: malformed JSON"):
        read_dataset(data_cfg(path=str(kvasir), image_root=str(kvasir.parent / "images")))


def test_a_line_that_is_not_an_object_is_an_error(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", [{"filename": "a.png", "labels": []}, "[1, 2]"])
    with pytest.raises(ValueError, match="line 2: expected a JSON object"):
        read_dataset(data_cfg(path=str(p)))


def test_a_label_outside_label_names_is_filtered_with_one_warning(kvasir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="medlens.data"):
        t = read_dataset(data_cfg(path=str(kvasir), image_root=str(kvasir.parent / "images"), label_names=["blood", "polyp"]))
    assert t.label_space.names == ("blood", "polyp") and len(t) == 4  # multi-label: the row stays, without 'ulcer'
    assert t.targets.tolist() == [[1, 1], [0, 1], [0, 0], [0, 0]]
    msgs = [r.getMessage() for r in caplog.records if "outside data.label_names" in r.getMessage()]
    assert len(msgs) == 1 and "1 rows" in msgs[0] and "{'ulcer': 1}" in msgs[0] and "line 4" in msgs[0]


def test_missing_image_is_an_error_or_a_listed_skip(kvasir: Path, caplog: pytest.LogCaptureFixture) -> None:
    (kvasir.parent / "images" / "500001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"line 3: image file not found: .*500001\.jpg"):
        read_dataset(data_cfg(path=str(kvasir), image_root=str(kvasir.parent / "images")))
    with caplog.at_level(logging.WARNING, logger="medlens.data"):
        t = read_dataset(data_cfg(path=str(kvasir), image_root=str(kvasir.parent / "images"), on_bad_image="skip"))
    assert len(t) == 3 and "500001.jpg" not in t.ids.tolist()
    assert "line 3" in caplog.text and "500001.jpg" in caplog.text


def test_missing_image_field_names_the_line(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", [{"filename": "a.png", "labels": []}, {"labels": ["x"]}])
    with pytest.raises(ValueError, match=r"line 2: field 'filename' \(data.image_field\)"):
        read_dataset(data_cfg(path=str(p)))


def test_explicit_group_field_must_exist(tmp_path: Path) -> None:
    write_images(tmp_path, ["a.png"])
    p = write_jsonl(tmp_path / "d.jsonl", [{"filename": "a.png", "labels": ["x"]}])
    with pytest.raises(KeyError, match="patient"):
        read_dataset(data_cfg(path=str(p), group_field="patient"))


def test_gzipped_jsonl_and_blank_lines(tmp_path: Path) -> None:
    write_images(tmp_path, ["a.png", "b.png"])
    p = tmp_path / "d.jsonl.gz"
    with gzip.open(p, "wt") as f:
        f.write(json.dumps({"filename": "a.png", "labels": ["x"]}) + "\n\n" + json.dumps({"filename": "b.png", "labels": ["y"]}) + "\n")
    t = read_dataset(data_cfg(path=str(p)))
    assert len(t) == 2 and t.label_space.names == ("x", "y")


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="JSONL file not found"):
        read_dataset(data_cfg(path=str(tmp_path / "nope.jsonl")))
