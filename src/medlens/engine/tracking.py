"""Experiment tracking from config: csv, tensorboard, mlflow and wandb -- several at once.

What every backend named in ``tracking.backends`` receives:

- parameters: the resolved config, flattened to ``section.key`` names (``optim.lr``, ``data.batch_size``);
- per-epoch metrics through Lightning: ``train/loss_epoch``, ``val/loss``, ``val/<metric>`` (whole validation
  set, also under DDP), plus ``train/loss_step`` every ``trainer.log_every_n_steps`` steps;
- the final evaluation: ``final/<split>/<metric>`` (``final/val/auroc_macro``, ``final/test/accuracy``, ...);
- artifacts (MLflow, W&B): the bundle, ``metrics.json``, ``config.yaml``, ``history.csv``, ``environment.json``
  and report/plots when present; MLflow also gets the bundle as a pyfunc model, ``runs:/<run id>/model``
  (``mlflow.pyfunc.load_model(...).predict(paths)`` = ``medlens predict``).

MLflow's default store is ``sqlite:///<output.dir>/mlflow.db`` (artifacts in ``<output.dir>/mlartifacts``);
``tracking.mlflow_uri`` or ``$MLFLOW_TRACKING_URI`` point at any other store, e.g. a tracking server.
MLflow's plain file store (``./mlruns``) is refused unless ``MLFLOW_ALLOW_FILE_STORE=true``.
``run_dir/tracking.json`` records where each backend wrote (MLflow URI, experiment and run id, folders), so a
resumed run continues the same MLflow/W&B run and later steps (reports) can add artifacts to it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import lightning as L

from medlens._atomic import atomic_open
from medlens.config import REDACTED, redact_secrets, redact_url
from medlens.engine.distributed import env_is_global_zero
from medlens.registry import Registry
from medlens.runs import TRACKING, collect_environment, flatten, write_environment

log = logging.getLogger("medlens.tracking")

TRACKERS: Registry = Registry("tracking backend")

#: Files and folders of a run folder sent to MLflow/W&B as artifacts when present (report/plots from later steps).
RUN_ARTIFACTS = (
    "bundle", "metrics.json", "config.yaml", "history.csv", "environment.json", "report", "report.html",
    "report.md", "report.pdf", "plots", "figures",
)


#: Backends whose logger opens its store when built (MLflow's client creates a SQLite database): rank 0 only.
RANK_ZERO_ONLY = frozenset({"mlflow"})


def list_trackers() -> list[str]:
    """Names accepted in ``tracking.backends``."""
    return TRACKERS.names()


def _truthy(x: str | None) -> bool:
    return (x or "").strip().lower() in ("1", "true", "yes", "on")


# ------------------------------------------------------------------------------------------ mlflow
def mlflow_uri_for(cfg) -> str:
    """The MLflow tracking URI of a run: ``tracking.mlflow_uri``, else ``$MLFLOW_TRACKING_URI``, else a local
    SQLite store ``sqlite:///<output.dir>/mlflow.db``.

    Raises:
        ValueError: the URI is MLflow's plain file store (a path or ``file:`` URI) and
            ``MLFLOW_ALLOW_FILE_STORE`` is not ``true``.

    Example:
        >>> mlflow_uri_for(cfg)  # output.dir: /data/runs, no URI configured  # doctest: +SKIP
        'sqlite:////data/runs/mlflow.db'
    """
    uri = cfg.tracking.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri:
        uri = f"sqlite:///{(Path(cfg.output.dir).expanduser().resolve() / 'mlflow.db').as_posix()}"
    scheme = urlparse(uri).scheme
    is_file_store = scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")  # C:\... on Windows
    if is_file_store and not _truthy(os.environ.get("MLFLOW_ALLOW_FILE_STORE")):
        src = "tracking.mlflow_uri" if cfg.tracking.mlflow_uri else "MLFLOW_TRACKING_URI"
        raise ValueError(
            f"{src} {uri!r} is MLflow's plain file store, which medlens does not use; give a database such as "
            "sqlite:///path/to/mlflow.db or a server http(s)://host:5000 (or set MLFLOW_ALLOW_FILE_STORE=true)"
        )
    if scheme == "sqlite":
        db = _sqlite_path(uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
    return uri


def _sqlite_path(uri: str) -> Path | None:
    rest = uri.split(":///", 1)[1] if ":///" in uri else ""
    if not rest or rest.startswith(":memory:"):
        return None
    return Path(rest.split("?", 1)[0])


def _mlflow_artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps artifacts: beside a SQLite store (MLflow's default is ./mlruns in the cwd)."""
    db = _sqlite_path(uri) if urlparse(uri).scheme == "sqlite" else None
    return (db.parent.resolve() / "mlartifacts").as_uri() if db is not None else None


def _quiet_mlflow() -> None:
    for name in ("alembic", "alembic.runtime.migration", "mlflow", "mlflow.store", "mlflow.tracking"):
        logging.getLogger(name).setLevel(logging.WARNING)


@TRACKERS.register("mlflow")
def _mlflow_logger(cfg, run_dir: Path, previous: dict[str, Any]):
    if importlib.util.find_spec("mlflow") is None:
        raise ValueError("tracking backend 'mlflow' needs the mlflow package: pip install 'medlens[tracking]'")
    from lightning.pytorch.loggers import MLFlowLogger

    _quiet_mlflow()
    uri = mlflow_uri_for(cfg)
    prev = previous.get("mlflow") or {}
    # tracking.json keeps the URI with its password redacted: the same store when the redacted forms agree
    run_id = prev.get("run_id") if redact_url(prev.get("tracking_uri") or "") == redact_url(uri) else None
    return MLFlowLogger(
        experiment_name=cfg.tracking.experiment, run_name=run_dir.name, tracking_uri=uri,
        tags={"medlens.run_dir": str(run_dir.resolve())}, artifact_location=_mlflow_artifact_location(uri),
        run_id=run_id,
    )


# ------------------------------------------------------------------------------------ csv, tensorboard
@TRACKERS.register("csv")
def _csv_logger(cfg, run_dir: Path, previous: dict[str, Any]):
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(save_dir=str(run_dir), name="logs", version="")


@TRACKERS.register("tensorboard")
def _tensorboard_logger(cfg, run_dir: Path, previous: dict[str, Any]):
    if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
        raise ValueError("tracking backend 'tensorboard' needs the tensorboard package: pip install 'medlens[tracking]'")
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(save_dir=str(run_dir), name="logs", version="tensorboard", default_hp_metric=False)


# ------------------------------------------------------------------------------------------- wandb
def wandb_configured() -> bool:
    """W&B can log without asking: an API key in the environment or ~/.netrc, or offline/disabled mode."""
    env = os.environ
    if env.get("WANDB_API_KEY") or env.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return True
    netrc = Path(env.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


@TRACKERS.register("wandb")
def _wandb_logger(cfg, run_dir: Path, previous: dict[str, Any]):
    if importlib.util.find_spec("wandb") is None:
        raise ValueError("tracking backend 'wandb' needs the wandb package (pip install wandb); or remove it from tracking.backends")
    if not wandb_configured():
        raise ValueError(
            "tracking backend 'wandb' is not configured: run `wandb login`, set WANDB_API_KEY, or set WANDB_MODE=offline"
        )
    from lightning.pytorch.loggers import WandbLogger

    project = cfg.tracking.wandb_project or os.environ.get("WANDB_PROJECT") or cfg.tracking.experiment
    prev = previous.get("wandb") or {}
    # WANDB_DIR, when set, is where W&B writes (as wandb itself does); else the run's own logs/ folder. Lightning
    # passes save_dir to wandb.init(dir=...), which wins over WANDB_DIR, so the variable is read here.
    logs = Path(os.environ["WANDB_DIR"]).expanduser() if os.environ.get("WANDB_DIR") else run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return WandbLogger(project=project, name=run_dir.name, save_dir=str(logs), id=prev.get("id"), resume="allow")


# ------------------------------------------------------------------------------------------ public
def read_tracking(run_dir: str | Path) -> dict[str, Any]:
    """``run_dir/tracking.json`` (empty dict when the run has none)."""
    p = Path(run_dir) / TRACKING
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def build_loggers(cfg, run_dir: Path, resume: str | None = None) -> list:
    """Lightning loggers for ``cfg.tracking.backends``, in the order given.

    Args:
        cfg: the run config.
        run_dir: the run folder.
        resume: the checkpoint a resumed run continues from; the MLflow/W&B run recorded in
            ``run_dir/tracking.json`` is then continued instead of starting a new one.

    Raises:
        ValueError: an unknown backend, a missing package, an unconfigured W&B or an MLflow file store.

    Example:
        >>> loggers = build_loggers(cfg, Path("runs/x"))  # doctest: +SKIP
    """
    previous = read_tracking(run_dir) if resume else {}
    out = []
    for name in dict.fromkeys(cfg.tracking.backends):  # a backend named twice logs once
        try:
            factory = TRACKERS.get(name)
        except KeyError as e:
            raise ValueError(f"tracking.backends: {e.args[0]}") from None
        if name in RANK_ZERO_ONLY and not env_is_global_zero():
            continue  # only global rank 0 logs; other processes must not open (or create) the store at all
        out.append(factory(cfg, run_dir, previous))
    return out


def _backend_of(logger) -> str:
    return {
        "CSVLogger": "csv", "TensorBoardLogger": "tensorboard", "MLFlowLogger": "mlflow", "WandbLogger": "wandb",
    }.get(type(logger).__name__, type(logger).__name__)


def _ensure_mlflow_experiment(logger) -> None:
    """Create the experiment (artifacts beside a SQLite store) before Lightning would, with a quieter message."""
    if logger._run_id is not None or logger._experiment_id is not None:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(logger._tracking_uri)
    if client.get_experiment_by_name(logger._experiment_name) is None:
        client.create_experiment(logger._experiment_name, artifact_location=logger._artifact_location)
        log.info("MLflow: created experiment %r in %s", logger._experiment_name, logger._tracking_uri)


def _logger_info(logger) -> dict[str, Any]:
    kind = _backend_of(logger)
    if kind == "mlflow":
        _ensure_mlflow_experiment(logger)
        return {
            "tracking_uri": logger._tracking_uri, "experiment": logger._experiment_name,
            "experiment_id": logger.experiment_id, "run_id": logger.run_id,
        }
    if kind == "wandb":
        run = logger.experiment
        return {"id": getattr(run, "id", None), "project": getattr(run, "project", None), "url": getattr(run, "url", None)}
    if kind == "csv":
        return {"metrics_csv": str(Path(logger.log_dir) / "metrics.csv")}
    if kind == "tensorboard":
        return {"log_dir": str(logger.log_dir)}
    return {}


def config_params(cfg) -> dict[str, Any]:
    """The run config as tracker parameters: ``section.key`` names, lists and dicts as JSON, secrets as ``***``.

    Every backend (MLflow params, TensorBoard/CSV ``hparams.yaml``, W&B config) receives this, never the raw
    config: a password in ``data.url`` or ``tracking.mlflow_uri`` must not be written to a tracking store.

    Example:
        >>> config_params(cfg)["data.url"]  # doctest: +SKIP
        'postgresql+psycopg://ana:***@db/images'
    """
    data = redact_secrets(cfg.model_dump(mode="json"))
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in flatten(data).items()}


def _live_mlflow_uri(stored: str) -> str:
    """The usable URI for one that ``tracking.json`` recorded with its password redacted: ``$MLFLOW_TRACKING_URI``."""
    if REDACTED not in stored:
        return stored
    env = os.environ.get("MLFLOW_TRACKING_URI") or ""
    if env and redact_url(env) == stored:
        return env
    raise ValueError(
        f"tracking.json records the MLflow store as {stored!r} (password not saved); set MLFLOW_TRACKING_URI to the "
        "full URI to add to that run"
    )


class RunRecorder(L.Callback):
    """At the start of fit, on global rank 0 only: write ``environment.json`` (the reproducibility record),
    send the flattened config to every logger as parameters, and write ``tracking.json``.

    Rank 0 is only known for sure once Lightning has set up its processes (torchrun, SLURM, DDP spawn),
    which is why this is a callback rather than done when the loggers are built.

    Args:
        cfg: the run config.
        run_dir: the run folder.
        resume: the checkpoint the run continues from, if any (earlier sessions' records are kept).
    """

    def __init__(self, cfg, run_dir: Path, resume: str | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume = resume

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1:  # validation metrics are computed over the gathered whole set, the same on
            # every process, so Lightning's advice to reduce them with sync_dist does not apply
            warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed setting.*")
        if not trainer.is_global_zero:
            return
        write_environment(self.run_dir, collect_environment(self.cfg, trainer), self.resume)
        params = config_params(self.cfg)
        info: dict[str, Any] = {}
        for lg in trainer.loggers:
            kind = _backend_of(lg)
            try:
                if kind == "mlflow" and lg._run_id is not None:  # a resumed run: MLflow params are write-once
                    _log_resumed_mlflow_params(lg, params)
                else:
                    lg.log_hyperparams(params)
            except Exception as e:  # a tracker hiccup must not stop training
                log.warning("tracking %s: could not log the config as parameters (%s)", kind, str(e)[:200])
            info[kind] = _logger_info(lg)
        if "mlflow" in info:
            _tag_mlflow(info["mlflow"], self.run_dir)
        _write_tracking(self.run_dir, info)


def _log_resumed_mlflow_params(logger, params: dict[str, Any]) -> None:
    """Log the config keys the run does not have yet; changed values become ``resumed.<key>`` tags."""
    client, run_id = logger.experiment, logger.run_id
    old = client.get_run(run_id).data.params
    as_logged = {k: str(v)[:250] for k, v in params.items()}  # what MLFlowLogger stores
    new = {k: v for k, v in params.items() if k not in old}
    changed = {k: v for k, v in as_logged.items() if k in old and old[k] != v}
    if new:
        logger.log_hyperparams(new)
    for k, v in changed.items():
        client.set_tag(run_id, f"resumed.{k}", v)
    if changed:
        log.info("MLflow run %s resumed with changed settings (tags resumed.*): %s", run_id, ", ".join(sorted(changed)))


def _write_tracking(run_dir: Path, info: dict[str, Any]) -> None:
    from medlens.bundle import write_json_atomic

    write_json_atomic(Path(run_dir) / TRACKING, redact_secrets(info))  # no tracking-store password at rest


def _tag_mlflow(info: dict[str, Any], run_dir: Path) -> None:
    from mlflow.tracking import MlflowClient

    env = json.loads((run_dir / "environment.json").read_text()) if (run_dir / "environment.json").is_file() else {}
    tags = {"medlens.run_dir": str(run_dir.resolve())}
    git = env.get("git") or {}
    if git.get("commit"):
        tags["mlflow.source.git.commit"] = git["commit"]  # shown by the MLflow UI
    if env.get("launch", {}).get("world_size"):
        tags["medlens.world_size"] = str(env["launch"]["world_size"])
    client = MlflowClient(info["tracking_uri"])
    for k, v in tags.items():
        client.set_tag(info["run_id"], k, v)
    if client.get_run(info["run_id"]).info.status != "RUNNING":  # a resumed run
        client.update_run(info["run_id"], status="RUNNING")


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """``metrics.json`` -> ``{"final/val/auroc_macro": ..., "final/val/per_label/<label>/auroc": ...}``.

    Example:
        >>> final_metrics({"val": {"auroc_macro": 0.9, "n": 10, "per_label": {"p": {"auroc": 0.9}}}, "train_time_s": 3.0})
        {'final/val/auroc_macro': 0.9, 'final/val/n': 10.0, 'final/val/per_label/p/auroc': 0.9, 'final/train_time_s': 3.0}
    """
    out: dict[str, float] = {}

    def ok(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    for k, v in metrics.items():
        if isinstance(v, dict):
            for m, x in v.items():
                if ok(x):
                    out[f"final/{k}/{m}"] = float(x)
                elif m == "per_label" and isinstance(x, dict):
                    for label, d in x.items():
                        for name in ("auroc", "f1", "threshold"):
                            if isinstance(d, dict) and ok(d.get(name)):
                                out[f"final/{k}/per_label/{label}/{name}"] = float(d[name])
        elif ok(v):
            out[f"final/{k}"] = float(v)
    return out


def _last_step(run_dir: Path) -> int:
    import csv

    p = run_dir / "history.csv"
    try:
        with open(p, newline="") as f:
            rows = list(csv.DictReader(f))
        return int(float(rows[-1].get("step") or 0)) if rows else 0
    except (OSError, ValueError, IndexError):
        return 0


def _append_csv_row(path: Path, row: dict[str, Any]) -> None:
    import csv

    rows: list[dict[str, Any]] = []
    keys: list[str] = []
    if path.is_file():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            keys = list(reader.fieldnames or [])
            rows = list(reader)
    keys += [k for k in row if k not in keys]
    with atomic_open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows([*rows, row])


def _artifacts(run_dir: Path) -> list[Path]:
    return [run_dir / n for n in RUN_ARTIFACTS if (run_dir / n).exists()]


def log_run_artifacts(run_dir: str | Path, paths: list[str | Path], artifact_path: str | None = None) -> list[str]:
    """Add files or folders to the MLflow run recorded in ``run_dir/tracking.json`` (e.g. a report made later).

    Returns:
        The backends the artifacts went to (empty when the run was not tracked with MLflow).

    Example:
        >>> log_run_artifacts("runs/pneumoniamnist", ["runs/pneumoniamnist/report"])  # doctest: +SKIP
        ['mlflow']
    """
    info = read_tracking(run_dir).get("mlflow")
    if not info or not info.get("run_id"):
        return []
    from mlflow.tracking import MlflowClient

    _quiet_mlflow()
    _log_artifacts_to(MlflowClient(_live_mlflow_uri(info["tracking_uri"])), info["run_id"], paths, artifact_path)
    return ["mlflow"]


def _log_artifacts_to(client, run_id: str, paths: list[str | Path], artifact_path: str | None = None) -> None:
    for p in map(Path, paths):
        if p.is_dir():
            client.log_artifacts(run_id, str(p), artifact_path or p.name)
        elif p.is_file():
            client.log_artifact(run_id, str(p), artifact_path)
        else:
            raise FileNotFoundError(f"artifact not found: {p}")


#: the pyfunc model's code, logged with the model (MLflow "models from code"); found by path, not imported, since
#: the training engine sits below the inference layer
PYFUNC_CODE = Path(__file__).resolve().parents[1] / "inference" / "mlflow_model.py"
#: where the bundle goes as an MLflow model: ``runs:/<run id>/model``
MODEL_NAME = "model"


def medlens_requirement() -> str:
    """The pip requirement that installs the medlens running now, for a logged model's environment.

    The wheel or source folder it was installed from (``medlens @ file:///...``, read from the installation's
    PEP 610 ``direct_url.json``), the source tree it runs from, or else the released version. A bare
    ``medlens==0.1.0`` would send ``mlflow models serve`` to an index that does not serve it.

    Example:
        >>> medlens_requirement()  # an editable install of a clone  # doctest: +SKIP
        'medlens @ file:///home/me/medlens'
    """
    from importlib import metadata

    tree = Path(__file__).resolve().parents[3]  # src/medlens/engine/tracking.py -> the checkout
    try:
        dist = metadata.distribution("medlens")
    except metadata.PackageNotFoundError:  # imported from a source tree without an install
        return f"medlens @ {tree.as_uri()}" if (tree / "pyproject.toml").is_file() else "medlens"
    direct = dist.read_text("direct_url.json")
    url = json.loads(direct).get("url") if direct else None
    if isinstance(url, str) and url.startswith("file:"):
        return f"medlens @ {url}"
    return f"medlens=={dist.version}"


def _example_image(bundle_dir: Path, folder: Path) -> Path:
    """A mid-grey PNG at the bundle's input size: the input example MLflow runs once to infer the signature."""
    from PIL import Image

    size = 224
    try:
        manifest = json.loads((bundle_dir / "manifest.json").read_text())
        pre = manifest.get("preprocessing") or {}
        size = int(pre.get("image_size") or manifest.get("image_size") or size)
    except (OSError, ValueError, TypeError):
        pass
    path = folder / "example.png"
    Image.new("L", (size, size), 128).save(path)
    return path


def log_bundle_model(tracking_uri: str, run_id: str, bundle_dir: str | Path) -> None:
    """Log a bundle to an MLflow run as a pyfunc model named ``model`` (the bundle folder is its artifact).

    ``mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(paths)`` then gives the table of
    ``medlens predict --out`` (see :mod:`medlens.inference.mlflow_model`). The model carries a signature (input:
    one string column of image paths; output: the predictions table's columns, inferred by scoring the input
    example, a grey image at the bundle's size, once), an input example, and a requirement that installs this medlens
    (:func:`medlens_requirement`), so ``mlflow models serve`` can rebuild its environment.

    Example:
        >>> log_bundle_model("sqlite:///runs/mlflow.db", run_id, "runs/pneumoniamnist/bundle")  # doctest: +SKIP
    """
    import tempfile

    import mlflow
    import mlflow.pyfunc

    bundle = Path(bundle_dir).resolve()
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with tempfile.TemporaryDirectory(prefix="medlens-mlflow-") as tmp, \
                mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
            # a list of paths (one unnamed string column): the signature then accepts what predict always took,
            # a list of paths or a table whose path column comes first
            example = [str(_example_image(bundle, Path(tmp)))]
            kw = {"name": MODEL_NAME} if int(mlflow.__version__.split(".")[0]) >= 3 else {"artifact_path": MODEL_NAME}
            mlflow.pyfunc.log_model(
                python_model=str(PYFUNC_CODE), artifacts={"bundle": str(bundle)},
                pip_requirements=[medlens_requirement()], input_example=example, **kw,
            )
    finally:
        mlflow.set_tracking_uri(previous)


def _finish_mlflow(info: dict[str, Any], run_dir: Path, final: dict[str, float], step: int) -> None:
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(info["tracking_uri"])
    run_id = info["run_id"]
    ts = int(time.time() * 1000)
    items = [Metric(key=k, value=v, timestamp=ts, step=step) for k, v in final.items()]
    for i in range(0, len(items), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=items[i : i + 1000])
    _log_artifacts_to(client, run_id, _artifacts(run_dir))
    if (run_dir / "bundle" / "manifest.json").is_file():
        try:
            log_bundle_model(info["tracking_uri"], run_id, run_dir / "bundle")
        except Exception as e:  # the files are logged already; a pyfunc hiccup must not lose the run
            log.warning("MLflow: could not log the bundle as a pyfunc model (%s)", str(e)[:300])
    client.set_terminated(run_id, "FINISHED")


def _finish_wandb(logger, run_dir: Path, final: dict[str, float]) -> None:
    import wandb

    run = logger.experiment
    run.summary.update(final)
    art = wandb.Artifact(f"{run_dir.name}-bundle", type="model")
    if (run_dir / "bundle").is_dir():
        art.add_dir(str(run_dir / "bundle"))
        run.log_artifact(art)
    for p in _artifacts(run_dir):
        if p.is_file():
            run.save(str(p), base_path=str(run_dir), policy="now")
    run.finish()


def finish_tracking(cfg, loggers: list, run_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """Log the final evaluation and the run's artifacts, then close the trackers (global rank 0 only).

    A tracker that fails here (a tracking server gone away) is reported as a warning and in
    ``tracking.json["errors"]``: the bundle and metrics on disk are already complete.

    Returns:
        The content of ``run_dir/tracking.json``.

    Example:
        >>> finish_tracking(cfg, loggers, Path("runs/x"), result.metrics)  # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    final = final_metrics(metrics)
    step = _last_step(run_dir)
    info = read_tracking(run_dir)
    errors: dict[str, str] = {}
    for lg in loggers:
        kind = _backend_of(lg)
        try:
            if kind == "mlflow":
                mi = dict(info.get("mlflow") or _logger_info(lg))
                info["mlflow"] = mi
                live = getattr(lg, "_tracking_uri", None)  # the file's copy has its password redacted
                _finish_mlflow({**mi, "tracking_uri": live or _live_mlflow_uri(mi["tracking_uri"])}, run_dir, final, step)
            elif kind == "wandb":
                _finish_wandb(lg, run_dir, final)
            elif kind == "csv":  # appended by hand: a CSVLogger made in another process would drop the file
                _append_csv_row(Path(lg.log_dir) / "metrics.csv", {"step": step, **final})
            else:
                lg.log_metrics(final, step=step)
                lg.finalize("success")
        except Exception as e:  # tracking must not lose a finished run
            log.warning("tracking %s: could not log the final results (%s)", kind, str(e)[:300])
            errors[kind] = str(e)[:1000]
    if errors:
        info["errors"] = errors
    if loggers:
        _write_tracking(run_dir, info)
    return info
