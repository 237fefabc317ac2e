"""``kind: hf``: Hugging Face datasets from local parquet, arrow (save_to_disk) and imagefolder; offline."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

datasets = pytest.importorskip("datasets")

from medlens.config import config_from_dict  # noqa: E402
from medlens.data.io import load_image  # noqa: E402
from medlens.data.readers import read_dataset  # noqa: E402
from medlens.data.readers.hf import resolve_format  # noqa: E402


@pytest.fixture(autouse=True)
def _offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)


def hf_cfg(**kw):
    return config_from_dict({"data": {"kind": "hf", **kw}}).data


def png_bytes(value: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_imagefolder_with_splits(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for c in ("benign", "malignant"):
            (tmp_path / "ds" / split / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((8, 8), 30 * i, np.uint8)).save(tmp_path / "ds" / split / c / f"{c}{i}.png")
    t = read_dataset(hf_cfg(path=str(tmp_path / "ds")))
    assert resolve_format(str(tmp_path / "ds")) == "imagefolder"
    assert t.label_space.names == ("benign", "malignant") and t.label_space.task == "binary"
    assert len(t) == 8 and sorted(set(t.splits.tolist())) == ["test", "train"]
    # images are the original files, read lazily
    assert all(Path(p).is_file() and str(tmp_path / "ds") in p for p in t.images)
    for i in range(len(t)):
        assert Path(t.images[i]).parent.name == t.label_space.names[t.class_index()[i]]


def test_parquet_with_embedded_bytes_multilabel_groups_and_metadata(tmp_path: Path) -> None:
    feats = datasets.Features({
        "img": datasets.Image(), "findings": datasets.Sequence(datasets.Value("string")),
        "patient": datasets.Value("string"), "age": datasets.Value("int32"),
    })
    ds = datasets.Dataset.from_dict({
        "img": [{"bytes": png_bytes(v), "path": None} for v in (10, 20, 30, 40)],
        "findings": [["effusion"], ["effusion", "mass"], [], None],
        "patient": ["p1", "p1", "p2", "p3"], "age": [50, 51, 60, 70],
    }, features=feats)
    ds.to_parquet(str(tmp_path / "train-00000-of-00001.parquet"))
    cache = tmp_path / "cache"
    t = read_dataset(hf_cfg(path=str(tmp_path / "train-00000-of-00001.parquet"), image_column="img", label_column="findings",
                            group_column="patient", metadata_columns=["age"], cache_dir=str(cache)))
    assert t.label_space.names == ("effusion", "mass") and t.label_space.task == "multilabel"
    assert t.targets[:3].tolist() == [[1, 0], [1, 1], [0, 0]] and np.isnan(t.targets[3]).all()
    assert t.groups.tolist() == ["p1", "p1", "p2", "p3"] and t.metadata["age"].tolist() == [50, 51, 60, 70]
    # embedded bytes were written once to the cache and decode to the same pixels
    assert all(str(cache) in p for p in t.images)
    assert load_image(t.images[2])[0, 0] == 30
    mtimes = [Path(p).stat().st_mtime_ns for p in t.images]
    t2 = read_dataset(hf_cfg(path=str(tmp_path / "train-00000-of-00001.parquet"), image_column="img", label_column="findings", cache_dir=str(cache)))
    assert [Path(p).stat().st_mtime_ns for p in t2.images] == mtimes  # not rewritten


def test_arrow_save_to_disk_classlabel_and_split_map(tmp_path: Path) -> None:
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["normal", "pneumonia", "covid"])})
    def part(vals):
        return datasets.Dataset.from_dict({"image": [{"bytes": png_bytes(v), "path": None} for v in vals], "label": [v % 3 for v in vals]}, features=feats)
    dd = datasets.DatasetDict({"train": part([0, 1, 2, 3]), "validation": part([4, 5, 6]), "holdout": part([7, 8])})
    dd.save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match="split 'holdout'|unknown split name"):
        read_dataset(hf_cfg(path=str(tmp_path / "saved"), split_map={"holdout": "heldout"}, cache_dir=str(tmp_path / "c")))
    t = read_dataset(hf_cfg(path=str(tmp_path / "saved"), split_map={"holdout": "test"}, cache_dir=str(tmp_path / "c")))
    assert resolve_format(str(tmp_path / "saved")) == "arrow"
    assert t.label_space.names == ("normal", "pneumonia", "covid") and t.label_space.task == "multiclass"
    assert t.splits.tolist() == ["train"] * 4 + ["val"] * 3 + ["test"] * 2
    assert t.class_index().tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2]


def test_missing_column_and_unknown_label_are_clear(tmp_path: Path) -> None:
    ds = datasets.Dataset.from_dict({"image": [{"bytes": png_bytes(1), "path": None}], "y": ["a"]},
                                    features=datasets.Features({"image": datasets.Image(), "y": datasets.Value("string")}))
    ds.to_parquet(str(tmp_path / "d.parquet"))
    with pytest.raises(KeyError, match="column 'label' \\(data.label_column\\) not found"):
        read_dataset(hf_cfg(path=str(tmp_path / "d.parquet"), cache_dir=str(tmp_path / "c")))


def test_a_class_outside_label_names_is_filtered_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ds = datasets.Dataset.from_dict({"image": [{"bytes": png_bytes(i), "path": None} for i in range(4)], "y": ["a", "b", "c", "b"]},
                                    features=datasets.Features({"image": datasets.Image(), "y": datasets.Value("string")}))
    ds.to_parquet(str(tmp_path / "d.parquet"))
    with caplog.at_level(logging.WARNING, logger="medlens.data"):
        t = read_dataset(hf_cfg(path=str(tmp_path / "d.parquet"), label_column="y", label_names=["c", "b"], cache_dir=str(tmp_path / "c")))
    assert t.label_space.names == ("c", "b") and t.label_space.task == "binary"
    assert t.class_index().tolist() == [1, 0, 1] and t.ids.tolist() == ["1", "2", "3"]  # row 0 ('a') is left out
    msgs = [r.getMessage() for r in caplog.records if "outside data.label_names" in r.getMessage()]
    assert len(msgs) == 1 and "1 rows" in msgs[0] and "{'a': 1}" in msgs[0] and "rows are dropped" in msgs[0]


def test_format_resolution_for_hub_names_and_missing_paths(tmp_path: Path) -> None:
    assert resolve_format("someone/chest-xrays") == "hub"  # a hub name for users who are online
    assert resolve_format(str(tmp_path), "parquet") == "parquet"
    with pytest.raises(FileNotFoundError, match="dataset not found"):
        resolve_format(str(tmp_path / "nope" / "x"))
