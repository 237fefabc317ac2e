"""Tar shards in the WebDataset layout made from real PneumoniaMNIST images, and a local HTTP server for them."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image


def add_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tf.addfile(info, io.BytesIO(data))


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def write_shards(npz: Path, folder: Path, split: str, n: int, per_shard: int | list[int], *, src: str | None = None,
                 label: str = "cls", text: bool = False) -> list[Path]:
    """``folder/<split>-000.tar, ...``: the first ``n`` images of the npz split ``src`` (default ``split``), ``per_shard``
    samples per shard (or a list: the size of each shard); each sample ``<split>_NNNNN.png`` with its class index in
    ``.cls`` (``label='cls'``) or ``.json`` (``{"label": name}``), a patient id in the json, and with ``text`` a report."""
    z = np.load(npz)
    images, labels = z[f"{src or split}_images"], z[f"{src or split}_labels"][:, 0]
    names = ["normal", "pneumonia"]
    sizes = list(per_shard) if isinstance(per_shard, list) else [per_shard] * ((n + per_shard - 1) // per_shard)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    start = 0
    for s, size in enumerate(sizes):
        path = folder / f"{split}-{s:03d}.tar"
        with tarfile.open(path, "w") as tf:
            for i in range(start, min(n, start + size)):
                key = f"{split}_{i:05d}"
                add_member(tf, f"{key}.png", png(images[i]))
                doc: dict = {"patient": f"{split}-p{i // 2}"}
                if label == "cls":
                    add_member(tf, f"{key}.cls", str(int(labels[i])).encode())
                else:
                    doc["label"] = names[int(labels[i])]
                if text:
                    doc["report"] = f"Chest film {i}: " + ("clear lungs." if labels[i] == 0 else "patchy <b>opacity</b>.")
                add_member(tf, f"{key}.json", json.dumps(doc).encode())
        start += size
        out.append(path)
    return out


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@contextlib.contextmanager
def http_server(folder: Path) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1 (a free port) from a thread; yields the base URL. The standard library's
    server ignores ``Range`` headers, so random reads take the read-from-the-start path."""
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
