"""``/docs`` in headless Chromium with every other host unreachable: Swagger UI loads from this server, and "Try it
out" on ``GET /v1/model`` answers 200 with the model's description."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest

from tests.conftest import CHROMIUM_FLAGS
from tests.integration.test_serve import Server

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory):
    from medlens.serve.app import create_app
    from medlens.serve.routes.docs import swagger_assets
    from tests.unit._bundles import random_bundle

    if swagger_assets() is None:
        pytest.skip("fastapi-offline is not installed (the serve extra has it): /docs is the plain reference")
    bundle = random_bundle(tmp_path_factory.mktemp("docs") / "bundle", names=("clear", "effusion"), intended_use="Docs test.")
    with Server(create_app(bundle)) as srv:
        yield srv


def test_try_it_out_offline(docs_server, chromium):
    sync_api = pytest.importorskip("playwright.sync_api")
    blocked: list[str] = []
    csp: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=[f for f in CHROMIUM_FLAGS if f != "--headless"], headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})

            def offline(route):  # the hospital network: nothing but this server answers
                host = urlsplit(route.request.url).hostname
                if host in ("127.0.0.1", "localhost") or route.request.url.startswith(("data:", "blob:")):
                    route.continue_()
                else:
                    blocked.append(route.request.url)
                    route.abort()

            page.route("**/*", offline)
            page.on("console", lambda m: csp.append(m.text) if "Content Security Policy" in m.text else None)
            page.goto(docs_server.url + "/docs")
            op = page.locator(".opblock-get", has=page.locator(".opblock-summary-path", has_text="/v1/model"))
            op.locator(".opblock-summary").first.wait_for(timeout=20000)
            op.locator(".opblock-summary").first.click()
            op.locator("button.try-out__btn").click()
            op.locator("button.execute").click()
            status = op.locator(".live-responses-table tr.response .response-col_status").first
            status.wait_for(timeout=20000)
            assert status.text_content().strip() == "200"
            body = op.locator(".live-responses-table tr.response .response-col_description .highlight-code pre").first.text_content()
            info = json.loads(body)
            assert info["label_names"] == ["clear", "effusion"] and info["intended_use"] == "Docs test."
        finally:
            browser.close()
    assert blocked == [], f"/docs reached for another host: {blocked}"
    assert csp == [], f"the page's Content-Security-Policy refused something it needs: {csp}"
