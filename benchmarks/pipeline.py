"""The data pipeline on full-size sources: 1024 px PNG and JPEG files read for a 224 px model.

    python benchmarks/pipeline.py [--quick] [--n 200] [--data-dir ../shared/data]

Sources: ``--n`` Kermany chest X-rays (../shared/data/kermany_chestxray_224) upscaled to 1024 x 1024 (bicubic) and
written as grey PNG and JPEG (quality 90) into a temp folder -- the size of real NIH PNGs and dermoscopy/endoscopy
JPEGs. Upscaled radiographs are smoother than native 1024 px ones, so their PNGs are smaller and decode somewhat
faster than real files: the figures are an upper bound for the uncached rows.

It prints:

1. the bare decode limit: one process decoding files (and resizing to 224 px), images/s -- the most any loader
   without a cache can deliver per worker;
2. the loader: ``ImageDataset`` + ``DataLoader`` as ``medlens train`` builds them (light augmentation, normalised
   224 px grey tensors, batch 32), images/s in the first epoch and in the second, with 1 and 2 worker processes:
   JPEG decoded at full size and at reduced DCT scale (``load_image(reduce_to=224)``), and with the on-disk cache of
   decoded images (``data.disk_cache``): its first epoch decodes and stores, the second reads the cache, and a new
   loader ("next run", a new process with an empty path -> key memory) reads the cache after hashing each file once;
3. the comparison with a GPU trainer: ResNet-18 at 224 px trains at about 3,000 images/s on one modern GPU.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU_NEED = 3000.0  # images/s: ResNet-18 at 224 px on one modern GPU (issue 29)


def make_sources(src_dir: Path, out: Path, n: int, size: int) -> dict[str, list[Path]]:
    """Upscale ``n`` real images (evenly spread over the folder) to ``size`` px; write PNG and JPEG copies."""
    import cv2

    files = sorted(src_dir.rglob("*.jpeg"))
    if not files:
        raise SystemExit(f"no .jpeg files under {src_dir} (--data-dir: the folder holding kermany_chestxray_224)")
    step = max(1, len(files) // n)
    picked = files[::step][:n]
    res: dict[str, list[Path]] = {"png": [], "jpeg": []}
    for i, f in enumerate(picked):
        g = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
        big = cv2.resize(g, (size, size), interpolation=cv2.INTER_CUBIC)
        p, j = out / f"{i:04d}.png", out / f"{i:04d}.jpg"
        cv2.imwrite(str(p), big)
        cv2.imwrite(str(j), big, [cv2.IMWRITE_JPEG_QUALITY, 90])
        res["png"].append(p)
        res["jpeg"].append(j)
    return res


def decode_rate(paths: list[Path], target: int, reduce: bool, resize: bool) -> float:
    """Images/s of one process decoding (and resizing) every file once, after a short warm-up."""
    from medlens.data.io import load_image
    from medlens.data.transforms import geometry, resolve_preprocessing

    pp = resolve_preprocessing(target, 1)
    for p in paths[:3]:
        load_image(p)
    t0 = time.perf_counter()
    for p in paths:
        img = load_image(p, reduce_to=target if reduce else None)
        if resize:
            geometry(img, pp)
    return len(paths) / (time.perf_counter() - t0)


def cache_read_rate(paths: list[Path], target: int, root: Path) -> float:
    """Images/s of one process reading disk-cache entries (memory-mapped .npy, keys already known)."""
    import numpy as np

    from medlens.data.diskcache import DiskImageCache
    from medlens.data.io import load_image
    from medlens.data.transforms import geometry, resolve_preprocessing

    pp = resolve_preprocessing(target, 1)
    cache = DiskImageCache(target, 1, 2**34, root)
    for p in paths:
        cache.get(p, lambda p=p: geometry(load_image(p, reduce_to=target), pp))
    t0 = time.perf_counter()
    for p in paths:
        np.array(cache.get(p, lambda: None))
    return len(paths) / (time.perf_counter() - t0)


def augment_rate(target: int, n: int = 200) -> float:
    """Images/s of light augmentation + normalisation alone on 224 px grey arrays: the ceiling of any cached path."""
    import numpy as np

    from medlens.data.transforms import build_augment, make_transform, resolve_preprocessing

    tf = make_transform(resolve_preprocessing(target, 1), build_augment("light", 1))
    img = np.full((target, target, 1), 128, np.uint8)
    for _ in range(5):
        tf(img)
    t0 = time.perf_counter()
    for _ in range(n):
        tf(img)
    return n / (time.perf_counter() - t0)


def loader_rates(paths: list[Path], target: int, workers: int, reduce: bool, cache_root: Path | None,
                 epochs: int = 2) -> list[float]:
    """Images/s of each epoch of one DataLoader (persistent workers; worker start-up counts in the first epoch)."""
    import numpy as np
    import torch

    from medlens.data.dataset import ImageDataset, make_loader
    from medlens.data.diskcache import DiskImageCache
    from medlens.data.labels import LabelSpace
    from medlens.data.samples import SampleTable
    from medlens.data.transforms import build_augment, make_transform, resolve_preprocessing

    pp = resolve_preprocessing(target, 1)
    n = len(paths)
    table = SampleTable(LabelSpace(("a", "b"), "binary"), [str(p) for p in paths], [str(p) for p in paths],
                        np.eye(2, dtype=np.float32)[np.arange(n) % 2])
    disk = DiskImageCache(target, 1, 2**34, cache_root) if cache_root is not None else None
    # pp=None: the loader as it was before reduced decoding (full decode, then the transform resizes)
    ds = ImageDataset(table, make_transform(pp, build_augment("light", 1)), pp if (reduce or disk) else None,
                      disk_cache=disk)
    dl = make_loader(ds, 32, True, workers, seed=0)
    rates = []
    for epoch in range(epochs):
        dl.sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        seen = 0
        for b in dl:
            seen += len(b)
            assert b.images.dtype == torch.float32 and b.images.shape[-1] == target
        rates.append(seen / (time.perf_counter() - t0))
    del dl
    return rates


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="source images (default 200)")
    ap.add_argument("--size", type=int, default=1024, help="side of the generated sources, px (default 1024)")
    ap.add_argument("--target", type=int, default=224, help="the model's image size, px (default 224)")
    ap.add_argument("--workers", type=int, nargs="+", default=None, help="loader worker counts (default: 1 and all cores, at most 2 on this VM)")
    ap.add_argument("--quick", action="store_true", help="60 images, one worker count (a smoke run, not for reporting)")
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("MEDLENS_SHARED_DATA", ROOT.parent / "shared" / "data")),
                    help="folder holding kermany_chestxray_224 (default $MEDLENS_SHARED_DATA or ../shared/data)")
    args = ap.parse_args(argv)
    import logging
    import warnings

    import torch

    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)  # the loader's work is per process; the main process only collects batches
    n = 60 if args.quick else args.n
    workers = args.workers or ([1] if args.quick else sorted({1, min(2, os.cpu_count() or 1)}))
    tmp = Path(tempfile.mkdtemp(prefix="medlens-pipeline-"))
    t_start = time.perf_counter()
    try:
        print(f"# medlens data pipeline ({os.cpu_count()} CPU cores): {n} Kermany chest X-rays upscaled to "
              f"{args.size} px, read for a {args.target} px grey model\n")
        src = make_sources(args.data_dir / "kermany_chestxray_224", tmp, n, args.size)
        mb = {k: sum(p.stat().st_size for p in v) / len(v) / 2**10 for k, v in src.items()}
        print(f"sources: PNG {mb['png']:.0f} kB, JPEG {mb['jpeg']:.0f} kB an image on average "
              f"(generated in {time.perf_counter() - t_start:.0f} s)\n")

        print("## 1. bare decode limit (one process, images/s)\n")
        print("| source | decode | decode + resize to 224 |")
        print("|---|---:|---:|")
        limit: dict[str, float] = {}
        for label, fmt, reduce in (("PNG", "png", False), ("JPEG, full size", "jpeg", False),
                                   ("JPEG, reduced DCT scale", "jpeg", True)):
            d = decode_rate(src[fmt], args.target, reduce, resize=False)
            r = decode_rate(src[fmt], args.target, reduce, resize=True)
            limit[label] = r
            print(f"| {label} | {d:.0f} | {r:.0f} |")
        c = cache_read_rate(src["png"], args.target, tmp / "cache-read")
        shutil.rmtree(tmp / "cache-read", ignore_errors=True)
        print(f"| disk cache entry (memory-mapped .npy, already resized) | {c:.0f} | - |")
        print(f"\nLight augmentation + normalisation alone (no reading): {augment_rate(args.target):.0f} images/s in one "
              "process -- the ceiling of a worker that reads cached pixels.")

        print(f"\n## 2. loader (light augmentation, batch 32, {n} images an epoch), images/s\n")
        print("| source | reading | workers | epoch 1 | epoch 2 | next run, epoch 1 | x GPU need (epoch 2) |")
        print("|---|---|---:|---:|---:|---:|---:|")
        cases = [("PNG", "png", False, False), ("PNG", "png", True, True),
                 ("JPEG", "jpeg", False, False), ("JPEG", "jpeg", True, False), ("JPEG", "jpeg", True, True)]
        best_cached = 0.0
        for w in workers:
            for label, fmt, reduce, cached in cases:
                how = ("disk cache" if cached else "decode reduced" if reduce else "decode full") if fmt == "jpeg" else \
                      ("disk cache" if cached else "decode")
                root = tmp / f"cache-{fmt}-{w}" if cached else None
                e1, e2 = loader_rates(src[fmt], args.target, w, reduce, root)
                nxt = f"{loader_rates(src[fmt], args.target, w, reduce, root, epochs=1)[0]:.0f}" if cached else "-"
                if cached:
                    best_cached = max(best_cached, e2)
                print(f"| {label} | {how} | {w} | {e1:.0f} | {e2:.0f} | {nxt} | {e2 / GPU_NEED:.2f} |")
                if root is not None:
                    shutil.rmtree(root, ignore_errors=True)
        print(f"\nA GPU trainer needs about {GPU_NEED:.0f} images/s (ResNet-18, 224 px, one modern GPU). Decoding PNG "
              f"sources caps one worker at {limit['PNG']:.0f} images/s; reduced JPEG decoding at "
              f"{limit['JPEG, reduced DCT scale']:.0f}; epochs read from the disk cache reached {best_cached:.0f} images/s "
              f"here ({best_cached / GPU_NEED:.2f}x the GPU's need).")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\ntotal benchmark time: {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
