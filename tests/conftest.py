"""Shared fixtures: the real data in ../shared/data, a PostgreSQL URL, headless Chromium, tiny configs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    env = os.environ.get("MEDLENS_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


SHARED = _shared_dir()


@pytest.fixture(autouse=True)
def _private_medlens_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets an empty medlens user cache ($MEDLENS_CACHE_DIR: the disk image cache, the remembered
    channels-last choices), so no test reads what another measured and none writes to ~/.cache."""
    monkeypatch.setenv("MEDLENS_CACHE_DIR", str(tmp_path_factory.mktemp("medlens-cache")))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real MedMNIST, NIH ChestX-ray14 and HAM10000 files); skips when absent."""
    if not SHARED.is_dir():
        pytest.skip(f"real data folder not found at {SHARED} (set MEDLENS_SHARED_DATA)")
    return SHARED


@pytest.fixture(scope="session")
def pneumonia_npz(shared_data: Path) -> Path:
    p = shared_data / "medmnist_pneumoniamnist" / "pneumoniamnist.npz"
    if not p.is_file():
        pytest.skip(f"{p} not found")
    return p


@pytest.fixture(scope="session")
def breast_npz(shared_data: Path) -> Path:
    p = shared_data / "medmnist_breastmnist" / "breastmnist.npz"
    if not p.is_file():
        pytest.skip(f"{p} not found")
    return p


@pytest.fixture(scope="session")
def nih_dir(shared_data: Path) -> Path:
    p = shared_data / "nih_chestxray14_nih1000_64px"
    if not p.is_dir():
        pytest.skip(f"{p} not found")
    return p


@pytest.fixture(scope="session")
def ham_dir(shared_data: Path) -> Path:
    p = shared_data / "ham10000_subset100"
    if not p.is_dir():
        pytest.skip(f"{p} not found")
    return p


@pytest.fixture(scope="session")
def pg_url() -> str:
    """A PostgreSQL server URL (scripts/test.sh starts a throwaway one); skips when none is running."""
    url = os.environ.get("MEDLENS_TEST_PG_URL")
    if not url:
        pytest.skip("no PostgreSQL server: MEDLENS_TEST_PG_URL is not set (scripts/test.sh starts one)")
    return url


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a headless-capable Chromium; skips when not installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    pytest.skip("chromium is not installed (scripts/test.sh installs Debian's package when run as root)")


CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run", "--disable-sync", "--disable-quic",
]


def tiny_config(tmp_path: Path, data: dict, **sections) -> dict:
    """A config dict for a fast CPU run: resnet10t-sized model, 1 epoch, no progress bar."""
    cfg = {
        "seed": 0,
        "data": {"batch_size": 32, "augment": "none", **data},
        "model": {"backbone": "resnet10t", "small_input": "auto"},
        "optim": {"lr": 3e-3},
        "trainer": {"max_epochs": 1, "progress_bar": False, "calibrate": True, "channels_last": False},  # pinned: `auto` is timed
        "output": {"dir": str(tmp_path / "runs"), "name": "t", "overwrite": True},
    }
    for k, v in sections.items():
        cfg.setdefault(k, {}).update(v)
    return cfg
