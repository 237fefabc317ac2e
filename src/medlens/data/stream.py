"""Streaming the training split from tar shards: :class:`ShardStream` (the samples) and :class:`StreamLoader`
(batches, the epoch, what was trained, exact resume).

**Who reads which shard.** The training shards, in the order of ``data.urls.train``, are dealt round-robin to
*streams*: shard ``i`` goes to stream ``i mod (world_size x W)``, where ``W = max(1, data.num_workers)`` and the
stream of loader worker ``w`` on DDP rank ``r`` is ``r x W + w``. Give at least ``world_size x W`` shards, or some
workers idle (a warning says so). Each stream reads its shards in an order drawn from ``(seed, epoch, stream)``,
through a shuffle buffer of ``data.shuffle_buffer`` samples drawn from the same seed, and makes its own batches of
``data.batch_size`` (its last batch may be smaller; a last batch of one sample is dropped, as BatchNorm cannot train
on it). The DataLoader hands out the workers' batches in turn, a worker that has finished drops out.
Under DDP every rank trains on as many batches as the rank with the fewest (the rest of a longer rank's epoch is
left out that epoch, logged once), so no process waits at a collective for another.

**Exact resume.** The order of every stream is a function of ``(seed, epoch, stream)`` alone, and each sample's
augmentation is seeded from ``(seed, epoch, stream, position)`` (as :class:`~medlens.data.dataset.EpochIndex` does
for tables), so an epoch can be replayed. The loader counts the batches trained in the epoch
(:class:`medlens.engine.callbacks.LoaderProgress` tells it) and stores ``(epoch, batches)`` in every checkpoint
(Lightning's stateful-loader protocol). A run resumed from a mid-epoch checkpoint (SIGTERM, Ctrl-C) works out from
that count which stream gave each trained batch and how far each got, skips those samples without decoding them
(their bytes are still read: a remote shard is downloaded again up to where it stopped) and hands the streams to
the workers in the turn order the interrupted run would have continued with. The rest of the epoch, and every later
one, then sees the same batches with the same augmentation as an uninterrupted run. Changing ``num_workers``, the
batch size, the shards or the number of processes between the two restarts that epoch from its start (a warning
says so).

Example:
    >>> batches_per_stream([40, 33, 0], 16)
    [3, 3, 0]
    >>> turn_order([2, 1], 2)  # streams with 2 and 1 batches, 2 batches trained: (per stream trained, next turn)
    ([1, 1], 0)
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from medlens.data.dataset import ImageDataset, collate
from medlens.data.io import ImageReadError, load_image_bytes
from medlens.data.samples import SampleTable
from medlens.data.shards import DEFAULT_TIMEOUT_S, display_url, is_member_ref, iter_members, parse_ref

log = logging.getLogger("medlens.data")

__all__ = ["ShardStream", "StreamLoader", "batches_per_stream", "is_streamed", "turn_order"]


def is_streamed(table: SampleTable) -> bool:
    """Whether a table's images are shard members (``kind: webdataset``), which training streams."""
    return not table.in_memory and len(table) > 0 and is_member_ref(table.images[0])


def batches_per_stream(rows: list[int], batch_size: int) -> list[int]:
    """Batches each stream makes from its rows: full batches, and a last smaller one unless it would hold one sample."""
    out = []
    for n in rows:
        full, rest = divmod(int(n), batch_size)
        out.append(full + (1 if rest > 1 or (rest == 1 and batch_size == 1) else 0))
    return out


def turn_order(batches: list[int], done: int) -> tuple[list[int], int]:
    """Replay the DataLoader's turns for ``done`` batches: workers in turn, a finished one skipped.

    Args:
        batches: batches each stream (worker) makes this epoch.
        done: batches already handed out.

    Returns:
        (batches taken from each stream, the stream whose turn is next).
    """
    taken = [0] * len(batches)
    cur = 0
    n = len(batches)
    for _ in range(done):
        for _ in range(n):
            if taken[cur] < batches[cur]:
                break
            cur = (cur + 1) % n
        else:
            break  # every stream is finished
        taken[cur] += 1
        cur = (cur + 1) % n
    return taken, cur


def _dist() -> tuple[int, int]:
    """(world size, rank) of the process group, (1, 0) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class ShardStream(IterableDataset):
    """The training rows of a shard-backed table, streamed (see the module docstring for the order).

    Built from the training split's :class:`~medlens.data.dataset.ImageDataset`, whose table, transform,
    preprocessing, metadata and ``on_bad_image`` it uses: a sample is decoded and transformed exactly as that
    dataset would, and yields the same item (its ``index`` is the row in that table).

    Args:
        dataset: the training split's dataset (its images shard member references).
        batch_size: samples per batch (each stream makes its own batches).
        seed: the run's seed.
        shuffle_buffer: samples held to shuffle a stream (1: the shards' own order, shards still shuffled).
        timeout_s: seconds an HTTP read may stall.
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, seed: int = 0, shuffle_buffer: int = 1000,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        table = dataset.table
        if not is_streamed(table):
            raise ValueError(f"{table.source}: a shard stream needs a table of shard members (data.kind: webdataset)")
        self.transform = dataset.transform
        self.image_size = None if dataset.pp is None else dataset.pp.image_size
        self.targets = table.targets
        self.metadata = dataset.metadata
        self.on_bad_image = dataset.on_bad_image
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle_buffer = int(shuffle_buffer)
        self.timeout_s = float(timeout_s)
        self.shards: list[str] = []
        self.rows: dict[str, dict[int, int]] = {}  # shard -> {image member's data offset: row}
        for row, ref in enumerate(table.images):
            url, m = parse_ref(str(ref))
            if url not in self.rows:
                self.shards.append(url)
                self.rows[url] = {}
            self.rows[url][m.offset] = row
        # what the loader sets before each iteration (picked up by the workers with the dataset)
        self.epoch = 0
        self.world = 1
        self.rank = 0
        self.workers = 1
        self.turn = 0
        self.skip: list[int] = []

    def __len__(self) -> int:  # rows, for messages (the loader's len is in batches)
        return len(self.targets)

    def stream_rows(self, world: int, workers: int) -> list[int]:
        """Training rows of every stream (``world x workers`` of them, in stream order)."""
        n = world * workers
        out = [0] * n
        for i, url in enumerate(self.shards):
            out[i % n] += len(self.rows[url])
        return out

    def fingerprint(self) -> str:
        """What an exact resume needs unchanged: shards, their rows, batch size, buffer and seed."""
        h = hashlib.sha256()
        for url in self.shards:
            h.update(f"{url}\0{sorted(self.rows[url].items())}\0".encode())
        h.update(f"{self.batch_size}/{self.shuffle_buffer}/{self.seed}".encode())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------ in the worker
    def __iter__(self) -> Iterator:
        info = get_worker_info()
        w = 0 if info is None else info.id
        logical = (self.turn + w) % self.workers
        g = self.rank * self.workers + logical
        skip = self.skip[logical] if self.skip else 0
        return self._stream(g, skip)

    def _key(self, g: int, pos: int) -> int:
        """The augmentation seed of the sample at ``pos`` of stream ``g`` this epoch."""
        return (((self.seed * 1_000_003 + self.epoch) * 1_000_003 + g) * 1_000_003 + pos) % (2**62)

    def _samples(self, g: int, rng: np.random.Generator) -> Iterator[tuple[int, bytes, str]]:
        """(row, image bytes, name) of stream ``g`` in shard order (shards shuffled), before the buffer."""
        n = self.world * self.workers
        mine = [u for i, u in enumerate(self.shards) if i % n == g]
        for j in rng.permutation(len(mine)):
            url = mine[int(j)]
            rows = self.rows[url]
            for m, data in iter_members(url, lambda m, rows=rows: m.offset in rows, self.timeout_s):
                if data is not None:
                    yield rows[m.offset], data, f"{display_url(url)}/{m.name}"

    def _shuffled(self, g: int) -> Iterator[tuple[int, bytes, str]]:
        rng = np.random.default_rng([self.seed, self.epoch, g])
        buf: list[tuple[int, bytes, str]] = []
        for item in self._samples(g, rng):
            buf.append(item)
            if len(buf) >= self.shuffle_buffer:
                j = int(rng.integers(len(buf)))
                buf[j], buf[-1] = buf[-1], buf[j]
                yield buf.pop()
        for j in rng.permutation(len(buf)):
            yield buf[int(j)]

    def _item(self, g: int, pos: int, row: int, data: bytes, name: str) -> dict | None:
        try:
            img = load_image_bytes(data, name, reduce_to=self.image_size)
        except ImageReadError:
            if self.on_bad_image == "error":
                raise
            log.warning("skipping unreadable image %s", name)
            return None
        return {"image": self.transform(img, seed=self._key(g, pos)), "targets": self.targets[row], "index": row,
                "metadata": None if self.metadata is None else self.metadata[row]}

    def _stream(self, g: int, skip_batches: int) -> Iterator:
        n_rows = self.stream_rows(self.world, self.workers)[g]
        n_batches = batches_per_stream([n_rows], self.batch_size)[0]
        first = skip_batches * self.batch_size  # positions trained before a resume: read, not decoded
        batch: list[dict | None] = []
        for pos, (row, data, name) in enumerate(self._shuffled(g)):
            b = pos // self.batch_size
            if b >= n_batches:
                break  # a last batch of one sample
            if pos >= first:
                batch.append(self._item(g, pos, row, data, name))
            if len(batch) == self.batch_size or (pos + 1 == n_rows and batch):
                yield collate(batch)
                batch = []


def _identity(x):
    return x


class StreamLoader(DataLoader):
    """Batches of a :class:`ShardStream` from ``num_workers`` workers; stateful for exact mid-epoch resume.

    Its length is the number of batches this process trains per epoch. Lightning saves :meth:`state_dict` in every
    checkpoint and gives it back through :meth:`load_state_dict` on resume; :meth:`set_epoch` and
    :meth:`batch_done` are called by :class:`medlens.engine.callbacks.LoaderProgress`.

    Example:
        >>> loader = StreamLoader(ShardStream(train_set, 64, seed=0), num_workers=2)  # doctest: +SKIP
    """

    def __init__(self, stream: ShardStream, num_workers: int = 0, pin_memory: bool = False) -> None:
        # its own generator: starting workers draws their base seed from it, not from the global random state, which
        # a run resumed mid-epoch restores to where the stopped run left it (the draws happen at different times)
        super().__init__(stream, batch_size=None, num_workers=num_workers, collate_fn=_identity, persistent_workers=False,
                         pin_memory=pin_memory, generator=torch.Generator().manual_seed(stream.seed))
        self.epoch = 0
        self.done = 0  # batches trained this epoch
        self.resume_from = 0  # batches to skip when the next iteration starts (a resumed epoch)
        self._warned_idle = False

    @property
    def stream(self) -> ShardStream:
        return self.dataset  # type: ignore[return-value]

    def _batches(self, world: int) -> list[list[int]]:
        w = max(1, self.num_workers)
        rows = self.stream.stream_rows(world, w)
        return [batches_per_stream(rows[r * w:(r + 1) * w], self.stream.batch_size) for r in range(world)]

    def __len__(self) -> int:
        world, _ = _dist()
        return min(sum(b) for b in self._batches(world))

    def layout(self) -> list:
        world, _ = _dist()
        return [world, max(1, self.num_workers), self.stream.fingerprint()]

    # ------------------------------------------------------------------ progress (LoaderProgress)
    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self.epoch, self.done, self.resume_from = int(epoch), 0, 0

    def batch_done(self) -> None:
        self.done += 1

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches": self.done, "layout": self.layout()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state.get("epoch", 0))
        if state.get("layout") == self.layout():
            self.done = self.resume_from = int(state.get("batches", 0))
        else:
            self.done = self.resume_from = 0
            log.warning("resume: the shards, batch size, workers or processes changed since the checkpoint; epoch %d of "
                        "the training stream restarts from its first sample", self.epoch + 1)

    # ------------------------------------------------------------------ iteration
    def __iter__(self):
        return self._epoch()

    def _epoch(self):
        # lazy: the plan is made at the first batch, after Lightning's on_train_epoch_start set the epoch
        world, rank = _dist()
        w = max(1, self.num_workers)
        per_rank = self._batches(world)
        limit = min(sum(b) for b in per_rank)
        mine = per_rank[rank]
        if sum(mine) > limit and rank == 0 and self.epoch == 0 and self.resume_from == 0:
            log.info("training stream: %d batches per process and epoch (the longest process would have %d)", limit, max(map(sum, per_rank)))
        idle = sum(1 for b in mine if b == 0)
        if idle and not self._warned_idle:
            self._warned_idle = True
            log.warning("training stream: %d of %d loader workers have no shard (%d shards for %d processes x %d workers); "
                        "give more shards or fewer workers", idle, w, len(self.stream.shards), world, w)
        start = min(self.resume_from, limit)
        self.resume_from = 0
        taken, turn = turn_order(mine, start)
        s = self.stream
        s.epoch, s.world, s.rank, s.workers, s.turn = self.epoch, world, rank, w, turn
        s.skip = taken
        if start:
            log.info("resume: epoch %d of the training stream continues after %d trained batches", self.epoch + 1, start)
        n = start
        if n >= limit:
            return
        for batch in DataLoader.__iter__(self):
            yield batch
            n += 1
            if n >= limit:
                break
