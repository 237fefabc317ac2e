"""``medlens demo``: which data it picks (local file, MD5-checked download, generated) and an offline run."""

from __future__ import annotations

import io
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

import medlens.demo as demo
from medlens.cli import app


@pytest.fixture()
def no_local_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No PneumoniaMNIST anywhere: an empty data dir and no ../shared/data lookup."""
    empty = tmp_path / "empty_data_dir"
    empty.mkdir()
    monkeypatch.setenv("MEDLENS_DATA_DIR", str(empty))
    monkeypatch.delenv("MEDLENS_OFFLINE", raising=False)
    monkeypatch.setattr(demo, "_find_local_pneumoniamnist", lambda: None)
    return empty


class _Stop(Exception):
    pass


@pytest.fixture()
def captured_config(monkeypatch: pytest.MonkeyPatch) -> list:
    """Stop right before training and keep the config the demo built (data-source choice only, no training)."""
    import medlens.training

    seen: list = []

    def fake_train(cfg, resume=None):
        seen.append(cfg)
        raise _Stop

    monkeypatch.setattr(medlens.training, "train", fake_train)
    return seen


def _refuse_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def refuse(url, *a, **k):
        calls.append(str(url))
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return calls


def test_demo_prefers_local_file(pneumonia_npz: Path, tmp_path: Path, monkeypatch, captured_config) -> None:
    monkeypatch.setenv("MEDLENS_DATA_DIR", str(pneumonia_npz.parent))
    calls = _refuse_network(monkeypatch)
    with pytest.raises(_Stop):
        demo.run_demo(str(tmp_path))
    cfg = captured_config[0]
    assert cfg.data.kind == "medmnist" and Path(cfg.data.path) == pneumonia_npz
    assert calls == []


def test_demo_downloads_with_md5_check_when_online(pneumonia_npz: Path, no_local_data: Path, tmp_path: Path, monkeypatch, captured_config) -> None:
    payload = pneumonia_npz.read_bytes()

    class Resp(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.close()

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: Resp(payload))
    with pytest.raises(_Stop):
        demo.run_demo(str(tmp_path))
    cfg = captured_config[0]
    assert cfg.data.kind == "medmnist"
    assert Path(cfg.data.path) == no_local_data / "pneumoniamnist.npz"
    assert (no_local_data / "pneumoniamnist.npz").read_bytes() == payload


@pytest.mark.parametrize("offline", [True, False])
def test_demo_falls_back_to_generated_data(no_local_data: Path, tmp_path: Path, monkeypatch, captured_config, offline: bool) -> None:
    calls = _refuse_network(monkeypatch)
    with pytest.raises(_Stop):
        demo.run_demo(str(tmp_path), offline=offline)
    assert captured_config[0].data.kind == "synthetic"
    assert (calls == []) == offline  # --offline never touches the network
    assert list(no_local_data.iterdir()) == []  # no partial download left


@pytest.mark.slow
def test_demo_offline_runs_end_to_end(no_local_data: Path, tmp_path: Path, monkeypatch) -> None:
    _refuse_network(monkeypatch)
    res = CliRunner().invoke(app, ["demo", "--offline", "--epochs", "1", "--out", str(tmp_path / "runs")])
    assert res.exit_code == 0, (res.output, res.exception)
    out = res.stdout
    assert "data:    a generated dataset" in out
    bundle = tmp_path / "runs" / "demo" / "bundle"
    assert f"bundle:  {bundle}" in out
    assert f"metrics: {tmp_path / 'runs' / 'demo' / 'metrics.json'}" in out
    assert "test AUROC" in out
    from medlens import load_bundle

    b = load_bundle(bundle)
    assert b.manifest.label_names == ["normal", "abnormal"]
    assert (tmp_path / "runs" / "demo" / "metrics.json").is_file()
