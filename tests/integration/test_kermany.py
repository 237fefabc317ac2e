"""The Kermany chest X-rays at 224 px (../shared/data/kermany_chestxray_224): patient ids from file names, validation
carved by patient, the audit's duplicates and patient overlap, and a short real run (train -> bundle -> explain) on a
subset of the real files with the disk cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from medlens.config import load_config
from medlens.data.audit import audit_config
from medlens.data.readers import read_dataset
from medlens.data.splits import find_group_leaks
from medlens.training import prepare_data

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "kermany_224.yaml"


@pytest.fixture(scope="module")
def kermany(shared_data: Path) -> Path:
    p = shared_data / "kermany_chestxray_224"
    if not p.is_dir():
        pytest.skip(f"{p} not found (the Kermany chest X-ray folder of ../shared/data)")
    return p


def _config(kermany: Path, *overrides: str):
    return load_config(CONFIG, [f"data.root={kermany}", *overrides])


def test_every_file_gets_a_patient_id(kermany: Path) -> None:
    table = read_dataset(_config(kermany).data)
    assert len(table) == 5840 and table.label_space.names == ("NORMAL", "PNEUMONIA")
    assert all(g for g in table.groups) and len(set(table.groups)) == 3103
    counts = {(s, n): 0 for s in ("train", "test") for n in ("NORMAL", "PNEUMONIA")}
    for s, y in zip(table.splits, table.targets.argmax(axis=1), strict=True):
        counts[(s, table.label_space.names[y])] += 1
    assert counts == {("train", "NORMAL"): 1341, ("train", "PNEUMONIA"): 3875, ("test", "NORMAL"): 234, ("test", "PNEUMONIA"): 390}
    i = table.ids.tolist().index("train/NORMAL/NORMAL2-IM-0587-0001-0002.jpeg")
    assert table.groups[i] == "NORMAL2-IM-0587"


def test_validation_is_carved_from_train_by_patient(kermany: Path) -> None:
    table, s = prepare_data(_config(kermany))
    assert len(s.test) == 624 and len(s.train) + len(s.val) == 5216
    assert 0.12 < len(s.val) / 5216 < 0.18
    leaks = find_group_leaks(table, {"train": s.train, "val": s.val})
    assert not leaks  # no child in both train and validation
    assert any("carved from train by group" in n for n in s.notes)


def test_audit_finds_the_duplicates_and_the_shared_patients(kermany: Path) -> None:
    r = audit_config(_config(kermany))
    d = r.duplicates
    # SOURCE.md: 30 sets of byte-identical files, all within one split (two are triples: 32 copies, 34 pairs)
    assert (d.exact_sets, d.exact_copies, sum(d.exact_pairs.values())) == (30, 32, 34)
    assert d.exact_across == 0 and d.near_across == 0 and sum(d.near_pairs.values()) == 0
    assert d.num_unreadable == 0 and d.images == 5840
    # the official test folder shares 170 person ids with train (carved validation included)
    assert len(r.leaks) == 170 and all(g.startswith("person") for g in r.leaks)
    assert r.pair_counts["train/val"] == 0 and r.pair_counts["train/test"] + r.pair_counts["val/test"] == 170
    assert not r.ok
    text = r.to_text()
    assert "170 groups appear in more than one split -- FAIL" in text and "30 sets of identical images" in text


@pytest.mark.slow
def test_a_short_run_on_real_files_trains_explains_and_fills_the_disk_cache(kermany: Path, tmp_path: Path) -> None:
    """One epoch at 64 px on every 24th real file (names, patients and JPEGs as they are): the 224 px sources are
    more than twice the model's size, so they decode at half scale and the disk cache (auto) keeps them."""
    from medlens.data.diskcache import cache_root
    from medlens.inference import Predictor
    from medlens.interpret import explain
    from medlens.training import train

    sub = tmp_path / "kermany"
    for k, f in enumerate(sorted(kermany.rglob("*.jpeg"))):
        if k % 24 == 0:
            dst = sub / f.relative_to(kermany)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(f, dst)
    cfg = load_config(CONFIG, [f"data.root={sub}", "data.image_size=64", "data.batch_size=32", "model.backbone=resnet10t",
                               "trainer.max_epochs=1", "trainer.progress_bar=false", "trainer.channels_last=false",
                               f"output.dir={tmp_path / 'runs'}", "data.cache_images=false"])
    result = train(cfg)
    assert (result.bundle_dir / "manifest.json").is_file()
    entries = list((cache_root() / "images").rglob("*.npy"))
    fit_rows = len(list(sub.glob("train/*/*.jpeg")))  # train + carved validation: read through the training datasets
    # each image read is kept once, resized to 64 px (the last partial training batch is dropped, so not read)
    assert 0.8 * fit_rows <= len(entries) <= len(list(sub.rglob("*.jpeg")))
    assert np.load(entries[0]).shape == (64, 64, 1)
    img = next(sub.glob("test/PNEUMONIA/*.jpeg"))
    (e,) = explain(Predictor.from_bundle(result.bundle_dir), str(img))
    assert e.target_layer == "backbone.layer3" and e.warning is None and e.heatmap.shape == (224, 224)
