"""medlens split folders (stratified, group-aware, deterministic, hard links) and the download options
(--source, --link-mode, --split-after-download, per-CSV summaries, per-class counts), against a local server."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medlens.cli import app
from medlens.data.download import download
from medlens.data.split_folders import split_folders
from tests.unit.data.test_download import Server


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def _tree(root: Path, counts: dict[str, int], patients: int = 10) -> None:
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            (root / cls / f"p{i % patients:02d}_img{i:03d}.png").write_bytes(b"\x89PNG " + f"{cls}{i}".encode())


def _files(root: Path, split: str) -> dict[str, set[str]]:
    return {d.name: {f.name for f in d.iterdir()} for d in sorted((root / split).iterdir())} if (root / split).exists() else {}


def test_split_folders_is_stratified_group_aware_deterministic_and_linked(tmp_path) -> None:
    src = tmp_path / "src"
    _tree(src, {"benign": 60, "malignant": 20})
    s = split_folders(src, tmp_path / "out", val=0.2, test=0.2, seed=0)
    total = {k: sum(s.counts[sp][k] for sp in s.counts) for k in ("benign", "malignant")}
    assert total == {"benign": 60, "malignant": 20}
    assert 8 <= s.counts["val"]["benign"] <= 16 and 2 <= s.counts["val"]["malignant"] <= 6  # stratified
    f = next((tmp_path / "out" / "train" / "benign").iterdir())
    assert os.path.samefile(f, src / "benign" / f.name)  # a hard link, not a copy
    again = split_folders(src, tmp_path / "out2", val=0.2, test=0.2, seed=0)
    assert again.counts == s.counts and all(_files(tmp_path / "out", sp) == _files(tmp_path / "out2", sp) for sp in ("train", "val", "test"))
    with pytest.raises(FileExistsError, match="--clear-existing"):
        split_folders(src, tmp_path / "out", val=0.2, test=0.2)
    # group-aware: a patient's images stay in one split
    g = split_folders(src, tmp_path / "out", val=0.2, test=0.2, group_regex=r"^[^/]+/(p\d+)_", clear_existing=True)
    assert g.method == "group" and g.groups == 10
    where: dict[str, set[str]] = {}
    for sp in ("train", "val", "test"):
        for names in _files(tmp_path / "out", sp).values():
            for n in names:
                where.setdefault(n[:3], set()).add(sp)
    assert all(len(v) == 1 for v in where.values()), where


def test_split_folders_cli_prints_counts_and_bad_regex_is_one_line(tmp_path) -> None:
    src = tmp_path / "src"
    _tree(src, {"a": 20, "b": 20})
    r = CliRunner().invoke(app, ["split", "folders", str(src), str(tmp_path / "out"), "--val", "0.25", "--test", "0", "--seed", "1"])
    assert r.exit_code == 0, r.output
    assert "train  a 15  b 15  (30)" in r.output and "val    a 5  b 5  (10)" in r.output
    bad = CliRunner().invoke(app, ["split", "folders", str(src), str(tmp_path / "o2"), "--group-regex", "(p"])
    assert bad.exit_code == 2 and "not a valid regular expression" in bad.output and "Traceback" not in bad.output


def test_download_sources_link_modes_summaries_and_split(tmp_path, server) -> None:
    b = server.base
    out = tmp_path / "data"
    a_csv = tmp_path / "siteA.csv"
    a_csv.write_text("url,class\n" + "".join(f"{b}/img/a{i}.png,{'normal' if i % 2 else 'nodule'}\n" for i in range(20)))
    b_csv = tmp_path / "siteB.csv"
    b_csv.write_text(f"url,class\n{b}/img/a1.png,normal\n{b}/missing,normal\n")
    s1 = download(a_csv, out, workers=4, timeout=5, backoff=0.01, source="siteA", link_mode="symlink", split_after_download=0.8)
    s2 = download(b_csv, out, workers=2, timeout=5, retries=0, source="siteB", link_mode="copy")
    # files per source, consolidated into the class folders with the source in the name
    assert (tmp_path / "data_sources" / "siteA" / "normal" / "a1.png").is_file()
    assert (out / "normal" / "siteA__a1.png").is_symlink() and (out / "normal" / "siteB__a1.png").is_file()
    assert not (out / "normal" / "siteB__a1.png").is_symlink()  # copy mode
    assert s1.classes == {"nodule": 10, "normal": 10} and s2.classes == {"normal": 1}
    # one summary per CSV: the second does not overwrite the first
    first = json.loads((out / "download_summary_siteA.json").read_text())
    second = json.loads((out / "download_summary_siteB.json").read_text())
    assert first["downloaded"] == 20 and first["source"] == "siteA" and len(second["failed"]) == 1
    # stratified train/val class folders beside the tree
    assert s1.split_counts == {"train": {"nodule": 8, "normal": 8}, "val": {"nodule": 2, "normal": 2}}
    assert len(list((tmp_path / "data_split" / "val" / "normal").iterdir())) == 2


def test_download_cli_prints_per_class_counts_and_refuses_bad_options(tmp_path, server) -> None:
    csv = tmp_path / "l.csv"
    csv.write_text("".join(f"{server.base}/img/x{i}.png,{'a' if i < 3 else 'b'}\n" for i in range(5)))
    r = CliRunner().invoke(app, ["download", str(csv), "--out", str(tmp_path / "o"), "--link-mode", "hard", "--source", "s1"])
    assert r.exit_code == 0, r.output
    assert "a: 3" in r.output and "b: 2" in r.output and "download_summary_l.json" in r.output
    bad = CliRunner().invoke(app, ["download", str(csv), "--out", str(tmp_path / "o"), "--link-mode", "soft"])
    assert bad.exit_code == 2 and "valid: hard, symlink, copy" in bad.output
    bad = CliRunner().invoke(app, ["download", str(csv), "--out", str(tmp_path / "o"), "--split-after-download", "1.5"])
    assert bad.exit_code == 2 and "between 0 and 1" in bad.output
