"""``medlens predict`` as a user runs it: 1,000 real images and a corrupt one, a progress bar, a CSV; reports;
the ONNX backend after ``medlens export``."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit._bundles import random_bundle

ROOT = Path(__file__).resolve().parents[2]
MEDLENS = [sys.executable, "-m", "medlens.cli"]


def _medlens(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "100"}
    return subprocess.run([*MEDLENS, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_bundle(tmp_path_factory.mktemp("cli") / "bundle", backbone="test_resnet", image_size=32, channels=1,
                         task="multilabel", names=("Effusion", "Infiltration", "Mass"), thresholds=[0.4, 0.5, 0.6],
                         intended_use="Research on chest X-ray triage. Not for clinical use.")


@pytest.mark.slow
@pytest.mark.heavy  # 24 s; corrupt and unreadable files are also refused row by row in tests/hostile
def test_predict_1000_images_with_a_corrupt_one(bundle: Path, nih_dir: Path, tmp_path: Path) -> None:
    images = sorted(str(p) for p in nih_dir.glob("*/*/*.png"))[:1000]
    assert len(images) == 1000
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    files = images[:500] + [str(corrupt)] + images[500:]
    out = tmp_path / "preds.csv"
    r = _medlens("predict", str(bundle), *files, "--out", str(out), "--batch-size", "128", "--keep-going")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "1001/1001" in r.stderr  # the progress bar, on stderr, reached the end
    assert f"could not predict {corrupt}: not a readable image" in r.stderr and "BytesIO" not in r.stderr
    assert "wrote" in r.stdout and "1000 predicted, 1 failed" in r.stdout
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 1001
    assert [row["source"] for row in rows] == files  # one row per input, in order
    bad = rows[500]
    assert bad["error"] and bad["prob_Effusion"] == ""
    good = [row for i, row in enumerate(rows) if i != 500]
    assert all(row["error"] == "" and 0.0 <= float(row["prob_Mass"]) <= 1.0 for row in good)


@pytest.mark.heavy  # 28 s; the ONNX backend's parity and the per-image report have their own default tests
def test_predict_report_and_onnx_backend(bundle: Path, nih_dir: Path, tmp_path: Path) -> None:
    images = sorted(str(p) for p in nih_dir.glob("test/*/*.png"))[:3]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"nope")
    reports = tmp_path / "reports"
    out_t = tmp_path / "torch.csv"
    r = _medlens("predict", str(bundle), *images, str(bad), "--out", str(out_t), "--report", str(reports))
    assert r.returncode == 2, r.stderr[-2000:]  # one input failed: non-zero (the CSV and reports are still written)
    pages = sorted(p.name for p in reports.glob("*.html"))
    assert len(pages) == 5 and "index.html" in pages  # 3 images + the broken one + the index
    page = (reports / f"{Path(images[0]).stem}.html").read_text()
    for must in ("Not a diagnosis", "data:image/png;base64,", "Effusion", "0.400", "Research on chest X-ray triage", "test_resnet", "gradcam"):
        assert must in page, must
    assert "http://" not in page and "https://" not in page  # self-contained
    assert "could not be analysed" in (reports / "broken.html").read_text()

    r = _medlens("export", str(bundle), "--format", "onnx")
    assert r.returncode == 0, r.stderr[-2000:]
    out_o = tmp_path / "onnx.csv"
    r = _medlens("predict", str(bundle), *images, "--out", str(out_o), "--backend", "onnx")
    assert r.returncode == 0, r.stderr[-2000:]
    t_rows = list(csv.DictReader(out_t.open()))[:3]
    o_rows = list(csv.DictReader(out_o.open()))
    for a, b in zip(t_rows, o_rows, strict=True):
        assert a["predicted"] == b["predicted"]
        for k in ("prob_Effusion", "prob_Infiltration", "prob_Mass"):
            assert abs(float(a[k]) - float(b[k])) < 1e-4
