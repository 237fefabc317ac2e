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


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    """A binary bundle as ``medlens demo`` makes one on generated images: the training-data record says so, and test
    metrics at its threshold give the operating point."""
    from medlens.provenance import training_data_record
    from medlens.serve.app import create_app
    from medlens.tasks.classification.metrics import classification_metrics
    from tests.unit._bundles import random_bundle

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    scores = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, 120), 0, 1)[:, None]
    test = classification_metrics(scores, np.eye(2)[y], "binary", ["normal", "abnormal"], [0.5])
    rec = training_data_record({"kind": "synthetic"}, {"train": (560, {"normal": {"positive": 280}, "abnormal": {"positive": 280}}),
                                                       "test": (120, {"normal": {"positive": int((y == 0).sum())}, "abnormal": {"positive": int(y.sum())}})},
                               generated=True)
    bundle = random_bundle(tmp_path_factory.mktemp("demo") / "bundle", image_size=32, thresholds=[0.5], metrics={"test": test},
                           training_data=rec, intended_use="Demo only.")
    with Server(create_app(bundle)) as s:
        yield s


_DROP = """async ([b64, how]) => {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], how + ".png", { type: "image/png" }));
  if (how === "dropped") {
    const zone = document.getElementById("drop");
    zone.dispatchEvent(new DragEvent("dragover", { dataTransfer: dt, bubbles: true, cancelable: true }));
    zone.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
  } else {
    document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: dt, bubbles: true, cancelable: true }));
  }
}"""


def test_drop_paste_banner_operating_point_and_a_phone_screen(demo_server, chromium, tmp_path: Path):
    import base64
    import urllib.request

    sync_api = pytest.importorskip("playwright.sync_api")
    b64 = base64.b64encode(png_bytes(np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8))).decode()
    shot = Path(__file__).resolve().parents[1] / "artifacts"
    shot.mkdir(exist_ok=True)
    with urllib.request.urlopen(demo_server.url + "/favicon.ico") as r:  # the icon the page links: never a 404
        assert r.status == 200 and r.headers["Content-Type"].startswith("image/svg+xml") and b"<svg" in r.read()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=[f for f in CHROMIUM_FLAGS if f != "--headless"], headless=True)
        try:
            for width, how in ((1200, "dropped"), (390, "pasted")):
                page = browser.new_page(viewport={"width": width, "height": 844})
                page.goto(demo_server.url + "/")
                page.wait_for_function("document.getElementById('model-sub').textContent.includes('binary')", timeout=20000)
                # provenance in the header, and the banner of a model trained on generated images
                assert page.is_visible("#generated-banner")
                assert page.text_content("#generated-banner") == "demo model trained on generated images - not for real images"
                assert "synthetic generated blobs" in page.text_content("#training-data") and "train n=560" in page.text_content("#training-data")
                # no image (and so no broken-image placeholder) before an upload
                assert not page.is_visible("#preview") and not page.is_visible("#heatmap")
                # every control has a label a screen reader reads
                unlabelled = page.evaluate("[...document.querySelectorAll('input, select')].filter(e => !e.labels || !e.labels.length).map(e => e.id)")
                assert unlabelled == []
                page.evaluate(_DROP, [b64, how])
                page.wait_for_function("!document.getElementById('analyse').disabled", timeout=10000)
                assert page.evaluate("document.getElementById('file').files[0].name") == f"{how}.png"
                page.wait_for_function("document.getElementById('preview').naturalWidth > 0", timeout=10000)
                page.click("#analyse")
                page.wait_for_selector("tr.finding", timeout=30000)
                # the decision comes first, then the number (a score: this bundle's calibration is not good enough)
                cells = page.eval_on_selector_all("tr.finding td", "cs => cs.map(c => c.className)")
                assert cells[1].startswith("decision") and cells[2] == "prob"
                assert page.eval_on_selector_all("thead th", "hs => hs.map(h => h.textContent)")[1:3] == ["Decision", "Score"]
                op = page.text_content("#operating-point")
                assert page.is_visible("#operating-point") and "abnormal on the test split (n=120), threshold 0.500" in op
                assert "sensitivity" in op and "95% CI" in op and "PPV" in op and "NPV" in op and "calibration error (ECE)" in op
                # nothing wider than the screen, at 390 px too
                page.wait_for_function("document.getElementById('heatmap').naturalWidth > 0", timeout=60000)
                assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), f"horizontal overflow at {width} px"
                # the threshold, the table's last column, is on screen (not scrolled away inside the table)
                assert page.evaluate("(() => { const r = document.querySelector('tr.finding td:last-child').getBoundingClientRect();"
                                     " return r.width > 0 && r.right <= window.innerWidth; })()")
                assert "(score = " in page.text_content("#heatmap-caption")  # the caption uses the same word
                page.screenshot(path=str(shot / f"serve_page_{width}px.png"), full_page=True)
                page.close()
        finally:
            browser.close()
