"""The web page in headless Chromium beyond classifiers: an anomaly bundle shows a score (not a percentage) and its
error map; hostile label and metadata names stay text; a new file clears the previous results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CHROMIUM_FLAGS
from tests.integration.test_anomaly_end_to_end import THRESHOLD, anomaly_bundle
from tests.integration.test_serve import Server, png_bytes
from tests.unit._bundles import random_bundle

pytestmark = pytest.mark.browser

XSS = '<img src=x onerror="window.__pwned=1">'
XSS_VALUE = '<script>window.__pwned=2</script>'


def _image(tmp_path: Path, name: str, seed: int, shape=(48, 40)) -> Path:
    p = tmp_path / name
    p.write_bytes(png_bytes(np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)))
    return p


class _Browser:
    """A headless Chromium launched exactly as test_serve_browser.py does."""

    def __init__(self, chromium: str) -> None:
        self.sync_api = pytest.importorskip("playwright.sync_api")
        self.chromium = chromium

    def __enter__(self):
        self.pw = self.sync_api.sync_playwright().start()
        self.browser = self.pw.chromium.launch(executable_path=self.chromium, args=[f for f in CHROMIUM_FLAGS if f != "--headless"], headless=True)
        return self.browser

    def __exit__(self, *exc) -> None:
        try:
            self.browser.close()
        finally:
            self.pw.stop()


@pytest.fixture(scope="module")
def anomaly_server(tmp_path_factory):
    from medlens.serve.app import create_app

    bundle = anomaly_bundle(tmp_path_factory.mktemp("web_anomaly") / "bundle")
    with Server(create_app(bundle)) as s:
        yield s


def test_anomaly_page_shows_the_score_the_decision_and_the_error_map(anomaly_server, chromium, tmp_path: Path):
    img = _image(tmp_path, "scan.png", 0)
    with _Browser(chromium) as browser:
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(anomaly_server.url + "/")
        page.wait_for_function("document.getElementById('model-sub').textContent.includes('anomaly')", timeout=20000)
        assert [o for o in page.eval_on_selector_all("#method option", "os => os.map(o => o.value)")] == ["error_map"]
        page.set_input_files("#file", str(img))
        page.click("#analyse")
        page.wait_for_selector("tr.finding", timeout=30000)
        rows = page.eval_on_selector_all("tr.finding", "rows => rows.map(r => [...r.cells].map(c => c.textContent))")
        assert len(rows) == 1
        label, decision, value, _bar, threshold = rows[0]  # the decision first, then the number it was made on
        assert label == "pneumonia"
        assert not value.endswith("%") and float(value) >= 0.0  # a score, shown as a number
        assert float(threshold) == pytest.approx(THRESHOLD)
        assert decision == ("positive" if float(value) >= THRESHOLD else "negative")
        assert "Anomaly score" in page.text_content("#findings thead")
        page.wait_for_function("document.getElementById('heatmap').naturalWidth > 0", timeout=60000)
        caption = page.text_content("#heatmap-caption")
        assert "error_map" in caption and "score = " in caption and "%" not in caption, caption
        body = page.evaluate("document.body.innerText")  # rendered text only, not the script source
        assert "NaN" not in body and "undefined" not in body
        assert page.text_content("#error") == ""


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory):
    pytest.importorskip("pytorch_grad_cam")
    from medlens.data.metadata import CategoricalField, MetadataEncoder
    from medlens.serve.app import create_app

    enc = MetadataEncoder([], [CategoricalField("site", ("back", XSS_VALUE, XSS))], encoding="onehot")
    arch = {"type": "fusion", "backbone": "test_resnet", "num_outputs": 2, "in_chans": 1, "image_size": 32,
            "meta_dim": enc.dim, "meta_hidden": [8], "meta_dropout": 0.0}
    bundle = random_bundle(tmp_path_factory.mktemp("web_hostile") / "bundle", arch=arch, task="multilabel", names=(XSS, "Mass"),
                           thresholds=[0.0, 1.0], metadata_encoder=enc.to_dict(), intended_use=f"Test model {XSS_VALUE}. Not a diagnosis.")
    with Server(create_app(bundle)) as s:
        yield s


def test_hostile_label_and_metadata_names_stay_text(hostile_server, chromium, tmp_path: Path):
    img = _image(tmp_path, "chest.png", 1)
    with _Browser(chromium) as browser:
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(hostile_server.url + "/")
        page.wait_for_function("document.getElementById('model-sub').textContent.includes('multilabel')", timeout=20000)
        assert page.evaluate("window.__pwned") is None
        assert XSS_VALUE in page.text_content("#intended-use")
        labels = page.eval_on_selector_all("#label option", "os => os.map(o => o.textContent)")
        assert labels == [XSS, "Mass"]
        cats = page.eval_on_selector_all("#meta-fields select option", "os => os.map(o => o.textContent)")
        assert XSS in cats and XSS_VALUE in cats
        page.select_option("#meta-fields select", XSS)
        page.set_input_files("#file", str(img))
        page.click("#analyse")
        page.wait_for_selector("tr.finding", timeout=30000)
        names = page.eval_on_selector_all("tr.finding td:first-child", "cs => cs.map(c => c.textContent)")
        assert names == [XSS, "Mass"]
        assert page.eval_on_selector_all("tr.finding", "rows => rows.map(r => r.dataset.label)") == [XSS, "Mass"]
        assert page.text_content("#predicted") == XSS  # threshold 0 -> always positive; Mass (threshold 1) never
        page.wait_for_function("document.getElementById('heatmap').naturalWidth > 0", timeout=60000)
        assert page.text_content("#error") == ""
        # nothing from the model was parsed as markup: no element came from the names, no handler ran
        assert page.evaluate("document.querySelectorAll('img[src=\"x\"], main script').length") == 0
        assert page.evaluate("window.__pwned") is None


def test_a_new_file_clears_the_previous_findings_and_heatmap(anomaly_server, chromium, tmp_path: Path):
    first = _image(tmp_path, "first.png", 2)
    second = _image(tmp_path, "second.png", 3, shape=(30, 30))
    with _Browser(chromium) as browser:
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(anomaly_server.url + "/")
        page.wait_for_function("document.getElementById('model-sub').textContent.includes('anomaly')", timeout=20000)
        page.set_input_files("#file", str(first))
        page.click("#analyse")
        page.wait_for_selector("tr.finding", timeout=30000)
        page.wait_for_function("document.getElementById('heatmap').naturalWidth > 0", timeout=60000)
        old_value = page.text_content("tr.finding td.prob")
        page.set_input_files("#file", str(second))
        assert page.eval_on_selector_all("#findings tr", "rows => rows.length") == 0
        assert page.text_content("#findings").strip() == "Upload an image and press Analyse."
        assert old_value not in page.text_content("#findings")
        assert page.get_attribute("#heatmap", "src") is None
        assert page.text_content("#heatmap-caption") == "Heatmap"
        # the second image is analysed on its own
        page.click("#analyse")
        page.wait_for_selector("tr.finding", timeout=30000)
        assert page.eval_on_selector_all("tr.finding", "rows => rows.length") == 1
        page.wait_for_function("document.getElementById('heatmap').naturalWidth > 0", timeout=60000)
