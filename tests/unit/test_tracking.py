"""Experiment tracking: MLflow URI rules, backend errors, final metrics, and a real training logged to MLflow,
TensorBoard and CSV at once, read back from each store."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest

from medlens.config import config_from_dict
from medlens.engine import tracking
from medlens.engine.tracking import (
    build_loggers,
    final_metrics,
    finish_tracking,
    log_run_artifacts,
    mlflow_uri_for,
)
from tests.conftest import tiny_config


def _cfg(tmp_path: Path, **tracking_section):
    return config_from_dict({
        "data": {"kind": "synthetic"}, "output": {"dir": str(tmp_path / "out"), "name": "r"},
        "tracking": tracking_section,
    })


@pytest.fixture
def no_mlflow_env(monkeypatch):
    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(k, raising=False)


# ----------------------------------------------------------------------------------------- mlflow URI
def test_mlflow_default_is_sqlite_in_output_dir(tmp_path, no_mlflow_env):
    uri = mlflow_uri_for(_cfg(tmp_path))
    assert uri == f"sqlite:///{(tmp_path / 'out').resolve() / 'mlflow.db'}"
    assert (tmp_path / "out").is_dir()  # SQLite needs the folder to exist


def test_mlflow_uri_from_config_wins_over_environment(tmp_path, no_mlflow_env, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env-server:5000")
    assert mlflow_uri_for(_cfg(tmp_path)) == "http://env-server:5000"
    assert mlflow_uri_for(_cfg(tmp_path, mlflow_uri="https://mlflow.example.org")) == "https://mlflow.example.org"


@pytest.mark.parametrize("uri", ["./mlruns", "/abs/mlruns", "file:///abs/mlruns"])
def test_mlflow_file_store_is_refused_unless_allowed(tmp_path, no_mlflow_env, monkeypatch, uri):
    with pytest.raises(ValueError, match=r"tracking.mlflow_uri .*file store.*sqlite:///.*MLFLOW_ALLOW_FILE_STORE"):
        mlflow_uri_for(_cfg(tmp_path, mlflow_uri=uri))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_URI"):
        mlflow_uri_for(_cfg(tmp_path))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert mlflow_uri_for(_cfg(tmp_path)) == uri


def test_only_global_rank_zero_opens_the_mlflow_store(tmp_path, no_mlflow_env, monkeypatch):
    # every DDP process builds loggers; MLflow's client creates the SQLite store, so the others must not build it
    monkeypatch.setenv("LOCAL_RANK", "1")
    cfg = _cfg(tmp_path, backends=["csv", "mlflow", "csv"])
    assert [type(lg).__name__ for lg in build_loggers(cfg, tmp_path / "out" / "r")] == ["CSVLogger"]
    assert not (tmp_path / "out" / "mlflow.db").exists()
    monkeypatch.setenv("LOCAL_RANK", "0")
    cfg = _cfg(tmp_path, backends=["csv", "mlflow", "csv"], mlflow_uri="http://127.0.0.1:9")  # nothing opened yet
    loggers = build_loggers(cfg, tmp_path / "out" / "r")
    assert [type(lg).__name__ for lg in loggers] == ["CSVLogger", "MLFlowLogger"]  # a repeated name logs once
    assert loggers[1]._artifact_location is None  # a server decides where artifacts go


def test_sqlite_store_keeps_artifacts_beside_it(tmp_path):
    # MLflow's default artifact root is ./mlruns in the working directory
    db = tmp_path / "o" / "mlflow.db"
    assert tracking._mlflow_artifact_location(f"sqlite:///{db}") == (tmp_path / "o" / "mlartifacts").as_uri()
    assert tracking._mlflow_artifact_location("https://mlflow.example.org") is None


def test_resume_continues_the_recorded_mlflow_run(tmp_path, no_mlflow_env):
    cfg = _cfg(tmp_path, backends=["mlflow"], mlflow_uri="http://127.0.0.1:9")
    run_dir = tmp_path / "out" / "r"
    run_dir.mkdir(parents=True)
    uri = mlflow_uri_for(cfg)
    (run_dir / "tracking.json").write_text(json.dumps({"mlflow": {"tracking_uri": uri, "run_id": "abc123"}}))
    assert build_loggers(cfg, run_dir, resume=str(run_dir / "checkpoints/last.ckpt"))[0]._run_id == "abc123"
    assert build_loggers(cfg, run_dir)[0]._run_id is None  # a fresh run starts a new MLflow run
    (run_dir / "tracking.json").write_text(json.dumps({"mlflow": {"tracking_uri": "sqlite:////elsewhere.db", "run_id": "abc123"}}))
    assert build_loggers(cfg, run_dir, resume="last.ckpt")[0]._run_id is None  # another store: new run


def test_a_resumed_mlflow_run_keeps_first_params_and_tags_changed_ones(caplog):
    from types import SimpleNamespace

    class Client:
        tags: dict[str, str] = {}

        def get_run(self, run_id):
            return SimpleNamespace(data=SimpleNamespace(params={"optim.lr": "0.001", "trainer.max_epochs": "1"}))

        def set_tag(self, run_id, key, value):
            self.tags[key] = value

    class Logger:
        experiment, run_id, logged = Client(), "r1", None

        def log_hyperparams(self, params):
            self.logged = params

    lg = Logger()
    caplog.set_level(logging.INFO, "medlens.tracking")
    tracking._log_resumed_mlflow_params(lg, {"optim.lr": 0.001, "trainer.max_epochs": 3, "optim.ema": False})
    assert lg.logged == {"optim.ema": False}  # MLflow refuses to change a logged param
    assert lg.experiment.tags == {"resumed.trainer.max_epochs": "3"}
    assert "resumed.*" in caplog.text and "trainer.max_epochs" in caplog.text


# ------------------------------------------------------------------------------------------------ wandb
def test_wandb_missing_package_is_a_clear_error(tmp_path, monkeypatch):
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ValueError, match=r"'wandb' needs the wandb package \(pip install wandb\)"):
        build_loggers(_cfg(tmp_path, backends=["wandb"]), tmp_path / "r")


def test_wandb_without_credentials_is_a_clear_error(tmp_path, monkeypatch):
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name, *a: object() if name == "wandb" else real(name, *a))
    for k in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with pytest.raises(ValueError, match="wandb login.*WANDB_API_KEY.*WANDB_MODE=offline"):
        build_loggers(_cfg(tmp_path, backends=["wandb"]), tmp_path / "r")
    (tmp_path / "no-netrc").write_text("machine api.wandb.ai\n  login user\n  password x\n")
    assert tracking.wandb_configured()
    monkeypatch.setenv("NETRC", str(tmp_path / "missing"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert tracking.wandb_configured()


# ------------------------------------------------------------------------------------------ final metrics
def test_final_metrics_flattens_splits_and_skips_non_numbers():
    out = final_metrics({
        "val": {"auroc_macro": 0.9, "accuracy": None, "task": "binary", "confusion_matrix": [[1, 2], [3, 4]],
                "per_label": {"pneumonia": {"auroc": 0.9, "threshold": 0.4, "tp": 3}}, "ok": True},
        "test": {"auroc_macro": float("nan"), "n": 7},
        "threshold_method": "f1", "train_time_s": 1.5,
    })
    assert out == {
        "final/val/auroc_macro": 0.9, "final/val/per_label/pneumonia/auroc": 0.9,
        "final/val/per_label/pneumonia/threshold": 0.4, "final/test/n": 7.0, "final/train_time_s": 1.5,
    }


def test_a_failing_tracker_does_not_fail_the_finished_run(tmp_path, caplog):
    class BrokenLogger:
        def log_metrics(self, metrics, step=None):
            raise ConnectionError("tracking server went away")

    caplog.set_level(logging.WARNING, "medlens.tracking")
    info = finish_tracking(None, [BrokenLogger()], tmp_path, {"val": {"auroc_macro": 0.8}})
    assert "server went away" in info["errors"]["BrokenLogger"]
    assert "could not log the final results" in caplog.text
    assert json.loads((tmp_path / "tracking.json").read_text())["errors"]


def test_log_run_artifacts_without_mlflow_run_is_a_no_op(tmp_path):
    assert log_run_artifacts(tmp_path, [tmp_path]) == []


# ------------------------------------------------------------------------------- one run, three stores
def _history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_training_logs_to_mlflow_tensorboard_and_csv_at_once(tmp_path, pneumonia_npz, no_mlflow_env, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from medlens.bundle import read_manifest
    from medlens.training import train

    monkeypatch.chdir(tmp_path)  # MLflow must not write ./mlruns or ./mlartifacts into the working directory
    raw = tiny_config(
        tmp_path, {"kind": "medmnist", "path": str(pneumonia_npz), "image_size": 28, "channels": 1, "max_samples": 200},
        model={"backbone": "test_efficientnet_gn"}, trainer={"max_epochs": 2, "calibrate": False},
        tracking={"backends": ["mlflow", "tensorboard", "csv"], "experiment": "tiny-exp"},
    )
    result = train(config_from_dict(raw))
    run_dir = result.run_dir
    hist = _history(run_dir)
    assert len(hist) == 2
    val_auroc = [float(r["val/auroc_macro"]) for r in hist]
    final_auroc = result.metrics["val"]["auroc_macro"]

    # ---- MLflow, through its client against the SQLite store in output.dir
    uri = f"sqlite:///{(tmp_path / 'runs').resolve() / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny-exp")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "t"
    assert json.loads((run_dir / "tracking.json").read_text())["mlflow"]["run_id"] == run.info.run_id
    assert float(run.data.params["optim.lr"]) == pytest.approx(3e-3)
    assert run.data.params["model.backbone"] == "test_efficientnet_gn"
    assert run.data.params["tracking.backends"] == json.dumps(["mlflow", "tensorboard", "csv"])
    per_epoch = client.get_metric_history(run.info.run_id, "val/auroc_macro")
    assert [m.value for m in per_epoch] == pytest.approx(val_auroc, abs=1e-6)
    assert len(client.get_metric_history(run.info.run_id, "train/loss_epoch")) == 2
    assert run.data.metrics["final/val/auroc_macro"] == pytest.approx(final_auroc)
    assert run.data.metrics["final/test/accuracy"] == pytest.approx(result.metrics["test"]["accuracy"])
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"bundle", "metrics.json", "config.yaml", "history.csv", "environment.json"} <= top
    assert {a.path for a in client.list_artifacts(run.info.run_id, "bundle")} == {"bundle/manifest.json", "bundle/model.safetensors", "bundle/ood.safetensors"}
    assert run.info.artifact_uri.startswith((tmp_path / "runs").resolve().as_uri())
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlartifacts").exists()

    # ---- TensorBoard, through tensorboard's event reader
    ea = EventAccumulator(str(run_dir / "logs" / "tensorboard"))
    ea.Reload()
    assert [e.value for e in ea.Scalars("val/auroc_macro")] == pytest.approx(val_auroc, abs=1e-6)
    assert [e.value for e in ea.Scalars("final/val/auroc_macro")] == pytest.approx([final_auroc], abs=1e-6)

    # ---- CSV
    with open(run_dir / "logs" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["val/auroc_macro"]) for r in rows if r.get("val/auroc_macro")] == pytest.approx(val_auroc, abs=1e-6)
    assert [float(r["final/val/auroc_macro"]) for r in rows if r.get("final/val/auroc_macro")] == pytest.approx([final_auroc])
    assert "optim.lr" in (run_dir / "logs" / "hparams.yaml").read_text()

    # ---- the reproducibility record, in the run and in the bundle
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["seed"] == {"seed": 0, "split_seed": 0, "deterministic": True}
    assert env["versions"]["torch"] and env["packages"]["lightning"]
    assert env["hardware"]["cpu_count"] >= 1 and env["launch"]["world_size"] == 1
    assert env["launch"]["global_batch_size"] == 32
    assert read_manifest(result.bundle_dir).extra["environment"]["seed"]["seed"] == 0


# ------------------------------------------------------------------------------------- secrets at rest
DB_PW, TRACK_PW = "S3cret-db-pw", "Tr4ck-pw"


def _files_containing(root: Path, text: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def test_no_password_reaches_tracking_files(tmp_path, no_mlflow_env, monkeypatch):
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    cfg = config_from_dict({
        "data": {"kind": "sql", "url": f"postgresql+psycopg://ana:{DB_PW}@db.example.org/imgs?password={DB_PW}",
                 "dataset": "d", "label_set": "l"},
        "output": {"dir": str(tmp_path / "out"), "name": "r"},
        "tracking": {"backends": ["csv", "tensorboard", "mlflow"], "experiment": "secrets"},
    })
    run_dir = tmp_path / "out" / "r"
    loggers = build_loggers(cfg, run_dir)
    trainer = SimpleNamespace(
        world_size=1, is_global_zero=True, loggers=loggers, num_nodes=1, num_devices=1,
        strategy=SimpleNamespace(root_device="cpu"), accelerator=None,
    )
    tracking.RunRecorder(cfg, run_dir).on_fit_start(trainer, None)
    finish_tracking(cfg, loggers, run_dir, {"val": {"auroc_macro": 0.5}})

    assert (run_dir / "logs" / "hparams.yaml").is_file() and (run_dir / "logs" / "tensorboard").is_dir()
    assert "***" in (run_dir / "logs" / "hparams.yaml").read_text()
    assert _files_containing(tmp_path, DB_PW) == []  # csv, tensorboard, tracking.json, environment.json, mlflow.db
    client = MlflowClient(json.loads((run_dir / "tracking.json").read_text())["mlflow"]["tracking_uri"])
    run = client.search_runs([client.get_experiment_by_name("secrets").experiment_id])[0]
    assert run.data.params["data.url"] == "postgresql+psycopg://ana:***@db.example.org/imgs?password=***"
    assert tracking.config_params(cfg)["data.url"] == run.data.params["data.url"]


def test_tracking_json_keeps_the_mlflow_uri_without_its_password(tmp_path, no_mlflow_env, monkeypatch):
    uri = f"http://bob:{TRACK_PW}@127.0.0.1:9"
    cfg = _cfg(tmp_path, backends=["mlflow"], mlflow_uri=uri)
    run_dir = tmp_path / "out" / "r"
    tracking._write_tracking(run_dir, {"mlflow": {"tracking_uri": uri, "run_id": "abc123"}})
    assert _files_containing(tmp_path, TRACK_PW) == []
    assert read_tracking_uri(run_dir) == "http://bob:***@127.0.0.1:9"
    # a resumed run still finds its MLflow run: the redacted URIs agree
    assert build_loggers(cfg, run_dir, resume="last.ckpt")[0]._run_id == "abc123"
    assert build_loggers(cfg, run_dir, resume="last.ckpt")[0]._tracking_uri == uri
    # a later step (report artifacts) needs the full URI from the environment, and says so
    with pytest.raises(ValueError, match="password not saved.*MLFLOW_TRACKING_URI"):
        log_run_artifacts(run_dir, [run_dir])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert tracking._live_mlflow_uri(read_tracking_uri(run_dir)) == uri


def read_tracking_uri(run_dir: Path) -> str:
    return json.loads((run_dir / "tracking.json").read_text())["mlflow"]["tracking_uri"]
