"""``medlens init`` (example configs for a new project) and ``medlens demo`` (a small model end to end)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medlens.cli.common import fmt, guarded, note, quiet


def init(
    directory: Annotated[Path, typer.Argument(metavar="DIRECTORY", help="Folder for the example configs (created when missing).")],
    data_dir: Annotated[Path | None, typer.Option(metavar="FOLDER", help="Write this data folder into the configs (default: keep DATA_DIR/, read from $MEDLENS_DATA_DIR or ~/.cache/medlens/data).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace configs that exist already.")] = False,
) -> None:
    """Copy every example config and a few sample images into DIRECTORY; say where each data set comes from."""
    from medlens.examples import init_configs, init_guidance

    written = init_configs(directory, data_dir, overwrite)
    for p in written:
        typer.echo(f"wrote {p}")
    for line in init_guidance(directory, data_dir):  # guidance, not results: stderr
        note(line)


def demo(
    out_dir: Annotated[str, typer.Option("--out", metavar="FOLDER", help="Where runs go.")] = "runs",
    offline: Annotated[bool, typer.Option("--offline", help="Never try to download.")] = False,
    epochs: Annotated[int | None, typer.Option(metavar="N", help="Override the number of epochs.")] = None,
) -> None:
    """Train and evaluate a small PneumoniaMNIST model end to end (no network needed)."""
    from medlens.demo import demo_next_steps, run_demo

    info = run_demo(out_dir, offline, epochs, progress_bar=not quiet())
    typer.echo(f"data:    {info['data']}")
    typer.echo(f"bundle:  {info['bundle']}")
    typer.echo(f"metrics: {info['metrics']}")
    t = info["test"]
    typer.echo(f"test AUROC {fmt(t.get('auroc_macro'))}, accuracy {fmt(t.get('accuracy'))} ({info['wall_time_s']} s)")
    for line in demo_next_steps(info["bundle"]):  # guidance, not results: stderr
        note(line)


def register(app: typer.Typer) -> None:
    app.command("init")(guarded(init))
    app.command("demo")(guarded(demo))
