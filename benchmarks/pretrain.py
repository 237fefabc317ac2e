"""Does self-supervised pretraining help? From scratch vs ``medlens pretrain`` + fine-tune, on MedMNIST (CPU).

    python benchmarks/pretrain.py                   # both datasets, seeds 0 1 2 (the figures to report)
    python benchmarks/pretrain.py --quick           # 1 pretraining + 1 fine-tuning epoch, 600 rows, 1 seed: it runs
    python benchmarks/pretrain.py --datasets pneumoniamnist --seeds 0 --json out.json

Arms, per dataset and seed (fine-tuning = ``medlens.train`` on the shipped ``configs/<dataset>.yaml`` unchanged
except ``model.pretrained``; the same epochs, schedule, threshold rule and official splits for every arm):

  * ``scratch``: the shipped config, random initialisation.
  * ``ssl (in-domain)``: ``medlens pretrain`` (SimCLR; by default ``--pretrain-images 15000``: epochs chosen so that
    pretraining sees about 15,000 images, two views each -- about the forward/backward passes of one fine-tuning
    run; a budget fixed before any result) on the dataset's train + val images
    WITHOUT labels (``pretrain.rows: train_val``; the test split is never read), then fine-tune.
  * ``ssl (cross-dataset)``: pretrain on the OTHER dataset's train + val images (PneumoniaMNIST <-> BreastMNIST,
    both 28 px grey, same backbone and stem), then fine-tune.
  * ``scratch, equal CPU time``: from scratch with as many epochs as fit in the CPU time (``time.process_time``,
    all threads) that pretraining + fine-tuning took in the in-domain arm (at least the shipped epochs): the
    honest comparison, since pretraining is not free.

Every arm is a fixed recipe chosen before looking at any result: the test figures are each read once, and no
choice is made on them (the validation AUROC is printed beside them). Wall and CPU seconds include pretraining.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
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
OTHER = {"pneumoniamnist": "breastmnist", "breastmnist": "pneumoniamnist"}


def _data_dir(arg: str | None) -> Path:
    return Path(arg or os.environ.get("MEDLENS_SHARED_DATA") or ROOT.parent / "shared" / "data")


def _overrides(ds: str, seed: int, data_dir: Path, out: Path, name: str, args) -> list[str]:
    over = [f"seed={seed}", f"data.path={data_dir / DATASETS[ds][1]}", f"output.dir={out}", f"output.name={name}",
            "output.overwrite=true", "trainer.progress_bar=false", "tracking.backends=[csv]"]
    if args.max_samples:
        over.append(f"data.max_samples={args.max_samples}")
    return over


def _timed(fn, *a, **kw):
    w, c = time.perf_counter(), time.process_time()
    out = fn(*a, **kw)
    return out, time.perf_counter() - w, time.process_time() - c


def pretrain_epochs(source: str, data_dir: Path, args) -> int:
    """``--pretrain-epochs`` if given, else as many epochs as show ``--pretrain-images`` images (train + val of ``source``)."""
    if args.pretrain_epochs:
        return args.pretrain_epochs
    import numpy as np

    with np.load(data_dir / DATASETS[source][1]) as z:
        n = len(z["train_labels"]) + len(z["val_labels"])
    if args.max_samples:
        n = min(n, args.max_samples)
    return max(1, round(args.pretrain_images / n))


def pretrain_weights(target: str, source: str, seed: int, data_dir: Path, out: Path, args) -> tuple[Path, float, float]:
    """SimCLR on ``source``'s train+val images with ``target``'s model section (so the weights fit its network)."""
    from medlens.config import load_config
    from medlens.pretrain import pretrain

    over = _overrides(target, seed, data_dir, out, f"{target}-s{seed}", args)
    over += [f"data.path={data_dir / DATASETS[source][1]}", f"data.flag={source}", f"pretrain.epochs={pretrain_epochs(source, data_dir, args)}",
             "pretrain.rows=train_val", f"pretrain.name=ssl-{source}-for-{target}-s{seed}", f"pretrain.batch_size={args.pretrain_batch}"]
    cfg = load_config(ROOT / DATASETS[target][0], over)
    res, wall, cpu = _timed(pretrain, cfg)
    return res.weights, wall, cpu


def finetune(ds: str, seed: int, data_dir: Path, out: Path, name: str, args, extra: list[str]) -> tuple[dict, float, float]:
    from medlens.config import load_config
    from medlens.training import train

    over = _overrides(ds, seed, data_dir, out, name, args) + extra
    if args.quick:
        over.append("trainer.max_epochs=1")
    cfg = load_config(ROOT / DATASETS[ds][0], over)
    res, wall, cpu = _timed(train, cfg)
    m = res.metrics
    return {"val_auroc": float(m["val"]["auroc_macro"]), "test_auroc": float(m["test"]["auroc_macro"]),
            "test_accuracy": float(m["test"]["accuracy"]), "epochs": len(res.history)}, wall, cpu


def run(ds: str, seed: int, data_dir: Path, out: Path, args) -> list[dict]:
    from medlens.config import load_config

    rows: list[dict] = []

    def add(row: dict) -> None:  # printed as soon as the arm is done: a later failure does not lose it
        row.update({"dataset": ds, "seed": seed})
        print(f"{ds} seed {seed} {row['arm']}: val AUROC {row['val_auroc']:.4f}, test AUROC {row['test_auroc']:.4f}, "
              f"test ACC {row['test_accuracy']:.4f}, {row['cpu_s']:.0f} CPU s, {row['wall_s']:.0f} s", flush=True)
        rows.append(row)

    scratch, w0, c0 = finetune(ds, seed, data_dir, out, f"{ds}-scratch-s{seed}", args, [])
    add({"arm": "scratch", **scratch, "wall_s": w0, "cpu_s": c0})
    weights, wp, cp = pretrain_weights(ds, ds, seed, data_dir, out, args)
    ssl, w1, c1 = finetune(ds, seed, data_dir, out, f"{ds}-ssl-s{seed}", args, [f"model.pretrained={weights}"])
    add({"arm": "ssl (in-domain)", **ssl, "wall_s": wp + w1, "cpu_s": cp + c1, "pretrain_cpu_s": cp,
                 "pretrain_epochs": pretrain_epochs(ds, data_dir, args)})
    if OTHER[ds] in args.cross_from:
        cross, wxp, cxp = pretrain_weights(ds, OTHER[ds], seed, data_dir, out, args)
        res, w2, c2 = finetune(ds, seed, data_dir, out, f"{ds}-cross-s{seed}", args, [f"model.pretrained={cross}"])
        add({"arm": f"ssl (cross-dataset, from {OTHER[ds]})", **res, "wall_s": wxp + w2, "cpu_s": cxp + c2, "pretrain_cpu_s": cxp,
                     "pretrain_epochs": pretrain_epochs(OTHER[ds], data_dir, args)})
    shipped = 1 if args.quick else load_config(ROOT / DATASETS[ds][0]).trainer.max_epochs
    epochs = max(shipped, math.floor(shipped * (cp + c1) / max(c0, 1e-9)))  # whole epochs within the in-domain arm's CPU time
    eq, w3, c3 = finetune(ds, seed, data_dir, out, f"{ds}-scratch-eq-s{seed}", args, [f"trainer.max_epochs={epochs}"] if not args.quick else [])
    add({"arm": f"scratch, equal CPU time ({eq['epochs']} ep.)", **eq, "wall_s": w3, "cpu_s": c3})
    return rows


def _ms(xs: list[float]) -> str:
    return f"{xs[0]:.3f}" if len(xs) == 1 else f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def table(ds: str, rows: list[dict]) -> str:
    arms: dict[str, list[dict]] = {}
    for r in rows:
        arms.setdefault(r["arm"].split(" (")[0] if r["arm"].startswith("scratch, equal") else r["arm"], []).append(r)
    lines = [f"### {ds} (official split; {len({r['seed'] for r in rows})} seed(s))", "",
             "| arm | val AUROC | test AUROC | test ACC | CPU s (all threads) | wall s |", "|---|---|---|---|---|---|"]
    for arm, rs in arms.items():
        lines.append(f"| {rs[0]['arm'] if len(rs) == 1 else arm} | {_ms([r['val_auroc'] for r in rs])} | {_ms([r['test_auroc'] for r in rs])} | "
                     f"{_ms([r['test_accuracy'] for r in rs])} | {statistics.mean(r['cpu_s'] for r in rs):.0f} | {statistics.mean(r['wall_s'] for r in rs):.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--cross-from", nargs="*", default=list(DATASETS), choices=list(DATASETS), help="datasets to pretrain on for the cross-dataset arm")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--pretrain-images", type=int, default=15000,
                    help="pretraining budget: epochs = round(N / train+val images of the source), about one fine-tuning run's images")
    ap.add_argument("--pretrain-epochs", type=int, default=None, help="fixed pretraining epochs instead of --pretrain-images")
    ap.add_argument("--pretrain-batch", type=int, default=256)
    ap.add_argument("--max-samples", type=int, default=None, help="first N rows of each file, split shares kept")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=None, help="where runs go (default: a temporary folder, removed)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="1 pretraining and 1 fine-tuning epoch, 600 rows, the first seed")
    args = ap.parse_args(argv)
    if args.quick:
        args.pretrain_epochs, args.max_samples, args.seeds, args.pretrain_batch = 1, args.max_samples or 600, args.seeds[:1], 64
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    data_dir = _data_dir(args.data_dir)
    missing = [str(data_dir / DATASETS[d][1]) for d in {*args.datasets, *args.cross_from} if not (data_dir / DATASETS[d][1]).is_file()]
    if missing:
        print(f"error: {', '.join(missing)} not found (pass --data-dir)", file=sys.stderr)
        return 2
    tmp = None if args.out else tempfile.TemporaryDirectory(prefix="medlens-pretrain-bench-")
    out = Path(args.out or tmp.name)
    results: dict[str, list[dict]] = {}
    for ds in args.datasets:
        for seed in args.seeds:
            results.setdefault(ds, []).extend(run(ds, seed, data_dir, out, args))
    print()
    for ds, rows in results.items():
        print(table(ds, rows))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
