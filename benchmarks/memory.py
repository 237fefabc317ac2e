"""Peak memory of `medlens train` against the number of rows: flat beyond the image cache.

    python benchmarks/memory.py [--rows 1000 10000 100000] [--cache-mb 16] [--batches 5] [--quick]

Generates tiny 28-32 px grey PNGs into a temporary folder (once, for the largest row count), indexes them with
a CSV source, and for each row count runs one epoch of `medlens.train` (limit_train_batches small, 1 % of the
rows validate, no test split) in a fresh process, reporting its peak RSS (ru_maxrss), how many decoded
images the cache held (data.cache_mb, default 16 MB here so the cache fills at about 16k rows) and the wall
time. Memory should grow with the cache and then stay flat: rows beyond the budget are read from disk.
--quick: 200 and 1000 rows (a smoke run, not for reporting). Full run: about 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_pngs(folder: Path, n: int) -> list[str]:
    import cv2

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        side = 28 + i % 5  # 28-32 px: the reader resizes
        img = cv2.resize(rng.integers(0, 255, (4, 4), dtype=np.uint8), (side, side), interpolation=cv2.INTER_LINEAR)
        name = f"{i:06d}.png"
        cv2.imwrite(str(folder / name), img)
        names.append(name)
    return names


def write_csv(path: Path, names: list[str]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for i, n in enumerate(names):
            w.writerow([f"img/{n}", "b" if i % 3 == 0 else "a"])
    return path


def child(csv_path: str, cache_mb: int, batches: int, out: str) -> None:
    """One training run in this (fresh) process; prints a JSON line with its own figures."""
    import logging
    import resource
    import warnings

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    seen: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    lg = logging.getLogger("medlens.train")
    lg.setLevel(logging.INFO)
    lg.addHandler(Grab())
    from medlens.config import config_from_dict
    from medlens.training import train

    cfg = config_from_dict({
        "seed": 0,
        "data": {"kind": "csv", "path": csv_path, "label_column": "label", "image_size": 28, "channels": 1, "batch_size": 32,
                 "augment": "none", "cache_mb": cache_mb, "num_workers": 0, "split": {"val_fraction": 0.01, "test_fraction": 0.0}},
        "model": {"backbone": "resnet10t", "small_input": 4},
        "trainer": {"max_epochs": 1, "limit_train_batches": batches, "progress_bar": False, "calibrate": False,
                    "channels_last": False, "deterministic": False},
        "tracking": {"backends": []},
        "output": {"dir": out, "name": "mem", "overwrite": True},
    })
    t0 = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - t0
    m = next((re.search(r"image cache: (\d+) of (\d+)", s) for s in seen if "image cache" in s), None)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    print(json.dumps({"cached": int(m.group(1)) if m else -1, "rows": int(m.group(2)) if m else -1, "peak_mb": peak_mb, "s": wall}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1000, 10000, 100000], help="row counts to train on")
    ap.add_argument("--cache-mb", type=int, default=16, help="data.cache_mb for every run (MB)")
    ap.add_argument("--batches", type=int, default=5, help="trainer.limit_train_batches")
    ap.add_argument("--quick", action="store_true", help="200 and 1000 rows: a smoke run, not for reporting")
    ap.add_argument("--child", nargs=3, metavar=("CSV", "CACHE_MB", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]), args.batches, args.child[2])
        return 0
    rows = [200, 1000] if args.quick else sorted(args.rows)
    if min(rows) < 100:
        ap.error("--rows: at least 100 rows each (1 % of them validate)")
    tmp = Path(tempfile.mkdtemp(prefix="medlens-mem-"))
    t0 = time.perf_counter()
    names = write_pngs(tmp / "img", max(rows))
    print(f"# peak memory of `medlens train` (1 epoch, {args.batches} batches of 32, 28 px, data.cache_mb {args.cache_mb})\n")
    print(f"{max(rows)} PNGs written in {time.perf_counter() - t0:.0f} s\n")
    print("| rows | cached | peak RSS MB | s |")
    print("|---:|---:|---:|---:|")
    for n in rows:
        csv_path = write_csv(tmp / f"rows{n}.csv", names[:n])
        r = subprocess.run([sys.executable, __file__, "--batches", str(args.batches), "--child", str(csv_path), str(args.cache_mb), str(tmp / "runs")],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"| {n} | failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode} | | |")
            continue
        res = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"| {n} | {res['cached']} | {res['peak_mb']:.0f} | {res['s']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
