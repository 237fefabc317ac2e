"""The shipped MedMNIST configs against the published MedMNIST v2 baselines, over several seeds.

    python benchmarks/medmnist.py                          # both datasets, seeds 0 1 2 (the figures to report)
    python benchmarks/medmnist.py --datasets pneumoniamnist --seeds 0
    python benchmarks/medmnist.py --quick                  # 1 epoch, 1 seed: checks that the benchmark runs

Each run is ``medlens.train`` on ``configs/<dataset>.yaml`` exactly as a user would start it (``medlens train
configs/pneumoniamnist.yaml --set seed=1``), on the official train/val/test split of the ``.npz`` in
``../shared/data`` (or ``--data-dir``). The checkpoint and thresholds are chosen on validation; the figures are
on the test split. Wall time is the whole run: data loading, training, calibration, threshold tuning, test
evaluation and writing the bundle.

Published MedMNIST v2 test figures (Yang et al., Scientific Data 2023, Table 3) are printed beside ours.
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

# dataset -> (config, .npz path under the shared data folder)
DATASETS = {
    "pneumoniamnist": ("configs/pneumoniamnist.yaml", "medmnist_pneumoniamnist/pneumoniamnist.npz"),
    "breastmnist": ("configs/breastmnist.yaml", "medmnist_breastmnist/breastmnist.npz"),
}

# published test AUC / ACC (None: not published)
PUBLISHED = {
    "pneumoniamnist": [
        ("ResNet-18 (28)", 0.944, 0.854),
        ("ResNet-50 (224)", 0.962, 0.884),
        ("Google AutoML Vision", 0.991, 0.946),
    ],
    "breastmnist": [
        ("ResNet-18 (28)", 0.901, 0.863),
        ("ResNet-50 (224)", 0.866, 0.842),
        ("Google AutoML Vision", 0.919, None),
    ],
}
# the official MedMNIST experiments script measured on this CPU (issue 3): 2 epochs, 212 s
REFERENCE_RUN = {"pneumoniamnist": ("MedMNIST script, ResNet-18 (28), 2 epochs, this CPU", 0.958, 0.870, 212.0)}


def _shared_data(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("MEDLENS_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def run_one(dataset: str, seed: int, data_dir: Path, out_dir: Path, quick: bool) -> dict:
    from medlens.config import load_config
    from medlens.training import train

    config, rel = DATASETS[dataset]
    overrides = [f"seed={seed}", f"data.path={data_dir / rel}", f"output.dir={out_dir}",
                 f"output.name={dataset}-s{seed}", "output.overwrite=true", "trainer.progress_bar=false"]
    if quick:
        overrides += ["trainer.max_epochs=1"]
    cfg = load_config(ROOT / config, overrides)
    t0 = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - t0
    test = result.metrics["test"]
    return {"dataset": dataset, "seed": seed, "auroc": float(test["auroc_macro"]), "accuracy": float(test["accuracy"]),
            "wall_s": wall, "train_s": result.train_time_s, "epochs": len(result.history),
            "weights": json.loads((result.bundle_dir / "manifest.json").read_text()).get("weights_source", "raw")}


def _mean_sd(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def table(dataset: str, runs: list[dict]) -> str:
    aucs = [r["auroc"] for r in runs]
    accs = [r["accuracy"] for r in runs]
    walls = [r["wall_s"] for r in runs]
    lines = [f"### {dataset} (test split, {len(runs)} seed{'s' if len(runs) > 1 else ''})", "",
             "| model | AUC | ACC | wall time per run |", "|---|---|---|---|"]
    lines.append(f"| **medlens `{DATASETS[dataset][0]}`** (mean ± sd) | **{_mean_sd(aucs)}** | **{_mean_sd(accs)}** | "
                 f"{statistics.mean(walls):.0f} s (max {max(walls):.0f} s) |")
    for r in runs:
        lines.append(f"| ... seed {r['seed']} ({r['epochs']} epochs, {r['weights']} weights) | {r['auroc']:.3f} | "
                     f"{r['accuracy']:.3f} | {r['wall_s']:.0f} s |")
    if dataset in REFERENCE_RUN:
        name, auc, acc, wall = REFERENCE_RUN[dataset]
        lines.append(f"| {name} | {auc:.3f} | {acc:.3f} | {wall:.0f} s |")
    for name, auc, acc in PUBLISHED[dataset]:
        lines.append(f"| {name} (published) | {auc:.3f} | {'—' if acc is None else f'{acc:.3f}'} | — |")
    m_auc, m_acc = statistics.mean(aucs), statistics.mean(accs)
    verdicts = []
    for name, auc, acc in PUBLISHED[dataset]:
        beats = m_auc > auc and (acc is None or m_acc > acc)
        verdicts.append(f"{name}: {'beaten' if beats else 'not beaten'} (AUC {m_auc - auc:+.3f}"
                        + ("" if acc is None else f", ACC {m_acc - acc:+.3f}") + ")")
    if dataset in REFERENCE_RUN:
        name, auc, acc, wall = REFERENCE_RUN[dataset]
        ok = m_auc > auc and m_acc > acc and max(walls) <= wall
        verdicts.append(f"reference run: {'beaten' if ok else 'not beaten'} (AUC {m_auc - auc:+.3f}, ACC {m_acc - acc:+.3f}, "
                        f"slowest run {max(walls):.0f} s vs {wall:.0f} s)")
    lines += ["", *[f"- {v}" for v in verdicts], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--data-dir", default=None, help="the shared data folder (default ../shared/data or $MEDLENS_SHARED_DATA)")
    ap.add_argument("--out", default=None, help="where runs go (default: a temporary folder, removed)")
    ap.add_argument("--json", default=None, help="also write every run's figures to this JSON file")
    ap.add_argument("--quick", action="store_true", help="1 epoch and the first seed only")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    data_dir = _shared_data(args.data_dir)
    seeds = args.seeds[:1] if args.quick else args.seeds
    missing = [d for d in args.datasets if not (data_dir / DATASETS[d][1]).is_file()]
    if missing:
        print(f"error: {', '.join(data_dir / DATASETS[d][1] for d in missing)} not found (pass --data-dir)", file=sys.stderr)
        return 2
    tmp = None if args.out else tempfile.TemporaryDirectory(prefix="medlens-bench-")
    out = Path(args.out or tmp.name)
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; data {data_dir}")
    runs: dict[str, list[dict]] = {}
    for ds in args.datasets:
        for seed in seeds:
            r = run_one(ds, seed, data_dir, out, args.quick)
            print(f"{ds} seed {seed}: test AUC {r['auroc']:.4f} ACC {r['accuracy']:.4f}, {r['epochs']} epochs, "
                  f"{r['wall_s']:.1f} s wall ({r['train_s']:.1f} s fit)", flush=True)
            runs.setdefault(ds, []).append(r)
    print()
    for ds, rs in runs.items():
        print(table(ds, rs))
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
