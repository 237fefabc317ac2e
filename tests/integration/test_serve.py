"""The REST API against a real uvicorn server on 127.0.0.1: valid images, bad input, API key, recovery."""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from medlens.bundle import Manifest, save_bundle
from medlens.data.labels import LabelSpace
from medlens.data.transforms import resolve_preprocessing
from medlens.models import create_model
from medlens.tasks import list_kinds  # noqa: F401 -- importing the tasks registers their own label kinds (anomaly)


def make_bundle(path: Path, task: str = "multilabel", names=("Effusion", "Mass", "Nodule"), size: int = 32, channels: int = 1) -> Path:
    """A bundle with random weights: enough to exercise every route."""
    import torch

    torch.manual_seed(0)
    space = LabelSpace(tuple(names), task)
    arch = {"type": "classifier", "backbone": "resnet10t", "num_outputs": space.num_outputs, "in_chans": channels, "image_size": size}
    model = create_model(arch).eval()
    m = Manifest(arch, space, resolve_preprocessing(size, channels), thresholds=[0.5] * space.num_outputs if task != "multiclass" else [],
                 intended_use="Test model. Not a diagnosis.")
    return save_bundle(model, m, path)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    """uvicorn in a background thread, stopped on exit."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert("RGB").save(buf, format="JPEG")
    return buf.getvalue()


def dicom_bytes(arr16: np.ndarray) -> bytes:
    """A 12-bit digital X-ray DICOM of ``arr16`` (medlens' own encoder, as the benchmarks use)."""
    from medlens.data.io import dicom_bytes as encode

    return encode(arr16)


def huge_png_header(width: int = 20000, height: int = 20000) -> bytes:
    """A valid-looking PNG claiming width x height pixels, with a tiny body (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("serve") / "bundle")


@pytest.fixture(scope="module")
def server(bundle_dir):
    from medlens.serve.app import ServeSettings, create_app

    app = create_app(bundle_dir, settings=ServeSettings(max_upload_bytes=2 * 1024 * 1024, max_pixels=20_000_000))
    with Server(app) as s:
        yield s


def _img(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (48, 40), dtype=np.uint8)


def test_health_and_model(server):
    r = httpx.get(server.url + "/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    m = httpx.get(server.url + "/v1/model").json()
    assert m["label_names"] == ["Effusion", "Mass", "Nodule"] and m["thresholds"] == [0.5, 0.5, 0.5]
    assert "Not a diagnosis" in m["intended_use"]
    assert httpx.get(server.url + "/openapi.json").json()["paths"]["/v1/predict"]


@pytest.mark.parametrize("kind", ["png", "jpeg", "dicom"])
def test_predict_valid_formats(server, kind):
    arr = _img(1)
    data = {"png": png_bytes, "jpeg": jpeg_bytes}.get(kind, lambda a: dicom_bytes(a.astype(np.uint16) * 16))(arr)
    r = httpx.post(server.url + "/v1/predict", files={"files": (f"x.{kind}", data)})
    assert r.status_code == 200, r.text
    p = r.json()["predictions"][0]
    assert set(p["probabilities"]) == {"Effusion", "Mass", "Nodule"}
    assert all(0.0 <= v <= 1.0 for v in p["probabilities"].values())
    assert p["thresholds"] == {"Effusion": 0.5, "Mass": 0.5, "Nodule": 0.5}


def test_predict_matches_predictor(server, bundle_dir):
    from medlens.inference import Predictor

    arr = _img(2)
    direct = Predictor.from_bundle(bundle_dir).predict([arr])[0].probabilities
    r = httpx.post(server.url + "/v1/predict", files={"files": ("a.png", png_bytes(arr))})
    served = r.json()["predictions"][0]["probabilities"]
    assert served == pytest.approx(direct, abs=1e-6)


def test_predict_many_files(server):
    files = [("files", (f"{i}.png", png_bytes(_img(i)))) for i in range(5)]
    r = httpx.post(server.url + "/v1/predict", files=files)
    assert r.status_code == 200
    assert [p["source"] for p in r.json()["predictions"]] == [f"{i}.png" for i in range(5)]


BAD_INPUTS = {
    "truncated": (lambda: png_bytes(_img(3))[:60], 415),
    "text_renamed_png": (lambda: b"this is not an image at all\n" * 10, 415),
    "huge_png": (huge_png_header, 413),
    "empty_file": (lambda: b"", 400),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_4xx_and_server_keeps_serving(server, case):
    make, status = BAD_INPUTS[case]
    r = httpx.post(server.url + "/v1/predict", files={"files": ("scan.png", make())})
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]
    ok = httpx.post(server.url + "/v1/predict", files={"files": ("ok.png", png_bytes(_img(4)))})
    assert ok.status_code == 200


def test_empty_body_and_oversized_body(server):
    r = httpx.post(server.url + "/v1/predict", content=b"", headers={"content-type": "multipart/form-data; boundary=x"})
    assert 400 <= r.status_code < 500
    r = httpx.post(server.url + "/v1/predict")
    assert 400 <= r.status_code < 500 and "error" in r.json()
    big = b"\0" * (3 * 1024 * 1024)
    r = httpx.post(server.url + "/v1/predict", files={"files": ("big.png", big)})
    assert r.status_code == 413
    assert httpx.post(server.url + "/v1/predict", files={"files": ("ok.png", png_bytes(_img(5)))}).status_code == 200


def test_bad_metadata_json(server):
    r = httpx.post(server.url + "/v1/predict", files={"files": ("a.png", png_bytes(_img(6)))}, data={"metadata": "{not json"})
    assert r.status_code == 422 and "metadata" in r.json()["error"]["message"]


def test_api_key(bundle_dir):
    from medlens.serve.app import ServeSettings, create_app

    app = create_app(bundle_dir, settings=ServeSettings(api_key="s3cret"))
    with Server(app) as s:
        files = {"files": ("a.png", png_bytes(_img(7)))}
        assert httpx.post(s.url + "/v1/predict", files=files).status_code == 401
        assert httpx.post(s.url + "/v1/predict", files=files, headers={"X-API-Key": "wrong"}).status_code == 401
        assert httpx.get(s.url + "/v1/model").status_code == 401
        assert httpx.get(s.url + "/health").status_code == 200  # liveness stays open
        r = httpx.post(s.url + "/v1/predict", files=files, headers={"X-API-Key": "s3cret"})
        assert r.status_code == 200
        r = httpx.post(s.url + "/v1/predict", files=files, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200


def test_concurrent_clients_are_batched(server):
    import concurrent.futures as cf

    def one(i):
        return httpx.post(server.url + "/v1/predict", files={"files": (f"{i}.png", png_bytes(_img(i)))}, timeout=30).status_code

    with cf.ThreadPoolExecutor(8) as ex:
        codes = list(ex.map(one, range(32)))
    assert codes == [200] * 32


def test_explain_and_report(server):
    pytest.importorskip("pytorch_grad_cam")
    arr = _img(8)
    r = httpx.post(server.url + "/v1/explain", files={"file": ("a.png", png_bytes(arr))}, data={"label": "Mass", "method": "gradcam"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png" and r.headers["x-medlens-label"] == "Mass"
    assert Image.open(io.BytesIO(r.content)).size[0] > 0
    bad = httpx.post(server.url + "/v1/explain", files={"file": ("a.png", png_bytes(arr))}, data={"label": "NoSuchFinding"})
    assert bad.status_code == 422
    bad = httpx.post(server.url + "/v1/explain", files={"file": ("a.png", png_bytes(arr))}, data={"method": "nonsense"})
    assert bad.status_code == 422
    rep = httpx.post(server.url + "/v1/report", files={"file": ("a.png", png_bytes(arr))}, timeout=60)
    assert rep.status_code == 200 and "attachment" in rep.headers["content-disposition"]
    assert "not a diagnosis" in rep.text.lower()


def test_anomaly_bundle_is_served_with_score_and_error_map(tmp_path):
    """An autoencoder bundle goes through the same routes: a score against the threshold, an error-map overlay."""
    import torch

    from medlens.models.autoencoder import ScoreSpec
    from medlens.serve.app import create_app

    torch.manual_seed(0)
    arch = {"type": "reversed_ae", "in_chans": 1, "image_size": 16, "depth": 2, "width": 4, "latent_dim": 4}
    spec = ScoreSpec(mean=(0.5,), std=(0.5,))
    m = Manifest(arch, LabelSpace(("normal", "pneumonia"), "anomaly"), resolve_preprocessing(16, 1), thresholds=[0.5],
                 task_section={"normal_label": "normal", "threshold": 0.5, "fpr": 0.05, **spec.to_dict()})
    bundle = save_bundle(create_model(arch).eval(), m, tmp_path / "ae")
    with Server(create_app(bundle)) as s:
        r = httpx.post(s.url + "/v1/predict", files={"files": ("x.png", png_bytes(_img(3)))}, timeout=60)
        assert r.status_code == 200, r.text
        p = r.json()["predictions"][0]
        f = p["findings"][0]  # the task's own record: a score against the threshold and a flag
        assert f["label"] == "pneumonia" and f["value"] == p["score"] >= 0.0 and f["positive"] == (p["score"] >= 0.5)
        e = httpx.post(s.url + "/v1/explain", files={"file": ("x.png", png_bytes(_img(3)))}, timeout=60)
        assert e.status_code == 200, e.text
        assert e.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(e.content)).size == (40, 48)  # the error map has the uploaded image's size
