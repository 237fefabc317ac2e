"""``medlens demo``: train and evaluate a small PneumoniaMNIST model end to end, offline if need be.

Data, in order of preference: ``$MEDLENS_DATA_DIR/pneumoniamnist.npz`` or the user cache
(``~/.cache/medlens/medmnist``); a download from the MedMNIST record (MD5-checked) when online; otherwise a
small generated dataset. The demo says which one it used.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from medlens.config import RunConfig, config_from_dict, data_dir_candidates

log = logging.getLogger("medlens.demo")


def _find_local_pneumoniamnist() -> Path | None:
    from medlens.data.readers.medmnist import default_root

    cands = [default_root() / "pneumoniamnist.npz"]
    cands += [d / "medmnist_pneumoniamnist" / "pneumoniamnist.npz" for d in data_dir_candidates()]
    # a checkout next to the shared data folder (developers, CI)
    here = Path(__file__).resolve()
    for parent in list(here.parents)[:6]:
        cands.append(parent / "shared" / "data" / "medmnist_pneumoniamnist" / "pneumoniamnist.npz")
    cands.append(Path.cwd().parent / "shared" / "data" / "medmnist_pneumoniamnist" / "pneumoniamnist.npz")
    for c in cands:
        if c.is_file():
            return c
    return None


def demo_config(out_dir: str, source: str, path: str | None) -> RunConfig:
    """The demo's config: ResNet-18 on 28 px images, 4 epochs, sized for a 2-core CPU (< 3 minutes).

    The stock stem is kept (``small_input: false``): cutting its stride makes every layer 16x costlier, and on
    PneumoniaMNIST the plain network already reaches test AUROC ~0.95 in 4 epochs (about 20 CPU-seconds per
    epoch).
    """
    if source == "synthetic":
        data: dict[str, Any] = {"kind": "synthetic", "num_samples": 800, "image_size": 28, "channels": 1,
                                "label_names": ["normal", "abnormal"], "batch_size": 64, "augment": "none"}
    else:
        data = {"kind": "medmnist", "flag": "pneumoniamnist", "path": path, "image_size": 28, "channels": 1,
                "batch_size": 128, "augment": "none", "download": False}
    raw = {
        "name": "demo",
        "seed": 0,
        "data": data,
        "model": {"backbone": "resnet18", "small_input": False},
        "optim": {"lr": 2e-3, "weight_decay": 5e-4, "warmup_epochs": 0.2, "scheduler": "cosine"},
        "trainer": {"max_epochs": 4, "progress_bar": True},
        "output": {"dir": out_dir, "name": "demo", "overwrite": True},
    }
    return config_from_dict(raw, source="demo")


def run_demo(out_dir: str = "runs", offline: bool = False, epochs: int | None = None, progress_bar: bool = True) -> dict[str, Any]:
    """Run the demo; returns where the bundle and metrics are and which data was used (``progress_bar``: the
    training's progress bar on stderr).

    Example:
        >>> info = run_demo("runs")  # doctest: +SKIP
    """
    from medlens.training import train

    local = _find_local_pneumoniamnist()
    source, path = "synthetic", None
    if local is not None:
        source, path = "PneumoniaMNIST (local file)", str(local)
    elif not offline and os.environ.get("MEDLENS_OFFLINE") != "1":
        from medlens.data.readers.medmnist import DatasetNotAvailable, default_root, download_medmnist

        try:
            path = str(download_medmnist("pneumoniamnist", 28, default_root(), timeout=15))
            source = "PneumoniaMNIST (downloaded, MD5 verified)"
        except DatasetNotAvailable as e:
            log.warning("%s", e)
    cfg = demo_config(out_dir, "synthetic" if path is None else "medmnist", path)
    if epochs is not None:
        cfg.trainer.max_epochs = epochs
    cfg.trainer.progress_bar = progress_bar
    if path is None:
        source = "a generated dataset (PneumoniaMNIST not found locally and not downloadable)"
    result = train(cfg)
    return {
        "data": source,
        "data_path": path,
        "bundle": str(result.bundle_dir),
        "metrics": str(result.run_dir / "metrics.json"),
        "test": result.metrics.get("test", {}),
        "wall_time_s": round(result.wall_time_s, 1),
    }


def demo_next_steps(bundle: str | Path) -> list[str]:
    """What to try after the demo, one command a line (the CLI prints them on stderr).

    Example:
        >>> demo_next_steps("runs/demo/bundle")[1]
        '  medlens evaluate runs/demo/bundle --split test        # metrics with 95% CIs'
    """
    b = Path(bundle).as_posix()
    return ["next steps:",
            f"  medlens evaluate {b} --split test        # metrics with 95% CIs",
            f"  medlens predict {b} IMAGE_OR_FOLDER       # your own images or a folder of them",
            f"  medlens serve {b}                         # web page and REST API on http://127.0.0.1:8000",
            "  medlens init my-configs                   # every example config, then: medlens train my-configs/pneumoniamnist.yaml",
            "  docs: docs/getting-started.md (or the site built by `mkdocs build`)"]
