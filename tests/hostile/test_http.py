"""Hostile HTTP requests: each gets a 4xx JSON error with a message (naming the field), and /health stays 200.

In-process (FastAPI's TestClient); the streamed-body cases against a real uvicorn server are in test_upload_limits.py.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from tests.hostile._helpers import HOSTILE_IMAGES, dicom_scan, good_png

LIMIT = 256 * 1024  # max_upload_bytes of the test server


def _app(bundle, **kw):
    from medlens.serve.app import ServeSettings, create_app

    return create_app(bundle, settings=ServeSettings(max_upload_bytes=LIMIT, max_pixels=4_000_000, max_files=4, **kw))


@pytest.fixture(scope="module")
def client(pristine_bundle):
    with TestClient(_app(pristine_bundle), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def fusion(fusion_bundle):
    with TestClient(_app(fusion_bundle), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def keyed(pristine_bundle):
    with TestClient(_app(pristine_bundle, api_key="s3cret-key"), raise_server_exceptions=False) as c:
        yield c


def assert_refused(client, resp, status: int, *needles: str) -> str:
    assert resp.status_code == status, (resp.status_code, resp.text[:300])
    assert resp.headers["content-type"].startswith("application/json")
    msg = resp.json()["error"]["message"]
    assert msg and "\n" not in msg and "Traceback" not in msg
    for n in needles:
        assert n in msg, (n, msg)
    assert client.get("/health").status_code == 200  # still serving
    return msg


def png_file(name: str = "x.png", seed: int = 0):
    return (name, good_png(seed), "image/png")


# ----------------------------------------------------------------------------------------- images
@pytest.mark.parametrize("route", ["/v1/predict", "/v1/explain", "/v1/preview"])
@pytest.mark.parametrize("case", sorted(HOSTILE_IMAGES))
def test_hostile_images_are_4xx(client, case, route):
    name, data, word = HOSTILE_IMAGES[case]
    field = "files" if route == "/v1/predict" else "file"
    r = client.post(route, files={field: (name, data, "application/octet-stream")})
    status = 400 if case == "zero_bytes" else 413 if case == "dicom_bomb" else 415
    assert_refused(client, r, status, word)


# ----------------------------------------------------------------------------------------- metadata types
BAD_METADATA = {
    "string_for_number": ('{"age": "abc"}', "'age'"),
    "list_for_number": ('{"age": [1, 2]}', "'age'"),
    "object_for_category": ('{"sex": {"x": 1}}', "'sex'"),
    "overflow_1e400": ('{"age": 1e400}', "'age'"),
    "nan_literal": ('{"age": NaN}', "NaN"),
    "infinity_literal": ('{"age": -Infinity}', "Infinity"),
    "boolean_true": ('{"age": true}', "'age'"),
    "boolean_false": ('{"age": false}', "'age'"),
    "not_json": ("{age: 1", "not valid JSON"),
    "wrong_shape": ("[1, 2, 3]", "metadata"),
}


@pytest.mark.parametrize("route", ["/v1/predict", "/v1/explain", "/v1/report"])
@pytest.mark.parametrize("case", sorted(BAD_METADATA))
def test_bad_metadata_is_422_naming_the_field(fusion, case, route):
    text, word = BAD_METADATA[case]
    field = "files" if route == "/v1/predict" else "file"
    r = fusion.post(route, files={field: png_file()}, data={"metadata": text})
    assert_refused(fusion, r, 422, word)


def test_good_metadata_is_used(fusion):
    """The same image with two ages: both accepted, and the age changes the output (metadata acts)."""
    probs = []
    for age in (20, 90):
        r = fusion.post("/v1/predict", files={"files": png_file()}, data={"metadata": json.dumps({"age": age, "sex": "female"})})
        assert r.status_code == 200, r.text
        probs.append(r.json()["predictions"][0]["probabilities"])
    assert probs[0] != probs[1]


# ----------------------------------------------------------------------------------------- fields and limits
def test_unknown_method_on_report_and_explain(client):
    for route in ("/v1/report", "/v1/explain"):
        r = client.post(route, files={"file": png_file()}, data={"method": "<script>x</script>"})
        assert_refused(client, r, 422, "method")


def test_unknown_label_on_explain(client):
    assert_refused(client, client.post("/v1/explain", files={"file": png_file()}, data={"label": "Pneumothorax"}), 422, "label")


def test_too_many_files(client):
    files = [("files", png_file(f"{i}.png", i)) for i in range(5)]
    assert_refused(client, client.post("/v1/predict", files=files), 413, "at most 4")


def test_no_file_field(client):
    assert_refused(client, client.post("/v1/predict", files={"other": png_file()}), 422, "files")


@pytest.mark.parametrize(("ctype", "body"), [("application/json", b'{"files": []}'), ("text/plain", b"hello"), (None, b"")])
def test_wrong_content_type_is_415(client, ctype, body):
    headers = {"content-type": ctype} if ctype else {}
    assert_refused(client, client.post("/v1/predict", content=body, headers=headers), 415, "multipart/form-data")


def test_oversize_with_content_length_is_413(client):
    big = b"\0" * (LIMIT + 128 * 1024)
    assert_refused(client, client.post("/v1/predict", files={"files": ("big.png", big, "image/png")}), 413, "limit")


def test_oversize_chunked_without_content_length_is_413(client):
    def chunks():
        head = b'--b\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n'
        yield head
        for _ in range(40):
            yield b"\0" * 16384
        yield b"\r\n--b--\r\n"

    r = client.post("/v1/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert_refused(client, r, 413, "limit")


def test_lying_content_length_is_refused(client):
    r = client.post("/v1/predict", content=b"x" * 10, headers={"content-type": "multipart/form-data; boundary=b", "content-length": "ten"})
    assert r.status_code == 400 and client.get("/health").status_code == 200


def test_empty_file_is_400(client):
    assert_refused(client, client.post("/v1/predict", files={"files": ("e.png", b"", "image/png")}), 400, "empty")


# ----------------------------------------------------------------------------------------- api key
@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer nope"}, {"X-API-Key": "s3cret-ke"}])
def test_wrong_or_missing_api_key_is_401(keyed, headers):
    for route in ("/v1/model",):
        assert_refused(keyed, keyed.get(route, headers=headers), 401, "API key")
    assert_refused(keyed, keyed.post("/v1/predict", files={"files": png_file()}, headers=headers), 401, "API key")


def test_right_api_key_works(keyed):
    assert keyed.get("/v1/model", headers={"X-API-Key": "s3cret-key"}).status_code == 200
    assert keyed.post("/v1/predict", files={"files": png_file()}, headers={"Authorization": "Bearer s3cret-key"}).status_code == 200


# ----------------------------------------------------------------------------------------- what the server tells
def test_model_info_tells_the_client_and_nothing_about_the_host(client, pristine_bundle):
    import platform
    import socket
    import sys

    d = client.get("/v1/model").json()
    for k in ("label_names", "task", "presentation", "explain_methods", "input", "metrics", "intended_use", "thresholds"):
        assert k in d, k
    assert d["input"]["max_upload_bytes"] == LIMIT and d["input"]["preprocessing"]["image_size"] == 32
    assert set(d["versions"]) == {"medlens"}
    for k in ("config", "extra", "history", "environment"):
        assert k not in d
    text = json.dumps(d)
    for secret in (str(pristine_bundle), str(pristine_bundle.parent), socket.gethostname(), sys.prefix, platform.python_version()):
        assert secret not in text, secret


def test_openapi_documents_errors_and_the_api_key_only_when_there_is_one(client, keyed):
    spec = client.get("/openapi.json").json()
    assert "securitySchemes" not in spec.get("components", {})  # an open server asks for no key, so none is declared
    for route in ("/v1/predict", "/v1/explain", "/v1/report", "/v1/preview"):
        op = spec["paths"][route]["post"]
        assert {"400", "413", "415", "422"} <= set(op["responses"]) and "401" not in op["responses"], route
        assert "security" not in op
        for code in ("400", "413", "415", "422"):  # errors are JSON, even where the answer is a PNG or a page
            assert op["responses"][code]["content"] == {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    assert "ErrorBody" in spec["components"]["schemas"]
    spec = keyed.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["APIKeyHeader"] == {"type": "apiKey", "in": "header", "name": "X-API-Key",
                                                                      "description": "Needed when the server has an API key."}
    for route, method in (("/v1/predict", "post"), ("/v1/explain", "post"), ("/v1/report", "post"), ("/v1/preview", "post"), ("/v1/model", "get")):
        op = spec["paths"][route][method]
        assert "401" in op["responses"] and op["security"] == [{"APIKeyHeader": []}], route
    assert "security" not in spec["paths"]["/health"]["get"]


def test_docs_page_works_offline(client):
    r = client.get("/docs")
    assert r.status_code == 200 and "openapi.json" in r.text
    low = r.text.lower()
    assert "http://" not in low and "https://" not in low and "//cdn" not in low and "innerhtml" not in low


def test_dicom_preview_is_a_bounded_png(pristine_bundle):
    from io import BytesIO

    from PIL import Image

    from medlens.serve.app import ServeSettings, create_app

    with TestClient(create_app(pristine_bundle, settings=ServeSettings(max_upload_bytes=4 << 20))) as big:
        r = big.post("/v1/preview", files={"file": ("scan.dcm", dicom_scan(), "application/dicom")})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    im = Image.open(BytesIO(r.content))
    assert im.size == (1024, 410)  # 1500 x 600 scaled to a longest side of 1024
    assert len(set(im.getdata())) > 100  # the decoded scan, not a blank


def test_page_previews_dicom_through_the_server(client):
    page = client.get("/").text
    assert '"/v1/preview"' in page and "DICM" in page and "innerHTML" not in page
