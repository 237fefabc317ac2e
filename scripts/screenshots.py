"""Screenshots of what a clinician sees, for README and the docs: the page after a prediction (1100 px and 390 px
wide) and the per-image report, taken with headless Chromium from a real served bundle.

By default it trains a small real model first (configs/kermany_224.yaml shrunk to a ResNet-10t at 64 px, 1 epoch,
on 1,200 of the Kermany chest X-rays, evenly spaced so each split keeps its share and class mix; patient ids come
from the file names, so the operating point has patient-bootstrap intervals; a few minutes on a quiet 2-core CPU),
serves it on 127.0.0.1 and uploads a Kermany test image. The figures on the page are that quick model's, shown as
any user would see them: the screenshots show the page, not a result.

Usage (from the repository root; needs the serve and explain extras, Playwright and a Chromium):

    python scripts/screenshots.py                       # train, serve, write docs/img/*.png
    python scripts/screenshots.py --bundle runs/x/bundle --image chest.jpeg --out /tmp/shots

PNGs are written with a reduced palette (Pillow), so each stays well under 200 KB.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the shipped Kermany recipe, made small enough to train in about two minutes on a CPU
QUICK = ["model.backbone=resnet10t", "data.image_size=64", "data.max_samples=1200", "trainer.max_epochs=1", "trainer.progress_bar=false",
         "data.augment=none", "output.name=screenshots", "output.overwrite=true"]
#: the page's width on a laptop and on a phone (CSS px); the report's
WIDE, PHONE, REPORT = 1100, 390, 900
#: the largest PNG we commit (bytes)
MAX_PNG = 200_000


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("no Chromium on PATH (Debian: apt-get install chromium)")


def train_quick(out_dir: Path) -> Path:
    """Train the small Kermany model into ``out_dir``; returns its bundle folder."""
    from medlens import train
    from medlens.config import load_config

    cfg = load_config(ROOT / "configs" / "kermany_224.yaml", overrides=[*QUICK, f"output.dir={out_dir}"])
    return Path(train(cfg).bundle_dir)


def first_test_image() -> Path:
    from medlens.config import resolve_data_path

    folder = Path(resolve_data_path("DATA_DIR/kermany_chestxray_224", ROOT / "configs")) / "test" / "PNEUMONIA"
    images = sorted(folder.glob("*.jpeg"))
    if not images:
        sys.exit(f"no Kermany test images under {folder}: pass --image")
    return images[0]


class Served:
    """The bundle served by uvicorn in a thread on a free port of 127.0.0.1."""

    def __init__(self, bundle: Path) -> None:
        import uvicorn

        from medlens.serve.app import create_app

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(create_app(bundle), host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Served:
        self.thread.start()
        for _ in range(300):
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the server did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def small_png(src: Path, dst: Path) -> int:
    """Write ``src`` to ``dst`` with an adaptive palette (fewer colours until it is under MAX_PNG); its size."""
    from PIL import Image

    img = Image.open(src).convert("RGB")
    for colors in (128, 64, 32):
        img.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(dst, optimize=True)
        if dst.stat().st_size <= MAX_PNG:
            break
    return dst.stat().st_size


def shoot(url: str, image: Path, out: Path, tmp: Path) -> list[Path]:
    """The page wide and narrow after a prediction with its heatmap, and the downloaded report; PNGs in ``out``."""
    from playwright.sync_api import sync_playwright

    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]
    written = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=flags, headless=True)
        try:
            for width, name in ((WIDE, "page.png"), (PHONE, "page_390px.png")):
                page = browser.new_page(viewport={"width": width, "height": 800})
                page.goto(url + "/")
                page.wait_for_function("document.getElementById('model-sub').textContent.includes('binary')", timeout=30000)
                page.set_input_files("#file", str(image))
                page.click("#analyse")
                page.wait_for_selector("tr.finding", timeout=60000)
                page.wait_for_function("document.getElementById('heatmap').naturalWidth > 0", timeout=60000)
                page.screenshot(path=str(tmp / name), full_page=True)
                written.append(name)
                if name == "page.png":  # the per-image report as the page downloads it
                    with page.expect_download(timeout=60000) as dl:
                        page.click("#report")
                    report = tmp / "report.html"
                    dl.value.save_as(report)
                page.close()
            page = browser.new_page(viewport={"width": REPORT, "height": 800})
            page.goto(report.as_uri())
            page.screenshot(path=str(tmp / "report.png"), full_page=True)
            written.append("report.png")
        finally:
            browser.close()
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in written:
        size = small_png(tmp / name, out / name)
        print(f"{out / name}\t{size} bytes")
        paths.append(out / name)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="a trained bundle to serve (default: train the quick Kermany model)")
    ap.add_argument("--image", type=Path, help="the image to upload (default: the first Kermany test image with pneumonia)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="where the PNGs go (default: docs/img)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="medlens-shots-") as t:
        tmp = Path(t)
        bundle = args.bundle or train_quick(tmp / "runs")
        image = args.image or first_test_image()
        with Served(bundle) as srv:
            shoot(srv.url, image, args.out, tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
