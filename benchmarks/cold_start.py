"""Cold start: wall time from invocation to printed result of `medlens predict BUNDLE one.png`, torch vs onnx.

    python benchmarks/cold_start.py [--repeats 5] [--top 12] [--quick]

Builds a tiny bundle itself (ResNet-18, 28 px, 1 channel, random weights) and exports it to ONNX, then runs
`medlens predict BUNDLE one.png --backend torch|onnx` as a subprocess, ``--repeats`` times each (median and
range), and once more under `python -X importtime` to list the imports that cost the most (cumulative, top
level). --quick: 1 repeat, top 5 (a smoke run, not for reporting). Full run: about 1-2 minutes.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MEDLENS = str(Path(sys.executable).parent / "medlens")


def make_bundle(out: Path) -> Path:
    from medlens.bundle import Manifest, save_bundle
    from medlens.data.labels import LabelSpace
    from medlens.data.transforms import resolve_preprocessing
    from medlens.export import export_onnx
    from medlens.models import create_model

    arch = {"type": "classifier", "backbone": "resnet18", "num_outputs": 1, "in_chans": 1, "image_size": 28}
    m = Manifest(arch, LabelSpace(("normal", "pneumonia"), "binary"), resolve_preprocessing(28, 1), thresholds=[0.5])
    bundle = Path(save_bundle(create_model(arch).eval(), m, out / "bundle"))
    export_onnx(bundle)
    return bundle


def import_times(stderr: str, top: int) -> list[tuple[str, float]]:
    """``-X importtime`` lines -> the ``top`` top-level imports by cumulative time (ms)."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = line[len("import time:"):].split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2]
        if name.startswith("  "):  # nested: counted in its parent's cumulative time
            continue
        rows.append((name.strip(), int(parts[1]) / 1000.0))
    return sorted(rows, key=lambda r: -r[1])[:top]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--top", type=int, default=12, help="imports listed per backend")
    ap.add_argument("--quick", action="store_true", help="1 repeat, top 5: a smoke run, not for reporting")
    args = ap.parse_args(argv)
    repeats, top = (1, 5) if args.quick else (max(args.repeats, 1), args.top)
    from PIL import Image

    tmp = Path(tempfile.mkdtemp(prefix="medlens-cold-"))
    bundle = make_bundle(tmp)
    img = tmp / "one.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8)).save(img)

    results, imports = {}, {}
    for backend in ("torch", "onnx"):
        cmd = [MEDLENS, "predict", str(bundle), str(img), "--backend", backend]
        subprocess.run(cmd, check=True, capture_output=True)  # the first run fills the OS file cache
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True)
            times.append(time.perf_counter() - t0)
            if r.returncode != 0:
                print(f"{backend}: medlens predict failed: {r.stderr.strip().splitlines()[-1:]}")
                return 1
        results[backend] = times
        r = subprocess.run([sys.executable, "-X", "importtime", "-c", "import sys; from medlens.cli import main; sys.argv = ['medlens', *sys.argv[1:]]; main()",
                            "predict", str(bundle), str(img), "--backend", backend], capture_output=True, text=True)
        imports[backend] = import_times(r.stderr, top)

    print(f"# cold start: `medlens predict BUNDLE one.png` (ResNet-18, 28 px), {repeats} run(s) each, after one warm-up\n")
    print("| backend | median s | min s | max s |")
    print("|---|---:|---:|---:|")
    for backend, times in results.items():
        print(f"| {backend} | {statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} |")
    for backend, rows in imports.items():
        print(f"\n## top-level imports, --backend {backend} (python -X importtime, cumulative)\n")
        print("| module | ms |")
        print("|---|---:|")
        for name, ms in rows:
            print(f"| {name} | {ms:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
