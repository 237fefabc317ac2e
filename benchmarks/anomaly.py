"""Unsupervised anomaly detection: U-Net AE and reversed AE vs. a PCA reconstruction-error baseline.

    python benchmarks/anomaly.py                       # both datasets, the figures to report (CPU)
    python benchmarks/anomaly.py --quick               # a reduced check that it runs (few images, 1 epoch)
    python benchmarks/anomaly.py --dataset pneumonia   # one dataset (pneumonia, breast, nih)
    python benchmarks/anomaly.py --json out.json --figures figs/   # also write the numbers and histograms

Datasets (../shared/data, official MedMNIST 28 px files and splits; NIH1000's own train/valid/test folders):
  * PneumoniaMNIST: normal = ``normal`` (1214 training images), abnormal = ``pneumonia``.
  * BreastMNIST (ultrasound): normal = ``normal, benign`` (399 training images), abnormal = ``malignant``.
  * NIH1000 (chest X-ray, 64 px, grey): normal = ``0_normal`` ("No Finding"), abnormal = ``1_abnormal`` (any of
    the 14 findings). Autoencoder rows are run on the MedMNIST files only (their shipped configs).

Protocol, per dataset (identical for every method):
  * Fit on the NORMAL images of the official training split only; the threshold is fitted on the validation
    normals at a 5 % false-positive rate; test = the whole official test split (normal vs. abnormal).
  * Autoencoders: ``medlens.train`` with the shipped configs ``configs/anomaly_pneumoniamnist.yaml`` (U-Net AE)
    and ``configs/anomaly_pneumoniamnist_reversed.yaml`` (reversed AE); for BreastMNIST only the data source and
    normal label change. Wall time = the whole run (data, training, threshold, evaluation, bundle).
  * PCA: the principal components of the training normals (pixels in [0, 1]) explaining ``--pca-variance`` of
    their variance (90 %: chosen without labels); reconstruction = projection onto them.
  * Every method is scored with both pixel error maps -- squared error (``mse``) and local SSIM dissimilarity
    (``ssim``) -- each averaged over the image; the configs' own choice is ``ssim``. AUROC with a 95 %
    bootstrap CI (test images resampled, ``--boot`` times), average precision, and sensitivity/specificity at the
    validation-normal threshold.
  * Validation AUROC (validation normals vs. abnormal, never used for any choice) is shown beside the test one:
    PneumoniaMNIST's validation images come from the training cohort, its test images from a separate one.
  * Feature detector (``model.detector: patchcore``): ``medlens pretrain`` (SimCLR, ``--pretrain-epochs``) on the
    training NORMALS only (``pretrain.rows: task_training``; no label beyond the normal-only protocol, no test
    image), then one pass over the same normals fills the memory (coreset ``--memory-size`` patches). Stem, input
    normalisation (``model.input_norm: image`` standardises each image by its own mean and std, against the
    cohort shift above) and image score (mean or max patch distance) are per dataset (``DETECTOR``), chosen on
    validation AUROC only; the other score is shown as a second row, not chosen. Wall time includes the
    pretraining. A second detector does the same with a randomly initialised backbone (no pretraining).
  * Reference rows, not anomaly detectors: minus the image's own pixel standard deviation, and minus its
    fine-detail energy (image minus its 1 px Gaussian blur), which need no model. They show how much of a score
    can come from global image statistics (smooth, low-contrast image = "abnormal").
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
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDLENS_SHARED_DATA", ROOT.parent / "shared" / "data"))

DATASETS = {
    "pneumonia": {"flag": "pneumoniamnist", "normal": "normal", "title": "PneumoniaMNIST: normal vs pneumonia",
                  "path": DATA / "medmnist_pneumoniamnist" / "pneumoniamnist.npz"},
    "breast": {"flag": "breastmnist", "normal": "normal, benign", "title": "BreastMNIST: normal/benign vs malignant",
               "path": DATA / "medmnist_breastmnist" / "breastmnist.npz"},
    "nih": {"folder": True, "normal": "0_normal", "title": "NIH1000 (64 px): no finding vs any finding", "size": 64,
            "path": DATA / "nih_chestxray14_nih1000_64px"},
}
# The feature detector's settings per dataset, chosen on VALIDATION AUROC only (random-init ResNet-18, off-line
# exploration; the test split was not read): PneumoniaMNIST 0.939 with per-image standardisation, stride reduction 2,
# levels 2-3 and the mean patch distance (0.44-0.54 without the standardisation); on NIH1000 no setting beat 0.45,
# and the standardisation did not help (0.41 vs 0.44), so it keeps the first recipe. BreastMNIST was not explored.
DETECTOR = {
    "pneumonia": {"small_input": 2, "input_norm": "image", "score": "mean"},
    "breast": {"small_input": 2, "input_norm": "image", "score": "mean"},
    "nih": {"small_input": "auto", "input_norm": "dataset", "score": "max"},
}
CONFIGS = {"unet_ae": ROOT / "configs" / "anomaly_pneumoniamnist.yaml", "reversed_ae": ROOT / "configs" / "anomaly_pneumoniamnist_reversed.yaml"}
MAPS = ("mse", "ssim")


# ------------------------------------------------------------------------------------------ scoring
def _scores(x01: np.ndarray, rec01: np.ndarray, kind: str) -> np.ndarray:
    """Mean error-map score per image, through medlens' own error maps (the ones bundles use)."""
    import torch

    from medlens.models.autoencoder import ScoreSpec, error_map, scores_from_error_maps

    spec = ScoreSpec(error_map=kind, method="mean", mean=(0.0,), std=(1.0,))  # inputs already in [0, 1]
    out = []
    for i in range(0, len(x01), 512):
        x = torch.from_numpy(x01[i : i + 512, None].astype(np.float32))
        r = torch.from_numpy(rec01[i : i + 512, None].astype(np.float32))
        out.append(scores_from_error_maps(error_map(x, r, spec), spec).numpy())
    return np.concatenate(out)


def _summary(val: np.ndarray, yv: np.ndarray, test: np.ndarray, y: np.ndarray, boot: int, fpr: float) -> dict:
    """Threshold on the validation normals; validation AUROC (information only) and test metrics."""
    from medlens.tasks.anomaly.threshold import fit_threshold
    from medlens.tasks.classification.metrics import average_precision, binary_auroc

    thr, _ = fit_threshold(val[~yv], fpr)
    pred = test >= thr
    rng = np.random.default_rng(0)
    aucs = []
    for _ in range(boot):
        idx = rng.integers(0, len(y), len(y))
        if y[idx].any() and (~y[idx]).any():
            aucs.append(binary_auroc(test[idx], y[idx]))
    lo, hi = (np.percentile(aucs, [2.5, 97.5]) if aucs else (float("nan"), float("nan")))
    return {
        "val_auroc": binary_auroc(val, yv), "auroc": binary_auroc(test, y), "auroc_ci": [float(lo), float(hi)], "average_precision": average_precision(test, y),
        "sensitivity": float(pred[y].mean()), "specificity": float((~pred[~y]).mean()), "threshold": thr,
        "mean_score_normal": float(test[~y].mean()), "mean_score_abnormal": float(test[y].mean()),
    }


def _high_freq(x01: np.ndarray) -> np.ndarray:
    """Mean squared difference between each image and its Gaussian blur (sigma 1 px): fine-detail energy."""
    import cv2

    return np.array([((im - cv2.GaussianBlur(im, (5, 5), 1.0)) ** 2).mean() for im in x01.astype(np.float32)])


# ------------------------------------------------------------------------------------------ methods
def run_pca(xtr: np.ndarray, xval: np.ndarray, xte: np.ndarray, variance: float) -> tuple[dict, dict, float, int]:
    """PCA on flattened [0, 1] training normals; returns per-map (validation scores, test scores), seconds, k."""
    t = time.perf_counter()
    a = xtr.reshape(len(xtr), -1)
    mu = a.mean(0)
    _, s, vt = np.linalg.svd(a - mu, full_matrices=False)
    ratio = np.cumsum(s**2) / np.sum(s**2)
    k = int(np.searchsorted(ratio, variance) + 1)
    v = vt[:k]

    def rec(x: np.ndarray) -> np.ndarray:
        f = x.reshape(len(x), -1)
        return ((f - mu) @ v.T @ v + mu).reshape(x.shape)

    val = {m: _scores(xval, rec(xval), m) for m in MAPS}
    test = {m: _scores(xte, rec(xte), m) for m in MAPS}
    return val, test, time.perf_counter() - t, k


def run_autoencoder(name: str, ds: dict, out_dir: Path, epochs: int | None, max_samples: int | None) -> tuple[dict, dict, float, dict]:
    """Train with ``medlens.train`` (shipped config), then score val normals and test with both error maps."""
    import torch

    from medlens import load_config, train
    from medlens.bundle import load_bundle
    from medlens.evaluation import dataset_splits
    from medlens.models.autoencoder import ScoreSpec, anomaly_scores

    over = [
        f"data.path={ds['path']}", f"data.flag={ds['flag']}", f"data.normal_label={ds['normal']}",
        f"output.dir={out_dir}", f"output.name={name}_{ds['flag']}", "output.overwrite=true",
        "trainer.progress_bar=false", "tracking.backends=[csv]",
    ]
    if epochs is not None:
        over.append(f"trainer.max_epochs={epochs}")
    if max_samples is not None:
        over.append(f"data.max_samples={max_samples}")
    cfg = load_config(CONFIGS[name], over)
    t = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - t
    bundle = load_bundle(result.bundle_dir)
    table, splits = dataset_splits(cfg)
    pp = bundle.manifest.preprocessing
    base = ScoreSpec.from_dict(bundle.manifest.anomaly)
    from medlens.data.transforms import make_transform

    tf = make_transform(pp)

    def score(rows: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.stack([tf(table.images[i]) for i in rows]))
        out: dict[str, list] = {m: [] for m in MAPS}
        for i in range(0, len(x), 256):
            for m in MAPS:
                spec = ScoreSpec(error_map=m, method="mean", mean=base.mean, std=base.std, ssim_window=base.ssim_window)
                out[m].append(anomaly_scores(bundle.model, x[i : i + 256], spec)[0].numpy())
        return {m: np.concatenate(v) for m, v in out.items()}

    info = {"epochs_run": len(result.history), "train_normals": result.data_summary.get("train_normals"),
            "bundle_test_auroc": result.metrics.get("test", {}).get("auroc")}
    return score(splits.val), score(splits.test), seconds, info


def data_section(ds: dict, max_samples: int | None) -> dict:
    """The medlens ``data`` section of a benchmark dataset (anomaly view, grey, its own splits)."""
    if ds.get("folder"):
        d = {"kind": "folder", "root": str(ds["path"])}
    else:
        d = {"kind": "medmnist", "path": str(ds["path"]), "flag": ds["flag"], "download": False}
    d.update({"task": "anomaly", "normal_label": ds["normal"], "image_size": ds.get("size", 28), "channels": 1, "augment": "none"})
    if max_samples is not None:
        d["max_samples"] = max_samples
    return d


def detector_settings(key: str, args) -> dict:
    """The dataset's feature-detector settings (``DETECTOR``), with the command line's overrides."""
    d = dict(DETECTOR[key])
    for k in ("small_input", "input_norm", "score"):
        v = getattr(args, f"patch_{k}")
        if v is not None:
            d[k] = int(v) if k == "small_input" and v.isdigit() else v
    return d


def run_patchcore(ds: dict, out_dir: Path, args, pretrained: bool = True, settings: dict | None = None) -> tuple[dict, dict, float, dict]:
    """``medlens pretrain`` on the training normals, then the patchcore detector; (val, test) scores for max and mean."""
    import torch

    from medlens import config_from_dict, train
    from medlens.bundle import load_bundle
    from medlens.data.io import load_image
    from medlens.data.transforms import make_transform
    from medlens.evaluation import dataset_splits
    from medlens.models.classifier import build_backbone
    from medlens.pretrain import pretrain, write_backbone

    size = ds.get("size", 28)
    st = settings or {"small_input": "auto", "input_norm": "dataset", "score": "max"}
    score_keys = {"anomaly_score": "mean"} if st["score"] == "mean" else {"anomaly_score": "percentile", "score_percentile": 100.0}
    tag = f"{'ssl' if pretrained else 'random'}_{ds.get('flag', 'nih')}"
    raw = {
        "seed": 0, "data": {**data_section(ds, args.max_samples), "batch_size": 64},
        "model": {"backbone": args.backbone, "detector": "patchcore", "memory_size": args.memory_size, "small_input": st["small_input"],
                  "input_norm": st["input_norm"], **score_keys, "anomaly_fpr": args.fpr},
        "trainer": {"max_epochs": 1, "progress_bar": False},
        "pretrain": {"epochs": args.pretrain_epochs, "batch_size": 128, "rows": "task_training", "name": f"pretrain_{tag}"},
        "tracking": {"backends": ["csv"]},
        "output": {"dir": str(out_dir), "name": f"patchcore_{tag}", "overwrite": True},
    }
    t = time.perf_counter()
    if pretrained:
        weights = pretrain(config_from_dict(raw)).weights
    else:
        torch.manual_seed(0)
        net, red, _ = build_backbone(args.backbone, 1, size, st["small_input"])
        weights = write_backbone(net.state_dict(), out_dir / f"random_{tag}", {"backbone": args.backbone, "in_chans": 1, "stem_reduction": red})
    raw["model"]["pretrained"] = str(weights)
    cfg = config_from_dict(raw)
    result = train(cfg)
    seconds = time.perf_counter() - t
    bundle = load_bundle(result.bundle_dir)
    table, splits = dataset_splits(cfg)
    tf = make_transform(bundle.manifest.preprocessing)

    def score(rows: np.ndarray) -> dict[str, np.ndarray]:
        out: dict[str, list] = {"max": [], "mean": []}
        for i in range(0, len(rows), 128):
            imgs = [table.images[j] if table.in_memory else load_image(table.images[j]) for j in rows[i : i + 128]]
            with torch.inference_mode():
                maps = bundle.model(torch.from_numpy(np.stack([tf(im) for im in imgs]))).flatten(1)
            out["max"].append(maps.max(1).values.numpy())
            out["mean"].append(maps.mean(1).numpy())
        return {k: np.concatenate(v) for k, v in out.items()}

    info = {"memory": int(bundle.model.memory.shape[0]), "bundle_test_auroc": result.metrics.get("test", {}).get("auroc"),
            "pretrain_epochs": args.pretrain_epochs if pretrained else 0}
    return score(splits.val), score(splits.test), seconds, info


# ------------------------------------------------------------------------------------------ Kermany (real resolution)
KERMANY = DATA / "kermany_chestxray_224"
KERMANY_CONFIG = ROOT / "configs" / "anomaly_kermany.yaml"
AE_DEPTH = {128: 4, 224: 5}  # stride-2 stages: an 8x8 (128 px) or 7x7 (224 px) map before the dense latent


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 0.2 s from /proc), in MiB."""

    def __enter__(self) -> PeakRSS:
        import threading

        self.peak, self._stop = self._rss(), threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    @staticmethod
    def _rss() -> float:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def kermany_config(size: int, name: str, out_dir: Path, extra: list[str]):
    """The shipped Kermany anomaly config at ``size`` px with a candidate's overrides."""
    import yaml

    from medlens import load_config
    from medlens.tasks.anomaly import AUTOENCODER_KEYS

    over = [f"data.image_size={size}", f"output.dir={out_dir}", f"output.name={name}", "output.overwrite=true",
            "trainer.progress_bar=false", "tracking.backends=[csv]", *extra]
    path = KERMANY_CONFIG
    if "task_options.detector=patchcore" in extra:  # the feature detector refuses the autoencoder's options
        raw = yaml.safe_load(KERMANY_CONFIG.read_text())
        raw["task_options"] = {k: v for k, v in raw["task_options"].items() if k not in AUTOENCODER_KEYS}
        path = out_dir / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_config(path, over)


def kermany_candidates(args, out_dir: Path) -> list[tuple[str, int, list[str]]]:
    """(row label, input size, overrides) of every candidate, cheapest first."""
    rows = []
    sizes = args.model_sizes or args.sizes
    norm_random, norm_ssl = args.patch_input_norm or "image", args.ssl_input_norm
    for size in sizes:
        pc = ["task_options.detector=patchcore", f"model.backbone={args.backbone}", "trainer.max_epochs=1", f"task_options.memory_size={args.memory_size}"]
        for score in args.patch_scores:
            for w in args.patch_positions:
                s = ["task_options.anomaly_score=mean"] if score == "mean" else ["task_options.anomaly_score=percentile", "task_options.score_percentile=100"]
                if w > 0:  # position-aware memory: a patch is compared mostly with normal patches at its place
                    s.append(f"task_options.patch_position={w:g}")
                where = f", place weight {w:g}" if w > 0 else ""
                if "random" in args.detectors:
                    rows.append((f"PatchCore, random-init {args.backbone}, {score} patch dist." + ("" if norm_random == "image" else ", dataset norm.") + where,
                                 size, [*pc, f"task_options.input_norm={norm_random}", *s, "@random"]))
                if "ssl" in args.detectors:
                    rows.append((f"PatchCore, SimCLR {args.backbone} ({args.pretrain_epochs} ep. at {args.pretrain_size} px), {score} patch dist."
                                 + (", per-image std." if norm_ssl == "image" else ", dataset norm.") + where, size,
                                 [*pc, f"task_options.input_norm={norm_ssl}", *s, "@ssl"]))
    for size in sizes:
        for name in args.models:
            kind = {"unet_ae": "unet", "reversed_ae": "reversed"}[name]
            over = [f"task_options.autoencoder={kind}", f"task_options.ae_depth={AE_DEPTH.get(size, 4)}"]
            if args.epochs is not None:
                over.append(f"trainer.max_epochs={args.epochs}")
            rows.append(({"unet": "U-Net AE", "reversed": "reversed AE"}[kind], size, over))
    return rows


def kermany_backbone(kind: str, args, out_dir: Path, norm: str = "image") -> tuple[Path, float]:
    """The feature detector's backbone file and the seconds it took: ``random`` (seeded init) or ``ssl`` (SimCLR on
    the training normals at ``--pretrain-size`` px, its views normalised as the detector's ``input_norm``). Reused
    from ``out_dir`` when a staged run made it already."""
    import torch

    from medlens.models.classifier import build_backbone
    from medlens.pretrain import pretrain, write_backbone

    folder = out_dir / (f"{kind}_backbone_{args.backbone}" + (f"_{args.pretrain_epochs}ep_{args.pretrain_size}px" + ("_imgnorm" if norm == "image" else "")
                                                             if kind == "ssl" else ""))
    done = folder / "seconds.txt"
    if done.exists():
        return folder / "backbone.safetensors", float(done.read_text())
    t = time.perf_counter()
    if kind == "random":
        torch.manual_seed(0)
        net, red, _ = build_backbone(args.backbone, 1, max(args.sizes), "auto")
        weights = write_backbone(net.state_dict(), folder, {"backbone": args.backbone, "in_chans": 1, "stem_reduction": red})
    else:
        cfg = kermany_config(args.pretrain_size, "kermany_ssl", out_dir, [
            f"model.backbone={args.backbone}", f"pretrain.epochs={args.pretrain_epochs}", "pretrain.rows=task_training",
            "pretrain.batch_size=64", f"pretrain.name={folder.name}", "task_options.detector=patchcore", f"task_options.input_norm={norm}"])
        weights = pretrain(cfg).weights
    done.write_text(f"{time.perf_counter() - t:.1f}")
    return Path(weights), float(done.read_text())


def read_grey(paths, size: int) -> np.ndarray:
    """[0, 1] grey images at ``size`` px (area resize of the files), for the model-free rows and PCA."""
    import cv2

    from medlens.data.io import load_image

    def one(p: str) -> np.ndarray:
        im = load_image(p)
        im = cv2.cvtColor(im[..., :3], cv2.COLOR_RGB2GRAY) if im.ndim == 3 else im
        return cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) if im.shape != (size, size) else im

    return np.stack([one(p) for p in paths]).astype(np.float32) / 255.0


def inference_cost(bundle: Path, paths: list[str]) -> dict:
    """ms per image (PyTorch and ONNX Runtime, batch 1 and 32, decoding excluded) and the ONNX parity of the score
    and of the error map, on ``paths`` (test images), for one bundle."""
    import tempfile as _tf

    from medlens.data.io import load_image
    from medlens.export import export_onnx
    from medlens.inference import Predictor
    from medlens.tasks.anomaly.explain import error_map_array

    imgs = [load_image(p) for p in paths]
    out: dict = {"images": len(imgs), "bundle_mib": round(sum(f.stat().st_size for f in bundle.iterdir() if f.is_file()) / 2**20, 1)}
    with _tf.TemporaryDirectory() as tmp:
        onnx_dir = Path(tmp) / "onnx"
        export_onnx(bundle, onnx_dir)
        out["onnx_mib"] = round((onnx_dir / "model.onnx").stat().st_size / 2**20, 1)
        preds = {}
        for name, backend in (("torch", "torch"), ("onnx", "onnx")):
            for bs in (1, 32):
                p = Predictor.from_bundle(bundle if backend == "torch" else onnx_dir, backend=backend, batch_size=bs)
                x = np.stack([p.transform(im) for im in imgs])
                p.run(x[:bs], None)  # warm-up
                t = time.perf_counter()
                raw = np.concatenate([p.run(x[i : i + bs], None) for i in range(0, len(x), bs)])
                out[f"{name}_ms_per_image_batch{bs}"] = round(1000 * (time.perf_counter() - t) / len(x), 1)
            preds[name] = (p, raw)
        out["onnx_max_abs_score_diff"] = float(np.abs(preds["torch"][1] - preds["onnx"][1]).max())
        diffs = []
        for im in imgs[:16]:
            a, _ = error_map_array(preds["torch"][0], im)
            b, _ = error_map_array(preds["onnx"][0], im)
            diffs.append(float(np.abs(a - b).max() / max(float(np.abs(a).max()), 1e-12)))
        out["onnx_max_rel_map_diff"] = max(diffs)
    return out


def benchmark_kermany(args, out_dir: Path) -> dict:
    """Every candidate on the Kermany split of ``configs/anomaly_kermany.yaml``; the winner is chosen on validation."""
    from medlens import train
    from medlens.evaluation import dataset_splits

    if not KERMANY.exists():
        raise SystemExit(f"{KERMANY} not found (set MEDLENS_SHARED_DATA)")
    os.environ.setdefault("MEDLENS_DATA_DIR", str(DATA))
    cfg = kermany_config(args.sizes[0], "probe", out_dir, [])
    table, splits = dataset_splits(cfg)
    normal = table.targets[:, 0] == 1
    tr = np.asarray(splits.train)[normal[splits.train]]
    va, te = np.asarray(splits.val), np.asarray(splits.test)
    yv, y = ~normal[va], ~normal[te]
    rows: list[dict] = []
    cache_file = out_dir / "kermany_rows.jsonl"  # one line per finished row: a staged or stopped run goes on from here
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = {}
    if cache_file.exists():
        for line in cache_file.read_text().splitlines():
            r = json.loads(line)
            cache[(r["method"], r["size"], r["map"])] = r

    def cached(label: str, size: int, kind: str) -> bool:
        r = cache.get((label, size, kind))
        if r is not None:
            rows.append({**r, "_scores": np.asarray(r.pop("test_scores"))})
        return r is not None

    def add(label: str, size: int, kind: str, val: np.ndarray, test: np.ndarray, seconds: float, **info) -> None:
        r = {"method": label, "size": size, "map": kind, "seconds": seconds, **info, **_summary(val, yv, test, y, args.boot, args.fpr)}
        rows.append({**r, "_scores": test})
        with cache_file.open("a") as f:
            f.write(json.dumps({**r, "test_scores": [float(v) for v in test]}, default=float) + "\n")
        print(f"  {label} @ {size} px / {kind}: val {r['val_auroc']:.3f}  test {r['auroc']:.3f}  ({seconds:.0f} s)", file=sys.stderr, flush=True)

    for size in args.sizes:
        if cached("reference: -pixel std (no model)", size, "-"):
            for label, kind in [("reference: -high-freq. energy (no model)", "-"), *[(f"PCA (k=?, {args.pca_variance:.0%} var.)", m) for m in MAPS]]:
                hit = [k for k in cache if k[1] == size and k[2] == kind and k[0].split(" (")[0] == label.split(" (")[0]]
                if hit:
                    cached(*hit[0])
            continue
        xtr, xva, xte = (read_grey([table.images[i] for i in rows_], size) for rows_ in (tr, va, te))
        std_val, std_test = -xva.reshape(len(xva), -1).std(1), -xte.reshape(len(xte), -1).std(1)
        add("reference: -pixel std (no model)", size, "-", std_val, std_test, 0.0)
        add("reference: -high-freq. energy (no model)", size, "-", -_high_freq(xva), -_high_freq(xte), 0.0)
        val, test, sec_pca, k = run_pca(xtr, xva, xte, args.pca_variance)
        for m in MAPS:
            add(f"PCA (k={k}, {args.pca_variance:.0%} var.)", size, m, val[m], test[m], sec_pca)
        del xtr, xva, xte
    for label, size, over in kermany_candidates(args, out_dir):
        extra = [o for o in over if not o.startswith("@")]
        source = next((o[1:] for o in over if o.startswith("@")), None)
        kind = "patch dist." if source else ("mse" if "task_options.anomaly_map=mse" in extra else "ssim")
        if cached(label, size, kind):
            continue
        backbone_seconds = 0.0
        if source is not None:
            norm = next(o.split("=", 1)[1] for o in extra if o.startswith("task_options.input_norm="))
            weights, backbone_seconds = kermany_backbone(source, args, out_dir, norm)
            extra.append(f"model.pretrained={weights}")
        name = f"k{size}_" + "_".join(o.split("=", 1)[1] for o in extra if not o.startswith("model.pretrained"))[:80].replace("/", "-")
        cfg = kermany_config(size, name, out_dir, extra)
        t = time.perf_counter()
        with PeakRSS() as mem:
            result = train(cfg)
        seconds = time.perf_counter() - t + backbone_seconds  # the pretraining counts towards the detector's time
        pred = np.load(result.run_dir / "predictions.npz", allow_pickle=False)
        if list(pred["val_ids"]) != [str(table.ids[i]) for i in va] or list(pred["test_ids"]) != [str(table.ids[i]) for i in te]:
            raise SystemExit(f"{name}: the run's validation/test rows differ from the benchmark's split")
        add(label, size, kind, pred["val_probs"][:, 0].astype(np.float64), pred["test_probs"][:, 0].astype(np.float64), seconds,
            peak_rss_mib=round(mem.peak), bundle=str(result.bundle_dir), overrides=extra, epochs_run=len(result.history))
    best = max((r for r in rows if "bundle" in r), key=lambda r: r["val_auroc"], default=None)
    if best is not None and args.inference_images:
        best["inference"] = inference_cost(Path(best["bundle"]), [str(table.images[i]) for i in te[:: max(1, len(te) // args.inference_images)]])
        print(f"  inference ({best['method']} @ {best['size']} px): {best['inference']}", file=sys.stderr, flush=True)
    return {"dataset": "Kermany chest X-rays (224 px files): normal vs pneumonia", "train_normals": int(len(tr)), "val_normals": int((~yv).sum()),
            "val_abnormal": int(yv.sum()), "test": int(len(y)), "test_abnormal": int(y.sum()), "rows": rows, "test_scores_y": y}


# ------------------------------------------------------------------------------------------ main
def load_split(ds: dict, max_samples: int | None):
    """[0, 1] grey images at the dataset's size: training normals; validation and test images with their abnormal flags."""
    import cv2

    from medlens.config import config_from_dict
    from medlens.data.io import load_image
    from medlens.tasks import read_table

    cfg = config_from_dict({"data": data_section(ds, max_samples)})  # old-style data.normal_label moves to task_options
    data = cfg.data
    table = read_table(cfg)  # the anomaly view: column 0 = normal
    normal = table.targets[:, 0] == 1
    size = data.image_size
    if table.in_memory:
        x = table.images.astype(np.float32) / 255.0
    else:
        def grey(p: str) -> np.ndarray:
            im = load_image(p)
            im = cv2.cvtColor(im[..., :3], cv2.COLOR_RGB2GRAY) if im.ndim == 3 else im
            return cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) if im.shape != (size, size) else im

        x = np.stack([grey(p) for p in table.images]).astype(np.float32) / 255.0
    tr = (table.splits == "train") & normal
    va = table.splits == "val"
    te = table.splits == "test"
    return x[tr], x[va], ~normal[va], x[te], ~normal[te]


def benchmark(key: str, args, out_dir: Path) -> dict:
    if key == "kermany":
        return benchmark_kermany(args, out_dir)
    ds = DATASETS[key]
    if not ds["path"].exists():
        raise SystemExit(f"{ds['path']} not found (set MEDLENS_SHARED_DATA)")
    xtr, xva, yv, xte, y = load_split(ds, args.max_samples)
    rows: list[dict] = []
    val, test, sec, k = run_pca(xtr, xva, xte, args.pca_variance)
    for m in MAPS:
        rows.append({"method": f"PCA (k={k}, {args.pca_variance:.0%} var.)", "map": m, "seconds": sec, "_scores": test[m], **_summary(val[m], yv, test[m], y, args.boot, args.fpr)})
    st = detector_settings(key, args)
    for kind in args.detectors:
        val, test, sec, info = run_patchcore(ds, out_dir, args, pretrained=kind == "ssl", settings=st)
        label = (f"PatchCore, SimCLR backbone ({info['pretrain_epochs']} ep.)" if kind == "ssl" else "PatchCore, random-init backbone") + \
            f" [{info['memory']} patches; stem /{st['small_input']}; {'per-image standardised' if st['input_norm'] == 'image' else 'dataset norm.'}]"
        for m in (st["score"], "max" if st["score"] == "mean" else "mean"):  # the detector's own score first
            rows.append({"method": label, "map": f"patch dist., {m}", "seconds": sec, **info, "_scores": test[m], **_summary(val[m], yv, test[m], y, args.boot, args.fpr)})
    for name in ([] if ds.get("folder") else args.models):
        val, test, sec, info = run_autoencoder(name, ds, out_dir, args.epochs, args.max_samples)
        label = {"unet_ae": "U-Net AE", "reversed_ae": "reversed AE"}[name] + f" ({info['epochs_run']} ep.)"
        for m in MAPS:
            rows.append({"method": label, "map": m, "seconds": sec, **info, "_scores": test[m], **_summary(val[m], yv, test[m], y, args.boot, args.fpr)})
    std_val, std_test = -xva.reshape(len(xva), -1).std(1), -xte.reshape(len(xte), -1).std(1)
    rows.append({"method": "reference: -pixel std (no model)", "map": "-", "seconds": 0.0, "_scores": std_test, **_summary(std_val, yv, std_test, y, args.boot, args.fpr)})
    hf_val, hf_test = -_high_freq(xva), -_high_freq(xte)
    rows.append({"method": "reference: -high-freq. energy (no model)", "map": "-", "seconds": 0.0, "_scores": hf_test, **_summary(hf_val, yv, hf_test, y, args.boot, args.fpr)})
    return {"dataset": ds["title"], "train_normals": int(len(xtr)), "val_normals": int((~yv).sum()), "val_abnormal": int(yv.sum()), "test": int(len(y)),
            "test_abnormal": int(y.sum()), "rows": rows, "test_scores_y": y}


def print_table(res: dict) -> None:
    print(f"\n### {res['dataset']}  (train normals {res['train_normals']}, val {res['val_normals']} normal + {res['val_abnormal']} abnormal, "
          f"test {res['test']} of which {res['test_abnormal']} abnormal)\n")
    sized = any("size" in r for r in res["rows"])
    best = max((r for r in res["rows"] if "bundle" in r), key=lambda r: r["val_auroc"], default=None)  # a model the config can ship
    print("| method |" + (" px |" if sized else "") + " error map | val AUROC | test AUROC [95% CI] | test AP | test sens. / spec. @ 5% val-FPR | wall time (s) |"
          + (" peak RAM (MiB) |" if sized else ""))
    print("|---|" + ("---|" if sized else "") + "---|---|---|---|---|---|" + ("---|" if sized else ""))
    for r in res["rows"]:
        lo, hi = r["auroc_ci"]
        mark = " **(chosen on val.)**" if r is best else ""
        print(f"| {r['method']}{mark} |" + (f" {r['size']} |" if sized else "") + f" {r['map']} | {r['val_auroc']:.3f} | {r['auroc']:.3f} [{lo:.3f}, {hi:.3f}] | "
              f"{r['average_precision']:.3f} | {r['sensitivity']:.2f} / {r['specificity']:.2f} | {r['seconds']:.1f} |" + (f" {r.get('peak_rss_mib', '-')} |" if sized else ""))
    if best is not None:
        print(f"\nchosen on validation: {best['method']} at {best['size']} px; overrides: {' '.join(best['overrides'])}", file=sys.stderr)


def write_figures(res: dict, key: str, folder: Path) -> None:
    """Histograms of the test scores of normal vs abnormal images, one panel per method and map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in res["rows"] if "_scores" in r]
    if not rows:
        return
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 2.8), squeeze=False)
    y = res["test_scores_y"]
    for ax, r in zip(axes[0], rows, strict=True):
        s = r["_scores"]
        lo, hi = np.percentile(s, [0.5, 99.5])  # a few outliers would squeeze every other bin
        bins = np.linspace(lo, hi if hi > lo else lo + 1e-9, 30)
        ax.hist(s[~y], bins, alpha=0.6, label="normal", density=True)
        ax.hist(s[y], bins, alpha=0.6, label="abnormal", density=True)
        ax.set_title(f"{r['method'].split(' (')[0]} / {r['map']}\nAUROC {r['auroc']:.3f}", fontsize=8)
        ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    folder.mkdir(parents=True, exist_ok=True)
    fig.savefig(folder / f"anomaly_{key}_scores.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=[*DATASETS, "kermany", "all"], default="all",
                    help="all = the three small ones; kermany = the 224 px chest X-rays (configs/anomaly_kermany.yaml)")
    ap.add_argument("--sizes", nargs="+", type=int, default=[128, 224], help="kermany: input sizes (px) of every method")
    ap.add_argument("--model-sizes", nargs="+", type=int, default=None,
                    help="kermany: input sizes of the trained methods (default: --sizes; the model-free rows and PCA use --sizes)")
    ap.add_argument("--ssl-input-norm", choices=["dataset", "image"], default="image",
                    help="kermany: input_norm of the SimCLR detector (its pretraining normalises its views the same way)")
    ap.add_argument("--patch-scores", nargs="+", choices=["mean", "max"], default=["mean", "max"], help="kermany: feature-detector image scores")
    ap.add_argument("--patch-positions", nargs="+", type=float, default=[0.0],
                    help="kermany: task_options.patch_position of the feature detector (0: classic PatchCore; w > 0: position-aware)")
    ap.add_argument("--inference-images", type=int, default=64, help="kermany: test images timed for the chosen bundle (0: skip)")
    ap.add_argument("--pretrain-size", type=int, default=128, help="kermany: SimCLR input size (px); the backbone is used at every --sizes")
    ap.add_argument("--models", nargs="*", choices=list(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--epochs", type=int, default=None, help="override the configs' trainer.max_epochs")
    ap.add_argument("--max-samples", type=int, default=None, help="first N rows of the file, split shares kept")
    ap.add_argument("--pca-variance", type=float, default=0.90)
    ap.add_argument("--fpr", type=float, default=0.05, help="threshold: this false-positive rate on val normals")
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--detectors", nargs="*", choices=["ssl", "random"], default=["ssl", "random"],
                    help="feature-detector rows: SimCLR-pretrained backbone, random-init reference (none: skip)")
    ap.add_argument("--backbone", default="resnet18", help="timm backbone of the feature detector")
    ap.add_argument("--pretrain-epochs", type=int, default=30, help="SimCLR epochs on the training normals")
    ap.add_argument("--memory-size", type=int, default=4096, help="feature detector: coreset size (patches)")
    ap.add_argument("--patch-small-input", default=None, help="feature detector: model.small_input (default: per dataset, DETECTOR)")
    ap.add_argument("--patch-input-norm", choices=["dataset", "image"], default=None, help="feature detector: model.input_norm (default: per dataset)")
    ap.add_argument("--patch-score", choices=["mean", "max"], default=None, help="feature detector: image score (default: per dataset)")
    ap.add_argument("--quick", action="store_true", help="a reduced run: 1 epoch, 600 rows, 100 bootstrap draws, resnet10t, 1 pretraining epoch")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--figures", type=Path, default=None, help="write score histograms (PNG) here")
    ap.add_argument("--runs", type=Path, default=None, help="where the autoencoder runs go (default: a temp folder)")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.max_samples, args.boot = 1, args.max_samples or 600, min(args.boot, 100)
        args.pretrain_epochs, args.memory_size, args.backbone = 1, min(args.memory_size, 512), "resnet10t"
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "medlens"):
        logging.getLogger(name).setLevel(logging.WARNING)
    keys = list(DATASETS) if args.dataset == "all" else [args.dataset]
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="medlens-anomaly-") as tmp:
        runs = args.runs or Path(tmp)
        for key in keys:
            t = time.perf_counter()
            res = benchmark(key, args, runs)
            print_table(res)
            print(f"\n({key}: {time.perf_counter() - t:.0f} s in all)", file=sys.stderr)
            out[key] = res
    if args.figures is not None:
        for key, res in out.items():
            write_figures(res, key, args.figures)
    if args.json is not None:
        clean = {k: {**v, "rows": [{kk: vv for kk, vv in r.items() if not kk.startswith("_")} for r in v["rows"]],
                     "test_scores_y": None} for k, v in out.items()}
        args.json.write_text(json.dumps(clean, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
