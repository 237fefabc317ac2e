"""Conventions users already know: missing extras name what to install, `medlens init` ships working configs,
evaluate prints a table (or only JSON), predict takes folders and writes thresholds and decisions, help texts
for people, no phantom runs from MLflow's artifact copy."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from medlens import cli
from medlens.cli import app
from medlens.config import load_config
from medlens.console import headline, metrics_text
from medlens.examples import datasets_used, list_examples, list_samples
from medlens.runs import find_runs
from tests.unit._bundles import random_bundle

runner = CliRunner()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return random_bundle(tmp_path_factory.mktemp("b") / "binary", thresholds=[0.4])


# ------------------------------------------------------------------------------------------ missing extras
@pytest.mark.parametrize(("argv", "module", "extra"), [
    (["serve", "B"], "fastapi", "serve"), (["export", "B"], "onnx", "onnx"),
    (["predict", "B", "x.png", "--backend", "onnx"], "onnxruntime", "onnx"), (["db", "init"], "sqlalchemy", "sql"),
])
def test_a_missing_extra_is_one_line_and_exit_2(monkeypatch, argv, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails as if not installed
    r = runner.invoke(app, argv)
    assert r.exit_code == 2
    err = r.stderr.strip()
    assert err == f"medlens {' '.join(argv[:2] if argv[0] == 'db' else argv[:1])} needs the '{extra}' extra: pip install 'medlens[{extra}]'"
    assert "Traceback" not in r.output


def test_a_module_missing_deep_in_the_library_names_its_extra(monkeypatch, bundle):
    def boom(*a, **k):
        raise ModuleNotFoundError("No module named 'pytorch_grad_cam'", name="pytorch_grad_cam")

    monkeypatch.setattr(cli.common, "setup_logging", lambda *a, **k: None)
    monkeypatch.setattr("medlens.interpret.explain_to_dir", boom)
    r = runner.invoke(app, ["explain", str(bundle), "x.png", "--out", "o"])
    assert r.exit_code == 2
    assert r.stderr.strip() == "medlens explain needs the 'explain' extra: pip install 'medlens[explain]'"


# ------------------------------------------------------------------------------------------------ init
def test_init_copies_configs_that_load_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["init", "proj", "--data-dir", "datasets"])
    assert r.exit_code == 0, r.output
    files = sorted((tmp_path / "proj").glob("*.yaml"))
    assert [f.stem for f in files] == list_examples() and "pneumoniamnist" in list_examples()
    assert sorted(p.name for p in (tmp_path / "proj" / "samples").iterdir()) == list_samples()
    assert r.stdout.splitlines() == [f"wrote {f.relative_to(tmp_path)}" for f in files]  # results: the paths only
    assert "next steps:" in r.stderr and "medlens train proj/pneumoniamnist.yaml" in r.stderr
    for f in files:
        cfg = load_config(f)
        for folder in datasets_used(f.stem):
            paths = [str(getattr(cfg.data, k, None)) for k in ("path", "root", "image_root")]
            assert any(p.startswith(str(tmp_path / "datasets" / folder)) for p in paths), (f, paths)
    again = runner.invoke(app, ["init", "proj"])
    assert again.exit_code == 2 and "--overwrite" in again.stderr and again.stderr.count("\n") == 1


def test_init_without_data_dir_reads_the_user_cache(tmp_path, monkeypatch):
    """No --data-dir: the configs keep DATA_DIR/ and load from $MEDLENS_DATA_DIR, else ~/.cache/medlens/data."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MEDLENS_DATA_DIR", raising=False)
    assert runner.invoke(app, ["init", "proj"]).exit_code == 0
    cache = tmp_path / "home" / ".cache" / "medlens" / "data"
    assert load_config(tmp_path / "proj" / "breastmnist.yaml").data.path == str(cache / "medmnist_breastmnist" / "breastmnist.npz")
    monkeypatch.setenv("MEDLENS_DATA_DIR", str(tmp_path / "mine"))
    (tmp_path / "mine" / "medmnist_breastmnist").mkdir(parents=True)
    (tmp_path / "mine" / "medmnist_breastmnist" / "breastmnist.npz").write_bytes(b"")
    assert load_config(tmp_path / "proj" / "breastmnist.yaml").data.path.startswith(str(tmp_path / "mine"))


def test_shipped_examples_are_the_repository_configs():
    """Every config of configs/ ships with the package, byte for byte (copy a changed one to src/medlens/examples/)."""
    root = Path(__file__).resolve().parents[2]
    assert list_examples() == sorted(p.stem for p in (root / "configs").glob("*.yaml"))
    for name in list_examples():
        shipped = (root / "src/medlens/examples" / f"{name}.yaml").read_text()
        assert shipped == (root / "configs" / f"{name}.yaml").read_text(), f"cp configs/{name}.yaml src/medlens/examples/"
        assert "shared/data" not in "".join(x.split("#", 1)[0] for x in shipped.splitlines())  # DATA_DIR/, not a checkout path


def test_demo_next_steps_name_the_bundle():
    from medlens.demo import demo_next_steps

    lines = demo_next_steps("runs/demo/bundle")
    assert lines[0] == "next steps:" and all("medlens" in x or "docs" in x for x in lines[1:])
    assert sum("runs/demo/bundle" in x for x in lines) == 3


# ------------------------------------------------------------------------------------------- evaluate
BINARY = {
    "task": "binary", "n": 20, "auroc_macro": 0.96, "auroc_micro": 0.96, "auroc_weighted": 0.96, "f1_macro": 0.9,
    "f1_weighted": 0.9, "accuracy": 0.9, "ece": 0.05,
    "per_label": {"pneumonia": {"auroc": 0.96, "sensitivity": 0.9, "specificity": 0.8, "f1": 0.9, "threshold": 0.4,
                                "n": 20, "support": 10, "wilson": {"sensitivity": {"low": 0.6, "high": 0.98}}}},
    "ci": {"headline": {"auroc_macro": {"value": 0.96, "low": 0.91, "high": 0.99}}},
    "targets": [{"metric": "auroc_macro", "direction": ">=", "target": 0.9, "met": True}],
}


def test_headline_shows_n_and_the_interval_or_only_n():
    assert headline(BINARY, "test") == "test: AUROC 0.960 (95% CI 0.910-0.990, n=20)"
    assert headline({"auroc_macro": 0.8, "n": 5}, "val") == "val: AUROC 0.800 (n=5)"


def test_binary_table_shows_each_metric_once():
    text = metrics_text(BINARY, "test")
    table = text.split("\ntarget")[0]
    assert "macro" not in table and "micro" not in table and "weighted" not in table
    assert "0.900 (0.60-0.98)" in text  # sensitivity with its Wilson interval
    assert "target auroc_macro >= 0.9: met" in text


def test_evaluate_prints_a_table_or_only_json_and_passes_threshold_options(monkeypatch):
    seen = {}

    def fake_evaluate(*args, **kwargs):
        seen.update(kwargs)
        return SimpleNamespace(metrics=BINARY)

    monkeypatch.setattr(cli.common, "setup_logging", lambda *a, **k: None)
    monkeypatch.setattr("medlens.evaluation.evaluate", fake_evaluate)
    r = runner.invoke(app, ["evaluate", "B"])
    assert r.exit_code == 0 and r.stdout.startswith("test: AUROC 0.960 (95% CI") and "threshold" not in seen
    r = runner.invoke(app, ["evaluate", "B", "--json", "--threshold", "0.3", "--thresholds-from", "val"])
    assert json.loads(r.stdout)["auroc_macro"] == 0.96
    assert seen["threshold"] == 0.3 and seen["thresholds_from"] == "val"


# -------------------------------------------------------------------------------------------- predict
def test_predict_takes_folders_and_writes_thresholds_and_decisions(bundle, tmp_path):
    (tmp_path / "imgs/sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("imgs/a.png", "imgs/sub/b.jpg", "imgs/sub/c.tiff"):
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "imgs/notes.txt").write_text("not an image")
    (tmp_path / "bad.png").write_bytes(b"garbage")
    out = tmp_path / "p.csv"
    r = runner.invoke(app, ["predict", str(bundle), str(tmp_path / "imgs"), str(tmp_path / "bad.png"), "--out", str(out)])
    assert r.exit_code == 2  # one failure, no --keep-going
    rows = list(csv.DictReader(out.open()))
    assert [Path(x["source"]).name for x in rows] == ["a.png", "b.jpg", "c.tiff", "bad.png"]
    ok = rows[0]
    assert ok["threshold_abnormal"] == "0.4"
    assert ok["decision_abnormal"] == ("positive" if float(ok["prob_abnormal"]) >= 0.4 else "negative")
    line = r.stderr.strip()
    assert line.count("bad.png") == 1 and "BytesIO" not in line and "0x" not in line
    assert "BytesIO" not in rows[3]["error"] and "bad.png" not in rows[3]["error"]
    r = runner.invoke(app, ["predict", str(bundle), str(tmp_path / "imgs"), str(tmp_path / "bad.png"), "--keep-going"])
    assert r.exit_code == 0 and "thr 0.400" in r.stdout


# ---------------------------------------------------------------------------------------------- help
def _commands(group, prefix=()):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


def test_help_is_written_for_people():
    root = typer.main.get_command(app)
    for path, cmd in _commands(root):
        for p in cmd.params:
            if p.param_type_name == "option" and p.name != "help":
                assert p.help, f"medlens {' '.join(path)} {p.opts[0]} has no help text"
        r = runner.invoke(app, [*path, "--help"])
        assert r.exit_code == 0
        assert not re.search(r"<(bool|int|float|str|text|list\[str\])>", r.output, re.I), (path, r.output)


# ---------------------------------------------------------------------------------------------- runs
def test_mlflow_artifact_copy_is_not_a_run(tmp_path):
    run = tmp_path / "runs" / "r1"
    for d in (run, run / "bundle", tmp_path / "runs/mlartifacts" / ("ab" * 16) / "artifacts/bundle"):
        d.mkdir(parents=True, exist_ok=True)
    copy = tmp_path / "runs/mlartifacts" / ("ab" * 16) / "artifacts"
    for d in (run, copy):
        (d / "config.yaml").write_text("name: r1\n")
    assert find_runs(tmp_path / "runs") == [run]
    other = tmp_path / "elsewhere" / ("cd" * 16) / "artifacts"  # an artifact root under another name
    (other / "bundle").mkdir(parents=True)
    (other / "config.yaml").write_text("name: r1\n")
    assert find_runs(tmp_path / "elsewhere") == []
