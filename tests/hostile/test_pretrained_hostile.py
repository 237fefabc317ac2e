"""Hostile ``model.pretrained`` values: garbage files and an unreachable hub are one line, in seconds, with the true
reason, before any data is read; ``HF_HUB_OFFLINE`` is honoured without touching the network."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from medlens.models import PretrainedWeightsError
from medlens.models.pretrained import check_pretrained_available, resolve_pretrained
from tests.hostile._helpers import assert_one_line, cli, plain_pickle_bomb


@pytest.fixture
def online_empty_cache(tmp_path: Path, monkeypatch) -> Path:
    """No HF_HUB_OFFLINE, an empty cache, and a hub address where nothing listens (a closed local port)."""
    import huggingface_hub

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    return tmp_path / "hf"


@pytest.mark.parametrize("case", ["garbage_safetensors", "garbage_pth", "pickle_bomb_pth", "empty_safetensors"])
def test_garbage_pretrained_file_is_one_line(tmp_path: Path, case: str) -> None:
    marker = tmp_path / "PWNED"
    if case == "garbage_safetensors":
        f = tmp_path / "w.safetensors"
        f.write_bytes(b"\xff" * 3000)
    elif case == "garbage_pth":
        f = tmp_path / "w.pth"
        f.write_bytes(bytes(range(256)) * 12)
    elif case == "pickle_bomb_pth":
        f = plain_pickle_bomb(tmp_path / "w.pth", marker)
    else:
        f = tmp_path / "w.safetensors"
        f.write_bytes(b"")
    with pytest.raises(PretrainedWeightsError, match="model.pretrained") as err:
        check_pretrained_available("resnet10t", str(f))
    assert str(f) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def test_garbage_pretrained_file_in_the_cli_is_one_line_before_data(tmp_path: Path, monkeypatch) -> None:
    import medlens.training

    def no_data(*a, **k):
        raise AssertionError("data was read before model.pretrained was checked")

    monkeypatch.setattr(medlens.training, "prepare_data", no_data)
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"\x00" * 64)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"kind": "synthetic", "num_samples": 40, "image_size": 16, "channels": 1},
                                   "model": {"backbone": "resnet10t", "pretrained": str(f)},
                                   "trainer": {"max_epochs": 1, "progress_bar": False},
                                   "output": {"dir": str(tmp_path / "runs"), "name": "t"}}))
    assert_one_line(cli("train", cfg), "model.pretrained", "w.safetensors")


def test_unreachable_hub_fails_in_seconds_with_the_true_reason(online_empty_cache: Path) -> None:
    t0 = time.perf_counter()
    with pytest.raises(PretrainedWeightsError, match="cannot be reached") as err:
        check_pretrained_available("resnet10t", True)
    assert time.perf_counter() - t0 < 10
    assert "holds none" not in str(err.value) and "127.0.0.1:9" in str(err.value)


def test_a_download_that_gets_no_answer_is_not_a_missing_file(online_empty_cache: Path, monkeypatch) -> None:
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls = []

    def no_answer(repo_id, filename, **_):
        calls.append(filename)
        raise LocalEntryNotFoundError("connection error and not in the cache")

    monkeypatch.setattr("medlens.models.pretrained.hub_unreachable", lambda *a, **k: None)  # the probe got through
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_answer)
    with pytest.raises(PretrainedWeightsError, match="did not answer") as err:
        resolve_pretrained("resnet10t", True)
    assert "holds none" not in str(err.value)
    assert calls == ["model.safetensors"]  # no second file name tried against a silent hub


def test_hf_hub_offline_is_honoured_without_touching_the_network(online_empty_cache: Path, monkeypatch) -> None:
    def no_network(*a, **k):
        raise AssertionError("the network was tried although HF_HUB_OFFLINE is set")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("medlens.models.pretrained.hub_unreachable", no_network)
    with pytest.raises(PretrainedWeightsError, match="HF_HUB_OFFLINE is set"):
        check_pretrained_available("resnet10t", True)
