"""Patient age from 64 px chest X-rays (NIH1000), the regression task beside a mean-age baseline.

    python benchmarks/regression.py               # 3 seeds of configs/nih_age.yaml (CPU, about 10 min)
    python benchmarks/regression.py --seeds 0     # one seed

Protocol: the shipped config (``configs/nih_age.yaml``): split by patient (60 / 20 / 20 %), ResNet-18 from scratch,
Huber loss on standardised ages, checkpoint by validation MAE, a 90 % prediction interval from validation
residuals (split conformal). The test split is read once per seed, at the end of training. The baseline predicts
the mean age of the training split for every image (what a model that learnt nothing scores). Figures: test
MAE (95 % patient-bootstrap CI), RMSE, R^2, Pearson r, interval coverage, wall time; mean +- sd over seeds.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=None, help="override trainer.max_epochs")
    args = ap.parse_args()
    os.environ.setdefault("MEDLENS_SHARED_DATA", str(ROOT.parent / "shared" / "data"))
    logging.basicConfig(level=logging.WARNING)

    import medlens
    from medlens.data.splits import split_indices
    from medlens.tasks import read_table
    from medlens.tasks.regression.metrics import regression_metrics

    rows = []
    out = Path(tempfile.mkdtemp(prefix="medlens-age-"))
    for seed in args.seeds:
        overrides = [f"seed={seed}", f"output.dir={out}", f"output.name=age{seed}", "trainer.progress_bar=false"]
        if args.epochs:
            overrides.append(f"trainer.max_epochs={args.epochs}")
        cfg = medlens.load_config(ROOT / "configs" / "nih_age.yaml", overrides=overrides)
        t0 = time.perf_counter()
        res = medlens.train(cfg)
        wall = time.perf_counter() - t0
        m = res.metrics["test"]
        table = read_table(cfg)
        s = cfg.data.split
        sp = split_indices(table, s.method, s.val_fraction, s.test_fraction, s.seed)
        train_mean = float(np.nanmean(table.targets[sp.train, 0]))
        test = table.subset(sp.test)
        base = regression_metrics(np.full(len(test), train_mean), test.targets[:, 0], groups=test.groups)
        rows.append({"seed": seed, "model": m, "baseline": base, "wall_s": wall, "n": (len(sp.train), len(sp.val), len(sp.test))})
        ci = m["ci"]["mae"]
        print(f"seed {seed}: test MAE {m['mae']:.2f} (95% CI {ci['low']:.2f}-{ci['high']:.2f}) RMSE {m['rmse']:.2f} R2 {m['r2']:.3f} "
              f"r {m['pearson_r']:.3f} coverage {m['interval_coverage']:.3f} | baseline MAE {base['mae']:.2f} R2 {base['r2']:.3f} "
              f"| {wall:.0f} s | n train/val/test {len(sp.train)}/{len(sp.val)}/{len(sp.test)}", flush=True)

    def ms(key: str, which: str = "model") -> str:
        v = np.array([r[which][key] for r in rows], dtype=np.float64)
        return f"{v.mean():.2f} +- {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v[0]:.2f}"

    print("\n| | test MAE (years) | RMSE | R^2 | Pearson r | 90 % interval coverage |")
    print("|---|---|---|---|---|---|")
    print(f"| ResNet-18, 64 px ({len(rows)} seeds) | {ms('mae')} | {ms('rmse')} | {ms('r2')} | {ms('pearson_r')} | {ms('interval_coverage')} |")
    print(f"| mean training age (baseline) | {ms('mae', 'baseline')} | {ms('rmse', 'baseline')} | {ms('r2', 'baseline')} | - | - |")
    print(f"wall time per run: {np.mean([r['wall_s'] for r in rows]):.0f} s")


if __name__ == "__main__":
    main()
