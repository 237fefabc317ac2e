"""compose.yaml serves a bundle: port, read-only bundle mount, healthcheck on /health, built from the Dockerfile."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_service_port_readonly_bundle_and_health() -> None:
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    svc = doc["services"]["medlens"]
    assert svc["build"] == "." and (ROOT / "Dockerfile").is_file()
    assert any(str(p).endswith(":8000") for p in svc["ports"])
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "EXPOSE 8000" in dockerfile and '"serve", "/bundle"' in dockerfile  # the port and mount the image expects
    mount = svc["volumes"][0]
    assert mount["target"] == "/bundle" and mount["read_only"] is True
    hc = svc["healthcheck"]
    assert any("/health" in part for part in hc["test"]) and hc["interval"] and hc["retries"] >= 1
    assert svc["read_only"] is True
