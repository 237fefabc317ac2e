"""The out-of-distribution gate of a chest X-ray classifier: far-OOD, near-OOD and the in-distribution false flags.

    python benchmarks/ood.py                          # trains configs/pneumoniamnist.yaml (28 px), then scores
    python benchmarks/ood.py --bundle runs/pneumoniamnist/bundle   # an existing chest X-ray bundle
    python benchmarks/ood.py --bundle runs/kermany_224/bundle       # the Kermany model (benchmarks/kermany.py)

In-distribution: the bundle's own test split (PneumoniaMNIST or Kermany: 624 paediatric chest X-rays, never seen
in training), rebuilt from the config stored in the bundle. Far-OOD:
HAM10000 dermoscopy photos (100) and BreastMNIST ultrasound (156 test images). Near-OOD: NIH ChestX-ray14
"NIH1000" adult chest X-rays (1000) against this paediatric model. Every image goes through the bundle's own
preprocessing (grey, resized to the model's size). Figures per detector, fitted on the same training features:
AUROC of the score (OOD as positive, against the in-distribution test images) and FPR at 95 % TPR (the share of
OOD images let through when 95 % of in-distribution test images pass), then the deployed gate's flags: the share of
each set it flags at its threshold (fitted to pass 95 % of validation images). Aims (issue 34): far-OOD AUROC >=
0.99, near-OOD >= 0.90, in-distribution false flags <= 5 %.

The features are read once, as stage features (the channel means of the stem and each earlier stage, then the pooled
vector: ``ood.features: stages``, the default); the penultimate detectors read the last segment, so every detector
sees the same images through the same network, whatever gate the bundle itself carries.
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
SHARED = Path(os.environ.get("MEDLENS_SHARED_DATA", ROOT.parent / "shared" / "data"))


def auroc(neg: np.ndarray, pos: np.ndarray) -> float:
    """P(score of an OOD image > score of an in-distribution one), ties half."""
    s = np.concatenate([neg, pos])
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    for v in np.unique(s):  # average ranks of ties
        m = s == v
        ranks[m] = ranks[m].mean()
    r = ranks[len(neg):].sum()
    return float((r - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def fpr_at_95_tpr(neg: np.ndarray, pos: np.ndarray) -> float:
    thr = np.quantile(neg, 0.95)  # 95 % of in-distribution images pass
    return float(np.mean(pos <= thr))  # OOD images let through


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=None, help="an existing PneumoniaMNIST bundle (default: train configs/pneumoniamnist.yaml)")
    ap.add_argument("--epochs", type=int, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import medlens
    from medlens.data.io import load_image
    from medlens.inference import Predictor
    from medlens.ood import fit_detector

    t0 = time.perf_counter()
    if args.bundle:
        bundle = Path(args.bundle)
    else:
        out = tempfile.mkdtemp(prefix="medlens-ood-")
        over = [f"output.dir={out}", "trainer.progress_bar=false"] + ([f"trainer.max_epochs={args.epochs}"] if args.epochs else [])
        bundle = medlens.train(medlens.load_config(ROOT / "configs" / "pneumoniamnist.yaml", overrides=over)).bundle_dir
    train_s = time.perf_counter() - t0
    p = Predictor.from_bundle(bundle, batch_size=256)
    from medlens.tasks.classification.head import ClassifierHead

    p.feature_head = ClassifierHead(p.model, False, with_features=True, stages=True).eval()  # every segment, once
    segments = p.model.ood_segments()
    pen = slice(sum(segments[:-1]), None)  # the pooled vector: the last segment
    cfg = medlens.config_from_dict(p.manifest.config)
    from medlens.evaluation import dataset_splits

    table, splits = dataset_splits(cfg)
    feats = {"train": p.features_table(table.subset(splits.train)), "val": p.features_table(table.subset(splits.val)),
             "test (in-distribution)": p.features_table(table.subset(splits.test))}

    def folder_feats(files: list[Path]) -> np.ndarray:
        return p.features_arrays([load_image(f) for f in files])

    bm = np.load(SHARED / "medmnist_breastmnist" / "breastmnist.npz")["test_images"]
    nih = sorted((SHARED / "nih_chestxray14_nih1000_64px").rglob("*.png"))
    ood_sets = {
        "HAM10000 dermoscopy (far)": folder_feats(sorted((SHARED / "ham10000_subset100" / "images").glob("*.jpg"))),
        "BreastMNIST ultrasound (far)": p.features_arrays(list(bm)),
        "NIH1000 adult chest X-rays (near)": folder_feats(nih),
    }
    ind = feats["test (in-distribution)"]
    print(f"bundle {bundle} ({p.manifest.architecture.get('backbone')}, {p.manifest.preprocessing.image_size} px); "
          f"test AUROC {p.manifest.metrics.get('test', {}).get('auroc_macro')}; trained in {train_s:.0f} s; "
          f"stage segments {segments}")
    print("\n| detector | features | set | n | AUROC | FPR at 95 % TPR | flagged by the gate (threshold from validation) |")
    print("|---|---|---|---|---|---|---|")
    for method, k, kind in (("knn", 10, "penultimate"), ("mahalanobis", 10, "penultimate"), ("knn", 10, "stages"),
                            ("mahalanobis", 10, "stages")):
        cut = pen if kind == "penultimate" else slice(None)
        det = fit_detector(feats["train"][:, cut], feats["val"][:, cut], method, k, 0.95, max_bank=4096, seed=0,
                           segments=segments if kind == "stages" else None)
        s_in = det.score(ind[:, cut])
        name = f"kNN k={k}" if method == "knn" else "Mahalanobis"
        name = f"{name} | {kind}{' (default)' if (method, kind) == ('mahalanobis', 'stages') else ''}"
        print(f"| {name} | {getattr(cfg, 'name', None) or 'own'} test (in-distribution) | {len(ind)} | - | - | {np.mean(s_in > det.threshold):.3f} (false flags) |")
        for set_name, f in ood_sets.items():
            s_out = det.score(f[:, cut])
            print(f"| {name} | {set_name} | {len(f)} | {auroc(s_in, s_out):.4f} | {fpr_at_95_tpr(s_in, s_out):.3f} | "
                  f"{np.mean(s_out > det.threshold):.3f} |")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
