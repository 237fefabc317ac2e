"""Run folders: the reproducibility record, ``medlens runs list`` and ``medlens runs compare``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medlens.cli import app
from medlens.runs import collect_environment, compare_runs, find_runs, list_runs, load_run, write_environment
from tests.conftest import tiny_config

runner = CliRunner()


def make_run(root: Path, name: str, lr: float, auroc: float, *, bundle: bool = True, commit: str = "a" * 40, mtime: float | None = None) -> Path:
    """A run folder as ``medlens train`` leaves it (files only, no weights)."""
    d = root / name
    (d / "checkpoints").mkdir(parents=True)
    config = {
        "seed": 0, "data": {"kind": "synthetic", "batch_size": 32}, "model": {"backbone": "resnet10t"},
        "optim": {"lr": lr, "milestones": [30, 60]}, "output": {"dir": str(root), "name": name},
    }
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = {
        "val": {"n": 50, "auroc_macro": auroc, "accuracy": 0.8, "loss": 0.4, "per_label": {"p": {"auroc": auroc}}},
        "test": {"n": 60, "auroc_macro": auroc - 0.05, "accuracy": 0.75},
        "threshold_method": "f1", "train_time_s": 12.5,
    }
    (d / "metrics.json").write_text(json.dumps(metrics))
    (d / "history.csv").write_text("epoch,step,val/auroc_macro\n0,5,0.7\n1,10,0.8\n")
    (d / "environment.json").write_text(json.dumps({"git": {"commit": commit}, "versions": {"torch": "2.5.0"}, "seed": {"seed": 0}}))
    if bundle:
        (d / "bundle").mkdir()
        (d / "bundle" / "manifest.json").write_text(json.dumps({
            "format": "medlens-bundle", "config": config, "metrics": metrics, "history": [{}, {}], "extra": {},
        }))
    if mtime is not None:
        for f in d.rglob("*"):
            os.utime(f, (mtime, mtime))
    return d


# --------------------------------------------------------------------------- reproducibility record
def test_environment_records_seed_versions_hardware_and_launch():
    from medlens.config import config_from_dict

    cfg = config_from_dict({"seed": 7, "data": {"kind": "synthetic", "split": {"seed": 3}}, "trainer": {"strategy": "ddp", "devices": 2}})
    env = collect_environment(cfg)
    assert env["seed"] == {"seed": 7, "split_seed": 3, "deterministic": True}
    assert env["versions"]["torch"] and env["versions"]["python"]
    assert env["packages"]["numpy"] == env["versions"]["numpy"]
    assert env["hardware"]["cpu_count"] >= 1 and isinstance(env["hardware"]["gpus"], list)
    assert env["launch"]["strategy"] == "ddp" and env["launch"]["devices"] == 2
    json.dumps(env)  # JSON-ready


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_environment_records_the_project_git_commit(tmp_path):
    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "train.yaml").write_text("seed: 0\n")
    git("add", "train.yaml")
    git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "config")
    env = collect_environment(project_dir=tmp_path)
    assert env["git"]["commit"] == git("rev-parse", "HEAD") and env["git"]["dirty"] is False
    (tmp_path / "train.yaml").write_text("seed: 1\n")
    assert collect_environment(project_dir=tmp_path)["git"]["dirty"] is True
    assert collect_environment(project_dir=tmp_path / "train.yaml")["git"]["root"] == str(tmp_path.resolve())


def test_outside_a_repository_the_git_record_is_empty(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # do not find a repository above tmp_path
    assert collect_environment(project_dir=tmp_path)["git"] is None


def test_a_resumed_run_keeps_the_earlier_sessions(tmp_path):
    write_environment(tmp_path, {"created": "1", "packages": {"x": "1"}})
    write_environment(tmp_path, {"created": "2", "packages": {"x": "2"}}, resumed_from="last.ckpt")
    write_environment(tmp_path, {"created": "3"}, resumed_from="last.ckpt")
    env = json.loads((tmp_path / "environment.json").read_text())
    assert env["created"] == "3" and env["resumed_from"] == "last.ckpt"
    assert [s["created"] for s in env["previous_sessions"]] == ["1", "2"]
    assert all("packages" not in s for s in env["previous_sessions"])


# ------------------------------------------------------------------------------------------- list
def test_list_finds_runs_oldest_first_and_skips_other_folders(tmp_path):
    now = time.time()
    make_run(tmp_path, "b", 1e-3, 0.9, mtime=now - 100)
    make_run(tmp_path / "sweep", "a", 3e-4, 0.8, mtime=now - 50)  # one level deeper
    make_run(tmp_path, "c", 1e-2, 0.7, bundle=False, mtime=now)
    (tmp_path / "mlartifacts" / "123").mkdir(parents=True)
    (tmp_path / "notes").mkdir()
    runs = list_runs(tmp_path)
    assert [r.name for r in runs] == ["b", "a", "c"]
    assert [r.status for r in runs] == ["done", "done", "incomplete"]
    assert runs[0].epochs == 2 and runs[0].metric("val", "auroc_macro") == 0.9
    assert find_runs(tmp_path / "sweep" / "a") == [tmp_path / "sweep" / "a"]  # a run folder itself


def test_cli_runs_list_table_and_json(tmp_path):
    make_run(tmp_path, "lr-high", 1e-2, 0.912345)
    make_run(tmp_path, "lr-low", 1e-4, 0.801)
    r = runner.invoke(app, ["runs", "list", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "lr-high" in r.output and "lr-low" in r.output
    assert "0.9123" in r.output and "0.8010" in r.output and "val AUROC" in r.output
    r = runner.invoke(app, ["runs", "list", str(tmp_path), "--json"])
    rows = {x["name"]: x for x in json.loads(r.output)}
    assert rows["lr-high"]["metrics"]["val/auroc_macro"] == 0.912345 and rows["lr-low"]["status"] == "done"


def test_cli_runs_list_errors_and_empty(tmp_path):
    r = runner.invoke(app, ["runs", "list", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "runs folder not found" in r.output
    r = runner.invoke(app, ["runs", "list", str(tmp_path)])
    assert r.exit_code == 0 and "no runs under" in r.output


# ---------------------------------------------------------------------------------------- compare
def test_compare_shows_differing_config_and_every_metric(tmp_path):
    a = make_run(tmp_path, "a", 1e-3, 0.9)
    b = make_run(tmp_path, "b", 3e-4, 0.8, commit="b" * 40)
    cmp = compare_runs([a, b])
    assert cmp.labels == ["a", "b"]
    assert dict(cmp.config) == {"optim.lr": [1e-3, 3e-4]}  # output.name differs too, but never matters
    m = dict(cmp.metrics)
    assert m["val/auroc_macro"] == [0.9, 0.8]
    assert m["test/auroc_macro"] == pytest.approx([0.85, 0.75])
    assert m["train_time_s"] == [12.5, 12.5] and "val/per_label" not in m
    assert [k for k, _ in cmp.metrics][:1] == ["val/auroc_macro"]  # validation first, then test, then the rest
    assert dict(cmp.environment) == {"env.git.commit": ["a" * 40, "b" * 40]}


def test_compare_accepts_bundle_folders_and_keys_missing_in_one_run(tmp_path):
    a = make_run(tmp_path, "a", 1e-3, 0.9)
    b = make_run(tmp_path, "b", 1e-3, 0.8)
    cfg = yaml.safe_load((b / "config.yaml").read_text())
    cfg["optim"]["ema"] = True
    (b / "config.yaml").write_text(yaml.safe_dump(cfg))
    exported = tmp_path / "exported"
    shutil.copytree(a / "bundle", exported)  # a bundle outside any run folder: its manifest is read
    cmp = compare_runs([a / "bundle", b, exported])
    assert [r.path for r in cmp.runs] == [a, b, exported]
    assert dict(cmp.config) == {"optim.ema": [None, True, None]}
    assert dict(cmp.metrics)["val/auroc_macro"] == [0.9, 0.8, 0.9]


def test_compare_same_names_are_told_apart(tmp_path):
    a = make_run(tmp_path / "x", "run", 1e-3, 0.9)
    b = make_run(tmp_path / "y", "run", 1e-2, 0.8)
    assert compare_runs([a, b]).labels == [str(a), str(b)]


def test_cli_runs_compare(tmp_path):
    a = make_run(tmp_path, "lr1e-3", 1e-3, 0.9123)
    b = make_run(tmp_path, "lr3e-4", 3e-4, 0.8456)
    r = runner.invoke(app, ["runs", "compare", str(a), str(b)])
    assert r.exit_code == 0, r.output
    out = r.output
    assert "config differences" in out and "optim.lr" in out and "0.0010" in out and "0.0003" in out
    line = next(x for x in out.splitlines() if "val/auroc_macro" in x)
    assert "0.9123" in line and "0.8456" in line
    assert "output.name" not in out
    data = json.loads(runner.invoke(app, ["runs", "compare", str(a), str(b), "--json"]).output)
    assert data["config_differences"]["optim.lr"] == {"lr1e-3": 1e-3, "lr3e-4": 3e-4}
    assert data["metrics"]["val/auroc_macro"] == {"lr1e-3": 0.9123, "lr3e-4": 0.8456}


def test_cli_runs_compare_errors(tmp_path):
    a = make_run(tmp_path, "a", 1e-3, 0.9)
    r = runner.invoke(app, ["runs", "compare", str(a)])
    assert r.exit_code == 2 and "at least two" in r.output
    r = runner.invoke(app, ["runs", "compare", str(a), str(tmp_path / "missing")])
    assert r.exit_code == 2 and "run folder not found" in r.output and "missing" in r.output
    (tmp_path / "plain").mkdir()
    r = runner.invoke(app, ["runs", "compare", str(a), str(tmp_path / "plain")])
    assert r.exit_code == 2 and "not a medlens run folder" in r.output


def test_load_run_of_an_unfinished_run(tmp_path):
    d = make_run(tmp_path, "x", 1e-3, 0.9, bundle=False)
    (d / "metrics.json").unlink()
    run = load_run(d)
    assert run.status == "incomplete" and run.metrics == {} and run.metric("val", "auroc_macro") is None


# ----------------------------------------------------------------------------------- real trainings
@pytest.mark.slow
def test_compare_two_trained_runs_that_differ_in_lr(tmp_path, pneumonia_npz, monkeypatch):
    from medlens.config import config_from_dict
    from medlens.training import train

    monkeypatch.chdir(tmp_path)  # outside any git checkout: a commit made meanwhile must not show as a difference
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))

    data = {"kind": "medmnist", "path": str(pneumonia_npz), "image_size": 28, "channels": 1, "max_samples": 150}
    results = []
    for name, lr in (("lr-small", 1e-3), ("lr-large", 1e-2)):
        raw = tiny_config(tmp_path, data, model={"backbone": "test_efficientnet_gn"}, optim={"lr": lr},
                          trainer={"calibrate": False}, output={"name": name})
        results.append(train(config_from_dict(raw)))
    listed = runner.invoke(app, ["runs", "list", str(tmp_path / "runs")])
    assert listed.exit_code == 0 and "lr-small" in listed.output and "lr-large" in listed.output
    r = runner.invoke(app, ["runs", "compare", str(results[0].run_dir), str(results[1].run_dir)])
    assert r.exit_code == 0, r.output
    lr_line = next(x for x in r.output.splitlines() if "optim.lr" in x)
    assert "0.0010" in lr_line and "0.0100" in lr_line
    auroc_line = next(x for x in r.output.splitlines() if "val/auroc_macro" in x)
    for res in results:
        assert f"{res.metrics['val']['auroc_macro']:.4f}" in auroc_line
    cmp = compare_runs([results[0].run_dir, results[1].run_dir])
    assert [k for k, _ in cmp.config] == ["optim.lr"]  # nothing else differs between the two configs
    assert not cmp.environment  # same machine, same packages, same seed
