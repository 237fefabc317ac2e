"""``medlens serve --ui gradio``: the Gradio app on the same uvicorn server and model answers as ``/v1/predict`` does
(metadata inputs of a fusion bundle, the generated-data banner, heatmap, report, one-line errors); behind an API key
it asks for the key; without the extra the command says what to install."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.integration.test_serve import Server, png_bytes


@pytest.fixture(scope="module")
def fusion_demo_bundle(tmp_path_factory) -> Path:
    """A fusion bundle (age numeric, sex categorical) trained, its record says, on generated images."""
    from medlens.config import MetadataConfig
    from medlens.data.metadata import MetadataEncoder
    from medlens.provenance import training_data_record
    from tests.unit._bundles import random_bundle

    enc = MetadataEncoder.fit_columns({"age": ["40", "60", "80"], "sex": ["male", "female", "male"]},
                                      MetadataConfig(numeric=["age"], categorical=["sex"]))
    arch = {"type": "fusion", "backbone": "resnet10t", "num_outputs": 1, "in_chans": 1, "image_size": 32, "meta_dim": enc.dim,
            "meta_hidden": [8], "meta_dropout": 0.0, **enc.architecture()}
    rec = training_data_record({"kind": "synthetic"}, {"train": (40, {"normal": {"positive": 20}, "abnormal": {"positive": 20}})}, generated=True)
    return random_bundle(tmp_path_factory.mktemp("gradio") / "bundle", arch=arch, metadata_encoder=enc.to_dict(), training_data=rec,
                         intended_use="Test model. Not a diagnosis.")


def test_gradio_answers_as_the_rest_api_on_the_same_model(fusion_demo_bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("gradio")
    pytest.importorskip("pytorch_grad_cam")
    from gradio_client import Client, handle_file

    from medlens.provenance import GENERATED_BANNER
    from medlens.serve.app import create_app

    img = tmp_path / "chest.png"
    img.write_bytes(png_bytes(np.random.default_rng(0).integers(0, 255, (40, 48), dtype=np.uint8)))
    app = create_app(fusion_demo_bundle, ui="gradio")
    state = app.state.medlens
    with Server(app) as s:
        rest = httpx.post(s.url + "/v1/predict", files=[("files", ("chest.png", img.read_bytes(), "image/png"))],
                          data={"metadata": json.dumps({"age": 72, "sex": "female"})}, timeout=60).json()["predictions"][0]
        config = httpx.get(s.url + "/gradio/config", timeout=30).text
        assert GENERATED_BANNER in config  # the provenance banner of a generated-data bundle
        client = Client(s.url + "/gradio/", verbose=False, download_files=str(tmp_path / "dl"))
        shown, ood, table, outcome, record = client.predict(handle_file(str(img)), 72, "female", api_name="/predict")
        assert record["findings"] == rest["findings"] and record["source"] == rest["source"] == "chest.png"
        assert record["training_data"]["banner"] == GENERATED_BANNER
        pres = state.task.presentation(state.manifest)
        assert table["headers"] == ["Finding", "Decision", pres.value_name, "Threshold"]
        assert [row[0] for row in table["data"]] == [f["label"] for f in rest["findings"]]
        assert ood == rest["ood_note"] and outcome and Path(shown).stat().st_size > 0
        # the metadata reaches the model: other values, another number (as /v1/predict gives for them)
        other = client.predict(handle_file(str(img)), 20, "male", api_name="/predict")[4]
        rest_other = httpx.post(s.url + "/v1/predict", files=[("files", ("chest.png", img.read_bytes(), "image/png"))],
                                data={"metadata": json.dumps({"age": 20, "sex": "male"})}, timeout=60).json()["predictions"][0]
        assert other["findings"] == rest_other["findings"] != rest["findings"]
        # the heatmap with a method and layer choice, and the per-image report
        layer = state.target_layers()[-1]
        overlay, caption = client.predict(handle_file(str(img)), state.manifest.label_names[-1], "eigencam", layer, 72, "female",
                                          api_name="/explain")
        assert Path(overlay).stat().st_size > 0 and caption.startswith("eigencam for ") and caption.endswith(f"at {layer}")
        report = Path(client.predict(handle_file(str(img)), "gradcam", 72, "female", api_name="/report"))
        assert report.name == "medlens-report-chest.html" and "not a diagnosis" in report.read_text(encoding="utf-8").lower()
        # a bad file: one line in the UI, and the server keeps serving both front ends
        bad = tmp_path / "notes.png"
        bad.write_text("not an image")
        with pytest.raises(Exception, match="not a readable image") as err:
            client.predict(handle_file(str(bad)), None, None, api_name="/predict")
        assert "\n" not in str(err.value) and "Traceback" not in str(err.value)
        assert client.predict(handle_file(str(img)), 72, "female", api_name="/predict")[4]["findings"] == rest["findings"]
        assert httpx.get(s.url + "/health", timeout=10).status_code == 200
    assert state.predictor is app.state.predictor  # one model: the Gradio handlers used the REST routes' predictor


def test_gradio_behind_an_api_key_asks_for_it(tmp_path: Path) -> None:
    pytest.importorskip("gradio")
    from fastapi.testclient import TestClient

    from medlens.serve.app import ServeSettings, create_app
    from tests.unit._bundles import random_bundle

    app = create_app(random_bundle(tmp_path / "b"), settings=ServeSettings(api_key="k3y"), ui="gradio")
    with TestClient(app) as c:
        assert c.get("/gradio/config").status_code == 401
        assert c.post("/gradio/login", data={"username": "anyone", "password": "wrong"}).status_code >= 400
        assert c.post("/gradio/login", data={"username": "anyone", "password": "k3y"}).status_code == 200
        assert c.get("/gradio/config").status_code == 200


def test_without_the_extra_serve_ui_gradio_says_what_to_install(monkeypatch, tmp_path: Path) -> None:
    from tests.hostile._helpers import cli

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ModuleNotFoundError, as without the extra
    res = cli("serve", tmp_path / "no-bundle-needed", "--ui", "gradio")
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines == ["medlens serve needs the 'gradio' extra: pip install 'medlens[gradio]'"], res.stderr
    res = cli("serve", tmp_path / "no-bundle-needed", "--ui", "tk")
    assert res.exit_code == 2 and "--ui tk: one of page, gradio" in res.stderr


@pytest.mark.browser
def test_gradio_ui_in_chromium_answers_a_prediction(chromium, tmp_path: Path) -> None:
    pytest.importorskip("gradio")
    pytest.importorskip("pytorch_grad_cam")
    sync_api = pytest.importorskip("playwright.sync_api")
    from medlens.serve.app import create_app
    from tests.conftest import CHROMIUM_FLAGS
    from tests.unit._bundles import random_bundle

    img = tmp_path / "chest.png"
    img.write_bytes(png_bytes(np.random.default_rng(1).integers(0, 255, (40, 48), dtype=np.uint8)))
    shot = Path(__file__).resolve().parents[1] / "artifacts"
    shot.mkdir(exist_ok=True)
    with Server(create_app(random_bundle(tmp_path / "b"), ui="gradio")) as s, sync_api.sync_playwright() as pw:
        rest = httpx.post(s.url + "/v1/predict", files=[("files", ("chest.png", img.read_bytes(), "image/png"))], timeout=60).json()
        (finding,) = rest["predictions"][0]["findings"]
        browser = pw.chromium.launch(executable_path=chromium, args=[f for f in CHROMIUM_FLAGS if f != "--headless"], headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            elsewhere: list[str] = []
            page.on("request", lambda r: elsewhere.append(r.url) if not r.url.startswith(s.url) else None)
            page.goto(s.url + "/gradio/")
            page.wait_for_selector("#analyse", timeout=60000)
            page.set_input_files("#image input[type=file]", str(img))
            page.click("#analyse")
            page.wait_for_function("(document.querySelector('#outcome textarea') || {}).value", timeout=60000)
            table = page.inner_text("#findings").split()
            want = [finding["label"], finding["decision"], f"{100 * finding['value']:.1f}%"]  # /v1/predict's, as the page writes it
            assert table[table.index(want[0]):][:3] == want, table
            page.wait_for_function("(document.querySelector('#caption textarea') || {}).value", timeout=60000)  # the heatmap follows
            assert page.input_value("#caption textarea").startswith("gradcam for ")
            page.screenshot(path=str(shot / "serve_gradio.png"), full_page=True)
            assert elsewhere == []  # nothing loaded from another host (fonts included)
        finally:
            browser.close()
