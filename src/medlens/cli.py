"""The ``medlens`` command line: one subcommand = one public function, no logic of its own.

Heavy libraries (torch, timm, Lightning) are imported inside the commands so ``medlens --help`` is fast.
User errors (bad config, missing file, unknown label, ...) print one line and exit with code 2; set
``MEDLENS_DEBUG=1`` (or ``--verbose`` where a command has it) for the traceback. A missing optional dependency
names the extra to install (``medlens serve needs the 'serve' extra: pip install 'medlens[serve]'``).
Help texts are plain click formatting (no type names): every option carries its own help and metavar.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="medlens",
    help="Train, evaluate, explain and serve medical image classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

#: file extensions ``medlens predict FOLDER`` picks up (recursively)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm")


def _version(value: bool) -> None:
    if value:
        from medlens import __version__

        typer.echo(f"medlens {__version__}")
        raise typer.Exit()


@app.callback()
def _main(ctx: typer.Context, version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False) -> None:
    """Train, evaluate, explain and serve medical image classifiers."""
    _record_subcommand(ctx, reset=True)


def _setup_logging(verbose: bool = False) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, rich_tracebacks=False, markup=False)],
        force=True,
    )
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "torch", "PIL", "matplotlib", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:  # Lightning's internal deprecation/perf notes are not actionable for a user of the CLI
        import warnings

        warnings.filterwarnings("ignore", module=r"(lightning|pytorch_lightning)(\.|$)")


#: the subcommand being run (``["db", "init"]``), recorded by the group callbacks for messages
_INVOKED: list[str] = []


def _command_name() -> str:
    """``medlens serve``, ``medlens db import``: the command being run, for messages."""
    return " ".join(["medlens", *_INVOKED])


def _record_subcommand(ctx: typer.Context, reset: bool = False) -> None:
    if reset:
        _INVOKED.clear()
    if ctx.invoked_subcommand:
        _INVOKED.append(ctx.invoked_subcommand)


def _need(extra: str, *modules: str) -> None:
    """Stop with one line naming the extra when one of ``modules`` is not installed."""
    from medlens.extras import MissingExtraError, require

    try:
        require(extra, *modules, what=_command_name())
    except MissingExtraError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(code=2) from None


def _user_error_types() -> tuple[type[BaseException], ...]:
    from medlens.config import ConfigError
    from medlens.runfolder import RunInUseError

    types: list[type[BaseException]] = [ConfigError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, ValueError, KeyError, PermissionError, RunInUseError]
    return tuple(types)


def _fail(e: BaseException) -> None:
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code=2)


def _run(fn, *args, **kwargs):
    """Call a library function, turning user errors and missing optional packages into one-line messages."""
    from medlens.extras import MissingExtraError, extra_for_module

    try:
        return fn(*args, **kwargs)
    except MissingExtraError as e:
        if os.environ.get("MEDLENS_DEBUG"):
            raise
        typer.echo(str(e), err=True)
        raise typer.Exit(code=2) from None
    except ModuleNotFoundError as e:
        if os.environ.get("MEDLENS_DEBUG"):
            raise
        extra = extra_for_module(e.name)
        if extra is None:
            typer.echo(f"error: the Python package {e.name!r} is not installed (pip install {e.name})", err=True)
        else:
            typer.echo(f"{_command_name()} needs the '{extra}' extra: pip install 'medlens[{extra}]'", err=True)
        raise typer.Exit(code=2) from None
    except _user_error_types() as e:
        if os.environ.get("MEDLENS_DEBUG"):
            raise
        _fail(e)


def _print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


@app.command()
def train(
    config: Annotated[Path, typer.Argument(metavar="CONFIG", help="Run config (YAML).")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override: section.key=value (repeatable).")] = None,
    resume: Annotated[Optional[str], typer.Option(metavar="CHECKPOINT", help="Continue from a checkpoint (e.g. RUN/checkpoints/last.ckpt).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Debug logging, and tracebacks for errors.")] = False,
    sweep: Annotated[Optional[list[str]], typer.Option(metavar="KEY=V1,V2", help="Grid sweep: section.key=v1,v2 (repeatable); one run each, then a table.")] = None,
    env_file: Annotated[Optional[Path], typer.Option(metavar="FILE", help="A .env file with MEDLENS__SECTION__KEY=value lines (default ./.env).")] = None,
) -> None:
    """Train a model from CONFIG and write its bundle; ends with the headline metric, its 95% CI and n."""
    _setup_logging(verbose)
    if verbose:
        os.environ["MEDLENS_DEBUG"] = "1"
    from medlens.config import load_config
    from medlens.training import train as _train

    if sweep:
        from medlens.cli_extra import run_sweep_command

        return run_sweep_command(config, set_ or [], sweep, env_file)
    cfg = _run(load_config, config, set_ or [], env_file)
    result = _run(_train, cfg, resume=resume)
    if not result.metrics:  # a DDP process other than rank 0: rank 0 evaluates and reports
        return
    typer.echo(f"bundle:  {result.bundle_dir}")
    typer.echo(f"metrics: {result.run_dir / 'metrics.json'}")
    from medlens.console import headline
    from medlens.targets import format_target_checks

    for split in ("val", "test"):
        m = result.metrics.get(split)
        if isinstance(m, dict) and m:
            typer.echo(headline(m, split))
    final = result.metrics.get("test") or result.metrics.get("val") or {}
    for line in format_target_checks(final, cfg.targets) if cfg.targets else []:
        typer.echo(line)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


@app.command()
def evaluate(
    bundle: Annotated[Path, typer.Argument(metavar="BUNDLE", help="Bundle folder.")],
    config: Annotated[Optional[Path], typer.Option(metavar="FILE", help="Data config (default: the one saved in the bundle).")] = None,
    split: Annotated[str, typer.Option(metavar="SPLIT", help="train, val or test.")] = "test",
    out: Annotated[Optional[Path], typer.Option(metavar="FILE", help="Write metrics JSON here.")] = None,
    tta: Annotated[str, typer.Option(metavar="PRESET", help="Test-time augmentation: none, hflip, flips or d4.")] = "none",
    set_: Annotated[Optional[list[str]], typer.Option("--set", "-s", metavar="KEY=VALUE", help="Config override (repeatable).")] = None,
    calibrated: Annotated[bool, typer.Option("--calibrated/--uncalibrated", help="Apply the bundle's temperature scaling.")] = True,
    record: Annotated[bool, typer.Option("--record/--no-record", help="Store the result in the bundle manifest.")] = True,
    threshold: Annotated[Optional[float], typer.Option(metavar="X", help="Decide at this threshold instead of the bundle's.")] = None,
    thresholds_from: Annotated[Optional[str], typer.Option(metavar="val|bundle", help="Where the decision thresholds come from: the bundle (default) or refitted on the val split.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print only the metrics JSON on stdout (logs go to stderr).")] = False,
) -> None:
    """Evaluate BUNDLE on a split: a short table (headline with 95% CI and n, per label, targets), or --json."""
    _setup_logging()
    from medlens.console import metrics_text
    from medlens.evaluation import evaluate as _evaluate

    extra = {} if threshold is None else {"threshold": threshold}
    if thresholds_from is not None:
        extra["thresholds_from"] = thresholds_from
    r = _run(_evaluate, bundle, config, split, out, tta if tta != "none" else False, overrides=set_ or [], calibrated=calibrated, record=record, **extra)
    if json_:
        _print_json({"split": split, **r.metrics})
    else:
        typer.echo(metrics_text(r.metrics, split))


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(metavar="BUNDLE", help="Bundle folder.")],
    images: Annotated[list[Path], typer.Argument(metavar="IMAGE_OR_FOLDER...", help="Image files (PNG, JPEG, TIFF, BMP, DICOM) or folders (searched recursively for those extensions).")],
    out: Annotated[Optional[Path], typer.Option(metavar="FILE", help="Write a CSV here: per image the probabilities, per finding threshold and decision, errors.")] = None,
    batch_size: Annotated[int, typer.Option(metavar="N", help="Images per forward pass.")] = 64,
    tta: Annotated[str, typer.Option(metavar="PRESET", help="Test-time augmentation: none, hflip, flips or d4.")] = "none",
    backend: Annotated[str, typer.Option(metavar="torch|onnx", help="Runtime: torch, or onnx (needs the 'onnx' extra and an exported model).")] = "torch",
    calibrated: Annotated[bool, typer.Option("--calibrated/--uncalibrated", help="Apply the bundle's temperature scaling.")] = True,
    metadata: Annotated[Optional[str], typer.Option(metavar="JSON_OR_FILE", help="Fusion models: patient metadata as a JSON object (every image), a JSON list (one per image) or a .json/.csv file; missing fields allowed.")] = None,
    report: Annotated[Optional[Path], typer.Option(metavar="FOLDER", help="Also write one HTML report per image (image, overlay, findings, model card) into this folder.")] = None,
    report_method: Annotated[Optional[str], typer.Option(metavar="METHOD", help="Explanation method shown in the reports (default: the model's first, e.g. gradcam or error_map).")] = None,
    keep_going: Annotated[bool, typer.Option("--keep-going", help="Exit 0 even when some images could not be read (they are still listed).")] = False,
) -> None:
    """Predict IMAGES with BUNDLE: per finding the value, its threshold and the decision."""
    _setup_logging()
    from medlens.bundle import read_manifest
    from medlens.data.metadata import metadata_rows_for
    from medlens.inference import predict as _predict
    from medlens.inference.table import plain_error
    from medlens.tasks import task_of

    if backend == "onnx":
        _need("onnx", "onnxruntime")
    if out is not None and out.is_dir():
        _fail(ValueError(f"--out {out}: is a directory; give a file name for the CSV, e.g. {out / 'predictions.csv'}"))
    tta = tta if tta != "none" else False
    paths = _run(_image_paths, images)
    meta = _run(metadata_rows_for, metadata, paths) if metadata else None
    progress = sys.stderr.isatty() or len(paths) > 50
    if report is not None:
        from medlens.clinical_report import predict_with_reports

        preds = _run(predict_with_reports, bundle, paths, report, out, report_method, meta, progress, backend=backend, batch_size=batch_size, tta=tta, calibrated=calibrated)
    else:
        preds = _run(_predict, bundle, paths, out, batch_size, tta, backend, metadata=meta, progress=progress, calibrated=calibrated)
    manifest = _run(read_manifest, bundle)
    task = task_of(manifest)
    bad = [p for p in preds if not p.ok]
    if out is None:
        for p in preds:
            if p.ok:
                typer.echo(f"{p.source}\t{task.summary_line(p, manifest)}")
    else:
        typer.echo(f"wrote {out} ({len(preds) - len(bad)} predicted, {len(bad)} failed)")
    if report is not None:
        typer.echo(f"reports: {report / 'index.html'}")
    for p in bad:
        typer.echo(f"could not predict {p.source}: {plain_error(p.source, p.error)}", err=True)
    if bad and (len(bad) == len(preds) or not keep_going):
        raise typer.Exit(code=2)


def _image_paths(items: list[Path]) -> list[str]:
    """Files as given; folders expanded (recursively, sorted) to the images with a known extension."""
    paths: list[str] = []
    for item in items:
        if item.is_dir():
            found = sorted(str(f) for f in item.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {item}")
            paths += found
        else:
            paths.append(str(item))
    return paths


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(metavar="DIRECTORY", help="Folder for the example configs (created when missing).")],
    data_dir: Annotated[Path, typer.Option(metavar="FOLDER", help="Folder holding the data sets (e.g. FOLDER/medmnist_pneumoniamnist/pneumoniamnist.npz).")] = Path("data"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace configs that exist already.")] = False,
) -> None:
    """Copy the example configs into DIRECTORY, their data paths pointing into --data-dir."""
    from medlens.examples import init_configs

    written = _run(init_configs, directory, data_dir, overwrite)
    for p in written:
        typer.echo(f"wrote {p}")
    first = next((p for p in written if p.stem == "pneumoniamnist"), written[0] if written else directory)
    typer.echo(f"next: medlens train {first}")


@app.command()
def demo(
    out_dir: Annotated[str, typer.Option("--out", metavar="FOLDER", help="Where runs go.")] = "runs",
    offline: Annotated[bool, typer.Option("--offline", help="Never try to download.")] = False,
    epochs: Annotated[Optional[int], typer.Option(metavar="N", help="Override the number of epochs.")] = None,
) -> None:
    """Train and evaluate a small PneumoniaMNIST model end to end (no network needed)."""
    _setup_logging()
    from medlens.demo import run_demo

    info = _run(run_demo, out_dir, offline, epochs)
    typer.echo(f"data:    {info['data']}")
    typer.echo(f"bundle:  {info['bundle']}")
    typer.echo(f"metrics: {info['metrics']}")
    t = info["test"]
    typer.echo(f"test AUROC {_fmt(t.get('auroc_macro'))}, accuracy {_fmt(t.get('accuracy'))} ({info['wall_time_s']} s)")


@app.command()
def serve(
    bundle: Annotated[Path, typer.Argument(metavar="BUNDLE", help="Bundle folder (or an exported ONNX folder with --backend onnx).")],
    host: Annotated[str, typer.Option(metavar="ADDRESS", help="Interface to bind; 127.0.0.1 keeps it local.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="PORT", help="TCP port.")] = 8000,
    backend: Annotated[str, typer.Option(metavar="torch|onnx", help="Runtime: torch, or onnx (needs the 'onnx' extra).")] = "torch",
    api_key: Annotated[Optional[str], typer.Option(metavar="KEY", help="Require this key on /v1 routes (or env MEDLENS_API_KEY).")] = None,
    api_key_file: Annotated[Optional[Path], typer.Option(metavar="FILE", help="Read the API key from this file's first line (not visible in ps).")] = None,
    max_upload_mb: Annotated[float, typer.Option(metavar="MIB", help="Largest request body in MiB.")] = 32.0,
    max_pixels: Annotated[int, typer.Option(metavar="PIXELS", help="Largest image (width x height) decoded.")] = 50_000_000,
    tta: Annotated[str, typer.Option(metavar="PRESET", help="Test-time augmentation for every prediction: none, hflip, flips or d4.")] = "none",
) -> None:
    """Serve BUNDLE: REST API (/v1/predict, /v1/explain, /v1/model, /health) and a web page at /."""
    _setup_logging()
    _need("serve", "fastapi", "uvicorn")
    if backend == "onnx":
        _need("onnx", "onnxruntime")
    from medlens.serve.app import serve as _serve

    _run(_serve, bundle, host, port, backend, api_key, max_upload_mb, max_pixels, api_key_file=api_key_file, tta=tta)


db_app = typer.Typer(help="Images and annotations in a SQL database (SQLite file or PostgreSQL).", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(db_app, name="db")


@db_app.callback()
def _db_app_callback(ctx: typer.Context) -> None:
    _record_subcommand(ctx)

_DB_URL_HELP = "Database URL (sqlite:///file.db or postgresql+psycopg://user@host/db); default $MEDLENS_DB_URL."
_PW_ENV_HELP = "Environment variable holding the password."
_PW_FILE_HELP = "File whose first line is the password."


@db_app.command("init")
def db_init(
    url: Annotated[Optional[str], typer.Option(metavar="URL", help=_DB_URL_HELP)] = None,
    password_env: Annotated[str, typer.Option(metavar="VAR", help=_PW_ENV_HELP)] = "MEDLENS_DB_PASSWORD",
    password_file: Annotated[Optional[Path], typer.Option(metavar="FILE", help=_PW_FILE_HELP)] = None,
) -> None:
    """Create the medlens tables (existing tables and rows are kept)."""
    _setup_logging()
    _need("sql", "sqlalchemy")
    from medlens.data.db import init_db, safe_url

    engine = _run(init_db, url, password_env, password_file)
    typer.echo(f"schema ready: {safe_url(engine.url)}")
    engine.dispose()


@db_app.command("import")
def db_import(
    source: Annotated[Path, typer.Argument(metavar="SOURCE", help="A class folder, a .csv, a .jsonl, or a YAML config with a data section.")],
    dataset: Annotated[str, typer.Option(metavar="NAME", help="Dataset name in the database.")],
    label_set: Annotated[str, typer.Option(metavar="NAME", help="Label set name (a new version is made when the labels differ).")],
    version: Annotated[Optional[int], typer.Option(metavar="N", help="Explicit label set version.")] = None,
    url: Annotated[Optional[str], typer.Option(metavar="URL", help=_DB_URL_HELP)] = None,
    image_root: Annotated[Optional[Path], typer.Option(metavar="FOLDER", help="Store image paths relative to this folder.")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Replace a dataset of the same name.")] = False,
    set_: Annotated[Optional[list[str]], typer.Option("--set", "-s", metavar="KEY=VALUE", help="Reader option: data.key=value (repeatable).")] = None,
    password_env: Annotated[str, typer.Option(metavar="VAR", help=_PW_ENV_HELP)] = "MEDLENS_DB_PASSWORD",
    password_file: Annotated[Optional[Path], typer.Option(metavar="FILE", help=_PW_FILE_HELP)] = None,
) -> None:
    """Load a folder, CSV or JSONL dataset into the database (the schema is created when missing)."""
    _setup_logging()
    _need("sql", "sqlalchemy")
    from medlens.data.db import import_dataset

    s = _run(import_dataset, source, url, dataset, label_set, version, overrides=set_ or [], password_env=password_env,
             password_file=password_file, image_root=image_root, replace=replace)
    typer.echo(f"imported {s.images} images, {s.annotations} annotations into {s.url} "
               f"(dataset {s.dataset!r}, label set {s.label_set!r} v{s.version}: {len(s.labels)} labels)")


@app.command()
def download(
    csv_file: Annotated[Path, typer.Argument(metavar="CSV", help="Rows of url,class (header optional).")],
    out: Annotated[Path, typer.Option("--out", metavar="FOLDER", help="Output folder: OUT/<class>/<file>.")],
    workers: Annotated[int, typer.Option(metavar="N", help="Concurrent downloads.")] = 8,
    timeout: Annotated[float, typer.Option(metavar="SECONDS", help="Seconds per attempt.")] = 30.0,
    retries: Annotated[int, typer.Option(metavar="N", help="Retries per file.")] = 3,
    source: Annotated[Optional[str], typer.Option(metavar="NAME", help="Source name: files kept under OUT_sources/NAME/, merged into OUT/<class>/ as NAME__file.")] = None,
    link_mode: Annotated[str, typer.Option(metavar="hard|symlink|copy", help="hard (copy where refused), symlink or copy.")] = "hard",
    split_after_download: Annotated[Optional[float], typer.Option(metavar="SHARE", help="Train share, e.g. 0.85: write a stratified OUT_split/train|val/<class>/ tree.")] = None,
) -> None:
    """Download images listed in CSV into a class-folder tree (resumable; failures listed)."""
    _setup_logging()
    from medlens.data.download import SUMMARY
    from medlens.data.download import download as _download

    s = _run(_download, csv_file, out, workers, timeout, retries, source=source, link_mode=link_mode,
             split_after_download=split_after_download, progress=sys.stderr.isatty())
    typer.echo(f"{out}: {s.downloaded} downloaded, {s.kept} already present, {s.linked} linked into "
               f"{len(s.classes)} class folders, {len(s.failed)} failed (details in {s.summary_path or out / SUMMARY})")
    for line in s.class_lines():
        typer.echo(f"  {line}")
    for f in s.failed[:20]:
        typer.echo(f"  line {f.line}: {f.url}: {f.reason}", err=True)
    if len(s.failed) > 20:
        typer.echo(f"  ... and {len(s.failed) - 20} more", err=True)
    if s.failed and not s.linked:
        raise typer.Exit(code=1)


split_app = typer.Typer(help="Dataset splits.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(split_app, name="split")


@split_app.callback()
def _split_app_callback(ctx: typer.Context) -> None:
    _record_subcommand(ctx)


@split_app.command("audit")
def split_audit(
    config: Annotated[Path, typer.Argument(metavar="CONFIG", help="Run config (YAML).")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override: section.key=value (repeatable).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", metavar="FILE", help="Also write the report as JSON here.")] = None,
) -> None:
    """List every patient/exam group that appears in more than one split (exit code 1 when any does)."""
    _setup_logging()
    from medlens.config import load_config
    from medlens.data.audit import audit_config

    cfg = _run(load_config, config, set_ or [])
    report = _run(audit_config, cfg)
    typer.echo(report.to_text())
    if json_out is not None:
        json_out.write_text(json.dumps(report.as_dict(), indent=2))
    if not report.ok:
        raise typer.Exit(code=1)


runs_app = typer.Typer(help="List and compare training runs.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(runs_app, name="runs")


@runs_app.callback()
def _runs_app_callback(ctx: typer.Context) -> None:
    _record_subcommand(ctx)


@runs_app.command("list")
def runs_list(
    directory: Annotated[Path, typer.Argument(metavar="DIRECTORY", help="Folder holding runs (output.dir).")] = Path("runs"),
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the runs under DIRECTORY with their headline validation and test metrics."""
    from medlens.runs import list_runs, print_tables, runs_table

    runs = _run(list_runs, directory)
    if json_:
        _print_json([r.to_dict() for r in runs])
    elif not runs:
        typer.echo(f"no runs under {directory}")
    else:
        print_tables([runs_table(runs, title=f"{len(runs)} runs in {directory}")])


@runs_app.command("compare")
def runs_compare(
    runs: Annotated[list[Path], typer.Argument(metavar="RUN...", help="Two or more run folders (or their bundle folders).")],
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    all_metrics: Annotated[bool, typer.Option("--all-metrics", help="Every scalar metric, not only the headline ones.")] = False,
) -> None:
    """Compare RUNS: key metrics side by side, and the config keys (and environment) that differ."""
    from medlens.runs import compare_runs, comparison_tables, print_tables

    cmp = _run(compare_runs, runs, all_metrics=all_metrics)
    if json_:
        _print_json(cmp.to_dict())
    else:
        print_tables(comparison_tables(cmp))


@app.command()
def report(
    source: Annotated[Path, typer.Argument(metavar="RUN_OR_BUNDLE", help="Run folder (with bundle/) or bundle folder.")],
    out: Annotated[Optional[Path], typer.Option(metavar="FOLDER", help="Output folder (default: RUN/report).")] = None,
    split: Annotated[str, typer.Option(metavar="SPLIT", help="Split to report: test (default), val or train.")] = "test",
    config: Annotated[Optional[Path], typer.Option(metavar="FILE", help="Data config (default: the one saved in the bundle).")] = None,
    n_boot: Annotated[int, typer.Option(metavar="N", help="Bootstrap replicates for confidence intervals.")] = 1000,
    seed: Annotated[int, typer.Option(metavar="N", help="Bootstrap seed.")] = 0,
    calibrated: Annotated[bool, typer.Option("--calibrated/--uncalibrated", help="Apply the bundle's temperature scaling.")] = True,
    sensitivity: Annotated[float, typer.Option(metavar="X", help="Required sensitivity for the threshold sweep.")] = 0.9,
    set_: Annotated[Optional[list[str]], typer.Option("--set", "-s", metavar="KEY=VALUE", help="Config override (repeatable).")] = None,
) -> None:
    """Write an HTML evaluation report (metrics with CIs, thresholds, calibration, plots) and metrics.json."""
    _setup_logging()
    from medlens.report import build_report

    r = _run(build_report, source, out, split, config, n_boot=n_boot, seed=seed, calibrated=calibrated,
             required_sensitivity=sensitivity, overrides=set_ or [])
    h = r.metrics["ci"]["headline"].get("auroc_macro") or {}
    typer.echo(f"report:  {r.html}")
    typer.echo(f"metrics: {r.metrics_json}")
    typer.echo(f"{r.metrics['split']}: auroc_macro={_fmt(h.get('value'))} (95% CI {_fmt(h.get('low'))}-{_fmt(h.get('high'))})")
    for t in r.metrics["targets"]:
        typer.echo(f"target {t['metric']} {t['direction']} {t['target']}: {'n/a' if t['met'] is None else ('met' if t['met'] else 'NOT met')}")


@app.command()
def cv(
    config: Annotated[Path, typer.Argument(metavar="CONFIG", help="Run config (YAML).")],
    folds: Annotated[Optional[int], typer.Option(metavar="K", help="Number of folds (default: data.split.folds).")] = None,
    out: Annotated[Optional[Path], typer.Option(metavar="FOLDER", help="Output folder (default: output.dir/name).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override: section.key=value (repeatable).")] = None,
    ensemble: Annotated[bool, typer.Option("--ensemble", help="Also save the folds' models as one bundle (mean of their probabilities): FOLDER/ensemble.")] = False,
) -> None:
    """Group-aware stratified k-fold cross-validation of CONFIG: one model per fold, mean +- std report."""
    _setup_logging()
    from medlens.config import load_config
    from medlens.cv import cross_validate

    cfg = _run(load_config, config, set_ or [])
    r = _run(cross_validate, cfg, folds, out, ensemble=ensemble)
    typer.echo(f"report:  {r.report}")
    typer.echo(f"metrics: {r.json_path}")
    if r.extra.get("ensemble"):
        typer.echo(f"ensemble bundle: {r.extra['ensemble']}")
    for m in ("auroc_macro", "f1_macro", "accuracy"):
        s = r.summary.get(m)
        if s and s["mean"] is not None:
            typer.echo(f"{m}: {s['mean']:.4f} +- {s['std']:.4f} over {s['n_folds']} folds")


@app.command()
def explain(
    bundle: Annotated[Path, typer.Argument(metavar="BUNDLE", help="Bundle folder.")],
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="Image file (PNG, JPEG, DICOM, ...).")],
    out: Annotated[Path, typer.Option("--out", metavar="FOLDER", help="Folder for the overlay PNGs, heatmaps (.npy) and a JSON summary.")],
    label: Annotated[Optional[list[str]], typer.Option(metavar="LABEL", help="Label to explain (repeatable); default: the positive/predicted labels.")] = None,
    method: Annotated[Optional[str], typer.Option(metavar="METHOD", help="gradcam, gradcam++, eigencam, layercam, hirescam, xgradcam (anomaly models: error_map); default: the model's first.")] = None,
    target_layer: Annotated[Optional[str], typer.Option(metavar="MODULE", help="Module to explain, e.g. backbone.layer3 (default: last conv stage).")] = None,
    metadata: Annotated[Optional[str], typer.Option(metavar="JSON", help="Fusion models: patient metadata as a JSON object.")] = None,
) -> None:
    """Explain IMAGE with BUNDLE: one heatmap overlay per label."""
    _setup_logging()
    from medlens.interpret import explain_to_dir

    exps = _run(explain_to_dir, bundle, image, out, label, method, target_layer, metadata)
    for e in exps:
        typer.echo(f"{e.label}\tvalue={e.probability:.4g}\t{e.method}\t{e.target_layer or '-'}")
    typer.echo(f"wrote {len(exps)} overlay(s) to {out}")


@app.command()
def export(
    bundle: Annotated[Path, typer.Argument(metavar="BUNDLE", help="Bundle folder.")],
    format: Annotated[str, typer.Option("--format", metavar="FORMAT", help="Export format: onnx.")] = "onnx",
    out: Annotated[Optional[Path], typer.Option("--out", metavar="FOLDER", help="Output folder (default: inside the bundle).")] = None,
    opset: Annotated[int, typer.Option(metavar="N", help="ONNX opset version.")] = 17,
) -> None:
    """Export BUNDLE (ONNX with a dynamic batch axis, manifest beside it)."""
    _setup_logging()
    _need("onnx", "onnx", "onnxruntime")
    from medlens.export import export as _export

    path = _run(_export, bundle, format, out, opset)
    typer.echo(f"exported {path}")


from medlens.cli_extra import register  # noqa: E402 -- more commands (split folders), added after the groups above

register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()

from medlens.cli_pretrain import pretrain_command  # noqa: E402 - a command of its own module, registered here

app.command("pretrain")(pretrain_command)
