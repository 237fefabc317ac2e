"""The 200 responses are typed in the OpenAPI schema, and what the server really answers fits those types: a
classifier's and an anomaly detector's ``/v1/model`` and ``/v1/predict`` (a task's own fields pass through), and the
PNG routes declare ``image/png``."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from medlens.serve.schemas import ModelInfo, PredictResponse  # noqa: E402
from tests.hostile._helpers import good_png  # noqa: E402
from tests.unit._bundles import random_bundle  # noqa: E402


def _bundles(tmp: Path) -> list[Path]:
    from tests.integration.test_anomaly_end_to_end import anomaly_bundle

    return [random_bundle(tmp / "binary"), anomaly_bundle(tmp / "anomaly")]


def test_openapi_types_the_200_responses(tmp_path: Path) -> None:
    from medlens.serve.app import create_app

    with TestClient(create_app(random_bundle(tmp_path / "b"))) as c:
        spec = c.get("/openapi.json").json()
    ok = {route: spec["paths"][route][method]["responses"]["200"]["content"]
          for route, method in (("/v1/model", "get"), ("/v1/predict", "post"), ("/v1/explain", "post"), ("/v1/preview", "post"))}
    assert ok["/v1/model"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ModelInfo"}
    assert ok["/v1/predict"]["application/json"]["schema"] == {"$ref": "#/components/schemas/PredictResponse"}
    for route in ("/v1/explain", "/v1/preview"):
        assert list(ok[route]) == ["image/png"], route  # a PNG, not the JSON the schema said before
        assert ok[route]["image/png"]["schema"] == {"type": "string", "format": "binary"}
    schemas = spec["components"]["schemas"]
    assert {"TrainingData", "PresentationInfo", "FindingInfo", "PredictionRecord"} <= set(schemas)
    assert "operating_point" in schemas["ModelInfo"]["properties"] and "training_data" in schemas["ModelInfo"]["required"]


def test_answers_fit_the_declared_types_and_keep_the_tasks_own_fields(tmp_path: Path) -> None:
    from medlens.serve.app import create_app
    from medlens.serve.public import public_model_info
    from medlens.tasks import task_of

    for bundle in _bundles(tmp_path):
        app = create_app(bundle)
        m = app.state.medlens.manifest
        with TestClient(app) as c:
            info = c.get("/v1/model").json()
            body = c.post("/v1/predict", files=[("files", ("x.png", good_png(), "image/png"))]).json()
        ModelInfo.model_validate(info)
        assert set(public_model_info(m)) <= set(info)  # typing dropped nothing
        assert info["presentation"] == task_of(m).presentation(m).to_dict()
        parsed = PredictResponse.model_validate(body)
        (good,) = parsed.predictions
        assert good.findings and good.training_data is not None and good.error is None
        own = set(body["predictions"][0]) - set(type(good).model_fields)
        assert own, bundle.name  # the task's own fields (probabilities, a score and flag, ...) are there, untyped
