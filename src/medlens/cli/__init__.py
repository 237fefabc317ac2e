"""The ``medlens`` command line: one subcommand = one public library function, no logic of its own.

One module per command group, each with a ``register(app)``; :mod:`medlens.cli.common` holds what they share
(logging, one-line errors and exit codes). Heavy libraries (torch, timm, Lightning) are imported inside the
commands so ``medlens --help`` is fast. Help texts are plain click formatting (no type names): every option
carries its own help and metavar. Every command and group takes ``--quiet`` and ``--verbose`` (:mod:`medlens.cli.common`).

Example:
    >>> from typer.testing import CliRunner
    >>> CliRunner().invoke(app, ["--version"]).output.startswith("medlens ")
    True
"""

from __future__ import annotations

from typing import Annotated

import typer

from medlens.cli import data, db, evaluate, predict, pretrain, project, runs, serve, train
from medlens.cli.common import QuietOption, VerboseOption, record_subcommand, set_verbosity
from medlens.cli.helptext import plain_help

app = typer.Typer(
    name="medlens",
    help="Train, evaluate, explain and serve medical image classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        from medlens import __version__

        typer.echo(f"medlens {__version__}")
        raise typer.Exit()


@app.callback()
def _main(ctx: typer.Context, version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
          quiet: QuietOption = False, verbose: VerboseOption = False) -> None:
    """Train, evaluate, explain and serve medical image classifiers."""
    set_verbosity(quiet, verbose, reset=True)  # --quiet/--verbose here hold for the command; each command takes them too
    record_subcommand(ctx, reset=True)


for _group in (train, pretrain, evaluate, predict, project, serve, db, data, runs):
    _group.register(app)
plain_help(app)  # usage and help without typer's "{CONFIG}" and "<path>" (cli/helptext.py)


def main() -> None:
    """Console-script entry point (``medlens``, ``python -m medlens``, ``python -m medlens.cli``)."""
    app()


__all__ = ["app", "main"]
