"""k-fold ensemble of the shipped MedMNIST config vs its single models: does ``medlens cv --ensemble`` pay?

    python benchmarks/ensemble.py                          # both datasets, 5 folds, seed 0
    python benchmarks/ensemble.py --datasets pneumoniamnist --folds 5
    python benchmarks/ensemble.py --quick                  # 2 folds, 1 epoch, 600 rows: checks that it runs

Each dataset runs ``medlens cv configs/<dataset>.yaml --ensemble`` with ``data.split.cv_holdout: auto``: the
folds cover the official train + val rows only (each fold trains on the rest of them, with its own inner
validation for checkpoint, temperature and threshold), and the ensemble's thresholds come from the pooled
out-of-fold probabilities. Nothing is chosen on test: the recipe is the shipped config unchanged, and the
official test split is read once, for the ensemble and (as a reference, after the ensemble) for each member.
Wall time is the whole cross-validation (all folds, scoring, the ensemble bundle).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {
    "pneumoniamnist": ("configs/pneumoniamnist.yaml", "medmnist_pneumoniamnist/pneumoniamnist.npz"),
    "breastmnist": ("configs/breastmnist.yaml", "medmnist_breastmnist/breastmnist.npz"),
}


def _data_dir(arg: str | None) -> Path:
    return Path(arg or os.environ.get("MEDLENS_SHARED_DATA") or ROOT.parent / "shared" / "data")


def run(ds: str, data_dir: Path, out: Path, args) -> dict:
    from medlens.config import load_config
    from medlens.cv import cross_validate
    from medlens.evaluation import evaluate

    config, rel = DATASETS[ds]
    base = [f"seed={args.seed}", f"data.path={data_dir / rel}", f"output.dir={out}", "output.overwrite=true",
            "trainer.progress_bar=false", "tracking.backends=[csv]"]
    if args.quick:
        base += ["trainer.max_epochs=1", "data.max_samples=600"]
    cfg = load_config(ROOT / config, [*base, f"output.name={ds}-cv", f"data.split.folds={args.folds}", "data.split.cv_holdout=auto"])
    w, c = time.perf_counter(), time.process_time()
    res = cross_validate(cfg, args.folds, report=False, ensemble=True)
    wall, cpu = time.perf_counter() - w, time.process_time() - c
    official = load_config(ROOT / config, base)  # the official split: its test rows were in no fold
    ens = evaluate(res.extra["ensemble"], official, split="test", record=False).metrics  # the test split, read once
    members = [evaluate(f["bundle"], official, split="test", record=False).metrics for f in res.folds]
    row = {
        "dataset": ds, "folds": args.folds, "seed": args.seed, "wall_s": wall, "cpu_s": cpu,
        "oof_auroc": float(res.pooled["auroc_macro"]),
        "test_auroc": float(ens["auroc_macro"]), "test_accuracy": float(ens["accuracy"]),
        "member_test_auroc": [float(m["auroc_macro"]) for m in members], "member_test_accuracy": [float(m["accuracy"]) for m in members],
    }
    ma, mc = row["member_test_auroc"], row["member_test_accuracy"]
    print(f"{ds}: {args.folds}-fold ensemble test AUROC {row['test_auroc']:.4f}, ACC {row['test_accuracy']:.4f} "
          f"(pooled out-of-fold AUROC {row['oof_auroc']:.4f}); members {statistics.mean(ma):.4f} ± {statistics.stdev(ma):.4f} / "
          f"{statistics.mean(mc):.4f} ± {statistics.stdev(mc):.4f}; {wall:.0f} s wall, {cpu:.0f} CPU s", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None, help="the shared data folder (default ../shared/data or $MEDLENS_SHARED_DATA)")
    ap.add_argument("--out", default=None, help="where runs go (default: a temporary folder, removed)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="2 folds, 1 epoch, 600 rows: checks that the benchmark runs")
    args = ap.parse_args(argv)
    if args.quick:
        args.folds = 2
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    data_dir = _data_dir(args.data_dir)
    missing = [str(data_dir / DATASETS[d][1]) for d in args.datasets if not (data_dir / DATASETS[d][1]).is_file()]
    if missing:
        print(f"error: {', '.join(missing)} not found (pass --data-dir)", file=sys.stderr)
        return 2
    tmp = None if args.out else tempfile.TemporaryDirectory(prefix="medlens-ensemble-bench-")
    out = Path(args.out or tmp.name)
    rows = []
    for ds in args.datasets:
        rows.append(run(ds, data_dir, out, args))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
    print("\n| dataset | folds | pooled out-of-fold AUROC | ensemble test AUROC | ensemble test ACC | members' test AUROC | members' test ACC | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ma, mc = r["member_test_auroc"], r["member_test_accuracy"]
        print(f"| {r['dataset']} | {r['folds']} | {r['oof_auroc']:.3f} | {r['test_auroc']:.3f} | {r['test_accuracy']:.3f} | "
              f"{statistics.mean(ma):.3f} ± {statistics.stdev(ma):.3f} | {statistics.mean(mc):.3f} ± {statistics.stdev(mc):.3f} | {r['wall_s']:.0f} |")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    t0 = time.perf_counter()
    code = main()
    print(f"done in {time.perf_counter() - t0:.0f} s")
    raise SystemExit(code)
