"""Image-only vs image + metadata fusion, 5-fold group-aware cross-validation, on two real datasets.

    python benchmarks/fusion.py                  # both datasets, the figures to report (CPU, < 15 min)
    python benchmarks/fusion.py --quick          # a reduced check that the benchmark runs (2 folds, 1 epoch)
    python benchmarks/fusion.py --dataset ham    # one dataset

Datasets (../shared/data, see its README):
  * HAM10000 subset: 100 dermoscopy images (one per lesion), melanoma vs nevus; metadata age, sex, site.
  * NIH ChestX-ray14 "NIH1000": 1000 64 px radiographs of 264 patients, 14 findings (multi-label);
    metadata age, sex, view position (AP/PA).

Protocol, per dataset:
  * The shipped config (``configs/ham10000_fusion.yaml`` / ``configs/nih_fusion.yaml``) is the fusion model;
    the image-only model is the same config without ``data.metadata`` (same backbone, epochs, seed, folds).
  * ``kfold_indices``: 5 folds by group (lesion / patient), stratified by label. For each fold the held-out
    part is the test set; the rest is split again by group into train (80 %) and validation (20 %, checkpoint
    choice and thresholds). Both models are trained with ``medlens.train`` on identical splits.
  * Images are decoded and resized once (``transforms.geometry``, the same function training uses) and passed
    in memory, so the 20 trainings do not decode the same JPEGs 20 times.
  * Figures: test AUROC (macro over labels for NIH) per fold, mean +- std over folds; a 95 % bootstrap CI of
    the cross-validated mean AUROC (patients/lesions resampled with replacement inside each fold's test part,
    ``--boot`` times), and the same paired bootstrap for the difference fusion - image-only. Fusion "helps"
    only when that difference's CI lies above 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

DATASETS = {
    "ham": {"config": ROOT / "configs" / "ham10000_fusion.yaml", "title": "HAM10000 subset: melanoma vs nevus (age, sex, site)"},
    "nih": {"config": ROOT / "configs" / "nih_fusion.yaml", "title": "NIH ChestX-ray14 NIH1000: 14 findings (age, sex, view)"},
}


@dataclass
class FoldResult:
    fold: int
    auroc: dict[str, float | None]  # model -> test AUROC (macro)
    probs: dict[str, np.ndarray] = field(default_factory=dict)
    targets: np.ndarray | None = None
    groups: np.ndarray | None = None
    sizes: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # process CPU time (all threads)


# ------------------------------------------------------------------------------------------- AUROC
def _auroc(s: np.ndarray, y: np.ndarray) -> float:
    """Rank AUROC with average ranks for ties (NaN if one class is absent)."""
    from scipy.stats import rankdata

    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def macro_auroc(probs: np.ndarray, targets: np.ndarray, task: str, labels: list[int] | None = None) -> float:
    """Binary: AUROC of the positive class; multi-label: mean over ``labels`` (default all) with both classes present."""
    if task == "binary":
        known = ~np.isnan(targets[:, 1])
        return _auroc(probs[known, 0], targets[known, 1] == 1)
    vals = []
    for j in range(targets.shape[1]) if labels is None else labels:
        known = ~np.isnan(targets[:, j])
        a = _auroc(probs[known, j], targets[known, j] == 1)
        if a == a:
            vals.append(a)
    return float(np.mean(vals)) if vals else float("nan")


def evaluable_labels(table, folds, min_positives: int) -> list[int]:
    """Multi-label: labels with at least ``min_positives`` positives (and as many negatives) in every fold's test part.

    A label with one or two positives per fold gives a per-fold AUROC that is mostly noise, and in bootstrap
    resamples it drops in and out of the macro average (no positive drawn), which biases the interval.
    """
    t = table.targets
    ok = []
    for j in range(t.shape[1]):
        pos = [int(np.nansum(t[s.test, j] == 1)) for _, s in folds]
        neg = [int(np.nansum(t[s.test, j] == 0)) for _, s in folds]
        if min(pos) >= min_positives and min(neg) >= min_positives:
            ok.append(j)
    return ok


def bootstrap(folds: list[FoldResult], models: list[str], task: str, n_boot: int, seed: int, labels: list[int] | None = None) -> dict[str, np.ndarray]:
    """Paired cluster bootstrap of the mean-over-folds AUROC: groups resampled within each fold's test part."""
    rng = np.random.default_rng(seed)
    prepared = []
    for f in folds:
        uniq, inv = np.unique(f.groups.astype(str), return_inverse=True)
        members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
        prepared.append((f, members))
    out = {m: np.full(n_boot, np.nan) for m in models}
    for b in range(n_boot):
        per_model: dict[str, list[float]] = {m: [] for m in models}
        for f, members in prepared:
            pick = rng.integers(0, len(members), len(members))
            idx = np.concatenate([members[g] for g in pick])
            for m in models:
                per_model[m].append(macro_auroc(f.probs[m][idx], f.targets[idx], task, labels))
        for m in models:
            v = [x for x in per_model[m] if x == x]
            out[m][b] = np.mean(v) if v else np.nan
    return out


def ci(x: np.ndarray) -> tuple[float, float]:
    x = x[~np.isnan(x)]
    return float(np.percentile(x, 2.5)), float(np.percentile(x, 97.5))


# --------------------------------------------------------------------------------------------- data
def load_in_memory(cfg):
    """Read the dataset, decode and resize every image once; the same table with uint8 images in memory."""
    from medlens.data.io import load_image
    from medlens.data.readers import read_dataset
    from medlens.data.samples import SampleTable
    from medlens.data.transforms import geometry, preprocessing_from_config

    table = read_dataset(cfg.data)
    pp = preprocessing_from_config(cfg.data)
    images = np.stack([geometry(load_image(p), pp) for p in table.images])
    if images.shape[-1] == 1:
        images = images[..., 0]
    mem = SampleTable(table.label_space, table.ids, images, table.targets, table.groups, table.splits, table.metadata, table.source)
    return mem


def fold_splits(table, folds: int, seed: int, val_fraction: float):
    """(fold, Splits) per fold: held-out fold = test; the rest split by group into train / val."""
    from medlens.data.splits import Splits, kfold_indices, split_indices

    out = []
    for k, (rest, test) in enumerate(kfold_indices(table, folds, seed)):
        sub = split_indices(table.subset(rest), "group", val_fraction=val_fraction, test_fraction=0.0, seed=seed + 1 + k)
        train = np.sort(np.concatenate([sub.train, sub.test]))  # iterative stratification may leave a few in "test"
        out.append((k, Splits(rest[train], rest[sub.val], test, "kfold")))
    return out


# ---------------------------------------------------------------------------------------------- run
def run_dataset(key: str, args, work: Path) -> dict:
    from medlens.config import load_config
    from medlens.data.splits import find_group_leaks
    from medlens.training import train

    spec = DATASETS[key]
    overrides = [
        "trainer.progress_bar=false", "trainer.calibrate=false", "tracking.backends=[csv]",
        f"output.dir={work / key}", "output.overwrite=true", f"seed={args.seed}",
    ]
    if args.backbone:
        overrides.append(f"model.backbone={args.backbone}")
    epochs = args.epochs or (1 if args.quick else None)
    if epochs:
        overrides.append(f"trainer.max_epochs={epochs}")
    if args.image_size:
        overrides.append(f"data.image_size={args.image_size}")
    overrides += args.overrides
    base = load_config(spec["config"], overrides)
    if base.data.metadata is None:
        raise ValueError(f"{spec['config']}: the fusion config has no data.metadata section")
    t0 = time.perf_counter()
    table = load_in_memory(base)
    if args.quick and len(table) > 300:
        table = table.subset(np.sort(np.random.default_rng(args.seed).choice(len(table), 300, replace=False)))
    decode_s = time.perf_counter() - t0
    task = table.label_space.task
    variants = {"image": base.model_copy(update={"data": base.data.model_copy(update={"metadata": None})}, deep=True), "fusion": base}
    models = list(variants)
    folds = fold_splits(table, args.folds, args.seed, val_fraction=0.2)[: args.max_folds]
    names = list(table.label_space.names)
    labels = None if task == "binary" else evaluable_labels(table, folds, args.min_positives)
    if labels is not None and not labels:
        raise ValueError(f"{key}: no label has {args.min_positives} positives in every fold; lower --min-positives")
    print(f"\n== {spec['title']}")
    print(f"   {len(table)} images, {len(set(table.groups.tolist()))} groups, task {task}, {args.folds} folds, "
          f"backbone {base.model.backbone} at {base.data.image_size} px, {base.trainer.max_epochs} epochs; "
          f"metadata numeric {base.data.metadata.numeric}, categorical {base.data.metadata.categorical} "
          f"(images decoded in {decode_s:.1f} s)", flush=True)
    if labels is not None:
        left = [n for j, n in enumerate(names) if j not in labels]
        print(f"   AUROC: macro over the {len(labels)} labels with >= {args.min_positives} positives in every test fold"
              + (f" (left out: {', '.join(left)})" if left else ""), flush=True)
    results: list[FoldResult] = []
    for k, splits in folds:
        assert not find_group_leaks(table, splits), "group leak between train/val/test"
        fr = FoldResult(k, {}, sizes=splits.sizes())
        for name, cfg in variants.items():
            cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"name": f"fold{k}_{name}"})}, deep=True)
            t, c = time.perf_counter(), time.process_time()
            res = train(cfg, splits=splits, table=table)
            fr.seconds[name] = time.perf_counter() - t
            fr.cpu_seconds[name] = time.process_time() - c
            pred = np.load(res.run_dir / "predictions.npz", allow_pickle=False)
            fr.probs[name] = pred["test_probs"]
            if fr.targets is None:
                fr.targets = pred["test_targets"]
                fr.groups = table.groups[splits.test]
            fr.auroc[name] = macro_auroc(fr.probs[name], fr.targets, task, labels)
        results.append(fr)
        print(f"   fold {k}: train/val/test {fr.sizes['train']}/{fr.sizes['val']}/{fr.sizes['test']}  "
              + "  ".join(f"{m} AUROC {fr.auroc[m]:.3f} ({fr.seconds[m]:.0f} s, cpu {fr.cpu_seconds[m]:.0f} s)" for m in models), flush=True)
    boots = bootstrap(results, models, task, args.boot, args.seed, labels)
    diff = boots["fusion"] - boots["image"]
    summary: dict = {"dataset": key, "title": spec["title"], "n_images": len(table), "task": task, "folds": args.folds,
                     "backbone": base.model.backbone, "image_size": base.data.image_size, "epochs": base.trainer.max_epochs,
                     "boot": args.boot, "labels": names if labels is None else [names[j] for j in labels], "models": {}, "per_fold": [{"fold": f.fold, "sizes": f.sizes, "auroc": f.auroc, "seconds": f.seconds, "cpu_seconds": f.cpu_seconds} for f in results]}
    for m in models:
        a = np.asarray([f.auroc[m] for f in results], dtype=float)
        lo, hi = ci(boots[m])
        summary["models"][m] = {"mean": float(np.nanmean(a)), "std": float(np.nanstd(a, ddof=1)) if len(a) > 1 else 0.0,
                                "ci95": [lo, hi], "per_fold": a.tolist()}
    d = np.asarray([f.auroc["fusion"] - f.auroc["image"] for f in results], dtype=float)
    dlo, dhi = ci(diff)
    summary["difference"] = {"mean": float(np.nanmean(d)), "std": float(np.nanstd(d, ddof=1)) if len(d) > 1 else 0.0,
                             "ci95": [dlo, dhi], "p_boot_le_0": float(np.mean(diff[~np.isnan(diff)] <= 0)),
                             "folds_improved": int(np.sum(d > 0))}
    summary["verdict"] = verdict(summary["difference"], len(results))
    summary["wall_s"] = time.perf_counter() - t0
    print_summary(summary)
    return summary


def verdict(d: dict, n_folds: int) -> str:
    lo, hi = d["ci95"]
    fig = f"{d['mean']:+.3f} AUROC (95% CI {lo:+.3f} to {hi:+.3f}; fusion better in {d['folds_improved']}/{n_folds} folds)"
    if lo > 0:
        return f"fusion scored higher: {fig}; the CI excludes 0, so on this data fusion helps"
    if hi < 0:
        return f"fusion scored lower: {fig}; the CI excludes 0, so on this data fusion hurts"
    return f"no clear difference: {fig}; the CI includes 0, so these figures show neither a gain nor a loss"


def print_summary(s: dict) -> None:
    print(f"   {'model':<8} {'AUROC mean +- std (folds)':<28} {'95% bootstrap CI':<18} per fold")
    for m, r in s["models"].items():
        pf = " ".join(f"{x:.3f}" for x in r["per_fold"])
        print(f"   {m:<8} {r['mean']:.3f} +- {r['std']:.3f}{'':<14} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]   {pf}")
    d = s["difference"]
    print(f"   {'diff':<8} {d['mean']:+.3f} +- {d['std']:.3f}{'':<13} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]   "
          f"(fusion - image; bootstrap P(diff <= 0) = {d['p_boot_le_0']:.3f})")
    print(f"   -> {s['verdict']}  [{s['wall_s']:.0f} s]", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=["ham", "nih", "both"], default="both")
    ap.add_argument("--folds", type=int, default=None, help="cross-validation folds (default 5; 2 with --quick)")
    ap.add_argument("--epochs", type=int, default=None, help="override trainer.max_epochs of both configs")
    ap.add_argument("--backbone", default=None, help="override model.backbone (timm name)")
    ap.add_argument("--image-size", type=int, default=None, help="override data.image_size")
    ap.add_argument("--boot", type=int, default=None, help="bootstrap resamples (default 1000; 200 with --quick)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-positives", type=int, default=5, help="multi-label: labels need this many positives in every test fold")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override for both datasets, e.g. model.small_input=false")
    ap.add_argument("--quick", action="store_true", help="reduced check: 2 folds, 1 epoch, NIH cut to 300 images")
    ap.add_argument("--max-folds", type=int, default=None, help="run only the first N folds (timing checks)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--keep-runs", type=Path, default=None, help="keep the run folders here (default: a temp dir)")
    args = ap.parse_args(argv)
    args.folds = args.folds or (2 if args.quick else 5)
    args.boot = args.boot or (200 if args.quick else 1000)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("medlens", "lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"fusion benchmark: torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs"
          + (" (QUICK: reduced, not the reported figures)" if args.quick else ""))
    keys = ["ham", "nih"] if args.dataset == "both" else [args.dataset]
    t0, c0 = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory(prefix="medlens-fusion-") as tmp:
        work = args.keep_runs or Path(tmp)
        summaries = [run_dataset(k, args, work) for k in keys]
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"\n== summary ({total:.0f} s total wall time, {cpu:.0f} s CPU time)")
    print("   CIs resample the test patients/lesions of each fold (paired for the difference); they do not include the\n"
          "   variability of training itself (one seed per fold), so a CI that barely excludes 0 is weak evidence.")
    for s in summaries:
        print(f"   {s['dataset']}: image {s['models']['image']['mean']:.3f}, fusion {s['models']['fusion']['mean']:.3f} -> {s['verdict']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"total_wall_s": total, "total_cpu_s": cpu, "quick": args.quick, "results": summaries}, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
