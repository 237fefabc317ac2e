"""Serving throughput: N concurrent HTTP clients against `medlens serve` vs the raw Predictor, both backends, one run.

    python benchmarks/serve.py [--bundle DIR] [--clients 8] [--seconds 30] [--backends torch onnx] [--quick]

Without --bundle a ResNet-18 28 px bundle with random weights is used (a trained one runs at the same speed;
pass e.g. the bundle of `medlens train configs/pneumoniamnist.yaml`); the bundle is exported to ONNX once so
the onnx server does not export at start-up. For each backend: the raw Predictor's images/s at batch 1 on the
same images, then `medlens serve --backend B` in its own process (as a user starts it) with clients sending
real test images as PNG to 127.0.0.1 for a bounded time; p50/p99 latency, requests/s and the ratio
server requests/s / raw images/s (target >= 0.8) per backend. Each client's multipart body is built once per
image (the same bytes httpx would send), so the clients' own CPU cost stays small next to the server's on a
2-core machine. --quick: 5 s per measurement (a smoke run, not for reporting); full run about 3 minutes.
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
    from medlens.export import export_onnx
    from medlens.models import create_model

    arch = {"type": "classifier", "backbone": backbone, "num_outputs": 1, "in_chans": 1, "image_size": 28}
    m = Manifest(arch, LabelSpace(("normal", "pneumonia"), "binary"), resolve_preprocessing(28, 1), thresholds=[0.5])
    bundle = save_bundle(create_model(arch).eval(), m, out / "bundle")
    export_onnx(bundle)  # model.onnx next to the weights, recorded in the manifest
    return Path(bundle)


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


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    """One ``files`` part, encoded once: (body, content type)."""
    boundary = "medlensbench7f3a"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


async def load(url: str, blobs: list[bytes], clients: int, seconds: float) -> dict:
    import httpx

    bodies = [multipart(f"{i}.png", b) for i, b in enumerate(blobs)]
    lat: list[float] = []
    failures = 0
    stop = time.perf_counter() + seconds

    async def client(k: int) -> None:
        nonlocal failures
        async with httpx.AsyncClient(timeout=30) as c:
            i = k
            while time.perf_counter() < stop:
                body, ctype = bodies[i % len(bodies)]
                s = time.perf_counter()
                try:
                    r = await c.post(url + "/v1/predict", content=body, headers={"content-type": ctype})
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


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def serve_rate(bundle: Path, backend: str, blobs: list[bytes], clients: int, seconds: float) -> dict:
    """`medlens serve --backend B` in its own process, loaded by ``clients`` concurrent clients in this one."""
    import subprocess

    import httpx

    port = free_port()
    medlens = str(Path(sys.executable).parent / "medlens")
    server = subprocess.Popen([medlens, "serve", str(bundle), "--port", str(port), "--backend", backend],
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
        asyncio.run(load(url, blobs, clients, min(2.0, seconds)))  # warm-up
        return asyncio.run(load(url, blobs, clients, seconds))
    finally:
        server.terminate()
        server.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="a bundle folder (default: a random-weight ResNet-18, 28 px)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0, help="load time per backend (the raw figure runs min(seconds, 10))")
    ap.add_argument("--backends", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"])
    ap.add_argument("--quick", action="store_true", help="5 s per measurement: a smoke run, not for reporting")
    args = ap.parse_args(argv)
    seconds = 5.0 if args.quick else args.seconds

    tmp = tempfile.TemporaryDirectory()
    bundle = args.bundle or make_bundle(Path(tmp.name))
    if args.bundle is not None and "onnx" in args.backends and not (bundle / "model.onnx").is_file():
        print(f"note: {bundle} has no model.onnx; the onnx server exports in memory at start-up (`medlens export {bundle}` once avoids it)")
    images = test_images()
    blobs = [png(im) for im in images]

    rows = []
    for backend in args.backends:
        raw = raw_predictor_rate(bundle, images, min(seconds, 10.0), backend)
        res = serve_rate(bundle, backend, blobs, args.clients, seconds)
        rows.append((backend, raw, res))

    print(f"# serve benchmark: {args.clients} clients, {seconds:.0f} s per backend, bundle {'(random ResNet-18, 28 px)' if args.bundle is None else bundle}\n")
    print("| backend | raw Predictor, batch 1: img/s | p50 ms | HTTP /v1/predict: req/s | p50 ms | p99 ms | failures | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for backend, raw, res in rows:
        ratio = res["requests_per_s"] / raw["images_per_s"]
        print(f"| {backend} | {raw['images_per_s']:.1f} | {raw['p50_ms']:.2f} | {res['requests_per_s']:.1f} | {res['p50_ms']:.2f} | "
              f"{res['p99_ms']:.2f} | {res['failures']} of {res['requests'] + res['failures']} | **{ratio:.2f}** |")
    print()
    for backend, raw, res in rows:
        ratio = res["requests_per_s"] / raw["images_per_s"]
        print(f"{backend}: server requests/s / raw images/s = {ratio:.2f} ({'meets' if ratio >= 0.8 else 'below'} the 0.8 target)")
    return 0 if all(res["failures"] == 0 for _, _, res in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
