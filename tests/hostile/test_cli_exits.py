"""Exit codes a scheduler understands and one line each: SIGTERM/Ctrl-C during training, Ctrl-C anywhere, a port or
opset out of range, a task without explanations; and every way of starting the command line works.

The training side (a last checkpoint saved on SIGTERM, ``medlens.engine.TrainingInterrupted`` raised) is tested in
test_engine_hostile.py against a real training; here the command line's half of the contract: any exception with
``signal_name``, ``checkpoint`` and ``exit_code`` ends the command with that code and the resume command.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.hostile._helpers import assert_one_line, cli, good_png


class Stopped(SystemExit):
    """What the engine raises after saving a last checkpoint (the duck-typed contract of TrainingInterrupted)."""

    def __init__(self, signal_name: str, checkpoint: str | None, exit_code: int) -> None:
        super().__init__(exit_code)
        self.signal_name, self.checkpoint, self.exit_code = signal_name, checkpoint, exit_code


def _config(tmp_path: Path) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump({"data": {"kind": "synthetic", "num_samples": 40, "image_size": 16, "channels": 1},
                                 "model": {"backbone": "resnet10t"}, "output": {"dir": str(tmp_path / "runs"), "name": "t"}}))
    return p


def _raise(exc: BaseException):
    def fn(*a, **k):
        raise exc

    return fn


# ------------------------------------------------------------------------------------------ signals
@pytest.mark.parametrize(("signal_name", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_stopped_training_exits_with_the_signal_code_and_the_resume_command(tmp_path, monkeypatch, signal_name, code):
    cfg = _config(tmp_path)
    ckpt = str(tmp_path / "runs" / "t" / "checkpoints" / "last.ckpt")
    monkeypatch.setattr("medlens.training.train", _raise(Stopped(signal_name, ckpt, code)))
    res = cli("train", cfg, "--set", "optim.lr=0.01")
    assert res.exit_code == code
    line = assert_one_line(res, f"interrupted by {signal_name}", f"last checkpoint saved: {ckpt}")
    assert line.endswith(f"resume with: medlens train {cfg} --set optim.lr=0.01 --resume {ckpt}"), line


def test_the_engine_exception_itself_is_mapped(tmp_path, monkeypatch):
    engine = pytest.importorskip("medlens.engine")
    if not hasattr(engine, "TrainingInterrupted"):
        pytest.skip("medlens.engine.TrainingInterrupted not there yet")
    cfg = _config(tmp_path)
    module = importlib.import_module("medlens.pretrain")  # the module, not the function medlens.pretrain re-exports
    monkeypatch.setattr(module, "pretrain", _raise(engine.TrainingInterrupted("SIGTERM", "/r/last.ckpt")))
    res = cli("pretrain", cfg)
    assert res.exit_code == 143
    assert assert_one_line(res).endswith(f"resume with: medlens pretrain {cfg} --resume /r/last.ckpt")


def test_stopped_before_any_checkpoint_says_start_again(tmp_path, monkeypatch):
    cfg = _config(tmp_path)
    monkeypatch.setattr("medlens.training.train", _raise(Stopped("SIGTERM", None, 143)))
    res = cli("train", cfg)
    assert res.exit_code == 143
    assert_one_line(res, "before a checkpoint was saved", f"start again with: medlens train {cfg}")


def test_stopped_cross_validation_names_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr("medlens.cv.cross_validate", _raise(Stopped("SIGTERM", "/r/fold_2/last.ckpt", 143)))
    res = cli("cv", _config(tmp_path))
    assert res.exit_code == 143
    assert_one_line(res, "interrupted by SIGTERM; last checkpoint saved: /r/fold_2/last.ckpt")


@pytest.mark.parametrize("where", ["medlens.training.train", "medlens.inference.predict"])
def test_ctrl_c_anywhere_is_one_line_and_exit_130(tmp_path, monkeypatch, pristine_bundle, where):
    monkeypatch.setattr(where, _raise(KeyboardInterrupt()))
    (tmp_path / "x.png").write_bytes(good_png())
    args = ("train", _config(tmp_path)) if where.endswith("train") else ("predict", pristine_bundle, tmp_path / "x.png")
    res = cli(*args)
    assert res.exit_code == 130
    assert assert_one_line(res) == "interrupted (Ctrl-C)"


def test_an_unexpected_error_is_one_line_and_exit_1(tmp_path, monkeypatch):
    monkeypatch.setattr("medlens.training.train", _raise(RuntimeError("CUDA went away\nsecond line")))
    res = cli("train", _config(tmp_path))
    assert res.exit_code == 1
    assert_one_line(res, "RuntimeError: CUDA went away; second line", "MEDLENS_DEBUG=1")


# ------------------------------------------------------------------------------------------ ranges
@pytest.mark.parametrize("port", ["99999", "0", "-1"])
def test_serve_port_out_of_range(pristine_bundle, port):
    res = cli("serve", pristine_bundle, "--port", port)
    assert res.exit_code == 2
    assert_one_line(res, port, "1-65535")


@pytest.mark.parametrize("opset", ["999", "0"])
def test_export_opset_out_of_range_writes_nothing(bundle, tmp_path, opset):
    pytest.importorskip("onnx")
    res = cli("export", bundle, "--opset", opset, "--out", tmp_path / "out")
    assert res.exit_code == 2
    assert_one_line(res, opset, "opset")
    assert not (tmp_path / "out").exists() and not (bundle / "model.onnx").exists()


# ------------------------------------------------------------------------------------------ absent capabilities
@pytest.fixture
def no_explanations(monkeypatch, pristine_bundle):
    """The bundle's task as a task without explanation methods (a capability tasks may lack)."""
    from medlens.bundle import read_manifest
    from medlens.tasks import task_of

    monkeypatch.setattr(type(task_of(read_manifest(pristine_bundle))), "explain_methods", lambda self: [])


def test_explain_on_a_task_without_explanations(no_explanations, pristine_bundle, tmp_path):
    (tmp_path / "x.png").write_bytes(good_png())
    res = cli("explain", pristine_bundle, tmp_path / "x.png", "--out", tmp_path / "ex")
    assert res.exit_code == 2
    assert_one_line(res, "no explanation methods")
    assert not (tmp_path / "ex").exists()
    res = cli("predict", pristine_bundle, tmp_path / "x.png", "--report", tmp_path / "reports")
    assert res.exit_code == 2
    assert_one_line(res, "--report", "no explanation methods")


# ------------------------------------------------------------------------------------------ entry points
@pytest.mark.parametrize("argv", [["-m", "medlens.cli", "pretrain", "--help"], ["-m", "medlens", "--help"],
                                  ["-m", "medlens.cli", "--version"]])
def test_every_way_of_starting_the_command_line(argv):
    r = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")})
    assert r.returncode == 0, r.stderr[-2000:]
    assert ("pretrain" in r.stdout and "CONFIG" in r.stdout) if "pretrain" in argv else True
    assert "medlens" in r.stdout
