"""data.group_pattern: folder sources take patient ids from file names, so validation is carved from train by patient."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens.config import ConfigError, config_from_dict
from medlens.data.readers import read_dataset
from medlens.data.readers.folder import groups_from_paths
from medlens.data.splits import find_group_leaks
from medlens.training import prepare_data

KERMANY = r"/((?:NORMAL2-)?IM-\d+|person\d+)[-_]"


def _kermany_like(root: Path, patients: int = 40, per_patient: int = 4) -> Path:
    """train/ and test/ folders of NORMAL and PNEUMONIA images named as in the Kermany set, several per patient."""
    rng = np.random.default_rng(0)
    for split, n in (("train", patients), ("test", 6)):
        for p in range(n):
            pneu = p % 2 == 0
            d = root / split / ("PNEUMONIA" if pneu else "NORMAL")
            d.mkdir(parents=True, exist_ok=True)
            for k in range(per_patient):
                if pneu:
                    name = f"person{p + 1000 * (split == 'test')}_{'virus' if k % 2 else 'bacteria'}_{100 * p + k}.jpeg"
                else:
                    q = p + 1000 * (split == "test")  # the test folder's patients are others
                    name = f"NORMAL2-IM-{q:04d}-{k + 1:04d}.jpeg" if p % 4 == 1 else f"IM-{q:04d}-{k + 1:04d}.jpeg"
                Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(d / name)
    return root


def _cfg(root: Path, **data):
    return config_from_dict({"data": {"kind": "folder", "root": str(root), "image_size": 16, "channels": 1, **data}})


def test_groups_from_kermany_file_names(tmp_path: Path) -> None:
    paths = ["train/PNEUMONIA/person12_virus_40.jpeg", "train/PNEUMONIA/person12_bacteria_41.jpeg",
             "train/NORMAL/IM-0115-0001.jpeg", "train/NORMAL/NORMAL2-IM-0587-0001-0002.jpeg", "test/NORMAL/IM-0001-0001.jpeg"]
    assert groups_from_paths(paths, KERMANY) == ["person12", "person12", "IM-0115", "NORMAL2-IM-0587", "IM-0001"]
    assert groups_from_paths(paths[:2], r"(person\d+)_") == ["person12", "person12"]  # the short form for one class


def test_the_reader_sets_one_group_per_patient(tmp_path: Path) -> None:
    table = read_dataset(_cfg(_kermany_like(tmp_path), group_pattern=KERMANY).data)
    assert table.groups is not None and len(table) == 4 * 46
    by_group: dict[str, set[str]] = {}
    for g, i in zip(table.groups, table.ids, strict=True):
        by_group.setdefault(g, set()).add(i)
    assert all(len(v) == 4 for v in by_group.values())  # every patient's four images, nothing else
    assert "person0" in by_group and "NORMAL2-IM-0001" in by_group and "IM-0003" in by_group


def test_validation_is_carved_from_train_by_patient(tmp_path: Path) -> None:
    root = _kermany_like(tmp_path)
    split = {"val_fraction": 0.25, "seed": 3}
    table, s = prepare_data(_cfg(root, group_pattern=KERMANY, split=split))
    assert s.method == "predefined" and len(s.val) > 0 and len(s.test) == 24
    assert not find_group_leaks(table, s)  # no patient in both train and val (nor test)
    assert len(s.val) % 4 == 0  # whole patients
    # without data.group_pattern every image is its own group: the same carve splits patients apart
    table2, s2 = prepare_data(_cfg(root, split=split))
    assert table2.groups is None
    patient = {i: groups_from_paths([i], KERMANY)[0] for i in table2.ids}
    val_p = {patient[table2.ids[r]] for r in s2.val}
    train_p = {patient[table2.ids[r]] for r in s2.train}
    assert val_p & train_p


def test_a_pattern_that_matches_no_file_names_the_first(tmp_path: Path) -> None:
    root = _kermany_like(tmp_path)
    with pytest.raises(ValueError, match=r"data.group_pattern '\(patient\\d\+\)' matches none of the 184 files, "
                                         r"e\.g\. test/NORMAL/IM-1003-0001\.jpeg"):
        read_dataset(_cfg(root, group_pattern=r"(patient\d+)").data)
    with pytest.raises(ValueError, match=r"does not match 92 of the 184 files, e\.g\. test/NORMAL/IM-1003-0001\.jpeg"):
        read_dataset(_cfg(root, group_pattern=r"(person\d+)_").data)  # the NORMAL files have no person id


@pytest.mark.parametrize("pattern", [r"person\d+", r"(person)(\d+)", r"((a)|b)"])
def test_a_pattern_without_exactly_one_group_is_refused(tmp_path: Path, pattern: str) -> None:
    with pytest.raises(ConfigError, match="group_pattern.*exactly one capturing group"):
        _cfg(tmp_path, group_pattern=pattern)


def test_an_invalid_regex_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="group_pattern.*not a valid regular expression"):
        _cfg(tmp_path, group_pattern="(person")
