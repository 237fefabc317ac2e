"""`medlens serve --tta PRESET`: every prediction of the server averages the preset's views, and /v1/model says so."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from medlens.inference import Predictor  # noqa: E402
from medlens.serve.app import ServeSettings, create_app  # noqa: E402
from tests.unit._bundles import random_bundle  # noqa: E402


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("preset", ["hflip", "d4"])
def test_served_predictions_use_the_tta_preset(tmp_path, preset) -> None:
    bundle = random_bundle(tmp_path / "b")
    img = np.random.default_rng(1).integers(0, 256, (40, 40), dtype=np.uint8)
    want = Predictor.from_bundle(bundle, tta=preset).predict([img])[0].probabilities
    plain = Predictor.from_bundle(bundle).predict([img])[0].probabilities
    with TestClient(create_app(bundle, "torch", ServeSettings(tta=preset))) as c:
        assert c.get("/v1/model").json()["tta"] == preset
        got = c.post("/v1/predict", files={"files": ("x.png", _png(img), "image/png")}).json()["predictions"][0]["probabilities"]
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-5)
    assert any(abs(want[k] - plain[k]) > 1e-6 for k in want)  # the preset changed the answer: it acted
