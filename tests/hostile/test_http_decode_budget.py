"""Decoding is budgeted by pixels in flight across concurrent requests, against a real uvicorn server on 127.0.0.1.

Seven concurrent large PNGs, each under the per-image limit, are decoded one after the other when the budget holds
one of them (they wait; none is refused), several at once when it holds all seven (the budget is what bounds them),
and the traced memory of the burst stays near one decoded image. An image that cannot get room in time is a 503
``busy`` with Retry-After, and the server keeps serving.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import threading
import time
import tracemalloc

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.integration.test_serve import Server

SIDE = 2000  # 4 M pixels: 4 MB decoded (grey)
PIXELS = SIDE * SIDE


@pytest.fixture(scope="module")
def big_png() -> bytes:
    img = np.zeros((SIDE, SIDE), np.uint8)
    img[::97, ::89] = 255  # a little structure; compresses to a few KB, decodes to 4 MB
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


class SlowDecoder:
    """Wraps the server's decoder: each decode holds its image for ``hold_s`` and the most at once is recorded,
    independently of the budget's own counter."""

    def __init__(self, real, hold_s: float) -> None:
        self.real, self.hold_s = real, hold_s
        self.live = self.most = 0
        self.lock = threading.Lock()

    def __call__(self, data: bytes, name: str, max_pixels: int) -> np.ndarray:
        img = self.real(data, name, max_pixels)
        with self.lock:
            self.live += 1
            self.most = max(self.most, self.live)
        time.sleep(self.hold_s)
        with self.lock:
            self.live -= 1
        return img


def _burst(url: str, data: bytes, n: int = 7) -> list[httpx.Response]:
    def one(i: int) -> httpx.Response:
        return httpx.post(url + "/v1/predict", files={"files": (f"{i}.png", data, "image/png")}, timeout=120)

    with cf.ThreadPoolExecutor(n) as ex:
        return list(ex.map(one, range(n)))


def _app(bundle, budget_images: int, wait_s: float = 60.0):
    from medlens.serve.app import ServeSettings, create_app

    return create_app(bundle, settings=ServeSettings(max_pixels=PIXELS, max_pixels_in_flight=budget_images * PIXELS,
                                                     decode_wait_s=wait_s, decode_threads=8, max_upload_bytes=8 << 20))


@pytest.mark.parametrize(("budget_images", "most"), [(1, 1), (7, None)])
def test_concurrent_large_images_wait_for_the_pixel_budget(pristine_bundle, big_png, monkeypatch, budget_images, most):
    import medlens.serve.state as state_module

    slow = SlowDecoder(state_module.decode_image, hold_s=0.3)
    monkeypatch.setattr(state_module, "decode_image", slow)
    app = _app(pristine_bundle, budget_images)
    with Server(app) as s:
        answers = _burst(s.url, big_png)
        assert [r.status_code for r in answers] == [200] * 7, [r.text[:200] for r in answers]
        budget = app.state.medlens.pixels
        assert budget.peak <= budget.total and budget.in_flight == 0
        if most is not None:
            assert slow.most == most  # one decoded image at a time
        else:
            assert slow.most > 1  # with room for all, they overlap: the budget is what serialised them above
        assert httpx.get(s.url + "/health").status_code == 200


def test_traced_memory_of_the_burst_stays_near_one_image(pristine_bundle, big_png, monkeypatch):
    import medlens.serve.state as state_module

    monkeypatch.setattr(state_module, "decode_image", SlowDecoder(state_module.decode_image, hold_s=0.2))
    with Server(_app(pristine_bundle, 1)) as s:
        _burst(s.url, big_png, 2)  # warm up (model, threads)
        tracemalloc.start()
        try:
            answers = _burst(s.url, big_png)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert [r.status_code for r in answers] == [200] * 7
    assert peak < 3 * PIXELS, f"traced peak {peak / 2**20:.1f} MiB for 7 x {PIXELS / 2**20:.1f} MiB images"


def test_no_room_in_time_is_503_busy(pristine_bundle, big_png, monkeypatch):
    import medlens.serve.state as state_module

    monkeypatch.setattr(state_module, "decode_image", SlowDecoder(state_module.decode_image, hold_s=1.5))
    with Server(_app(pristine_bundle, 1, wait_s=0.2)) as s:
        answers = _burst(s.url, big_png, 3)
        codes = sorted(r.status_code for r in answers)
        assert codes[0] == 200 and 503 in codes, codes
        busy = next(r for r in answers if r.status_code == 503)
        assert busy.json()["error"]["code"] == "busy" and busy.headers["retry-after"] == "1"
        assert "\n" not in busy.json()["error"]["message"]
        assert httpx.get(s.url + "/health").status_code == 200
