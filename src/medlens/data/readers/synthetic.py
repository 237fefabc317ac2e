"""``kind: synthetic`` -- generated images for the offline demo and tests.

Each label owns one region of the image; a sample positive for a label has a bright, blurred blob in that
region, on a textured background with noise. A classifier must look at the right place to be right, which
also makes the data useful for checking Grad-CAM.
"""

from __future__ import annotations

import numpy as np

from medlens.data.labels import LabelSpace
from medlens.data.readers import READERS
from medlens.data.samples import SampleTable


def make_synthetic(n: int, size: int, num_labels: int, task: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, size, size) uint8 and class/label arrays."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    k = max(num_labels, 2)
    # blob centres on a circle, one per label
    centres = [(0.5 + 0.28 * np.cos(2 * np.pi * j / k), 0.5 + 0.28 * np.sin(2 * np.pi * j / k)) for j in range(k)]
    imgs = np.empty((n, size, size), dtype=np.uint8)
    if task == "multilabel":
        y = (rng.random((n, num_labels)) < 0.35).astype(np.float32)
    else:
        y = rng.integers(0, num_labels, size=n)
    for i in range(n):
        base = 70 + 25 * np.sin(6 * xx + rng.random() * 6) * np.cos(5 * yy + rng.random() * 6)
        img = base + rng.normal(0, 12, size=(size, size))
        present = np.flatnonzero(y[i]) if task == "multilabel" else ([y[i]] if not (task == "binary" and y[i] == 0) else [])
        for j in present:
            cy, cx = centres[j]
            cy += rng.normal(0, 0.04)
            cx += rng.normal(0, 0.04)
            r2 = (yy - cy) ** 2 + (xx - cx) ** 2
            img += 110 * np.exp(-r2 / (2 * 0.07**2))
        imgs[i] = np.clip(img, 0, 255).astype(np.uint8)
    return imgs, y


@READERS.register("synthetic")
def read_synthetic(cfg) -> SampleTable:
    task = cfg.task or ("binary" if cfg.num_labels <= 2 else "multiclass")
    if task == "binary":
        names = cfg.label_names or ["negative", "positive"]
    else:
        names = cfg.label_names or [f"finding_{j}" for j in range(cfg.num_labels)]
    space = LabelSpace(tuple(names), task)
    x, y = make_synthetic(cfg.num_samples, cfg.image_size, len(names), task, cfg.seed)
    targets = y if task == "multilabel" else np.eye(len(names), dtype=np.float32)[y]
    n = len(x)
    # a predefined 70/15/15 split, with two images per "patient" so group logic is exercised
    splits = np.array(["train"] * n, dtype=object)
    splits[int(0.7 * n) : int(0.85 * n)] = "val"
    splits[int(0.85 * n) :] = "test"
    # two images per patient, paired inside each split so that no patient straddles a split boundary
    cuts = [0, int(0.7 * n), int(0.85 * n), n]
    groups = [f"p{cuts[s]}_{(i - cuts[s]) // 2}" for s in range(3) for i in range(cuts[s], cuts[s + 1])]
    ids = [f"synthetic/{i}" for i in range(n)]
    return SampleTable(space, ids, x, targets.astype(np.float32), groups, list(splits), None, source="synthetic",
                       provenance={"generated": True})  # made here, not real images: every surface of the model says so
