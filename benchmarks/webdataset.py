"""Training images/s from tar shards (local and over HTTP) beside the folder reader, on Kermany 224 px chest X-rays.

    python benchmarks/webdataset.py [--n 400] [--workers 2] [--shards 4] [--data-dir ../shared/data]

``--n`` real JPEGs of ../shared/data/kermany_chestxray_224/train (both classes, evenly spread) are copied into a
class-folder tree and written into ``--shards`` tar shards (``key.jpeg`` + ``key.cls``) in a temp folder. Each
source is then read the way ``medlens train`` reads its training split -- the reader builds the table, and one
epoch of the training loader decodes, resizes to 224 px, applies light augmentation and normalises (1 channel,
batch 32, ``--workers`` loader processes, no image cache):

* ``folder``: ``data.kind: folder``, ``ImageDataset`` + ``DataLoader`` (random access to files);
* ``shards, local``: ``data.kind: webdataset`` on the local shards, the training stream (``StreamLoader``);
* ``shards, HTTP``: the same shards served by a local ``http.server`` (a thread of this process).

It prints one line per source: the indexing time and the epoch's images/s (the first batch's wait included).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import io
import shutil
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_sources(src: Path, out: Path, n: int, shards: int) -> tuple[Path, Path]:
    """``out/folder/<CLASS>/*.jpeg`` and ``out/shards/train-NNN.tar`` (+ a one-shard ``val-000.tar``) from ``n`` files."""
    classes = ["NORMAL", "PNEUMONIA"]
    picked = []
    for c in classes:
        files = sorted((src / "train" / c).glob("*.jpeg"))
        if not files:
            raise SystemExit(f"no .jpeg files under {src / 'train' / c} (--data-dir: the folder holding kermany_chestxray_224)")
        step = max(1, len(files) // (n // 2))
        picked += [(c, f) for f in files[::step][: n // 2]]
    picked.sort(key=lambda cf: cf[1].name)  # classes interleaved in the shards, as a real shard writer shuffles
    folder, shard_dir = out / "folder", out / "shards"
    for c in classes:
        (folder / c).mkdir(parents=True)
    shard_dir.mkdir()
    per = (len(picked) + shards - 1) // shards
    for s in range(shards):
        with tarfile.open(shard_dir / f"train-{s:03d}.tar", "w") as tf:
            for c, f in picked[s * per:(s + 1) * per]:
                _add(tf, f"{f.stem}.jpeg", f.read_bytes())
                _add(tf, f"{f.stem}.cls", str(classes.index(c)).encode())
    with tarfile.open(shard_dir / "val-000.tar", "w") as tf:  # the reader wants a validation list; not timed
        for c, f in picked[:8]:
            _add(tf, f"val_{f.stem}.jpeg", f.read_bytes())
            _add(tf, f"val_{f.stem}.cls", str(classes.index(c)).encode())
    for c, f in picked:
        shutil.copyfile(f, folder / c / f.name)
    return folder, shard_dir


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def epoch_rate(data: dict, workers: int) -> tuple[float, float, int]:
    """(seconds to build the table, images/s of one training epoch, images) for a ``data`` config section."""
    import numpy as np

    from medlens.config import config_from_dict
    from medlens.data.dataset import ImageDataset, make_loader
    from medlens.data.readers import read_dataset
    from medlens.data.stream import ShardStream, StreamLoader, is_streamed
    from medlens.data.transforms import build_augment, make_transform, preprocessing_from_config

    cfg = config_from_dict({"data": {"image_size": 224, "channels": 1, "batch_size": 32, "augment": "light",
                                     "cache_images": False, "disk_cache": False, **data}}).data
    t0 = time.perf_counter()
    table = read_dataset(cfg)
    t_index = time.perf_counter() - t0
    if table.splits is not None:
        table = table.subset(np.where(table.splits == "train")[0])
    pp = preprocessing_from_config(cfg)
    ds = ImageDataset(table, make_transform(pp, build_augment("light", 1, False)), pp)
    if is_streamed(table):
        loader = StreamLoader(ShardStream(ds, 32, seed=0, shuffle_buffer=cfg.shuffle_buffer), workers)
    else:
        loader = make_loader(ds, 32, True, workers)
    t0 = time.perf_counter()
    n = sum(len(b) for b in loader)
    return t_index, n / (time.perf_counter() - t0), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    tmp = Path(tempfile.mkdtemp(prefix="medlens-wds-bench-"))
    try:
        folder, shards = make_sources(a.data_dir / "kermany_chestxray_224", tmp, a.n, a.shards)
        mb = sum(p.stat().st_size for p in shards.glob("train-*.tar")) / 2**20
        print(f"{a.n} Kermany 224 px JPEGs, {a.shards} shards ({mb:.1f} MB), {a.workers} loader workers, 224 px grey, "
              "light augmentation, batch 32")
        server, base = serve(shards)
        wds = {"kind": "webdataset", "label_names": ["NORMAL", "PNEUMONIA"], "shuffle_buffer": 100}
        rows = [
            ("folder", {"kind": "folder", "root": str(folder), "split": {"val_fraction": 0.0, "test_fraction": 0.0}}),
            ("shards, local", {**wds, "urls": {"train": str(shards / f"train-{{000..{a.shards - 1:03d}}}.tar"),
                                              "val": str(shards / "val-000.tar")}}),
            ("shards, HTTP", {**wds, "urls": {"train": f"{base}/train-{{000..{a.shards - 1:03d}}}.tar", "val": f"{base}/val-000.tar"}}),
        ]
        print(f"{'source':<15} {'index s':>8} {'images/s':>9} {'images':>7}")
        for name, data in rows:
            t_index, rate, n = epoch_rate(data, a.workers)
            print(f"{name:<15} {t_index:8.2f} {rate:9.1f} {n:7d}", flush=True)
        server.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
