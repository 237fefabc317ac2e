"""Hostile inputs and the checks every case shares: one line, non-zero exit, nothing run, nothing written elsewhere."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

MARKER_NAME = "PWNED"


def cli(*args: object, cwd: Path | None = None):
    """Run ``medlens ARGS`` in-process (typer's CliRunner), optionally from ``cwd``."""
    import os

    from medlens.cli import app

    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(app, [str(a) for a in args])
    finally:
        os.chdir(old)


#: log lines the CLI writes on stderr before an error when stderr is not a terminal (one line each, unwrapped)
LOG_PREFIXES = ("DEBUG: ", "INFO: ", "WARNING: ")


def stderr_lines(res) -> list[str]:
    """The non-empty stderr lines that are not the library's log records (those are one line each, prefixed)."""
    return [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith(LOG_PREFIXES)]


def assert_one_line(res, *needles: str) -> str:
    """Exit code != 0, exactly one non-empty stderr line (no traceback) holding every needle; the library's log
    lines before it (a reader's warning about the rows it dropped) are plain one-line records and not the error."""
    assert res.exit_code != 0, (res.exit_code, res.output)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [ln for ln in stderr_lines(res) if not ln.startswith(LOG_PREFIXES)]
    assert len(lines) == 1, lines
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime_ns) of every file under ``root``."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------------------------ hostile files
def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def good_png(seed: int = 0) -> bytes:
    return png_bytes(np.random.default_rng(seed).integers(0, 255, (40, 36), dtype=np.uint8))


def nan_tiff() -> bytes:
    a = np.ones((32, 32), np.float32)
    a[3, 4] = np.nan
    buf = io.BytesIO()
    Image.fromarray(a, mode="F").save(buf, format="TIFF")
    return buf.getvalue()


def dicom_bomb(rows: int = 12000, cols: int = 12000) -> bytes:
    """A ~1 KB DICOM whose header declares rows x cols pixels (its pixel data is tiny)."""
    import pydicom

    from medlens.data.io import dicom_bytes

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(np.zeros((16, 16), np.uint16))))
    ds.Rows, ds.Columns = rows, cols
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def dicom_scan() -> bytes:
    from medlens.data.io import dicom_bytes

    return dicom_bytes(np.random.default_rng(0).integers(0, 4095, (600, 1500), dtype=np.uint16))


#: name -> (file name, bytes, words the error must contain)
HOSTILE_IMAGES: dict[str, tuple[str, bytes, str]] = {
    "1x1": ("one.png", png_bytes(np.zeros((1, 1), np.uint8)), "one.png"),
    "strip_1x200000": ("strip.png", png_bytes(np.zeros((1, 200000), np.uint8)), "strip.png"),
    "strip_10x20000": ("thin.png", png_bytes(np.zeros((10, 20000), np.uint8)), "thin.png"),
    "nan_tiff": ("nan.tif", nan_tiff(), "nan.tif"),
    "truncated_png": ("cut.png", good_png()[:60], "cut.png"),
    "zero_bytes": ("empty.png", b"", "empty.png"),
    "dicom_bomb": ("bomb.dcm", dicom_bomb(), "bomb.dcm"),
    "not_an_image": ("notes.png", b"%PDF-1.4 this is a document, not a picture\n" * 20, "notes.png"),
}


class Pwn:
    """Unpickling this runs ``touch MARKER`` (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    import torch

    torch.save({"state_dict": {}, "payload": Pwn(marker)}, path)
    return path


def plain_pickle_bomb(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps(Pwn(marker)))
    return path


def edit_manifest(bundle: Path, **fields) -> None:
    mf = bundle / "manifest.json"
    d = json.loads(mf.read_text())
    d.update(fields)
    mf.write_text(json.dumps(d))
