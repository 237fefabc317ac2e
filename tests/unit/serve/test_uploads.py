"""The pixel budget (first come, first served; never more than the total; a timeout is 503) and header peeking."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")

from medlens.serve.errors import ApiError  # noqa: E402
from medlens.serve.uploads import PixelBudget, declared_pixels  # noqa: E402


def test_budget_admits_in_order_and_never_over_the_total():
    async def scenario() -> list[str]:
        budget = PixelBudget(10)
        order: list[str] = []

        async def job(name: str, n: int, hold: float) -> None:
            taken = await budget.acquire(n, timeout=5.0, name=name)
            assert budget.in_flight <= budget.total
            order.append(name)
            await asyncio.sleep(hold)
            budget.release(taken)

        await asyncio.gather(job("a", 6, 0.05), job("b", 6, 0.01), job("c", 3, 0.01), job("d", 100, 0.01))
        assert budget.in_flight == 0 and budget.peak <= 10
        return order

    # b does not fit beside a; c would, but waits behind b (no overtaking); d asks for more than the total and gets all
    assert asyncio.run(scenario()) == ["a", "b", "c", "d"]


def test_budget_timeout_is_503_and_frees_its_place():
    async def scenario() -> None:
        budget = PixelBudget(10)
        held = await budget.acquire(8, timeout=1.0)
        with pytest.raises(ApiError) as e:
            await budget.acquire(5, timeout=0.05, name="big.png")
        assert e.value.status == 503 and e.value.code == "busy" and e.value.headers == {"Retry-After": "1"}
        assert "big.png" in e.value.message and budget.waiting == 0  # its place in the queue is freed
        small = await budget.acquire(2, timeout=0.05)  # fits beside the 8 held
        budget.release(small)
        budget.release(held)
        assert budget.in_flight == 0

    asyncio.run(scenario())


def test_declared_pixels_reads_headers_only():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((30, 50), np.uint8)).save(buf, format="PNG")
    assert declared_pixels(buf.getvalue(), 10_000) == 1500
    assert declared_pixels(buf.getvalue(), 1000) == 0  # over the per-image limit: refused from the header later
    assert declared_pixels(b"garbage" * 40, 10_000) == 0
    from medlens.data.io import dicom_bytes

    assert declared_pixels(dicom_bytes(np.zeros((60, 150), np.uint16)), 10_000_000) == 9000
