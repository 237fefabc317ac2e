"""``kind: nih``: Data_Entry tables, images present, folder splits, and label harmonisation across sources."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens.config import config_from_dict
from medlens.data.labels import LabelError
from medlens.data.readers import read_dataset
from medlens.data.readers.nih import NIH_LABELS, harmonize_targets

HEADER = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"


def nih_cfg(**kw):
    return config_from_dict({"data": {"kind": "nih", **kw}}).data


def png(p: Path) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), 90, np.uint8)).save(p)


@pytest.fixture
def mini(tmp_path: Path) -> Path:
    """Five Data_Entry rows; four images on disk below train/test folders; one row without an image."""
    rows = [
        ("00000001_000.png", "Cardiomegaly", "1", "057Y", "M", "PA", "train"),
        ("00000001_001.png", "Cardiomegaly|Emphysema", "1", "58", "M", "PA", "train"),
        ("00000002_000.png", "No Finding", "2", "81", "F", "AP", "test"),
        ("00000003_000.png", "Effusion|Mass", "3", "40", "F", "PA", "train"),
        ("00000004_000.png", "Hernia", "4", "70", "M", "PA", None),  # image not present
    ]
    lines = [HEADER]
    for name, labs, pid, age, sex, view, split in rows:
        lines.append(f"{name},{labs},0,{pid},{age},{sex},{view},2500,2048,0.14,0.14\n")
        if split:
            png(tmp_path / "imgs" / split / ("0_normal" if labs == "No Finding" else "1_abnormal") / name)
    with gzip.open(tmp_path / "Data_Entry_2017.csv.gz", "wt") as f:
        f.write("".join(lines))
    return tmp_path


def test_reads_labels_groups_metadata_and_folder_splits(mini: Path) -> None:
    t = read_dataset(nih_cfg(path=str(mini / "Data_Entry_2017.csv.gz"), image_root=str(mini / "imgs")))
    # the NIH labels, less those no present image is positive for (dropped, as for every source)
    assert t.label_space.names == ("Cardiomegaly", "Effusion", "Emphysema", "Mass") and t.label_space.task == "multilabel"
    assert set(t.label_space.names) < set(NIH_LABELS)
    assert t.ids.tolist() == ["00000001_000.png", "00000001_001.png", "00000002_000.png", "00000003_000.png"]
    n = {x: i for i, x in enumerate(t.label_space.names)}
    assert t.targets[1, n["Cardiomegaly"]] == 1 and t.targets[1, n["Emphysema"]] == 1 and t.targets[1].sum() == 2
    assert t.targets[2].tolist() == [0.0] * 4  # No Finding: every finding negative
    assert t.groups.tolist() == ["1", "1", "2", "3"]
    assert t.splits.tolist() == ["train", "train", "test", "train"]
    assert t.metadata["age"].tolist() == [57, 58, 81, 40]  # "057Y" style ages parsed
    assert t.metadata["sex"].tolist() == ["M", "M", "F", "F"] and t.metadata["view"].tolist()[2] == "AP"
    assert Path(t.images[2]).is_file() and "test/0_normal" in t.images[2]


def test_unknown_label_names_file_and_row(mini: Path) -> None:
    p = mini / "Data_Entry_2017.csv"
    p.write_text(HEADER + "00000001_000.png,Cardiomegaly|Pnuemonia,0,1,57,M,PA,1,1,1,1\n")
    with pytest.raises(LabelError, match=r"Data_Entry_2017.csv: row 2: unknown label 'Pnuemonia'"):
        read_dataset(nih_cfg(path=str(p), image_root=str(mini / "imgs")))


def test_blank_finding_labels_are_unknown(mini: Path) -> None:
    p = mini / "Data_Entry_2017.csv"
    p.write_text(HEADER + "00000001_000.png,,0,1,57,M,PA,1,1,1,1\n00000002_000.png,Mass,0,2,5,F,PA,1,1,1,1\n")
    t = read_dataset(nih_cfg(path=str(p), image_root=str(mini / "imgs")))
    assert np.isnan(t.targets[0]).all()


def test_listing_restricts_images_and_missing_listed_image_is_error_or_skip(mini: Path, caplog) -> None:
    listing = mini / "test_list.txt"
    listing.write_text("00000001_000.png\n00000004_000.png\n")
    kw = {"path": str(mini / "Data_Entry_2017.csv.gz"), "image_root": str(mini / "imgs"), "images": str(listing)}
    with pytest.raises(FileNotFoundError, match="00000004_000.png"):
        read_dataset(nih_cfg(**kw))
    with caplog.at_level(logging.WARNING):
        t = read_dataset(nih_cfg(**kw, on_bad_image="skip"))
    assert t.ids.tolist() == ["00000001_000.png"] and "00000004_000.png" in caplog.text


def test_not_a_data_entry_file(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(KeyError, match="'Image Index'.*Data_Entry"):
        read_dataset(nih_cfg(path=str(tmp_path / "x.csv"), image_root=str(tmp_path)))


def test_no_image_found_is_an_error(mini: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="none of its 5 images were found"):
        read_dataset(nih_cfg(path=str(mini / "Data_Entry_2017.csv.gz"), image_root=str(tmp_path / "empty")))


# ------------------------------------------------------------------ harmonisation
def test_harmonize_targets_or_and_unknown() -> None:
    src = np.array([[1, 0, 0], [0, 0, 1], [0, np.nan, 0], [0, 0, 0]], dtype=np.float32)
    out = harmonize_targets(src, ["Effusion", "Pleural Effusion", "Mass"], ["Effusion", "Mass", "Pneumonia"],
                            {"Pleural Effusion": "Effusion"})
    # Effusion = Effusion OR Pleural Effusion; unknown only when not positive and a part is unknown
    assert out[:, 0].tolist()[:2] == [1.0, 0.0] and np.isnan(out[2, 0]) and out[3, 0] == 0.0
    assert out[:, 1].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert np.isnan(out[:, 2]).all()  # the source has no Pneumonia label: unknown, never negative


def test_rename_and_drop_with_harmonize(mini: Path) -> None:
    entry = gzip.open(mini / "Data_Entry_2017.csv.gz", "rt").read().replace("Effusion|Mass", "Effusion|Mass|Pleural_Thickening")
    (mini / "Data_Entry_2017.csv").write_text(entry)
    t = read_dataset(nih_cfg(path=str(mini / "Data_Entry_2017.csv"), image_root=str(mini / "imgs"),
                             harmonize={"Pleural_Thickening": "Pleural thickening", "Hernia": "", "Mass": "Lesion", "Nodule": "Lesion"}))
    names = t.label_space.names
    assert "Pleural thickening" in names and "Hernia" not in names and "Mass" not in names
    assert t.targets[3, names.index("Lesion")] == 1.0


def test_label_names_select_a_subset(mini: Path) -> None:
    t = read_dataset(nih_cfg(path=str(mini / "Data_Entry_2017.csv.gz"), image_root=str(mini / "imgs"),
                             label_names=["Effusion", "Cardiomegaly"]))
    assert t.label_space.names == ("Effusion", "Cardiomegaly")
    assert t.targets.tolist() == [[0, 1], [0, 1], [0, 0], [1, 0]]
    with pytest.raises(LabelError, match="not annotated by any source"):
        read_dataset(nih_cfg(path=str(mini / "Data_Entry_2017.csv.gz"), image_root=str(mini / "imgs"), label_names=["Covid"]))


def test_two_sources_merge_with_unknown_for_missing_labels(mini: Path) -> None:
    # a second source: a CSV annotating only "Pleural Effusion" and "Pneumothorax", patients numbered like NIH
    other = mini / "other"
    for i in range(3):
        png(other / f"o{i}.png")
    (other / "labels.csv").write_text("path,Pleural Effusion,Pneumothorax,pid\no0.png,1,0,1\no1.png,0,1,2\no2.png,0,,3\n")
    t = read_dataset(nih_cfg(
        path=str(mini / "Data_Entry_2017.csv.gz"), image_root=str(mini / "imgs"),
        label_names=["Effusion", "Pneumothorax", "Cardiomegaly"],
        extra_sources=[{"name": "chex", "kind": "csv", "path": str(other / "labels.csv"), "label_columns": ["Pleural Effusion", "Pneumothorax"],
                        "group_column": "pid", "harmonize": {"Pleural Effusion": "Effusion"}}],
    ))
    assert len(t) == 7
    assert t.ids.tolist()[:1] == ["nih:00000001_000.png"] and t.ids.tolist()[4:] == ["chex:o0.png", "chex:o1.png", "chex:o2.png"]
    # patients of two sources never collide
    assert t.groups.tolist()[0] == "nih:1" and t.groups.tolist()[4] == "chex:1"
    assert t.metadata["source"].tolist() == ["nih"] * 4 + ["chex"] * 3
    chex = t.targets[4:]
    assert chex[:, 0].tolist() == [1, 0, 0] and chex[:2, 1].tolist() == [0, 1] and np.isnan(chex[2, 1])
    assert np.isnan(chex[:, 2]).all()  # the CSV has no Cardiomegaly: unknown, never negative
    nih = t.targets[:4]
    assert nih[:, 2].tolist() == [1, 1, 0, 0] and not np.isnan(nih).any()


def test_extra_source_relative_paths_resolve_against_the_yaml(mini: Path) -> None:
    from medlens.config import load_config

    (mini / "cfg.yaml").write_text(
        "data:\n  kind: nih\n  path: Data_Entry_2017.csv.gz\n  image_root: imgs\n"
        "  extra_sources:\n    - {name: second, path: Data_Entry_2017.csv.gz, image_root: imgs}\n"
    )
    cfg = load_config(mini / "cfg.yaml")
    assert cfg.data.extra_sources[0]["path"] == str((mini / "Data_Entry_2017.csv.gz").resolve())
    t = read_dataset(cfg.data)
    assert len(t) == 8 and t.ids.tolist()[4] == "second:00000001_000.png"


# ------------------------------------------------------------------ the real NIH1000 set
def test_real_nih1000(nih_dir: Path) -> None:
    t = read_dataset(nih_cfg(path=str(nih_dir / "Data_Entry_2017_v2020.csv.gz"), image_root=str(nih_dir)))
    assert len(t) == 1000
    assert {s: int((t.splits == s).sum()) for s in ("train", "val", "test")} == {"train": 600, "val": 200, "test": 200}
    counts = t.label_counts()
    assert counts["Effusion"]["positive"] == 102 + 39 + 29  # SOURCE.md label statistics
    assert counts["Hernia"]["positive"] == 9
    train = t.subset(np.where(t.splits == "train")[0])
    assert len(set(train.groups.tolist())) == 165
    assert not np.isnan(t.targets).any()
