"""The ``medlens`` command line: one subcommand = one public function, no logic of its own.

Heavy libraries (torch, timm, Lightning) are imported inside the commands so ``medlens --help`` is fast.
User errors (bad config, missing file, unknown label, ...) print one line and exit with code 2; set
``MEDLENS_DEBUG=1`` for the traceback.
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
)


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


def _user_error_types() -> tuple[type[BaseException], ...]:
    from medlens.config import ConfigError

    types: list[type[BaseException]] = [ConfigError, FileNotFoundError, FileExistsError, ValueError, KeyError, PermissionError]
    return tuple(types)


def _fail(e: BaseException) -> None:
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code=2)


def _run(fn, *args, **kwargs):
    """Call a library function, turning user errors into one-line messages."""
    try:
        return fn(*args, **kwargs)
    except _user_error_types() as e:
        if os.environ.get("MEDLENS_DEBUG"):
            raise
        _fail(e)


def _print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="Run config (YAML).")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override: section.key=value (repeatable).")] = None,
    resume: Annotated[Optional[str], typer.Option(help="Continue from a checkpoint (e.g. RUN/checkpoints/last.ckpt).")] = None,
    verbose: bool = False,
) -> None:
    """Train a model from CONFIG and write its bundle."""
    _setup_logging(verbose)
    from medlens.config import load_config
    from medlens.training import train as _train

    cfg = _run(load_config, config, set_ or [])
    result = _run(_train, cfg, resume=resume)
    typer.echo(f"bundle:  {result.bundle_dir}")
    typer.echo(f"metrics: {result.run_dir / 'metrics.json'}")
    for split in ("val", "test"):
        m = result.metrics.get(split)
        if m:
            typer.echo(f"{split}: auroc_macro={_fmt(m.get('auroc_macro'))} accuracy={_fmt(m.get('accuracy'))} f1_macro={_fmt(m.get('f1_macro'))}")


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


@app.command()
def evaluate(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    config: Annotated[Optional[Path], typer.Option(help="Data config (default: the one saved in the bundle).")] = None,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    out: Annotated[Optional[Path], typer.Option(help="Write metrics JSON here.")] = None,
    tta: Annotated[bool, typer.Option(help="Test-time augmentation (horizontal flip).")] = False,
    set_: Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Config override (repeatable).")] = None,
) -> None:
    """Evaluate BUNDLE on a split; prints metrics JSON."""
    _setup_logging()
    from medlens.evaluate import evaluate as _evaluate

    r = _run(_evaluate, bundle, config, split, out, tta, overrides=set_ or [])
    _print_json({"split": split, **r.metrics})


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    images: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, DICOM, ...).")],
    out: Annotated[Optional[Path], typer.Option(help="Write a CSV of probabilities here.")] = None,
    batch_size: int = 64,
    tta: bool = False,
    backend: Annotated[str, typer.Option(help="torch or onnx.")] = "torch",
) -> None:
    """Predict IMAGES with BUNDLE: probabilities and labels per image."""
    _setup_logging()
    from medlens.predict import predict as _predict

    preds = _run(_predict, bundle, [str(p) for p in images], out, batch_size, tta, backend, progress=sys.stderr.isatty() or len(images) > 50)
    bad = [p for p in preds if not p.ok]
    if out is None:
        for p in preds:
            if p.ok:
                probs = " ".join(f"{k}={v:.4f}" for k, v in p.probabilities.items())
                typer.echo(f"{p.source}\t{probs}\tpredicted={'|'.join(p.predicted)}")
    else:
        typer.echo(f"wrote {out} ({len(preds) - len(bad)} predicted, {len(bad)} failed)")
    for p in bad:
        typer.echo(f"could not predict {p.source}: {p.error}", err=True)
    if bad and len(bad) == len(preds):
        raise typer.Exit(code=2)


@app.command()
def demo(
    out_dir: Annotated[str, typer.Option("--out", help="Where runs go.")] = "runs",
    offline: Annotated[bool, typer.Option(help="Never try to download.")] = False,
    epochs: Annotated[Optional[int], typer.Option(help="Override the number of epochs.")] = None,
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
    bundle: Annotated[Path, typer.Argument(help="Bundle folder (or an exported ONNX folder with --backend onnx).")],
    host: Annotated[str, typer.Option(help="Interface to bind; 127.0.0.1 keeps it local.")] = "127.0.0.1",
    port: int = 8000,
    backend: Annotated[str, typer.Option(help="torch or onnx.")] = "torch",
    api_key: Annotated[Optional[str], typer.Option(help="Require this key on /v1 routes (or env MEDLENS_API_KEY).")] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest request body in MiB.")] = 32.0,
    max_pixels: Annotated[int, typer.Option(help="Largest image (width x height) decoded.")] = 50_000_000,
) -> None:
    """Serve BUNDLE: REST API (/v1/predict, /v1/explain, /v1/model, /health) and a web page at /."""
    _setup_logging()
    from medlens.serve.app import serve as _serve

    _run(_serve, bundle, host, port, backend, api_key, max_upload_mb, max_pixels)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
