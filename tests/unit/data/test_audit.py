"""Split leakage audit, and training's refusal of leaking splits unless allowed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medlens.cli import app
from medlens.config import config_from_dict
from medlens.data.audit import audit_config, audit_splits
from medlens.data.labels import LabelSpace
from medlens.data.samples import SampleTable
from medlens.data.splits import LeakageError, split_indices
from medlens.training import prepare_data


def leaky_table() -> SampleTable:
    groups = ["p1", "p1", "p2", "p2", "p3", "p4", "p4", "p5"]
    splits = ["train", "val", "train", "test", "val", "train", "train", "test"]
    t = np.eye(2, dtype=np.float32)[[0, 1, 0, 1, 0, 1, 0, 1]]
    return SampleTable(LabelSpace(("a", "b"), "binary"), [f"i{i}" for i in range(8)], np.zeros((8, 4, 4), np.uint8), t, groups, splits, source="leaky")


def test_audit_lists_every_leaking_group_with_image_counts() -> None:
    table = leaky_table()
    r = audit_splits(table, split_indices(table, allow_group_leakage=True))
    assert not r.ok
    assert r.leaks == {"p1": ["train", "val"], "p2": ["train", "test"]}
    assert r.pair_counts == {"train/val": 1, "train/test": 1, "val/test": 0}
    assert r.images["p1"] == {"train": 1, "val": 1}
    assert r.sizes == {"train": 4, "val": 2, "test": 2}
    assert r.groups_per_split == {"train": 3, "val": 2, "test": 2}
    text = r.to_text()
    assert "2 groups appear in more than one split" in text and "p2: train (1 images), test (1 images)" in text


def test_group_split_has_no_leaks() -> None:
    table = leaky_table()
    r = audit_splits(table, split_indices(table, method="group", val_fraction=0.25, test_fraction=0.25, seed=1))
    assert r.ok and "no group appears" in r.to_text()


def test_audit_needs_groups() -> None:
    t = leaky_table()
    no_groups = SampleTable(t.label_space, t.ids, t.images, t.targets, None, t.splits, source="x")
    with pytest.raises(ValueError, match="no group ids"):
        audit_splits(no_groups, {"train": np.arange(4), "val": np.arange(4, 8)})


def test_training_refuses_leaking_splits_unless_allowed() -> None:
    table = leaky_table()
    cfg = config_from_dict({"data": {"kind": "synthetic"}})
    with pytest.raises(LeakageError, match="2 groups appear in more than one predefined split"):
        prepare_data(cfg, table)
    cfg_ok = config_from_dict({"data": {"kind": "synthetic", "split": {"allow_group_leakage": True}}})
    _, splits = prepare_data(cfg_ok, table)
    assert splits.sizes() == {"train": 4, "val": 2, "test": 2}
    # re-splitting by group removes the leak without the flag
    cfg_group = config_from_dict({"data": {"kind": "synthetic", "split": {"method": "group", "val_fraction": 0.25, "test_fraction": 0.25}}})
    prepare_data(cfg_group, table)


def _nih_yaml(tmp_path: Path, nih_dir: Path, **split) -> Path:
    lines = [
        "data:", "  kind: nih", f"  path: {nih_dir / 'Data_Entry_2017_v2020.csv.gz'}", f"  image_root: {nih_dir}",
    ]
    if split:
        lines.append("  split:")
        lines += [f"    {k}: {v}" for k, v in split.items()]
    p = tmp_path / "nih.yaml"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_cli_audit_finds_the_shared_patients_of_nih1000(tmp_path: Path, nih_dir: Path) -> None:
    cfg = _nih_yaml(tmp_path, nih_dir)
    r = CliRunner().invoke(app, ["split", "audit", str(cfg), "--json", str(tmp_path / "audit.json")])
    assert r.exit_code == 1, r.output  # leaks found
    rep = json.loads((tmp_path / "audit.json").read_text())
    # SOURCE.md: the provided folders share 8 patients between train and test, 15 between train and valid
    assert rep["pair_counts"]["train/test"] == 8
    assert rep["pair_counts"]["train/val"] == 15
    assert rep["num_leaking_groups"] == len(rep["leaks"]) == 30
    assert "train/test: 8" in r.output


def test_audit_after_group_resplit_is_clean(tmp_path: Path, nih_dir: Path) -> None:
    from medlens.config import load_config

    cfg = load_config(_nih_yaml(tmp_path, nih_dir, method="group", seed=3))
    r = audit_config(cfg)
    assert r.ok and sum(r.sizes.values()) == 1000
    r = CliRunner().invoke(app, ["split", "audit", str(tmp_path / "nih.yaml")])
    assert r.exit_code == 0, r.output


def test_cli_audit_bad_config_is_one_line_error(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["split", "audit", str(tmp_path / "missing.yaml")])
    assert r.exit_code == 2 and "config file not found" in r.output


# ------------------------------------------------------------------------------------------ duplicates
def _smooth(seed: int, size: int = 96) -> np.ndarray:
    """A smooth grey image (upsampled noise), distinct for each seed, like radiographs are distinct."""
    import cv2

    base = np.random.default_rng(seed).integers(0, 255, (8, 8)).astype(np.uint8)
    return cv2.resize(base, (size, size), interpolation=cv2.INTER_CUBIC)


def _file_table(tmp: Path) -> tuple[SampleTable, dict[str, np.ndarray]]:
    """Ten distinct images in train/val/test, plus: a byte copy in train (within a split), a byte copy of a train image
    in test, and a JPEG re-encoding (quality 60) of a train image in val."""
    import shutil

    from PIL import Image

    paths, splits = [], []
    for i in range(10):
        p = tmp / f"img{i}.png"
        Image.fromarray(_smooth(i)).save(p)
        paths.append(p)
        splits.append("train" if i < 6 else "val" if i < 8 else "test")
    shutil.copy(paths[0], tmp / "copy_of_0.png")
    shutil.copy(paths[1], tmp / "copy_of_1.png")
    Image.fromarray(_smooth(2)).save(tmp / "reencoded_2.jpg", quality=60)
    paths += [tmp / "copy_of_0.png", tmp / "copy_of_1.png", tmp / "reencoded_2.jpg"]
    splits += ["train", "test", "val"]
    n = len(paths)
    t = np.eye(2, dtype=np.float32)[[i % 2 for i in range(n)]]
    table = SampleTable(LabelSpace(("a", "b"), "binary"), [p.name for p in paths], [str(p) for p in paths], t,
                        [f"p{i}" for i in range(n)], splits, source=str(tmp))
    sp = np.asarray(splits)
    return table, {k: np.where(sp == k)[0] for k in ("train", "val", "test")}


def test_exact_and_near_duplicates_across_splits_fail_the_audit(tmp_path: Path) -> None:
    table, parts = _file_table(tmp_path)
    r = audit_splits(table, parts, duplicates=True)
    d = r.duplicates
    assert not r.leaks and not r.ok  # no patient leak, but duplicated images across splits
    assert (d.exact_sets, d.exact_copies) == (2, 2)
    assert d.exact_pairs == {"train/train": 1, "train/test": 1} and d.exact_across == 1
    assert d.near_pairs == {"train/val": 1} and d.near_across == 1
    assert d.exact_examples[0] == [["train", "img1.png"], ["test", "copy_of_1.png"]]  # cross-split sets first
    bits, sa, ia, sb, ib = d.near_examples[0]
    assert {ia, ib} == {"img2.png", "reencoded_2.jpg"} and 0 < bits <= d.near_bits
    text = r.to_text()
    assert "exact duplicates (identical bytes: SHA-256 of the file)" in text and "1 pairs across splits -- FAIL" in text
    assert "img2.png (train) ~ reencoded_2.jpg (val)" in text and "Hamming distance <= 24 bits" in text
    js = json.loads(json.dumps(r.as_dict()))
    assert js["ok"] is False and js["duplicates"]["exact_across_splits"] == 1 and js["duplicates"]["near_across_splits"] == 1
    # duplicates inside one split only: the audit passes (they are reported, not failed)
    only_train = {"train": parts["train"], "val": np.asarray([6, 7]), "test": np.asarray([8, 9])}
    r2 = audit_splits(table, only_train, duplicates=True)
    assert r2.ok and r2.duplicates.exact_pairs == {"train/train": 1} and r2.duplicates.near_pairs == {}


def test_a_stricter_threshold_drops_the_re_encoded_copy(tmp_path: Path) -> None:
    table, parts = _file_table(tmp_path)
    d = audit_splits(table, parts, duplicates=True, near_bits=0).duplicates
    assert d.near_pairs == {} and d.near_bits == 0 and d.exact_across == 1


def test_in_memory_images_and_tables_without_groups(tmp_path: Path) -> None:
    imgs = np.stack([_smooth(i, 32) for i in range(6)] + [_smooth(0, 32)])
    t = np.eye(2, dtype=np.float32)[[0, 1, 0, 1, 0, 1, 0]]
    table = SampleTable(LabelSpace(("a", "b"), "binary"), [f"i{i}" for i in range(7)], imgs, t, None, None, source="mem")
    parts = {"train": np.arange(5), "test": np.asarray([5, 6])}
    r = audit_splits(table, parts, duplicates=True)
    assert not r.groups_audited and not r.ok and r.duplicates.exact_pairs == {"train/test": 1}
    assert "pixel array" in r.duplicates.exact_method and "patient leakage not audited" in r.to_text()


def test_unreadable_files_are_counted_not_fatal(tmp_path: Path) -> None:
    table, parts = _file_table(tmp_path)
    (tmp_path / "img9.png").write_bytes(b"not an image")
    d = audit_splits(table, parts, duplicates=True).duplicates
    assert d.num_unreadable == 1 and d.unreadable == ["img9.png"]


def test_perceptual_hash_moves_little_for_the_same_image_and_much_for_another() -> None:
    import cv2

    from medlens.data.audit import NEAR_DUPLICATE_BITS, PHASH_BITS, perceptual_hash

    def bits(a: np.ndarray, b: np.ndarray) -> int:
        return int(np.bitwise_count(perceptual_hash(a) ^ perceptual_hash(b)).sum())

    img = _smooth(5, 224)
    jpeg = cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 50])[1], cv2.IMREAD_GRAYSCALE)
    small = cv2.resize(img, (150, 150), interpolation=cv2.INTER_AREA)
    bright = np.clip(img.astype(int) + 15, 0, 255).astype(np.uint8)
    rgb = np.repeat(img[:, :, None], 3, axis=2)
    assert perceptual_hash(img).shape == (4,) and PHASH_BITS == 255
    assert max(bits(img, jpeg), bits(img, small), bits(img, bright), bits(img, rgb)) <= NEAR_DUPLICATE_BITS // 2
    others = [bits(img, _smooth(s, 224)) for s in range(6, 16)]
    assert min(others) > 2 * NEAR_DUPLICATE_BITS


def test_cli_duplicate_options_act(tmp_path: Path) -> None:
    """`medlens split audit --near-bits -1` finds only byte copies; `--no-duplicates` reads no image at all."""
    import csv

    table, parts = _file_table(tmp_path)
    names = {i: s for s, idx in parts.items() for i in idx}
    with open(tmp_path / "rows.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "split", "patient"])
        for i, p in enumerate(table.images):
            w.writerow([Path(p).name, "ab"[i % 2], names[i], f"p{i}"])
    (tmp_path / "c.yaml").write_text(
        f"data: {{kind: csv, path: {tmp_path / 'rows.csv'}, image_root: {tmp_path}, image_column: image, label_column: label,\n"
        f"       group_column: patient, split_column: split, split: {{method: predefined}}}}\n")
    runner = CliRunner()
    full = runner.invoke(app, ["split", "audit", str(tmp_path / "c.yaml"), "--json", str(tmp_path / "a.json")])
    assert full.exit_code == 1, full.output
    d = json.loads((tmp_path / "a.json").read_text())["duplicates"]
    assert d["exact_across_splits"] == 1 and d["near_across_splits"] == 1
    exact_only = runner.invoke(app, ["split", "audit", str(tmp_path / "c.yaml"), "--near-bits", "-1", "--json", str(tmp_path / "b.json")])
    d = json.loads((tmp_path / "b.json").read_text())["duplicates"]
    assert exact_only.exit_code == 1 and d["exact_across_splits"] == 1 and d["near_across_splits"] == 0
    none = runner.invoke(app, ["split", "audit", str(tmp_path / "c.yaml"), "--no-duplicates", "--json", str(tmp_path / "c.json")])
    assert none.exit_code == 0, none.output
    assert json.loads((tmp_path / "c.json").read_text())["duplicates"] is None and "exact duplicates" not in none.output
