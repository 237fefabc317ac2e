"""The on-disk image cache (data.disk_cache): keyed by file content and preprocessing, shared by runs, size-bounded
(least recently used first), safe under concurrent writers and kill -9 (an entry is whole or absent)."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens.config import config_from_dict
from medlens.data.dataset import ImageDataset
from medlens.data.diskcache import DiskImageCache, cache_root, disk_cache_for
from medlens.data.io import load_image
from medlens.data.transforms import geometry, make_transform, resolve_preprocessing


def _png(path: Path, seed: int, size: int = 64) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(path)
    return path


def _never() -> np.ndarray:
    raise AssertionError("decoded although the cache holds the image")


def test_a_miss_decodes_and_stores_a_hit_does_not_decode(tmp_path: Path) -> None:
    pp = resolve_preprocessing(16, 1)
    src = _png(tmp_path / "a.png", 0)
    cache = DiskImageCache(16, 1, 2**30, tmp_path / "cache")
    first = cache.get(src, lambda: geometry(load_image(src), pp))
    assert (cache.hits, cache.misses) == (0, 1) and first.shape == (16, 16, 1)
    (entry,) = (tmp_path / "cache").rglob("*.npy")
    assert entry.parent.parent.name.startswith("v1-16px-1ch-")
    # another process (a pickled copy, as a DataLoader worker or the next run gets) reads it without decoding
    other = pickle.loads(pickle.dumps(cache))
    again = other.get(src, _never)
    assert isinstance(again, np.memmap) and not again.flags.writeable
    np.testing.assert_array_equal(again, first)
    # keyed by content: a copy elsewhere hits, a changed file misses
    shutil.copy(src, tmp_path / "copy.png")
    np.testing.assert_array_equal(other.get(tmp_path / "copy.png", _never), first)
    _png(src, 1)
    fresh = DiskImageCache(16, 1, 2**30, tmp_path / "cache")
    changed = fresh.get(src, lambda: geometry(load_image(src), pp))
    assert fresh.misses == 1 and not np.array_equal(changed, first)
    # another image size or channel count is another namespace
    assert DiskImageCache(32, 1, 2**30, tmp_path / "cache").folder != cache.folder
    assert DiskImageCache(16, 3, 2**30, tmp_path / "cache").folder != cache.folder


def test_broken_entries_and_temp_files_are_never_read(tmp_path: Path) -> None:
    pp = resolve_preprocessing(16, 1)
    src = _png(tmp_path / "a.png", 0)
    cache = DiskImageCache(16, 1, 2**30, tmp_path / "cache")
    good = cache.get(src, lambda: geometry(load_image(src), pp))
    entry = cache.entry(cache.key(src))
    entry.write_bytes(entry.read_bytes()[:100])  # cut short (e.g. a power loss)
    fresh = DiskImageCache(16, 1, 2**30, tmp_path / "cache")
    np.testing.assert_array_equal(fresh.get(src, lambda: geometry(load_image(src), pp)), good)
    assert fresh.misses == 1 and np.load(entry).shape == (16, 16, 1)  # decoded again and rewritten whole
    # a killed writer's temp file: not an entry, removed by a scan once stale
    tmp = entry.parent / ".deadbeef.x.tmp"
    tmp.write_bytes(b"partial")
    assert [p for _, _, p in fresh.entries()] == [entry]
    old = time.time() - 7200
    os.utime(tmp, (old, old))
    fresh.entries()
    assert not tmp.exists()


_WRITER = """
import sys, numpy as np
from medlens.data.diskcache import DiskImageCache
c = DiskImageCache(512, 3, 2**34, sys.argv[1])
print("ready", flush=True)
i = 0
while True:  # big entries, written until killed
    c.store(f"{i:064x}", np.full((512, 512, 3), i % 251, np.uint8)); i += 1
"""


def test_kill_9_leaves_only_whole_entries(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    p = subprocess.Popen([sys.executable, "-c", _WRITER, str(root)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    time.sleep(1.5)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    cache = DiskImageCache(512, 3, 2**34, root)
    entries = [e for _, _, e in cache.entries()]
    assert entries, "the writer wrote nothing before it was killed"
    for e in entries:  # every entry a reader can see is whole
        key = e.stem
        arr = cache.load(key)
        assert arr is not None and int(arr[0, 0, 0]) == int(key, 16) % 251 and int(arr[-1, -1, -1]) == int(key, 16) % 251


def _store_many(root: str, n: int) -> int:
    c = DiskImageCache(64, 1, 2**34, root)
    for i in range(n):
        c.store(f"{i:064x}", np.full((64, 64, 1), i % 256, np.uint8))
    return n


def test_concurrent_writers_of_the_same_entries(tmp_path: Path) -> None:
    import multiprocessing as mp

    root = str(tmp_path / "cache")
    with mp.get_context("spawn").Pool(2) as pool:
        assert pool.starmap(_store_many, [(root, 60), (root, 60)]) == [60, 60]
    cache = DiskImageCache(64, 1, 2**34, root)
    assert len(cache.entries()) == 60
    for i in range(60):
        assert int(cache.load(f"{i:064x}")[0, 0, 0]) == i % 256
    assert not list(Path(root).rglob("*.tmp"))


def test_disk_cache_mb_bounds_the_cache_lru_first(tmp_path: Path) -> None:
    # data.disk_cache_mb: 1 -> a 1 MB bound; 224 x 224 x 3 entries take 147 kB each: at most 6 fit
    cfg = config_from_dict({"data": {"kind": "folder", "root": str(tmp_path), "disk_cache": True, "disk_cache_mb": 1}})
    table = type("T", (), {"in_memory": False, "images": [], "__len__": lambda self: 0})()
    cache = disk_cache_for(cfg.data, table, 224, 3)
    assert cache is not None and cache.max_bytes == 2**20 and cache.root == cache_root() / "images"
    img = np.zeros((224, 224, 3), np.uint8)
    for i in range(5):
        cache.store(f"{i:064x}", img)
    # use 0 and 1 again (a hit refreshes an entry's last use, once per process)
    fresh = DiskImageCache(224, 3, 2**20, cache.root)
    past = time.time() - 100
    for i in range(5):
        os.utime(cache.entry(f"{i:064x}"), (past + i, past + i))
    assert fresh.load(f"{0:064x}") is not None and fresh.load(f"{1:064x}") is not None
    for i in range(5, 9):
        fresh.store(f"{i:064x}", img)
    kept = {e.stem for _, _, e in fresh.entries()}
    assert fresh.size_bytes() <= 2**20
    assert {f"{0:064x}", f"{1:064x}", f"{8:064x}"} <= kept  # recently used and newest stay
    assert f"{2:064x}" not in kept and f"{3:064x}" not in kept  # least recently used go first


# ------------------------------------------------------------------------------------ through training's datasets
def _folder(tmp: Path, n: int = 12, size: int = 64) -> Path:
    for i in range(n):
        d = tmp / "f" / ("a" if i % 2 else "b")
        d.mkdir(parents=True, exist_ok=True)
        _png(d / f"{i}.png", i, size)
    return tmp / "f"


def _datasets(root: Path, **data):
    from medlens.training import build_datasets, prepare_data

    cfg = config_from_dict({"seed": 0, "data": {"kind": "folder", "root": str(root), "image_size": 16, "channels": 1,
                                                "augment": "none", **data}})
    table, splits = prepare_data(cfg)
    return build_datasets(cfg, table, splits)[1]


def test_training_datasets_use_the_disk_cache_as_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medlens.data.dataset as ds_mod

    root = _folder(tmp_path)
    # data.disk_cache: auto -- 64 px files for a 16 px model: on; every row decoded once, into the cache
    first = _datasets(root, cache_images=False)
    assert all(s.disk_cache is not None for s in first.values())
    ref = {k: [s[i]["image"] for i in range(len(s))] for k, s in first.items()}
    folder = next(iter(first.values())).disk_cache.folder
    assert len(list(folder.rglob("*.npy"))) == 12
    # the next run reads the cache: no decoding at all, the same model inputs
    monkeypatch.setattr(ds_mod, "load_image", lambda *a, **k: pytest.fail("decoded although cached"))
    for cache_images in (False, True):  # per access, and when filling the memory cache
        again = _datasets(root, cache_images=cache_images)
        for k, s in again.items():
            for i in range(len(s)):
                np.testing.assert_array_equal(s[i]["image"], ref[k][i])
    monkeypatch.undo()
    # data.disk_cache: false -- none; auto with sources no larger than twice the model's size -- none
    assert all(s.disk_cache is None for s in _datasets(root, disk_cache=False).values())
    small = _folder(tmp_path / "small", size=24)
    assert all(s.disk_cache is None for s in _datasets(small).values())
    assert all(s.disk_cache is not None for s in _datasets(small, disk_cache=True).values())


def test_disk_cache_options_that_cannot_act_are_refused(tmp_path: Path) -> None:
    from medlens.training import build_datasets, prepare_data

    root = _folder(tmp_path)
    with pytest.raises(ValueError, match="data.disk_cache_mb: applies only when the disk cache is on"):
        _datasets(root, disk_cache=False, disk_cache_mb=100)
    cfg = config_from_dict({"data": {"kind": "synthetic", "num_samples": 20, "image_size": 16, "channels": 1, "disk_cache": True}})
    table, splits = prepare_data(cfg)
    with pytest.raises(ValueError, match="data.disk_cache: true, but the images of data.kind 'synthetic' are held in memory"):
        build_datasets(cfg, table, splits)


def test_reading_through_the_cache_gives_the_same_model_inputs(tmp_path: Path) -> None:
    from medlens.data.labels import LabelSpace
    from medlens.data.samples import SampleTable

    paths = [str(_png(tmp_path / f"{i}.png", i, 50 + 10 * i)) for i in range(4)]
    table = SampleTable(LabelSpace(("a", "b"), "binary"), paths, paths, np.eye(2, dtype=np.float32)[[0, 1, 0, 1]])
    pp = resolve_preprocessing(16, 3)
    tf = make_transform(pp)
    plain = ImageDataset(table, tf, pp)
    cached = ImageDataset(table, tf, pp, disk_cache=DiskImageCache(16, 3, 2**30, tmp_path / "c"))
    for _ in range(2):  # a miss, then a hit
        for i in range(4):
            np.testing.assert_array_equal(cached[i]["image"], plain[i]["image"])
    with pytest.raises(ValueError, match="needs the preprocessing it was made for"):
        ImageDataset(table, tf, resolve_preprocessing(32, 3), disk_cache=DiskImageCache(16, 3, 2**30, tmp_path / "c"))
