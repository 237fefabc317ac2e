"""Hostile data commands and environment files: nothing of the user's is deleted, nothing outside is read, nothing
is applied without a word.

* ``split folders SRC OUT --clear-existing`` with OUT containing, equal to or inside SRC (symlinks resolved) is
  refused before anything is touched; ``--link-mode copy`` never follows a link out of the source tree;
* ``download`` caps each file's bytes and reports failed files (the CLI exits 1 with the count);
* a ``.env`` in the working folder is announced, and ``${VAR}`` in it is never expanded.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.hostile._helpers import png_bytes, snapshot


# ------------------------------------------------------------------------------------------ .env
def test_dotenv_is_announced_and_never_expanded(tmp_path: Path, monkeypatch, caplog) -> None:
    from medlens.config import load_config

    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump({"data": {"kind": "synthetic"}}))
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("MEDLENS__OUTPUT__NAME=run-${SECRET_TOKEN}\nMEDLENS__TRAINER__MAX_EPOCHS=3\n")
    with caplog.at_level(logging.INFO, logger="medlens.config"):
        cfg = load_config(cfg_file)
    assert cfg.trainer.max_epochs == 3
    assert cfg.output.name == "run-${SECRET_TOKEN}"  # literal text: no secret from the environment
    assert "hunter2" not in str(cfg.model_dump())
    notes = [r.getMessage() for r in caplog.records if r.name == "medlens.config"]
    assert notes == [f"using .env: {tmp_path / '.env'} (2 overrides)"], notes


# ------------------------------------------------------------------------------------------ split folders
def _class_tree(root: Path, n: int = 6) -> Path:
    for cls in ("benign", "malignant"):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            (root / cls / f"{cls}_{i}.png").write_bytes(png_bytes(np.full((8, 8), i * 20, np.uint8)))
    return root


@pytest.mark.parametrize("layout", ["out_is_parent", "out_is_source", "out_inside_source", "out_links_to_parent",
                                    "source_links_into_out"])
def test_split_folders_never_touches_its_own_source(tmp_path: Path, layout: str) -> None:
    from medlens.data.split_folders import split_folders

    data = tmp_path / "DATA"
    src = _class_tree(data / "train")
    out = {"out_is_parent": data, "out_is_source": src, "out_inside_source": src / "split"}.get(layout)
    if layout == "out_links_to_parent":
        out = tmp_path / "alias"
        out.symlink_to(data, target_is_directory=True)
    if layout == "source_links_into_out":  # SRC is a link to a folder that lives inside OUT
        (tmp_path / "link").symlink_to(src, target_is_directory=True)
        src, out = tmp_path / "link", data
    before = snapshot(data)
    with pytest.raises(ValueError, match="source"):
        split_folders(src, out, clear_existing=True)
    assert snapshot(data) == before  # not one file deleted, moved or added


def test_split_folders_cli_refuses_in_one_line(tmp_path: Path) -> None:
    from tests.hostile._helpers import assert_one_line, cli

    data = tmp_path / "DATA"
    src = _class_tree(data / "train")
    before = snapshot(data)
    assert_one_line(cli("split", "folders", src, data, "--clear-existing"), "source")
    assert snapshot(data) == before


@pytest.mark.parametrize("mode", ["copy", "hard", "symlink"])
def test_split_folders_does_not_follow_links_out_of_the_source(tmp_path: Path, mode: str, caplog) -> None:
    from medlens.data.split_folders import split_folders

    src = _class_tree(tmp_path / "src")
    secret = tmp_path / "outside" / "shadow"
    secret.parent.mkdir()
    secret.write_bytes(png_bytes(np.zeros((8, 8), np.uint8)))  # readable as an image: only the link gives it away
    (src / "benign" / "evil.png").symlink_to(secret)
    with caplog.at_level(logging.WARNING, logger="medlens.data"):
        s = split_folders(src, tmp_path / "out", val=0.25, test=0.25, link_mode=mode)
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert written and not any("evil" in p.name for p in written)
    assert all(p.resolve().is_relative_to(src.resolve()) or not p.is_symlink() for p in written)
    for p in written:  # no copy or link of the outside file's content
        assert not (p.is_symlink() and p.resolve() == secret.resolve())
        assert not (not p.is_symlink() and os.path.samefile(p, secret))
    assert sum(sum(c.values()) for c in s.counts.values()) == 12
    assert any("evil.png" in r.getMessage() and "outside" in r.getMessage() for r in caplog.records)
    if mode == "symlink":  # a tree of links into an image store is the user's to allow
        s = split_folders(src, tmp_path / "out", val=0.25, test=0.25, link_mode=mode, clear_existing=True, follow_links=True)
        assert sum(sum(c.values()) for c in s.counts.values()) == 13


# ------------------------------------------------------------------------------------------ download
class _Stream:
    """A response of ``size`` bytes produced on the fly (never held in memory), optionally without a length."""

    def __init__(self, size: int, declare: bool) -> None:
        self.left = size
        self.headers = {"Content-Length": str(size)} if declare else {}

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return b"\0" * n

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@pytest.mark.parametrize("declare", [True, False])
def test_download_caps_each_file(tmp_path: Path, declare: bool) -> None:
    from medlens.data.download import download

    served: list[int] = []

    def opener(req, timeout):
        r = _Stream(150 * 2**20, declare)
        served.append(id(r))
        return r

    (tmp_path / "urls.csv").write_text("url,class\nhttps://example.org/big.png,a\n")
    s = download(tmp_path / "urls.csv", tmp_path / "out", workers=1, retries=0, opener=opener, max_bytes=2**20)
    assert s.downloaded == 0 and len(s.failed) == 1 and "1 MiB" in s.failed[0].reason
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and not p.name.startswith("download_summary")]
    assert files == []  # nothing of the stream kept, not even a partial file
    assert len(served) == 1  # a file over the cap is not retried


def test_download_cli_exits_1_with_the_failure_count(tmp_path: Path, monkeypatch) -> None:
    import urllib.error

    import medlens.data.download as dl
    from tests.hostile._helpers import cli

    ok = png_bytes(np.zeros((8, 8), np.uint8))

    def opener(req, timeout):
        if "missing" in req.full_url:
            raise urllib.error.HTTPError(req.full_url, 404, "Not Found", {}, None)
        r = _Stream(len(ok), True)
        r.read = lambda n=-1, _d=[ok]: _d.pop() if _d else b""
        return r

    monkeypatch.setattr(dl.urllib.request, "urlopen", opener)
    (tmp_path / "urls.csv").write_text("url,class\nhttps://x.org/a.png,a\nhttps://x.org/missing1.png,a\nhttps://x.org/missing2.png,b\n")
    res = cli("download", tmp_path / "urls.csv", "--out", tmp_path / "out", "--retries", "0")
    assert res.exit_code == 1, res.output
    assert "2 failed" in res.output
