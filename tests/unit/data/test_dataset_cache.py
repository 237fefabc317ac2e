"""The decoded-image cache: a memory budget (data.cache_mb) caps how many images are held; reading stays correct."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from medlens.config import config_from_dict
from medlens.data.dataset import ImageDataset, cached_image_bytes, default_cache_mb
from medlens.data.labels import LabelSpace
from medlens.data.samples import SampleTable
from medlens.data.transforms import make_transform, resolve_preprocessing


def _table(tmp: Path, n: int = 10) -> SampleTable:
    paths = []
    for i in range(n):
        p = tmp / f"{i}.png"
        cv2.imwrite(str(p), np.full((12, 12), 20 * i, np.uint8))
        paths.append(str(p))
    t = np.eye(2, dtype=np.float32)[[i % 2 for i in range(n)]]
    return SampleTable(LabelSpace(("a", "b"), "binary"), [str(i) for i in range(n)], paths, t)


def test_a_budget_caches_only_what_fits_and_reading_stays_correct(tmp_path: Path) -> None:
    table = _table(tmp_path)
    pp = resolve_preprocessing(16, 1)
    tf = make_transform(pp)
    per_image = cached_image_bytes(pp)
    full = ImageDataset(table, tf, pp, cache=True)
    some = ImageDataset(table, tf, pp, cache=True, cache_bytes=3 * per_image + per_image // 2)
    none = ImageDataset(table, tf, pp, cache=True, cache_bytes=0)
    disk = ImageDataset(table, tf, pp, cache=False)
    assert (full.cached, some.cached, none.cached, disk.cached) == (10, 3, 0, 0)
    assert some.cache_nbytes <= 3 * per_image + per_image // 2
    for i in range(len(table)):  # cached rows and rows read from disk give the same pixels
        ref = disk[i]["image"]
        for ds in (full, some, none):
            np.testing.assert_array_equal(ds[i]["image"], ref)


def test_default_budget_is_a_quarter_of_available_memory_capped(monkeypatch) -> None:
    import medlens.data.dataset as ds

    monkeypatch.setattr(ds, "available_memory_mb", lambda: 8000.0)
    assert default_cache_mb() == 2000
    monkeypatch.setattr(ds, "available_memory_mb", lambda: 64000.0)
    assert default_cache_mb() == 4096
    monkeypatch.setattr(ds, "available_memory_mb", lambda: None)
    assert default_cache_mb() == 1024


# ------------------------------------------------------------------------------------ through build_datasets
def _cfg(tmp: Path, **data) -> object:
    for c in ("a", "b"):
        (tmp / "f" / c).mkdir(parents=True, exist_ok=True)
        for i in range(10):
            cv2.imwrite(str(tmp / "f" / c / f"{i}.png"), np.full((12, 12, 3), 10 * i, np.uint8))
    return config_from_dict({
        "data": {"kind": "folder", "root": str(tmp / "f"), "image_size": 256, "channels": 3,
                 "split": {"val_fraction": 0.25, "test_fraction": 0.0}, **data},
        "output": {"dir": str(tmp / "runs")},
    })


def _build(cfg):
    from medlens.training import build_datasets, prepare_data

    t, s = prepare_data(cfg)
    return build_datasets(cfg, t, s)


def test_cache_mb_caps_the_cached_count_train_first(tmp_path: Path, caplog) -> None:
    # 256 x 256 x 3 bytes = 192 KiB an image: 1 MB holds 5 of the 20
    with caplog.at_level(logging.INFO, logger="medlens.train"):
        _, sets, all_cached = _build(_cfg(tmp_path, cache_mb=1))
    assert sets["train"].cached == 5 and sets["val"].cached == 0 and all_cached is False
    assert "image cache: 5 of 20 images in memory" in caplog.text
    sample = sets["val"][0]  # read from disk, same shape as a cached one
    assert sample["image"].shape == sets["train"][0]["image"].shape == (3, 256, 256)


def test_cache_mb_zero_caches_nothing(tmp_path: Path) -> None:
    _, sets, all_cached = _build(_cfg(tmp_path, cache_mb=0))
    assert sum(s.cached for s in sets.values()) == 0 and all_cached is False


def test_cache_images_true_caches_all_whatever_the_default_budget(tmp_path: Path, monkeypatch) -> None:
    import medlens.training as training

    monkeypatch.setattr(training, "default_cache_mb", lambda: 0)  # a machine with no memory to spare
    _, sets, all_cached = _build(_cfg(tmp_path, cache_images=True))
    assert sum(s.cached for s in sets.values()) == 20 and all_cached is True
    _, sets, _ = _build(_cfg(tmp_path))  # auto follows the (here empty) default budget
    assert sum(s.cached for s in sets.values()) == 0


def test_cache_images_false_caches_nothing(tmp_path: Path) -> None:
    _, sets, all_cached = _build(_cfg(tmp_path, cache_images=False))
    assert sum(s.cached for s in sets.values()) == 0 and all_cached is False


@pytest.mark.parametrize("flag", [True, False])
def test_cache_mb_with_cache_images_true_or_false_is_refused(tmp_path: Path, flag: bool) -> None:
    with pytest.raises(ValueError, match=r"^data\.cache_mb: applies to cache_images: auto only"):
        _build(_cfg(tmp_path, cache_images=flag, cache_mb=64))
