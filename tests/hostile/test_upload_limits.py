"""A chunked upload without Content-Length against a real uvicorn server: refused at the limit, whatever it claims.

Proves the effect, not the status code alone: the bytes the multipart parser hands to upload files (memory or
the spool file on disk) never exceed the limit, and the server's peak memory stays far below the upload.
"""

from __future__ import annotations

import select
import socket
import threading
import time
import tracemalloc

import httpx
import pytest

LIMIT = 512 * 1024
SENT = 48 * 1024 * 1024  # what the client tries to send


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def server(pristine_bundle):
    import uvicorn

    from medlens.serve.app import ServeSettings, create_app

    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(pristine_bundle, settings=ServeSettings(max_upload_bytes=LIMIT)),
                                        host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield port, url
    srv.should_exit = True
    t.join(timeout=10)


def chunked_upload(port: int, total: int) -> bytes:
    """Send a multipart body with Transfer-Encoding: chunked (no Content-Length); return what the server answered."""
    head = (b'--b\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n')
    chunk = b"\x89" * 65536
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
              b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
    try:
        s.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        for _ in range(total // len(chunk)):
            if select.select([s], [], [], 0)[0]:
                break  # the server has answered: a real client would stop here too
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            s.sendall(b"0\r\n\r\n")
    except OSError:  # the server answered and closed: it stopped reading, as it should
        pass
    out = b""
    try:
        while True:  # read one response: headers, then Content-Length bytes
            data = s.recv(65536)
            if not data:
                break
            out += data
            head, sep, body = out.partition(b"\r\n\r\n")
            length = [int(ln.split(b":")[1]) for ln in head.lower().split(b"\r\n") if ln.startswith(b"content-length:")]
            if sep and length and len(body) >= length[0]:
                break
    except OSError:
        pass
    s.close()
    return out


def test_chunked_oversize_never_reaches_disk(server, monkeypatch):
    from starlette.datastructures import UploadFile

    written = []
    real_write = UploadFile.write

    async def counting_write(self, data: bytes) -> None:
        written.append(len(data))
        await real_write(self, data)

    monkeypatch.setattr(UploadFile, "write", counting_write)
    port, url = server
    answer = chunked_upload(port, SENT)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"too_large"' in answer
    from medlens.serve.app import ENVELOPE_BYTES

    # what reached the spool file (memory, then disk past 1 MB) stayed under the body limit: the file limit plus
    # the documented allowance for the multipart envelope; a file itself over LIMIT is refused by the route
    assert sum(written) <= LIMIT + ENVELOPE_BYTES
    assert httpx.get(url + "/health").status_code == 200


def test_chunked_oversize_peak_memory(server):
    port, url = server
    chunked_upload(port, 2 * 1024 * 1024)  # warm up
    tracemalloc.start()
    try:
        answer = chunked_upload(port, SENT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert answer.startswith(b"HTTP/1.1 413")
    assert peak < 8 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB while {SENT / 2**20:.0f} MiB were offered"
    assert httpx.get(url + "/health").status_code == 200
