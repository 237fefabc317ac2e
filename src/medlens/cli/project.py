"""``medlens init`` (example configs for a new project) and ``medlens demo`` (a small model end to end)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medlens.cli.common import fmt, guarded, setup_logging


def init(
    directory: Annotated[Path, typer.Argument(metavar="DIRECTORY", help="Folder for the example configs (created when missing).")],
    data_dir: Annotated[Path, typer.Option(metavar="FOLDER", help="Folder holding the data sets (e.g. FOLDER/medmnist_pneumoniamnist/pneumoniamnist.npz).")] = Path("data"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace configs that exist already.")] = False,
) -> None:
    """Copy the example configs into DIRECTORY, their data paths pointing into --data-dir."""
    from medlens.examples import init_configs

    written = init_configs(directory, data_dir, overwrite)
    for p in written:
        typer.echo(f"wrote {p}")
    first = next((p for p in written if p.stem == "pneumoniamnist"), written[0] if written else directory)
    typer.echo(f"next: medlens train {first}")


def demo(
    out_dir: Annotated[str, typer.Option("--out", metavar="FOLDER", help="Where runs go.")] = "runs",
    offline: Annotated[bool, typer.Option("--offline", help="Never try to download.")] = False,
    epochs: Annotated[int | None, typer.Option(metavar="N", help="Override the number of epochs.")] = None,
) -> None:
    """Train and evaluate a small PneumoniaMNIST model end to end (no network needed)."""
    setup_logging()
    from medlens.demo import run_demo

    info = run_demo(out_dir, offline, epochs)
    typer.echo(f"data:    {info['data']}")
    typer.echo(f"bundle:  {info['bundle']}")
    typer.echo(f"metrics: {info['metrics']}")
    t = info["test"]
    typer.echo(f"test AUROC {fmt(t.get('auroc_macro'))}, accuracy {fmt(t.get('accuracy'))} ({info['wall_time_s']} s)")


def register(app: typer.Typer) -> None:
    app.command("init")(guarded(init))
    app.command("demo")(guarded(demo))
