"""Indexing speed and memory of the CSV and SQL readers on 100,000 synthetic rows.

    python benchmarks/data_index.py                 # 10,000 and 100,000 rows, SQLite + CSV (the figures)
    python benchmarks/data_index.py --quick         # 2,000 and 10,000 rows: checks that it runs
    python benchmarks/data_index.py --pg-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres   # + PostgreSQL

What is measured: the time ``read_dataset`` takes to turn the source into a ``SampleTable`` (rows/s) and the
reading process's peak RSS. Each read runs in a fresh subprocess, so the peak belongs to that read alone; the
RSS after importing medlens (before reading) is printed too, and "per row" is the growth divided by the rows.
Memory stays flat-ish when the growth per row is a few hundred bytes (the table is columnar: ids, paths,
groups and splits as arrays, targets as float32 (N, K)), and the same at 10k and 100k rows.

Data: 14 labels (multi-label, ~10 % positive, ~5 % unannotated), 3 images per patient, a train/val/test
column, 100 small PNGs shared by all rows (the readers check that each row's file exists; 100,000 distinct
files would only measure the file system). The SQL database is filled with ``medlens.data.db.import_table``
(its speed is printed as well, but it is set-up, not the measured read).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LABELS = [f"finding_{j:02d}" for j in range(14)]


def _status_mb(key: str) -> float:
    """A memory figure of this process from /proc/self/status (MB): VmRSS now, VmHWM the peak.

    VmHWM belongs to this process image alone; ``ru_maxrss`` would not do, as Linux carries it over from the
    parent through fork and exec.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    if key == "VmHWM":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return float("nan")


def make_data(root: Path, n: int, seed: int = 0) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """Synthetic rows: (targets, image paths, groups, splits); 100 PNGs written under ``root/images``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    for i in range(100):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(img_dir / f"img_{i:03d}.png")
    targets = (rng.random((n, len(LABELS))) < 0.1).astype(np.float32)
    targets[rng.random(n) < 0.05] = np.nan  # unannotated rows
    paths = [f"images/img_{i % 100:03d}.png" for i in range(n)]
    groups = np.asarray([f"P{i // 3:06d}" for i in range(n)], dtype=object)
    splits = rng.choice(np.asarray(["train", "val", "test"], dtype=object), size=n, p=[0.7, 0.15, 0.15])
    return targets, paths, groups, splits


def write_csv(path: Path, targets: np.ndarray, paths: list[str], groups: np.ndarray, splits: np.ndarray) -> None:
    import pandas as pd

    labels = []
    for row in targets:
        if np.isnan(row).all():
            labels.append("")
        else:
            pos = [LABELS[j] for j in np.flatnonzero(row == 1)]
            labels.append("|".join(pos) if pos else "No Finding")
    pd.DataFrame({"path": paths, "labels": labels, "patient": groups, "split": splits}).to_csv(path, index=False)


def fill_db(url: str, root: Path, targets: np.ndarray, paths: list[str], groups: np.ndarray, splits: np.ndarray, name: str) -> float:
    """Import the rows into a database; returns rows/s of the import."""
    from medlens.data import db
    from medlens.data.labels import LabelSpace
    from medlens.data.samples import SampleTable

    table = SampleTable(LabelSpace(tuple(LABELS), "multilabel"), [f"r{i}" for i in range(len(paths))],
                        [str(root / p) for p in paths], targets, groups, list(splits), source="synthetic")
    engine = db.init_db(url)
    t0 = time.perf_counter()
    db.import_table(engine, table, name, "bench14", image_root=root, replace=True, chunk_size=5000)
    dt = time.perf_counter() - t0
    engine.dispose()
    return len(paths) / dt


def child(kind: str, source: str, rows: int, dataset: str) -> None:
    """Runs in a subprocess: read once, print a JSON line with time and memory."""
    import logging

    from medlens.config import config_from_dict
    from medlens.data.readers import _ensure, read_dataset

    logging.disable(logging.WARNING)
    _ensure(kind)  # import the reader module (and SQLAlchemy) before the baseline
    if kind == "sql":
        import sqlalchemy  # noqa: F401
    base = _status_mb("VmRSS")
    if kind == "csv":
        data = {"kind": "csv", "path": source, "label_column": "labels", "no_finding": "No Finding",
                "group_column": "patient", "split_column": "split", "task": "multilabel"}
    else:
        data = {"kind": "sql", "url": source, "dataset": dataset, "label_set": "bench14"}
    cfg = config_from_dict({"data": data}).data
    t0 = time.perf_counter()
    table = read_dataset(cfg)
    dt = time.perf_counter() - t0
    assert len(table) == rows, (len(table), rows)
    peak = _status_mb("VmHWM")
    print(json.dumps({"rows": rows, "seconds": dt, "rows_per_s": rows / dt, "base_mb": base, "peak_mb": peak}))


def run_child(kind: str, source: str, rows: int, dataset: str = "") -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--_child", kind, "--_source", source, "--rows", str(rows), "--_dataset", dataset],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="*", default=None, help="row counts (default 10000 100000)")
    ap.add_argument("--quick", action="store_true", help="2,000 and 10,000 rows")
    ap.add_argument("--pg-url", default=os.environ.get("MEDLENS_TEST_PG_URL"), help="also measure this PostgreSQL server")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    ap.add_argument("--_source", help=argparse.SUPPRESS)
    ap.add_argument("--_dataset", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child:
        child(a._child, a._source, a.rows[0], a._dataset)
        return
    sizes = a.rows or ([2_000, 10_000] if a.quick else [10_000, 100_000])
    results = []
    with tempfile.TemporaryDirectory(prefix="medlens-index-") as tmp:
        root = Path(tmp)
        for n in sizes:
            d = root / f"n{n}"
            targets, paths, groups, splits = make_data(d, n)
            csv = d / "labels.csv"
            write_csv(csv, targets, paths, groups, splits)
            sources = [("csv", str(csv), "")]
            url = f"sqlite:///{d / 'bench.db'}"
            imp = fill_db(url, d, targets, paths, groups, splits, "bench")
            print(f"[{n} rows] SQLite import: {imp:,.0f} rows/s", flush=True)
            sources.append(("sqlite", url, "bench"))
            if a.pg_url:
                name = f"bench_{n}_{os.getpid()}"
                imp = fill_db(a.pg_url, d, targets, paths, groups, splits, name)
                print(f"[{n} rows] PostgreSQL import: {imp:,.0f} rows/s", flush=True)
                sources.append(("postgresql", a.pg_url, name))
            for label, src, ds in sources:
                r = run_child("csv" if label == "csv" else "sql", src, n, ds)
                r["source"] = label
                results.append(r)
                print(f"[{n} rows] {label:<10} {r['rows_per_s']:>10,.0f} rows/s  {r['seconds']:6.2f} s  "
                      f"peak RSS {r['peak_mb']:7.1f} MB  (after imports {r['base_mb']:6.1f} MB; "
                      f"{(r['peak_mb'] - r['base_mb']) * 2**20 / n:,.0f} B/row)", flush=True)
            if a.pg_url:
                from medlens.data import db

                engine = db.connect(a.pg_url)
                db.delete_dataset(engine, f"bench_{n}_{os.getpid()}")
                engine.dispose()
    print("\nsource      rows      rows/s   peak RSS MB   growth B/row")
    for r in results:
        print(f"{r['source']:<10} {r['rows']:>7} {r['rows_per_s']:>11,.0f} {r['peak_mb']:>12.1f} "
              f"{(r['peak_mb'] - r['base_mb']) * 2**20 / r['rows']:>13,.0f}")


if __name__ == "__main__":
    main()
