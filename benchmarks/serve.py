"""Serving throughput: N concurrent HTTP clients against `medlens serve` vs the raw Predictor, in one run.

    python benchmarks/serve.py [--bundle DIR] [--clients 8] [--seconds 30] [--backend torch|onnx]

Without --bundle a ResNet-18 28 px bundle with random weights is used (a trained one runs at the same speed;
pass e.g. the bundle of `medlens train configs/pneumoniamnist.yaml`). Clients send real test images as PNG to 127.0.0.1 only, for a bounded
time, and the script prints p50/p99 latency and requests/s, next to the Predictor's images/s at batch 1 on the
same images. The server runs as `medlens serve` in a separate process, as a user starts it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def test_images(n: int = 64) -> list[np.ndarray]:
    npz = SHARED / "medmnist_pneumoniamnist" / "pneumoniamnist.npz"
    if npz.is_file():
        with np.load(npz) as z:
            return [z["test_images"][i] for i in range(n)]
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (28, 28), dtype=np.uint8) for _ in range(n)]


def make_bundle(out: Path, backbone: str = "resnet18") -> Path:
    from medlens.bundle import Manifest, save_bundle
    from medlens.data.labels import LabelSpace
    from medlens.data.transforms import resolve_preprocessing
    from medlens.models import create_model

    arch = {"type": "classifier", "backbone": backbone, "num_outputs": 1, "in_chans": 1, "image_size": 28}
    m = Manifest(arch, LabelSpace(("normal", "pneumonia"), "binary"), resolve_preprocessing(28, 1), thresholds=[0.5])
    return save_bundle(create_model(arch).eval(), m, out / "bundle")


def raw_predictor_rate(bundle: Path, images: list[np.ndarray], seconds: float, backend: str) -> dict:
    from medlens.inference import Predictor

    p = Predictor.from_bundle(bundle, backend=backend, batch_size=1)
    for im in images[:10]:
        p.predict_arrays([im])
    lat, t0, i = [], time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        s = time.perf_counter()
        p.predict_arrays([images[i % len(images)]])
        lat.append(time.perf_counter() - s)
        i += 1
    wall = time.perf_counter() - t0
    return {"images_per_s": i / wall, "p50_ms": 1000 * float(np.percentile(lat, 50)), "p99_ms": 1000 * float(np.percentile(lat, 99))}


def png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


async def load(url: str, blobs: list[bytes], clients: int, seconds: float) -> dict:
    import httpx

    lat: list[float] = []
    failures = 0
    stop = time.perf_counter() + seconds

    async def client(k: int) -> None:
        nonlocal failures
        async with httpx.AsyncClient(timeout=30) as c:
            i = k
            while time.perf_counter() < stop:
                s = time.perf_counter()
                try:
                    r = await c.post(url + "/v1/predict", files={"files": (f"{i}.png", blobs[i % len(blobs)])})
                    if r.status_code != 200:
                        failures += 1
                    else:
                        lat.append(time.perf_counter() - s)
                except Exception:
                    failures += 1
                i += clients

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    wall = time.perf_counter() - t0
    return {"requests": len(lat), "failures": failures, "requests_per_s": len(lat) / wall,
            "p50_ms": 1000 * float(np.percentile(lat, 50)) if lat else float("nan"),
            "p99_ms": 1000 * float(np.percentile(lat, 99)) if lat else float("nan")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--backend", default="torch", choices=["torch", "onnx"])
    args = ap.parse_args(argv)

    import subprocess

    import httpx

    tmp = tempfile.TemporaryDirectory()
    bundle = args.bundle or make_bundle(Path(tmp.name))
    images = test_images()
    blobs = [png(im) for im in images]

    raw = raw_predictor_rate(bundle, images, min(args.seconds, 10.0), args.backend)

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    # the server is `medlens serve` in its own process, as a user runs it; the clients live in this one
    medlens = str(Path(sys.executable).parent / "medlens")
    server = subprocess.Popen([medlens, "serve", str(bundle), "--port", str(port), "--backend", args.backend],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"medlens serve did not start: {server.stderr.read().decode(errors='replace')[-2000:]}")
            time.sleep(0.2)
        asyncio.run(load(url, blobs, args.clients, 2.0))  # warm-up
        res = asyncio.run(load(url, blobs, args.clients, args.seconds))
    finally:
        server.terminate()
        server.wait(timeout=30)

    ratio = res["requests_per_s"] / raw["images_per_s"]
    print(f"# serve benchmark: {args.clients} clients, {args.seconds:.0f} s, backend {args.backend}, 28 px ResNet-18\n")
    print("| path | images or requests/s | p50 ms | p99 ms | failures |")
    print("|---|---:|---:|---:|---:|")
    print(f"| raw Predictor, batch 1 | {raw['images_per_s']:.1f} | {raw['p50_ms']:.2f} | {raw['p99_ms']:.2f} | - |")
    print(f"| HTTP /v1/predict, {args.clients} clients | {res['requests_per_s']:.1f} | {res['p50_ms']:.2f} | {res['p99_ms']:.2f} | {res['failures']} |")
    print(f"\nserver requests/s / raw images/s = {ratio:.2f} (target >= 0.8); requests served: {res['requests']}")
    return 0 if res["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
