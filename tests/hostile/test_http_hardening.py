"""The server, third wave: huge numbers in metadata, one number for predict/explain/report under TTA, ONNX report
and explain, a model that outputs NaN, a task without explanations, nothing about the model behind an API key.

Each case: a JSON error of one line naming the field (or the route works), and the server keeps serving.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.hostile._helpers import edit_manifest
from tests.hostile.test_http import assert_refused, png_file


def _client(bundle, backend="torch", **kw):
    from medlens.serve.app import ServeSettings, create_app

    return TestClient(create_app(bundle, backend, ServeSettings(**kw)), raise_server_exceptions=False)


# ------------------------------------------------------------------------------------------ metadata
@pytest.mark.parametrize("digits", [400, 5000])
@pytest.mark.parametrize("route", ["/v1/predict", "/v1/explain", "/v1/report"])
def test_a_huge_integer_in_metadata_is_422_naming_the_field(fusion_bundle, route, digits):
    with _client(fusion_bundle) as c:
        field = "files" if route == "/v1/predict" else "file"
        r = c.post(route, files={field: png_file()}, data={"metadata": '{"age": ' + "9" * digits + "}"})
        msg = assert_refused(c, r, 422, "metadata")
        assert "age" in msg or "digits" in msg
        assert len(msg) < 400  # the number is not echoed back


# ------------------------------------------------------------------------------------------ one number per image
def test_tta_predict_explain_and_report_give_the_same_number(pristine_bundle):
    pytest.importorskip("pytorch_grad_cam")
    with _client(pristine_bundle, tta="d4") as c:
        p = c.post("/v1/predict", files={"files": png_file()}).json()["predictions"][0]
        finding = p["findings"][0]
        e = c.post("/v1/explain", files={"file": png_file()}, data={"label": finding["label"]})
        assert e.status_code == 200, e.text
        assert float(e.headers["x-medlens-value"]) == pytest.approx(finding["value"], abs=5e-6)
        rep = c.post("/v1/report", files={"file": png_file()})
        assert rep.status_code == 200, rep.text
        assert f"{finding['value']:.4f}" in rep.text  # the findings table
        shown = re.search(r"\((?:p|score) = ([0-9.]+)\)", rep.text).group(1)  # the overlay's caption, as many decimals as it has
        assert float(shown) == pytest.approx(finding["value"], abs=0.6 * 10 ** -len(shown.split(".")[1]))
    with _client(pristine_bundle) as plain:  # the preset acts: without it the number differs
        q = plain.post("/v1/predict", files={"files": png_file()}).json()["predictions"][0]["findings"][0]["value"]
    assert abs(q - finding["value"]) > 1e-6


# ------------------------------------------------------------------------------------------ ONNX
@pytest.fixture(scope="module")
def onnx_folders(pristine_bundle, tmp_path_factory):
    """(a bundle exported in place: ONNX and PyTorch weights, an exported folder: ONNX and manifest only)."""
    pytest.importorskip("onnxruntime")
    from medlens.export import export_onnx

    root = tmp_path_factory.mktemp("onnx")
    both, only = root / "both", root / "only"
    shutil.copytree(pristine_bundle, both)
    export_onnx(both)
    only.mkdir()
    for f in ("model.onnx", "manifest.json"):
        shutil.copy(both / f, only / f)
    return both, only


def test_onnx_only_server_reports_without_overlay_and_explain_hides_paths(onnx_folders):
    only = onnx_folders[1]
    with _client(only, "onnx") as c:
        rep = c.post("/v1/report", files={"file": png_file()})
        assert rep.status_code == 200, rep.text[:300]
        assert "not a diagnosis" in rep.text.lower() and "attachment" in rep.headers["content-disposition"]
        assert "overlay for" not in rep.text
        msg = assert_refused(c, c.post("/v1/explain", files={"file": png_file()}), 422, "PyTorch weights")
        assert str(only) not in msg and str(only.parent) not in msg
        assert not re.search(r"(^|\s)/\w", msg), msg  # no absolute path at all


def test_onnx_server_with_weights_explains_and_reports(onnx_folders):
    pytest.importorskip("pytorch_grad_cam")
    with _client(onnx_folders[0], "onnx") as c:
        assert c.app.state.medlens.predictor.backend == "onnx"
        p = c.post("/v1/predict", files={"files": png_file()}).json()["predictions"][0]["findings"][0]
        e = c.post("/v1/explain", files={"file": png_file()})
        assert e.status_code == 200 and float(e.headers["x-medlens-value"]) == pytest.approx(p["value"], abs=5e-6)
        rep = c.post("/v1/report", files={"file": png_file()})
        assert rep.status_code == 200 and "overlay for" in rep.text


# ------------------------------------------------------------------------------------------ NaN
@pytest.mark.parametrize("tta", ["none", "hflip"])
def test_a_model_that_outputs_nan_is_a_json_error_and_the_server_keeps_serving(pristine_bundle, tta):
    with _client(pristine_bundle, tta=tta) as c:
        predictor = c.app.state.medlens.predictor
        good = predictor.transform
        predictor.transform = lambda img: np.full_like(good(img), np.nan)
        try:
            for route in ("/v1/predict", "/v1/report", "/v1/explain"):
                field = "files" if route == "/v1/predict" else "file"
                msg = assert_refused(c, c.post(route, files={field: png_file()}), 500, "not a number")
                assert "x.png" in msg and str(pristine_bundle) not in msg
        finally:
            predictor.transform = good
        assert c.post("/v1/predict", files={"files": png_file()}).status_code == 200


@pytest.mark.parametrize("preprocessing", [{"std": [0.0]}, {"mean": [float("nan")]}])
def test_a_bundle_with_broken_preprocessing_never_answers_a_raw_500(bundle, preprocessing):
    mf = json.loads((bundle / "manifest.json").read_text())
    edit_manifest(bundle, preprocessing={**mf["preprocessing"], **preprocessing})
    from medlens.serve.app import ServeSettings, create_app

    try:
        app = create_app(bundle, settings=ServeSettings())
    except ValueError as e:  # refused when loaded (the better outcome): one line naming the field
        assert "\n" not in str(e) and ("std" in str(e) or "mean" in str(e) or "preprocessing" in str(e)), e
        return
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/predict", files={"files": png_file()})
        assert r.status_code >= 400 and r.headers["content-type"].startswith("application/json")
        msg = r.json()["error"]["message"]
        assert "\n" not in msg and "Traceback" not in msg
        assert c.get("/health").status_code == 200


# ------------------------------------------------------------------------------------------ absent explanations
def test_explain_and_report_on_a_task_without_explanations_are_422(pristine_bundle, monkeypatch):
    with _client(pristine_bundle) as c:
        monkeypatch.setattr(type(c.app.state.medlens.task), "explain_methods", lambda self: [])
        for route in ("/v1/explain", "/v1/report"):
            assert_refused(c, c.post(route, files={"file": png_file()}), 422, "no explanation methods")
        assert c.get("/v1/model").json()["explain_methods"] == []
        assert c.post("/v1/predict", files={"files": png_file()}).status_code == 200


# ------------------------------------------------------------------------------------------ api key
def test_with_an_api_key_the_open_routes_do_not_describe_the_model(tmp_path):
    from tests.unit._bundles import random_bundle

    b = random_bundle(tmp_path / "b", names=("clear", "zebra_sign"), intended_use="Screening of zebra signs.")
    with _client(b, api_key="k3y") as c:
        for route in ("/openapi.json", "/docs", "/health", "/"):
            r = c.get(route)
            assert r.status_code == 200, route
            for secret in ("zebra", "resnet10t"):
                assert secret not in r.text.lower(), (route, secret)
        assert c.get("/health").json()["status"] == "ok"
        assert "zebra_sign" in c.get("/v1/model", headers={"X-API-Key": "k3y"}).text  # the key opens it
    with _client(b) as open_server:  # without a key the description names the model
        assert "zebra_sign" in open_server.get("/openapi.json").text
        assert open_server.get("/health").json()["labels"] == ["clear", "zebra_sign"]


def test_docs_page_is_swagger_ui_from_this_server(pristine_bundle):
    from medlens.serve.routes.docs import ASSETS, DOCS_CSP, swagger_assets
    from medlens.serve.routes.health import STATIC

    with _client(pristine_bundle) as c:
        assert c.get("/").text == (STATIC / "index.html").read_text(encoding="utf-8")
        r = c.get("/docs")
        if swagger_assets() is None:  # without fastapi-offline: the plain static reference
            assert r.text == (STATIC / "docs.html").read_text(encoding="utf-8")
            return
        # Swagger UI's two files come from this server, and the page may reach no other host
        assert f'src="{ASSETS}/swagger-ui-bundle.js"' in r.text and f'href="{ASSETS}/swagger-ui.css"' in r.text
        assert r.headers["content-security-policy"] == DOCS_CSP and "connect-src 'self'" in DOCS_CSP
        js, css = c.get(ASSETS + "/swagger-ui-bundle.js"), c.get(ASSETS + "/swagger-ui.css")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript") and b"SwaggerUIBundle" in js.content
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        # only those two files: nothing else of the package's folder, no path tricks
        for name in ("redoc.standalone.js", "favicon.png", "..%2F__init__.py", "../core.py"):
            assert c.get(f"{ASSETS}/{name}").status_code == 404, name
