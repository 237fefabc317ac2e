"""``medlens runs list`` and ``medlens runs compare``: training runs side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medlens.cli.common import command_group, guarded, print_json


def runs_list(
    directory: Annotated[Path, typer.Argument(metavar="DIRECTORY", help="Folder holding runs (output.dir).")] = Path("runs"),
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the runs under DIRECTORY with their headline validation and test metrics."""
    from medlens.runs import list_runs, print_tables, runs_table

    runs = list_runs(directory)
    if json_:
        print_json([r.to_dict() for r in runs])
    elif not runs:
        typer.echo(f"no runs under {directory}")
    else:
        print_tables([runs_table(runs, title=f"{len(runs)} runs in {directory}")])


def runs_compare(
    runs: Annotated[list[Path], typer.Argument(metavar="RUN...", help="Two or more run folders (or their bundle folders).")],
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    all_metrics: Annotated[bool, typer.Option("--all-metrics", help="Every scalar metric, not only the headline ones.")] = False,
) -> None:
    """Compare RUNS: key metrics side by side, and the config keys (and environment) that differ."""
    from medlens.runs import compare_runs, comparison_tables, print_tables

    cmp = compare_runs(runs, all_metrics=all_metrics)
    if json_:
        print_json(cmp.to_dict())
    else:
        print_tables(comparison_tables(cmp))


def register(app: typer.Typer) -> None:
    group = command_group(app, "runs", "List and compare training runs.")
    group.command("list")(guarded(runs_list))
    group.command("compare")(guarded(runs_compare))
