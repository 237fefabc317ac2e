"""Micro-batching: concurrent requests coalesced into batched forward passes, off the event loop."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from medlens.inference import BasePredictor


class MicroBatcher:
    """Coalesces concurrent requests into batched forward passes, for every backend (torch and ONNX).

    Requests hand in images already decoded *and preprocessed* (:meth:`prepare`, run in the request's worker
    thread), so the batch thread only stacks them and runs the model: ``predictor.run`` on the stacked batch,
    then the task's activation. Batches run one at a time in their own thread (the runtime uses every core);
    while one runs, new requests queue up and form the next, larger batch. A predictor with test-time
    augmentation is batched through ``predict_arrays`` on the decoded images instead.

    Example:
        >>> b = MicroBatcher(predictor, max_batch=32); await b.start()  # doctest: +SKIP
        >>> probs = await b.submit([b.prepare(img)], None)  # doctest: +SKIP
    """

    def __init__(self, predictor: BasePredictor, max_batch: int = 32, max_wait_ms: float = 2.0) -> None:
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._pool: ThreadPoolExecutor | None = None
        # TTA averages two runs inside the predictor: hand it decoded images and let it preprocess them
        self.preprocessed = not getattr(predictor, "tta", False)
        self.batches = 0
        self.images = 0

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """A decoded uint8 image -> what :meth:`submit` takes (the preprocessed float32 (C, H, W) array)."""
        return self.predictor.transform(image) if self.preprocessed else image

    def infer(self, items: list[np.ndarray], metadata: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Prepared items -> (scores (N, K), the out-of-distribution gate's scores or None), in forward passes of at
        most ``max_batch`` images (blocking), through the predictor's one scoring path."""
        p = self.predictor
        x = np.stack(items if self.preprocessed else [p.transform(im) for im in items])
        parts = [p.scores_and_ood(x[i : i + self.max_batch], None if metadata is None else metadata[i : i + self.max_batch])
                 for i in range(0, len(x), self.max_batch)]
        scores = np.concatenate([s for s, _ in parts])
        ood = None if any(o is None for _, o in parts) else np.concatenate([o for _, o in parts])
        return scores, ood

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medlens-batch")
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    async def submit(self, items: list[np.ndarray], metadata: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """(scores (len(items), K), gate scores or None) for the prepared items (:meth:`prepare`) of one request."""
        if self.queue is None:  # not started (e.g. used without lifespan): run directly
            return await asyncio.to_thread(self.infer, items, metadata)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((items, metadata, fut))
        return await fut

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.queue is not None
        while True:
            first = await self.queue.get()
            batch = [first]
            n = len(first[0])
            deadline = loop.time() + self.max_wait
            while n < self.max_batch:
                if not self.queue.empty():  # already waiting: no timer needed
                    item = self.queue.get_nowait()
                else:
                    timeout = deadline - loop.time()
                    if timeout <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), timeout)
                    except asyncio.TimeoutError:
                        break
                batch.append(item)
                n += len(item[0])
            await self._run(batch)

    async def _run(self, batch: list) -> None:
        items = [im for b in batch for im in b[0]]
        metas = [b[1] for b in batch]
        meta = None if any(m is None for m in metas) else np.concatenate(metas)
        try:
            probs, ood = await asyncio.get_running_loop().run_in_executor(self._pool, self.infer, items, meta)
        except Exception as e:  # a failed batch fails its requests, not the server
            for b in batch:
                if not b[2].done():
                    b[2].set_exception(e)
            return
        self.batches += 1
        self.images += len(items)
        i = 0
        for b in batch:
            k = len(b[0])
            if not b[2].done():
                b[2].set_result((probs[i : i + k], None if ood is None else ood[i : i + k]))
            i += k
