"""The clinicians' web page in headless Chromium: upload an image, see probabilities and the heatmap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CHROMIUM_FLAGS
from tests.integration.test_serve import Server, make_bundle, png_bytes

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    pytest.importorskip("pytorch_grad_cam")
    from medlens.serve.app import create_app

    bundle = make_bundle(tmp_path_factory.mktemp("web") / "bundle", names=("Effusion", "Mass"))
    with Server(create_app(bundle)) as s:
        yield s


def test_upload_shows_probabilities_and_heatmap(page_server, chromium, tmp_path: Path):
    sync_api = pytest.importorskip("playwright.sync_api")
    img = tmp_path / "chest.png"
    img.write_bytes(png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)))
    shot = Path(__file__).resolve().parents[1] / "artifacts"
    shot.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=[f for f in CHROMIUM_FLAGS if f != "--headless"], headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(page_server.url + "/")
            page.wait_for_function("document.getElementById('model-sub').textContent.includes('multilabel')", timeout=20000)
            page.set_input_files("#file", str(img))
            page.click("#analyse")
            page.wait_for_selector("tr.finding", timeout=30000)
            labels = page.eval_on_selector_all("tr.finding", "rows => rows.map(r => r.dataset.label)")
            assert labels == ["Effusion", "Mass"]
            probs = page.eval_on_selector_all("tr.finding td.prob", "cells => cells.map(c => c.textContent)")
            assert all(p.endswith("%") and 0.0 <= float(p[:-1]) <= 100.0 for p in probs)
            # the heatmap overlay is fetched after the prediction and must really render
            page.wait_for_function("document.getElementById('heatmap').naturalWidth > 0", timeout=60000)
            width = page.evaluate("document.getElementById('heatmap').naturalWidth")
            assert width > 0
            assert "for " in page.text_content("#heatmap-caption")
            assert page.text_content("#error") == ""
            # another finding and another method: the heatmap is recomputed for that choice
            methods = page.eval_on_selector_all("#method option", "os => os.map(o => o.value)")
            assert {"gradcam", "gradcam++", "eigencam"} <= set(methods)
            first_src = page.get_attribute("#heatmap", "src")
            page.select_option("#label", "Mass")
            page.select_option("#method", "eigencam")
            page.click("#explain")
            page.wait_for_function(f"document.getElementById('heatmap').src !== {first_src!r} && document.getElementById('heatmap').naturalWidth > 0", timeout=60000)
            caption = page.text_content("#heatmap-caption")
            assert "Mass" in caption and "eigencam" in caption.lower(), caption
            page.screenshot(path=str(shot / "serve_page.png"), full_page=True)
            # the per-image report downloads as an HTML file with the findings and the not-a-diagnosis statement
            with page.expect_download(timeout=60000) as dl:
                page.click("#report")
            saved = tmp_path / dl.value.suggested_filename
            dl.value.save_as(saved)
            assert saved.suffix == ".html"
            html = saved.read_text(encoding="utf-8")
            assert "Effusion" in html and "Mass" in html and "not a diagnosis" in html.lower()
            # a bad file shows an error message and the page keeps working
            bad = tmp_path / "notes.png"
            bad.write_text("not an image")
            page.set_input_files("#file", str(bad))
            page.click("#analyse")
            page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=20000)
            assert "not a readable image" in page.text_content("#error")
        finally:
            browser.close()
    assert (shot / "serve_page.png").stat().st_size > 1000
