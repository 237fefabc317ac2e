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
import os
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


async def load(url: str, blobs: list[bytes], clients: int, seconds: float, client: str = "socket") -> dict:
    """``clients`` concurrent keep-alive connections posting the images for ``seconds``.

    ``client="socket"``: plain HTTP/1.1 over asyncio streams, each request's bytes built once, so the load
    generator's CPU stays small (on a 2-core machine every cycle it takes is taken from the server; a real
    deployment's clients run elsewhere). ``client="httpx"``: httpx.AsyncClient, as a Python user would call it.
    The result includes ``client_cpu``: the CPU seconds per second this process spent generating the load.
    """
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    bodies = [multipart(f"{i}.png", b) for i, b in enumerate(blobs)]
    requests = [(f"POST /v1/predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {ctype}\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n").encode() + body for body, ctype in bodies]
    lat: list[float] = []
    failures = 0
    stop = time.perf_counter() + seconds

    async def socket_client(k: int) -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection(host, int(port))
        i = k
        try:
            while time.perf_counter() < stop:
                s = time.perf_counter()
                try:
                    writer.write(requests[i % len(requests)])
                    head = await reader.readuntil(b"\r\n\r\n")
                    status = int(head.split(b" ", 2)[1])
                    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:"))
                    payload = await reader.readexactly(length)
                    if status != 200 or not payload.startswith(b"{"):
                        failures += 1
                    else:
                        lat.append(time.perf_counter() - s)
                except (OSError, asyncio.IncompleteReadError, ValueError, StopIteration):
                    failures += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
                i += clients
        finally:
            writer.close()

    async def httpx_client(k: int) -> None:
        import httpx

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

    one = socket_client if client == "socket" else httpx_client
    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(k) for k in range(clients)))
    wall = time.perf_counter() - t0
    return {"requests": len(lat), "failures": failures, "requests_per_s": len(lat) / wall,
            "p50_ms": 1000 * float(np.percentile(lat, 50)) if lat else float("nan"),
            "p99_ms": 1000 * float(np.percentile(lat, 99)) if lat else float("nan"),
            "client_cpu": (time.process_time() - c0) / wall}


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc; NaN elsewhere)."""
    import os

    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def serve_rate(bundle: Path, backend: str, blobs: list[bytes], clients: int, seconds: float, client: str = "socket") -> dict:
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
        asyncio.run(load(url, blobs, clients, min(2.0, seconds), client))  # warm-up
        cpu0, t0 = process_cpu(server.pid), time.perf_counter()
        res = asyncio.run(load(url, blobs, clients, seconds, client))
        res["server_cpu"] = (process_cpu(server.pid) - cpu0) / (time.perf_counter() - t0)
        return res
    finally:
        server.terminate()
        server.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="a bundle folder (default: a random-weight ResNet-18, 28 px)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0, help="load time per backend (the raw figure runs min(seconds, 10))")
    ap.add_argument("--backends", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"])
    ap.add_argument("--client", default="socket", choices=["socket", "httpx"],
                    help="load generator: plain keep-alive sockets (default, least CPU) or httpx.AsyncClient")
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
        res = serve_rate(bundle, backend, blobs, args.clients, seconds, args.client)
        rows.append((backend, raw, res))

    print(f"# serve benchmark: {args.clients} {args.client} clients, {seconds:.0f} s per backend, "
          f"bundle {'(random ResNet-18, 28 px)' if args.bundle is None else bundle}, {os.cpu_count()} CPUs\n")
    print("| backend | raw Predictor, batch 1: img/s | p50 ms | HTTP /v1/predict: req/s | p50 ms | p99 ms | failures | server CPU | client CPU | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for backend, raw, res in rows:
        ratio = res["requests_per_s"] / raw["images_per_s"]
        print(f"| {backend} | {raw['images_per_s']:.1f} | {raw['p50_ms']:.2f} | {res['requests_per_s']:.1f} | {res['p50_ms']:.2f} | "
              f"{res['p99_ms']:.2f} | {res['failures']} of {res['requests'] + res['failures']} | {res['server_cpu']:.2f} | "
              f"{res['client_cpu']:.2f} | **{ratio:.2f}** |")
    print("\n(server/client CPU: cores used while loaded, from /proc and the load generator's process time)")
    print()
    for backend, raw, res in rows:
        ratio = res["requests_per_s"] / raw["images_per_s"]
        print(f"{backend}: server requests/s / raw images/s = {ratio:.2f} ({'meets' if ratio >= 0.8 else 'below'} the 0.8 target)")
    return 0 if all(res["failures"] == 0 for _, _, res in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
