"""Core readers: folder, csv, medmnist (real file; offline; MD5), synthetic."""

from __future__ import annotations

import io
import logging
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens.config import config_from_dict
from medlens.data.labels import LabelError
from medlens.data.readers import list_readers, read_dataset
from medlens.data.readers import medmnist as mm


def data_cfg(**data):
    """A validated ``data`` section."""
    return config_from_dict({"data": data}).data


def png(path: Path, value: int = 128, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def test_core_kinds_are_registered() -> None:
    assert {"folder", "csv", "medmnist", "synthetic"} <= set(list_readers())


# ------------------------------------------------------------------ folder
def test_folder_class_folders(tmp_path: Path) -> None:
    for i in range(3):
        png(tmp_path / "normal" / f"n{i}.png")
    for i in range(2):
        png(tmp_path / "pneumonia" / f"p{i}.png")
    (tmp_path / "pneumonia" / "notes.txt").write_text("not an image")
    (tmp_path / "pneumonia" / "._p0.png").write_bytes(b"macOS resource fork, not an image")
    png(tmp_path / "pneumonia" / ".thumbs" / "p9.png")
    t = read_dataset(data_cfg(kind="folder", root=str(tmp_path)))
    assert t.label_space.names == ("normal", "pneumonia")
    assert t.label_space.task == "binary"
    assert len(t) == 5
    assert t.splits is None
    assert t.class_index().tolist() == [0, 0, 0, 1, 1]
    assert t[3].id == str(Path("pneumonia") / "p0.png")
    assert Path(t[3].image).is_file()


def test_folder_label_names_give_order_and_multiclass(tmp_path: Path) -> None:
    for c in ("a", "b", "c"):
        png(tmp_path / c / "x.png")
    t = read_dataset(data_cfg(kind="folder", root=str(tmp_path), label_names=["c", "b", "a"]))
    assert t.label_space.names == ("c", "b", "a") and t.label_space.task == "multiclass"
    assert t.class_index().tolist() == [2, 1, 0]  # folders read a, b, c


def test_folder_split_and_class_folders(tmp_path: Path) -> None:
    layout = {"train": 4, "valid": 2, "test": 1}
    for split, n in layout.items():
        for c in ("0_normal", "1_abnormal"):
            for i in range(n):
                png(tmp_path / split / c / f"{i}.png")
    t = read_dataset(data_cfg(kind="folder", root=str(tmp_path)))
    assert t.label_space.names == ("0_normal", "1_abnormal")
    assert sorted(set(t.splits.tolist())) == ["test", "train", "val"]  # "valid" normalised
    assert (t.splits == "train").sum() == 8 and (t.splits == "val").sum() == 4 and (t.splits == "test").sum() == 2


def test_folder_empty_class_is_one_line_error_naming_it(tmp_path: Path) -> None:
    png(tmp_path / "normal" / "a.png")
    (tmp_path / "pneumonia").mkdir()
    with pytest.raises(ValueError) as ei:
        read_dataset(data_cfg(kind="folder", root=str(tmp_path)))
    assert "'pneumonia'" in one_line(ei)


def test_max_samples_keeps_every_class_and_split(tmp_path: Path) -> None:
    """Folder rows are listed class by class: a subset must not be the first class only."""
    for split, n in (("train", 30), ("test", 10)):
        for c in ("a", "b"):
            for i in range(n):
                png(tmp_path / split / c / f"{i:02d}.png")
    t = read_dataset(data_cfg(kind="folder", root=str(tmp_path), max_samples=20))
    assert len(t) == 20
    assert (t.splits == "train").sum() == 15 and (t.splits == "test").sum() == 5
    for split in ("train", "test"):
        assert set(t.class_index()[t.splits == split].tolist()) == {0, 1}
    assert t.ids.tolist() == read_dataset(data_cfg(kind="folder", root=str(tmp_path), max_samples=20)).ids.tolist()


def test_folder_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="folder not found"):
        read_dataset(data_cfg(kind="folder", root=str(tmp_path / "nope")))


def test_folder_label_names_missing_class(tmp_path: Path) -> None:
    png(tmp_path / "a" / "x.png")
    png(tmp_path / "b" / "x.png")
    with pytest.raises(ValueError, match="'c'"):
        read_dataset(data_cfg(kind="folder", root=str(tmp_path), label_names=["a", "b", "c"]))


# ------------------------------------------------------------------ csv
def _images(root: Path, n: int) -> list[str]:
    return [png(root / "img" / f"{i}.png", value=i).relative_to(root).as_posix() for i in range(n)]


def test_csv_delimited_multilabel_with_no_finding(tmp_path: Path) -> None:
    names = _images(tmp_path, 5)
    rows = ["Effusion|Mass", "No Finding", "", "Mass", "Atelectasis | Effusion"]
    lines = ["path,labels,patient"] + [f"{n},{r},p{i // 2}" for i, (n, r) in enumerate(zip(names, rows, strict=True))]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    t = read_dataset(data_cfg(
        kind="csv", path=str(tmp_path / "labels.csv"), label_column="labels", no_finding="No Finding", group_column="patient",
    ))
    assert t.label_space.task == "multilabel"
    assert t.label_space.names == ("Atelectasis", "Effusion", "Mass")  # "No Finding" is not a label
    y = t.targets
    np.testing.assert_array_equal(y[0], [0, 1, 1])
    np.testing.assert_array_equal(y[1], [0, 0, 0])  # no finding: all negative
    assert np.isnan(y[2]).all()  # blank: unknown, never silently negative
    np.testing.assert_array_equal(y[4], [1, 1, 0])
    assert t.groups.tolist() == ["p0", "p0", "p1", "p1", "p2"]


def test_csv_no_finding_alone_still_means_multilabel(tmp_path: Path) -> None:
    """No row has two findings, but ``no_finding`` says the column is multi-label."""
    names = _images(tmp_path, 4)
    rows = ["Mass", "No Finding", "Effusion", "No Finding"]
    (tmp_path / "l.csv").write_text("path,labels\n" + "\n".join(f"{n},{r}" for n, r in zip(names, rows, strict=True)))
    t = read_dataset(data_cfg(kind="csv", path=str(tmp_path / "l.csv"), label_column="labels", no_finding="No Finding"))
    assert t.label_space.task == "multilabel"
    assert t.label_space.names == ("Effusion", "Mass")
    np.testing.assert_array_equal(t.targets[1], [0, 0])


def test_csv_single_label_column(tmp_path: Path) -> None:
    names = _images(tmp_path, 4)
    rows = ["benign", "malignant", "benign", ""]
    (tmp_path / "l.csv").write_text("path,dx\n" + "\n".join(f"{n},{r}" for n, r in zip(names, rows, strict=True)))
    t = read_dataset(data_cfg(kind="csv", path=str(tmp_path / "l.csv"), label_column="dx"))
    assert t.label_space.task == "binary" and t.label_space.names == ("benign", "malignant")
    assert t.class_index().tolist() == [0, 1, 0, -1]


def test_csv_one_column_per_label_blank_is_nan(tmp_path: Path) -> None:
    names = _images(tmp_path, 4)
    body = [f"{names[0]},1,0", f"{names[1]},0,", f"{names[2]},,1", f"{names[3]},-1,1.0"]
    (tmp_path / "l.csv").write_text("path,Effusion,Mass\n" + "\n".join(body) + "\n")
    t = read_dataset(data_cfg(kind="csv", path=str(tmp_path / "l.csv"), label_columns=["Effusion", "Mass"]))
    assert t.label_space.task == "multilabel"
    y = t.targets
    np.testing.assert_array_equal(y[0], [1, 0])
    assert y[1, 0] == 0 and np.isnan(y[1, 1])
    assert np.isnan(y[2, 0]) and y[2, 1] == 1
    assert np.isnan(y[3, 0]) and y[3, 1] == 1
    t2 = read_dataset(data_cfg(kind="csv", path=str(tmp_path / "l.csv"), label_columns=["Effusion", "Mass"], unknown_labels="negative"))
    assert not np.isnan(t2.targets).any()


def test_csv_one_column_per_class_for_a_single_label_task(tmp_path: Path) -> None:
    names = _images(tmp_path, 4)
    body = [f"{names[0]},1,0", f"{names[1]},,1", f"{names[2]},,", f"{names[3]},0,1"]
    (tmp_path / "l.csv").write_text("path,normal,pneumonia\n" + "\n".join(body) + "\n")
    cfg = dict(kind="csv", path=str(tmp_path / "l.csv"), label_columns=["normal", "pneumonia"], task="binary")
    t = read_dataset(data_cfg(**cfg))
    np.testing.assert_array_equal(t.targets[[0, 1, 3]], [[1, 0], [0, 1], [0, 1]])  # a blank beside a 1 is a 0
    assert np.isnan(t.targets[2]).all()
    assert t.class_index().tolist() == [0, 1, -1, 1]
    (tmp_path / "l.csv").write_text("path,normal,pneumonia\n" + "\n".join([*body, f"{names[0]},0,0"]) + "\n")
    with pytest.raises(LabelError, match="row 6 has no class set"):
        read_dataset(data_cfg(**cfg))
    (tmp_path / "l.csv").write_text("path,normal,pneumonia\n" + "\n".join([*body, f"{names[0]},1,1"]) + "\n")
    with pytest.raises(LabelError, match="row 6 has more than one class"):
        read_dataset(data_cfg(**cfg))


def test_csv_bad_value_in_label_column_names_row(tmp_path: Path) -> None:
    names = _images(tmp_path, 2)
    (tmp_path / "l.csv").write_text(f"path,Effusion\n{names[0]},1\n{names[1]},maybe\n")
    with pytest.raises(LabelError) as ei:
        read_dataset(data_cfg(kind="csv", path=str(tmp_path / "l.csv"), label_columns=["Effusion"]))
    msg = one_line(ei)
    assert "row 3" in msg and "'maybe'" in msg and "l.csv" in msg


@pytest.mark.parametrize("multi", [False, True])
def test_csv_label_outside_label_names_is_filtered_with_one_warning_naming_file_row_and_value(
    tmp_path: Path, multi: bool, caplog: pytest.LogCaptureFixture
) -> None:
    names = _images(tmp_path, 4)
    rows = ["normal", "pneumonia", "pnuemonia", "normal"] if not multi else ["Mass", "Effusion|Mass", "No Finding", "Mass|Efusion"]
    (tmp_path / "l.csv").write_text("path,label\n" + "\n".join(f"{n},{r}" for n, r in zip(names, rows, strict=True)) + "\n")
    label_names = ["normal", "pneumonia"] if not multi else ["Effusion", "Mass"]
    extra = {"no_finding": "No Finding"} if multi else {}
    with caplog.at_level(logging.WARNING, logger="medlens.data"):
        t = read_dataset(data_cfg(kind="csv", path=str(tmp_path / "l.csv"), label_column="label", label_names=label_names, **extra))
    msgs = [r.getMessage() for r in caplog.records if "outside data.label_names" in r.getMessage()]
    assert len(msgs) == 1, msgs
    bad_row = 4 if not multi else 5  # spreadsheet numbering: the header is row 1
    assert str(tmp_path / "l.csv") in msgs[0] and f"row {bad_row}" in msgs[0]
    assert ("{'pnuemonia': 1}" if not multi else "{'Efusion': 1}") in msgs[0]
    if not multi:  # the row of an unrequested class is left out
        assert len(t) == 3 and t.class_index().tolist() == [0, 1, 0] and "rows are dropped" in msgs[0]
    else:  # the row keeps its requested labels
        assert len(t) == 4 and t.targets.tolist() == [[0, 1], [1, 1], [0, 0], [0, 1]] and "rows, which are kept" in msgs[0]


def test_csv_missing_image_names_row_and_path_or_is_skipped(tmp_path: Path) -> None:
    names = _images(tmp_path, 3)
    names.insert(1, "img/gone.png")
    rows = ["a", "b", "a", "b"]
    (tmp_path / "l.csv").write_text("path,label\n" + "\n".join(f"{n},{r}" for n, r in zip(names, rows, strict=True)) + "\n")
    cfg = dict(kind="csv", path=str(tmp_path / "l.csv"), label_column="label")
    with pytest.raises(FileNotFoundError) as ei:
        read_dataset(data_cfg(**cfg))
    msg = one_line(ei)
    assert "row 3" in msg and "gone.png" in msg
    t = read_dataset(data_cfg(**cfg, on_bad_image="skip"))
    assert len(t) == 3
    assert "gone.png" not in " ".join(t.images.tolist())
    assert t.class_index().tolist() == [0, 0, 1]


def test_csv_missing_column_and_file(tmp_path: Path) -> None:
    (tmp_path / "l.csv").write_text("file,label\na.png,x\n")
    with pytest.raises(KeyError, match="'path'"):
        read_dataset(data_cfg(kind="csv", path=str(tmp_path / "l.csv"), label_column="label"))
    with pytest.raises(FileNotFoundError, match="CSV file not found"):
        read_dataset(data_cfg(kind="csv", path=str(tmp_path / "none.csv"), label_column="label"))


def test_csv_split_column_and_image_root(tmp_path: Path) -> None:
    names = [png(tmp_path / "images" / f"{i}.png").name for i in range(4)]
    (tmp_path / "meta").mkdir()
    rows = [("a", "train"), ("b", "Validation"), ("a", "test"), ("b", "")]
    (tmp_path / "meta" / "l.csv").write_text(
        "path,label,split\n" + "\n".join(f"{n},{lab},{sp}" for n, (lab, sp) in zip(names, rows, strict=True)) + "\n"
    )
    t = read_dataset(data_cfg(
        kind="csv", path=str(tmp_path / "meta" / "l.csv"), image_root=str(tmp_path / "images"), label_column="label",
        split_column="split",
    ))
    assert t.splits.tolist() == ["train", "val", "test", None]
    assert t.ids.tolist() == names


# ------------------------------------------------------------------ medmnist
def test_medmnist_real_file(pneumonia_npz: Path) -> None:
    t = read_dataset(data_cfg(kind="medmnist", path=str(pneumonia_npz), download=False))
    assert t.label_space.names == ("normal", "pneumonia")
    assert t.label_space.task == "binary"
    assert t.in_memory and t.images.dtype == np.uint8 and t.images.shape[1:] == (28, 28)
    sizes = {s: int((t.splits == s).sum()) for s in ("train", "val", "test")}
    assert sizes == {"train": 4708, "val": 524, "test": 624}
    assert not np.isnan(t.targets).any()
    assert set(t.class_index().tolist()) == {0, 1}
    with np.load(pneumonia_npz) as z:  # labels are taken over unchanged
        np.testing.assert_array_equal(t.class_index()[-624:], z["test_labels"][:, 0])


def test_medmnist_found_by_flag_in_data_dir(pneumonia_npz: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDLENS_DATA_DIR", str(pneumonia_npz.parent))
    t = read_dataset(data_cfg(kind="medmnist", flag="pneumoniamnist", download=False, max_samples=100))
    assert len(t) == 100
    assert {"train", "val", "test"} == set(t.splits.tolist())


def _no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def refuse(url, *a, **k):
        calls.append(str(url))
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return calls


def test_medmnist_offline_without_file_is_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _no_network(monkeypatch)
    monkeypatch.setenv("MEDLENS_DATA_DIR", str(tmp_path))
    with pytest.raises(mm.DatasetNotAvailable) as ei:
        read_dataset(data_cfg(kind="medmnist", flag="pneumoniamnist"))
    msg = one_line(ei)
    assert "pneumoniamnist" in msg and str(tmp_path) in msg and "Offline" in msg
    assert calls and "zenodo" in calls[0]
    assert list(tmp_path.iterdir()) == []  # no partial file left behind
    assert isinstance(ei.value, FileNotFoundError)  # the CLI reports it as a one-line user error
    # a configured path that does not exist is named too
    with pytest.raises(mm.DatasetNotAvailable) as ei:
        read_dataset(data_cfg(kind="medmnist", flag="pneumoniamnist", path=str(tmp_path / "mine.npz")))
    assert "mine.npz" in one_line(ei) and "Offline" in str(ei.value)


def test_medmnist_download_off_without_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _no_network(monkeypatch)
    with pytest.raises(mm.DatasetNotAvailable, match="download is off"):
        read_dataset(data_cfg(kind="medmnist", flag="breastmnist", root=str(tmp_path), download=False))
    with pytest.raises(mm.DatasetNotAvailable, match="not found"):
        read_dataset(data_cfg(kind="medmnist", path=str(tmp_path / "x.npz"), download=False))
    assert calls == []


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def test_medmnist_download_md5_mismatch_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: _FakeResponse(b"not the real file" * 100))
    with pytest.raises(mm.DatasetNotAvailable) as ei:
        mm.download_medmnist("pneumoniamnist", 28, tmp_path)
    assert "MD5 mismatch" in one_line(ei)
    assert list(tmp_path.iterdir()) == []


def test_medmnist_download_md5_match_is_renamed_into_place(pneumonia_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = pneumonia_npz.read_bytes()
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: _FakeResponse(payload))
    dest = mm.download_medmnist("pneumoniamnist", 28, tmp_path / "cache")
    assert dest == tmp_path / "cache" / "pneumoniamnist.npz"
    assert [p.name for p in dest.parent.iterdir()] == ["pneumoniamnist.npz"]
    t = read_dataset(data_cfg(kind="medmnist", flag="pneumoniamnist", root=str(tmp_path / "cache")))
    assert len(t) == 4708 + 524 + 624


def test_medmnist_not_an_npz(tmp_path: Path) -> None:
    bad = tmp_path / "pneumoniamnist.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable MedMNIST"):
        read_dataset(data_cfg(kind="medmnist", path=str(bad)))


# ------------------------------------------------------------------ synthetic
@pytest.mark.parametrize(("task", "k"), [("binary", 2), ("multiclass", 3), ("multilabel", 3)])
def test_synthetic(task: str, k: int) -> None:
    cfg = data_cfg(kind="synthetic", num_samples=60, num_labels=k, task=task, image_size=32, seed=1)
    t = read_dataset(cfg)
    assert len(t) == 60 and t.images.shape == (60, 32, 32) and t.label_space.task == task
    assert t.label_space.num_labels == k
    again = read_dataset(cfg)
    np.testing.assert_array_equal(t.images, again.images)
    from medlens.data.splits import find_group_leaks, split_indices

    assert find_group_leaks(t, split_indices(t)) == {}
