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
