"""The server keeps its OpenAPI contract: ``schemathesis run .../openapi.json --checks all`` (bounded) finds no failure
on a live server, open and behind an API key; and the pieces of that contract, checked one by one."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.integration.test_serve import Server

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from tests.unit._bundles import random_bundle

    return random_bundle(tmp_path_factory.mktemp("contract") / "bundle", intended_use="Test model. Not a diagnosis.")


def schemathesis(schema_url: str, tmp: Path, *extra: str, examples: int = 10) -> subprocess.CompletedProcess:
    """``schemathesis run SCHEMA_URL --checks all`` with the repository's schemathesis.toml, bounded and seeded."""
    cmd = [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()", "--config-file", str(ROOT / "schemathesis.toml"),
           "run", schema_url, "--checks", "all", "--max-examples", str(examples), "--seed", "0", "--workers", "2",
           "--generation-database", "none", "--no-color", "--request-timeout", "20", *extra]
    return subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=180)


def _summary(out: str) -> str:
    return "\n".join(out.splitlines()[-60:])


def test_schemathesis_finds_no_contract_failure(bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("schemathesis")
    from medlens.serve.app import create_app

    with Server(create_app(bundle)) as s:
        res = schemathesis(s.url + "/openapi.json", tmp_path)
        assert res.returncode == 0, _summary(res.stdout + res.stderr)
        assert "6 selected / 6 total" in res.stdout and " passed" in res.stdout
        assert httpx.get(s.url + "/health", timeout=10).status_code == 200  # and it kept serving


@pytest.mark.heavy  # the keyed contract is also checked, lighter, by test_the_contract_piece_by_piece
def test_schemathesis_behind_an_api_key(bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("schemathesis")
    from medlens.serve.app import ServeSettings, create_app

    with Server(create_app(bundle, settings=ServeSettings(api_key="k3y"))) as s:
        assert httpx.get(s.url + "/v1/openapi.json", timeout=10).status_code == 401  # the model's contract is behind the key
        res = schemathesis(s.url + "/v1/openapi.json", tmp_path, "-H", "X-API-Key: k3y", examples=5)
        assert res.returncode == 0, _summary(res.stdout + res.stderr)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 24), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_the_contract_piece_by_piece(bundle: Path) -> None:
    from fastapi.testclient import TestClient

    from medlens.serve.app import ServeSettings, create_app

    app = create_app(bundle)
    state = app.state.medlens
    with TestClient(app, raise_server_exceptions=False) as c:
        spec = c.get("/openapi.json").json()
        bodies = spec["components"]["schemas"]
        explain = bodies["Body_explain_v1_explain_post"]["properties"]
        # an empty file is schema-invalid, as the server refuses it (400)
        assert explain["file"]["minLength"] == 1 and bodies["Body_predict_v1_predict_post"]["properties"]["files"]["minItems"] == 1
        assert c.post("/v1/preview", files={"file": ("e.png", b"")}).status_code == 400
        # this model's choices are in the schema of an open server (what /v1/model publishes)
        assert explain["label"] == {"type": "string", "title": "Label", "enum": [*state.manifest.label_names, ""]}
        assert explain["method"]["enum"] == [*state.explain_methods(), ""] and explain["target_layer"]["enum"] == [*state.target_layers(), ""]
        assert c.post("/v1/explain", files={"file": ("x.png", _png())}, data={"label": "", "method": "", "target_layer": ""}).status_code == 200
        # metadata is a JSON part: null means none
        assert c.post("/v1/predict", files={"files": ("x.png", _png())}, data={"metadata": "null"}).status_code == 200
        # the report's errors are JSON, its answer HTML
        report = spec["paths"]["/v1/report"]["post"]["responses"]
        assert list(report["200"]["content"]) == ["text/html"] and list(report["422"]["content"]) == ["application/json"]
        # a method a route does not take: 405 with Allow, and a POST to a GET route is not refused as "not multipart"
        for method, path, allow in (("TRACE", "/health", "GET"), ("TRACE", "/v1/predict", "POST"), ("POST", "/v1/model", "GET")):
            r = c.request(method, path)
            assert r.status_code == 405 and r.headers["allow"] == allow and r.json()["error"]["code"] == "http_error", (method, path)
        assert c.get("/v1/openapi.json").json() == spec  # the same contract at the keyed address
    keyed = create_app(bundle, settings=ServeSettings(api_key="k3y"))
    with TestClient(keyed) as c:
        generic = c.get("/openapi.json").json()
        assert "enum" not in generic["components"]["schemas"]["Body_explain_v1_explain_post"]["properties"]["label"]
        assert c.get("/v1/openapi.json").status_code == 401
        narrowed = c.get("/v1/openapi.json", headers={"X-API-Key": "k3y"}).json()
        assert narrowed["components"]["schemas"]["Body_explain_v1_explain_post"]["properties"]["label"]["enum"] == ["normal", "abnormal", ""]
