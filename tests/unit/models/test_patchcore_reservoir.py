"""The feature detector's bounded memory fill: a uniform, seeded sample of the training patches, and the coreset."""

from __future__ import annotations

import numpy as np
import torch

from medlens.models.patchcore import PatchReservoir, greedy_coreset


def _stream(r: PatchReservoir, n: int, batch: int) -> None:
    for start in range(0, n, batch):
        idx = torch.arange(start, min(n, start + batch), dtype=torch.float32)
        r.add(idx[:, None].repeat(1, 3))  # each row carries its stream position


def test_the_sample_is_bounded_and_every_row_has_the_same_chance():
    n, cap, trials = 1000, 100, 300
    hits = np.zeros(n)
    for seed in range(trials):
        r = PatchReservoir(cap, seed=seed)
        _stream(r, n, batch=64)
        rows = r.rows()
        assert rows.shape == (cap, 3) and r.seen == n
        kept = rows[:, 0].long().numpy()
        assert len(set(kept.tolist())) == cap  # no row twice
        hits[kept] += 1
    rate = hits / trials  # expected cap / n = 0.1 for every row, early or late in the stream
    first, last = rate[:200].mean(), rate[-200:].mean()
    assert abs(first - 0.1) < 0.02 and abs(last - 0.1) < 0.02, (first, last)


def test_the_same_stream_and_seed_give_the_same_sample():
    a, b, c = PatchReservoir(50, seed=3), PatchReservoir(50, seed=3), PatchReservoir(50, seed=4)
    for r in (a, b, c):
        _stream(r, 400, batch=37)
    assert torch.equal(a.rows(), b.rows())
    assert not torch.equal(a.rows(), c.rows())


def test_fewer_rows_than_capacity_are_all_kept_in_order():
    r = PatchReservoir(500, seed=0)
    _stream(r, 120, batch=50)
    assert torch.equal(r.rows()[:, 0], torch.arange(120, dtype=torch.float32))


def test_the_coreset_picks_the_farthest_points_first():
    # two tight clusters and one far outlier: the outlier and both clusters are covered by three centres
    g = torch.Generator().manual_seed(0)
    pts = torch.cat([torch.randn(200, 8, generator=g) * 0.01, torch.randn(200, 8, generator=g) * 0.01 + 5, torch.full((1, 8), 40.0)])
    idx = greedy_coreset(pts, 3, seed=0, proj_dim=128)
    assert 400 in idx.tolist()
    assert {int(i) < 200 for i in idx if int(i) < 400} == {True, False}
