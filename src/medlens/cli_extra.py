"""More ``medlens`` commands, registered on the main app by :func:`register`: ``split folders`` and the
``train --sweep`` output. Thin like :mod:`medlens.cli`: each command calls one library function and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def setup_logging(verbose: bool = False) -> None:
    """Console logging through rich, library messages only (Lightning's own notes are quietened)."""
    import logging

    from rich.logging import RichHandler

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(show_path=False, rich_tracebacks=False, markup=False)], force=True)
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "torch", "PIL", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_user_call(fn, *args, **kwargs):
    """Call a library function; a user error (bad config, missing file, bad value) becomes one line and exit code 2.

    ``MEDLENS_DEBUG=1`` shows the traceback instead.
    """
    import os

    from medlens.config import ConfigError
    from medlens.runfolder import RunInUseError

    try:
        return fn(*args, **kwargs)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, KeyError, PermissionError, RunInUseError) as e:
        if os.environ.get("MEDLENS_DEBUG"):
            raise
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(code=2) from None


def split_folders_command(
    src: Annotated[Path, typer.Argument(metavar="SRC", help="Class-folder tree: SRC/<class>/<images>.")],
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Output folder: OUT/train|val|test/<class>/ (hard links).")],
    val: Annotated[float, typer.Option(metavar="SHARE", help="Validation share.")] = 0.15,
    test: Annotated[float, typer.Option(metavar="SHARE", help="Test share (0: no test folder).")] = 0.15,
    seed: Annotated[int, typer.Option(metavar="N", help="Split seed (same seed, same split).")] = 0,
    group_regex: Annotated[str | None, typer.Option(metavar="REGEX", help="Regex on the path below SRC whose first group is the patient/study id; a group stays in one split.")] = None,
    clear_existing: Annotated[bool, typer.Option("--clear-existing", help="Replace OUT/train, OUT/val and OUT/test.")] = False,
    link_mode: Annotated[str, typer.Option(metavar="hard|symlink|copy", help="hard (copy where refused), symlink or copy.")] = "hard",
) -> None:
    """Split a class-folder tree into train/val/test folders: stratified, group-aware, deterministic."""
    setup_logging()
    from medlens.data.split_folders import split_folders

    s = run_user_call(split_folders, src, out, val, test, seed, group_regex, clear_existing, link_mode)
    typer.echo(f"{out}: {s.method} split" + (f" over {s.groups} groups" if s.groups else "") + (f", {s.copied} copied" if s.copied else ""))
    for line in s.lines():
        typer.echo(line)


def run_sweep_command(config: Path, overrides: list[str], sweeps: list[str], env_file: Path | None = None) -> None:
    """``medlens train CONFIG --sweep key=v1,v2 ...``: train the grid, print the comparison table (logging set up by train)."""
    from medlens.sweep import format_sweep_table, run_sweep

    res = run_user_call(run_sweep, config, sweeps, overrides, env_file)
    typer.echo(format_sweep_table(res))
    typer.echo(f"sweep table: {res.csv_path}")


def register(app: typer.Typer) -> None:
    """Add the extra commands to the ``medlens`` app (``split folders`` on the existing ``split`` group)."""
    group = next((g.typer_instance for g in app.registered_groups if g.name == "split"), None)
    if group is None:
        group = typer.Typer(help="Dataset splits.", no_args_is_help=True)
        app.add_typer(group, name="split")
    group.command("folders")(split_folders_command)
