"""Subgroup performance of the shipped NIH1000 multi-label model: per sex, view and age band (NIH1000, 64 px).

    python benchmarks/subgroups.py                  # train configs/nih_multilabel.yaml, then report its test split
    python benchmarks/subgroups.py --epochs 4       # fewer epochs (CPU time)
    python benchmarks/subgroups.py --run runs/nih_multilabel   # a run already trained with that config

Protocol: the shipped config (split by patient 60 / 20 / 20 %, ResNet-18 from scratch, thresholds by max F1 and a
temperature per label on validation) trained with ``data.metadata_columns`` = Patient Gender, Patient Age, View
Position (carried with each image, not given to the network). The test split is read once, through
``medlens.report.build_report`` (the path of ``medlens report --subgroups``): per subgroup n, patients, images with
at least one finding ("positives") and with none, the macro AUROC over the 14 findings and the macro sensitivity and
specificity at the deployed thresholds, each with a 95 % patient-bootstrap CI; the largest gap per column with a
paired patient-bootstrap CI; the size rule's warnings. Ages are banded <40, 40-59, 60-79, >=80.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["Patient Gender", "View Position", "Patient Age"]


def ci(e: dict | None) -> str:
    if not e or e.get("value") is None:
        return "n/a"
    return f"{e['value']:.3f}" + ("" if e.get("low") is None else f" ({e['low']:.3f}-{e['high']:.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=None, help="override trainer.max_epochs (the config's 10 by default)")
    ap.add_argument("--run", type=Path, default=None, help="report this run folder instead of training one")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates of every interval")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("MEDLENS_SHARED_DATA", str(ROOT.parent / "shared" / "data"))
    logging.basicConfig(level=logging.WARNING)

    import medlens
    from medlens.report import build_report

    t0 = time.perf_counter()
    run = args.run
    epochs = None
    if run is None:
        out = Path(tempfile.mkdtemp(prefix="medlens-subgroups-"))
        overrides = [f"seed={args.seed}", f"output.dir={out}", "output.name=nih_multilabel", "trainer.progress_bar=false",
                     "data.metadata_columns=[" + ", ".join(COLUMNS) + "]"]
        if args.epochs:
            overrides.append(f"trainer.max_epochs={args.epochs}")
        cfg = medlens.load_config(ROOT / "configs" / "nih_multilabel.yaml", overrides=overrides)
        epochs = cfg.trainer.max_epochs
        run = medlens.train(cfg).run_dir
    train_s = time.perf_counter() - t0
    rep = build_report(run, n_boot=args.n_boot, seed=args.seed, subgroups=COLUMNS,
                       overrides=None if args.run is None else ["data.metadata_columns=[" + ", ".join(COLUMNS) + "]"])
    doc = rep.metrics
    sg = doc["subgroups"]
    head = (doc.get("ci") or {}).get("headline", {}).get("auroc_macro")
    print(f"\nNIH1000 test split: {doc['data']['n']} images, {doc['data']['groups']} patients; macro AUROC {ci(head)}"
          + (f"; {epochs} epochs" if epochs else "") + f"; training {train_s:.0f} s, report {time.perf_counter() - t0 - train_s:.0f} s")
    print(f"intervals: 95 % percentile bootstrap, {sg['n_boot']} replicates resampling patients; decisions at the deployed thresholds\n")
    print("| column | subgroup | n | patients | with a finding | no finding | macro AUROC (95 % CI) | macro sensitivity | macro specificity | readable |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, col in sg["columns"].items():
        for lv, e in col["subgroups"].items():
            print(f"| {name} | {lv} | {e['n']} | {e['patients']} | {e['positives']} | {e['negatives']} | {ci(e['auroc'])} | "
                  f"{ci(e['sensitivity'])} | {ci(e['specificity'])} | {'yes' if e['readable'] else 'no'} |")
    print()
    for name, col in sg["columns"].items():
        for m, g in col["gaps"].items():
            if g.get("value") is None:
                print(f"- {name}, largest {m} gap: none ({g.get('reason')})")
                continue
            print(f"- {name}, largest {m} gap: {g['value']:.3f} ({g['high_group']} vs {g['low_group']}; 95 % CI "
                  + ("n/a" if g.get("low") is None else f"{g['low']:+.3f} to {g['high']:+.3f}")
                  + ("" if g.get("readable") else "; involves a subgroup too small to read") + ")")
    print(f"\nsize rule: {sg['rule']}")
    for w in sg["warnings"]:
        print(f"- warning: {w}")
    print(f"\nreport: {rep.html}")


if __name__ == "__main__":
    main()
