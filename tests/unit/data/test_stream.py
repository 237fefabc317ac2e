"""The training stream of tar shards: the DataLoader's turn order, shards dealt to workers and ranks (every row once
an epoch), and a resumed loader that continues exactly where the interrupted one stopped; real PneumoniaMNIST shards."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from medlens.config import config_from_dict
from medlens.data.dataset import ImageDataset
from medlens.data.readers import read_dataset
from medlens.data.stream import ShardStream, StreamLoader, batches_per_stream, is_streamed, turn_order
from medlens.data.transforms import build_augment, make_transform, preprocessing_from_config
from tests._shards import write_shards


class _Tagged(IterableDataset):
    """Worker w yields batches[w] items (w, i)."""

    def __init__(self, batches: list[int]) -> None:
        self.batches = batches

    def __iter__(self):
        w = get_worker_info().id
        return iter([(w, i) for i in range(self.batches[w])])


def _simulated(batches: list[int]) -> list[int]:
    out = []
    for k in range(sum(batches)):
        taken, cur = turn_order(batches, k)
        while taken[cur] >= batches[cur]:
            cur = (cur + 1) % len(batches)
        out.append(cur)
    return out


@pytest.mark.parametrize("batches", [[3, 1, 2], [0, 4, 1], [2, 2, 2]])
def test_turn_order_is_the_dataloaders_order(batches: list[int]) -> None:
    got = [w for w, _ in DataLoader(_Tagged(batches), batch_size=None, num_workers=len(batches))]
    assert got == _simulated(batches)
    for k in range(len(got) + 1):  # after k batches: how many each worker gave
        assert turn_order(batches, k)[0] == [got[:k].count(w) for w in range(len(batches))]


def test_batches_per_stream_drops_a_last_batch_of_one() -> None:
    assert batches_per_stream([16, 17, 18, 1, 0], 8) == [2, 2, 3, 0, 0]
    assert batches_per_stream([3], 1) == [3]


@pytest.fixture
def train_set(pneumonia_npz: Path, tmp_path: Path) -> ImageDataset:
    """31 training rows in 5 shards of unequal size (9, 7, 6, 5, 4), light augmentation."""
    write_shards(pneumonia_npz, tmp_path, "train", 31, [9, 7, 6, 5, 4])
    write_shards(pneumonia_npz, tmp_path, "val", 4, 4)
    cfg = config_from_dict({"data": {"kind": "webdataset", "label_names": ["normal", "pneumonia"], "image_size": 28, "channels": 1,
                                     "urls": {"train": str(tmp_path / "train-{000..004}.tar"), "val": str(tmp_path / "val-000.tar")}}}).data
    table = read_dataset(cfg)
    pp = preprocessing_from_config(cfg)
    train = table.subset(np.where(table.splits == "train")[0])
    assert is_streamed(train) and not is_streamed(train.subset([]))
    return ImageDataset(train, make_transform(pp, build_augment(cfg.augment, cfg.channels, cfg.color_augment)), pp)


def _run(ds: ShardStream, world: int, rank: int, workers: int, epoch: int) -> list[int]:
    ds.world, ds.rank, ds.workers, ds.epoch, ds.turn, ds.skip = world, rank, workers, epoch, 0, []
    rows = []
    for w in range(workers):
        for b in ds._stream(rank * workers + w, 0):
            rows += b.index.tolist()
    return rows


def test_every_training_row_once_an_epoch_over_ranks_and_workers(train_set: ImageDataset) -> None:
    s = ShardStream(train_set, batch_size=4, seed=7, shuffle_buffer=5)
    n = len(train_set)
    assert n == 31 and s.stream_rows(2, 2) == [9 + 4, 7, 6, 5]  # shard i -> stream i mod 4
    for world, workers in ((1, 1), (1, 3), (2, 2)):
        rows = sum((_run(s, world, r, workers, 0) for r in range(world)), [])
        expected = sum(m - (m % 4 == 1) for m in s.stream_rows(world, workers))  # a last batch of one is dropped
        assert len(rows) == len(set(rows)) == expected  # no row twice; only last batches of one sample left out
        assert set(rows) <= set(range(n))
    e0, e0b, e1 = _run(s, 1, 0, 1, 0), _run(s, 1, 0, 1, 0), _run(s, 1, 0, 1, 1)
    assert e0 == e0b and e0 != e1 and sorted(e0) == sorted(e1)  # the order is (seed, epoch)'s


def _epoch(loader: StreamLoader) -> list[tuple[list[int], torch.Tensor]]:
    return [(b.index.tolist(), b.images) for b in loader]


def test_a_resumed_loader_continues_exactly(train_set: ImageDataset, caplog: pytest.LogCaptureFixture) -> None:
    full_loader = StreamLoader(ShardStream(train_set, 4, seed=3, shuffle_buffer=6), num_workers=2)
    full_loader.set_epoch(1)
    full = _epoch(full_loader)
    assert len(full) == len(full_loader) == sum(batches_per_stream(full_loader.stream.stream_rows(1, 2), 4))
    again = _epoch(full_loader)
    assert all(a[0] == b[0] and torch.equal(a[1], b[1]) for a, b in zip(full, again, strict=True))  # deterministic
    for k in (1, 4, len(full) - 1):
        first = StreamLoader(ShardStream(train_set, 4, seed=3, shuffle_buffer=6), num_workers=2)
        first.set_epoch(1)
        for _ in zip(range(k), first, strict=False):
            first.batch_done()
        state = first.state_dict()
        assert state["epoch"] == 1 and state["batches"] == k
        resumed = StreamLoader(ShardStream(train_set, 4, seed=3, shuffle_buffer=6), num_workers=2)
        resumed.load_state_dict(state)
        rest = _epoch(resumed)
        assert len(rest) == len(full) - k
        for (ia, xa), (ib, xb) in zip(full[k:], rest, strict=True):
            assert ia == ib and torch.equal(xa, xb)  # same rows, same augmentation
    # another layout (3 workers) cannot continue exactly: the epoch restarts, with a warning
    other = StreamLoader(ShardStream(train_set, 4, seed=3, shuffle_buffer=6), num_workers=3)
    with caplog.at_level(logging.WARNING, logger="medlens.data"):
        other.load_state_dict(state)
    assert "restarts from its first sample" in caplog.text and len(_epoch(other)) == len(other)


def test_the_shuffle_buffer_mixes_samples_across_a_stream(train_set: ImageDataset) -> None:
    def breaks(rows: list[int]) -> int:  # places where the next row is not the next one of the same shard
        return sum(b != a + 1 for a, b in zip(rows, rows[1:], strict=False))

    plain = _run(ShardStream(train_set, batch_size=4, seed=7, shuffle_buffer=1), 1, 0, 1, 0)
    mixed = _run(ShardStream(train_set, batch_size=4, seed=7, shuffle_buffer=12), 1, 0, 1, 0)
    assert sorted(plain) == sorted(mixed)
    assert breaks(plain) <= 4 < breaks(mixed)  # buffer 1: each shard read in order (5 shards, shuffled)


def test_ddp_ranks_get_their_own_shards_and_the_same_number_of_batches(train_set: ImageDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    import medlens.data.stream as stream

    seen, lengths = [], []
    for rank in (0, 1):  # two processes of one loader worker each: shards 0, 2, 4 to rank 0; 1, 3 to rank 1
        monkeypatch.setattr(stream, "_dist", lambda rank=rank: (2, rank))
        loader = StreamLoader(ShardStream(train_set, 4, seed=3, shuffle_buffer=6), num_workers=0)
        batches = [b.index.tolist() for b in loader]
        lengths.append((len(loader), len(batches)))
        seen.append({r for b in batches for r in b})
    # rows per rank: 9 + 6 + 4 = 19 (5 batches) and 7 + 5 = 12 (3 batches): both train on 3 batches an epoch
    assert lengths == [(3, 3), (3, 3)]
    assert not seen[0] & seen[1]
    assert seen[0] <= set(range(0, 9)) | set(range(16, 22)) | set(range(27, 31)) and seen[1] <= set(range(9, 16)) | set(range(22, 27))
