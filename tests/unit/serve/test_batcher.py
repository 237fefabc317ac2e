"""The server's micro-batcher: concurrent requests share forward passes, for any runtime (torch or ONNX)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from medlens.serve.app import MicroBatcher


class FakeRuntime:
    """What the batcher needs of a predictor (as OnnxPredictor has it): transform, run, activation, tta."""

    backend = "onnx"
    tta = False

    def __init__(self, delay: float = 0.02) -> None:
        self.delay = delay
        self.batch_sizes: list[int] = []
        self.threads: set[str] = set()

    def transform(self, img: np.ndarray) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        return img.astype(np.float32)[None] / 255.0

    def run(self, x: np.ndarray, meta: np.ndarray | None) -> np.ndarray:
        import time

        assert x.ndim == 4  # a stacked, preprocessed batch
        self.batch_sizes.append(len(x))
        time.sleep(self.delay)  # the model: new requests queue up meanwhile
        return x.reshape(len(x), -1).mean(axis=1, keepdims=True)

    def activation(self, z: np.ndarray) -> np.ndarray:
        return z * 2.0

    def scores_and_ood(self, x: np.ndarray, meta: np.ndarray | None):
        """The predictor's one scoring path: scores and the out-of-distribution gate's scores (none here)."""
        return self.activation(self.run(x, meta)), None


def _images(n: int) -> list[np.ndarray]:
    return [np.full((4, 4), 10 * i, np.uint8) for i in range(n)]


def test_concurrent_requests_share_batches_and_get_their_own_rows():
    rt = FakeRuntime()
    b = MicroBatcher(rt, max_batch=32, max_wait_ms=5.0)

    async def main():
        await b.start()
        try:
            return await asyncio.gather(*(b.submit([b.prepare(im)], None) for im in _images(16)))
        finally:
            await b.stop()

    out = asyncio.run(main())
    assert len(rt.batch_sizes) < 16 and sum(rt.batch_sizes) == 16 and max(rt.batch_sizes) > 1
    assert b.images == 16 and b.batches == len(rt.batch_sizes)
    for i, (probs, ood) in enumerate(out):  # each request gets its own image's score back
        np.testing.assert_allclose(probs, [[2.0 * 10 * i / 255.0]], rtol=1e-6)
        assert ood is None


def test_batches_never_exceed_max_batch():
    rt = FakeRuntime(delay=0.0)
    b = MicroBatcher(rt, max_batch=4, max_wait_ms=5.0)
    probs, _ = b.infer([b.prepare(im) for im in _images(10)], None)
    assert rt.batch_sizes == [4, 4, 2] and probs.shape == (10, 1)


def test_a_tta_predictor_gets_decoded_images():
    class Tta(FakeRuntime):
        tta = True

    b = MicroBatcher(Tta())
    item = b.prepare(_images(1)[0])  # decoded, not preprocessed: the predictor's TTA views are made from it
    assert item.dtype == np.uint8 and b.infer([item], None)[0].shape == (1, 1)
