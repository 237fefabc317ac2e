"""The page for keyboard and screen-reader users, in headless Chromium: axe-core finds no serious or critical
violation before an upload, after a prediction with its heatmap, and at phone width; the whole flow works from the
keyboard with a visible focus ring; the operating point shows Wilson and patient-bootstrap intervals.

axe-core comes from the PyPI package ``axe-playwright-python`` (it ships ``axe.min.js``; the dev extra installs it):
nothing of axe is copied into this repository.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CHROMIUM_FLAGS
from tests.integration.test_serve import Server, png_bytes

pytestmark = pytest.mark.browser

#: impacts that fail the check (axe's scale: minor, moderate, serious, critical)
BLOCKING = ("serious", "critical")


@pytest.fixture(scope="module")
def a11y_server(tmp_path_factory):
    """A binary demo bundle (generated training images, so the banner shows) whose test metrics were measured with
    patient ids, so the operating point has both kinds of interval."""
    pytest.importorskip("pytorch_grad_cam")
    from medlens.bundle import read_manifest
    from medlens.provenance import training_data_record
    from medlens.serve.app import create_app
    from medlens.tasks import get_task
    from tests.unit._bundles import random_bundle

    root = tmp_path_factory.mktemp("a11y")
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(40), 3)
    y = np.repeat(rng.integers(0, 2, 40), 3)
    s = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, 120), 0, 1)[:, None]
    test = get_task("binary").metrics(s, np.eye(2)[y], read_manifest(random_bundle(root / "p", thresholds=[0.5])),
                                      groups=[f"p{g}" for g in patients])
    rec = training_data_record({"kind": "synthetic"}, {"train": (560, {"normal": {"positive": 280}, "abnormal": {"positive": 280}})},
                               generated=True)
    bundle = random_bundle(root / "bundle", image_size=32, thresholds=[0.5], metrics={"test": test}, training_data=rec,
                           intended_use="Demo only.")
    with Server(create_app(bundle)) as srv:
        yield srv


def _axe():
    mod = pytest.importorskip("axe_playwright_python.sync_playwright",
                              reason="axe-core is not installed (pip install axe-playwright-python; the dev extra has it)")
    return mod.Axe()


def _blocking(axe, page, when: str) -> None:
    """Run axe on the page as it is now; fail with axe's own report of every serious or critical violation."""
    results = axe.run(page)
    bad = [v for v in results.response["violations"] if v.get("impact") in BLOCKING]
    lines = [f"{v['id']} ({v['impact']}): {v['help']} -> " + ", ".join(" ".join(n["target"]) for n in v["nodes"]) for v in bad]
    assert not bad, f"axe-core, {when}:\n" + "\n".join(lines)


def test_axe_and_keyboard(a11y_server, chromium, tmp_path: Path):
    sync_api = pytest.importorskip("playwright.sync_api")
    axe = _axe()
    img = tmp_path / "chest.png"
    img.write_bytes(png_bytes(np.random.default_rng(2).integers(0, 255, (64, 64), dtype=np.uint8)))
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=[f for f in CHROMIUM_FLAGS if f != "--headless"], headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(a11y_server.url + "/")
            page.wait_for_function("document.getElementById('model-sub').textContent.includes('binary')", timeout=20000)
            _blocking(axe, page, "before an upload")

            # keyboard only: Tab reaches the file input (the drop zone's control), then Analyse; Enter runs it
            page.focus("body")
            seen = []
            for _ in range(12):
                page.keyboard.press("Tab")
                seen.append(page.evaluate("document.activeElement.id"))
                if seen[-1] == "file":
                    break
            assert seen[-1] == "file", f"the file input is not reachable by Tab: {seen}"
            # the focus ring is visible where the keyboard is (a 3 px outline, not the browser's none)
            ring = page.evaluate("(() => { const s = getComputedStyle(document.activeElement); return [s.outlineStyle, s.outlineWidth]; })()")
            assert ring[0] != "none" and float(ring[1].rstrip("px")) >= 2, ring
            page.set_input_files("#file", str(img))  # a file dialog cannot be driven headless; the rest is keys
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.id") == "analyse"
            page.keyboard.press("Enter")
            page.wait_for_selector("tr.finding", timeout=30000)
            page.wait_for_function("document.getElementById('heatmap').naturalWidth > 0", timeout=60000)

            # the operating point: the split and its patients named, Wilson and patient-bootstrap intervals, how computed
            op = page.text_content("#operating-point")
            assert "abnormal on the test split (n=120) of 40 patients, threshold 0.500" in op
            assert "95% CI" in op and "patient bootstrap" in op and "resampling the split's 40 patients" in op
            # images say what they are; the findings table has column headers
            alts = page.eval_on_selector_all("img:not([hidden])", "is => is.filter(i => i.offsetParent).map(i => i.alt)")
            assert alts and all(alts), alts
            assert page.eval_on_selector_all("#findings th[scope=col]", "hs => hs.length") >= 4
            _blocking(axe, page, "after a prediction and its heatmap")

            page.set_viewport_size({"width": 390, "height": 844})
            _blocking(axe, page, "at 390 px")
        finally:
            browser.close()
