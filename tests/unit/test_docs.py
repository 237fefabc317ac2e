"""The documentation site builds with ``mkdocs build --strict``, and its generated reference covers every config key
and every command (docs/hooks.py generates both from the code at build time)."""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _hooks():
    spec = importlib.util.spec_from_file_location("medlens_docs_hooks", ROOT / "docs" / "hooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_nav_page_exists_and_every_page_is_in_the_nav() -> None:
    import yaml

    text = (ROOT / "mkdocs.yml").read_text()
    pages = set(re.findall(r":\s*([\w/-]+\.md)\s*$", text, flags=re.M))
    on_disk = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert pages == on_disk
    assert yaml.safe_load(text.replace("!!", ""))["strict"] is True


def test_generated_reference_lists_every_key_and_command() -> None:
    hooks = _hooks()
    config_md = hooks.config_reference()
    keys = hooks.config_keys()
    assert {"data.path", "optim.lr", "trainer.max_epochs", "ood.method", "task_options.threshold_method"} <= set(keys)
    missing = [k for k in keys if f"`{k}`" not in config_md]
    assert not missing, missing
    cli_md = hooks.cli_reference()
    paths = [p for p, _ in hooks.cli_commands()]
    assert {"medlens", "medlens train", "medlens init", "medlens db import"} <= set(paths)
    assert all(f"`{p}`" in cli_md for p in paths)


@pytest.mark.slow
def test_site_builds_strictly_with_every_key_and_command(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("mkdocstrings_handlers.python")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                       capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    hooks = _hooks()
    config_page = html.unescape((site / "reference" / "configuration" / "index.html").read_text())
    missing = [k for k in hooks.config_keys() if f"<code>{k}</code>" not in config_page]
    assert not missing, missing
    cli_page = html.unescape((site / "reference" / "cli" / "index.html").read_text())
    assert all(p in cli_page for p, _ in hooks.cli_commands())
    assert "{CONFIG}" not in cli_page and "Usage: medlens train [OPTIONS] CONFIG" in cli_page
    bench = (site / "benchmarks" / "index.html").read_text()
    assert "medmnist.py" in bench and "throughput.py" in bench  # benchmarks/README.md was included
    start = re.sub(r"<[^>]+>", "", (site / "getting-started" / "index.html").read_text())  # text without highlighting
    assert "medlens init configs" in start and "download.pytorch.org/whl/cpu" in start  # README's Quickstart included
    api = (site / "reference" / "api" / "index.html").read_text()
    assert "load_config" in api and "train" in api
