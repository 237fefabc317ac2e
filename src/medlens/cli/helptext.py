"""Help text a person reads: ``medlens train [OPTIONS] CONFIG``, not ``{CONFIG}`` with ``<path>`` after it.

Typer writes a required argument as ``{NAME}`` in the usage line and adds the Python type (``<path>``,
``<list[Path]>``, ``<int>``) after every argument and every option without a metavar. These command classes print
the plain click form instead: ``NAME``, ``[NAME]`` when optional, ``NAME...`` when repeatable; an option without a
metavar shows the upper-case name of its value (``--port PORT``). :func:`plain_help` puts them on every command of
an app. Parameters are told apart by ``param_type_name``: typer builds them on its own copy of click.

Example:
    >>> from typer.testing import CliRunner
    >>> from medlens.cli import app
    >>> "{CONFIG}" in CliRunner().invoke(app, ["train", "--help"]).output
    False
"""

from __future__ import annotations

import click
import typer
from typer.core import TyperCommand, TyperGroup


def _argument_name(param: click.Parameter) -> str:
    name = param.metavar or (param.name or "").upper()
    return f"{name}..." if param.nargs != 1 and not name.endswith("...") else name


def _usage_pieces(cmd: click.Command, ctx: click.Context) -> list[str]:
    pieces = [cmd.options_metavar] if cmd.options_metavar else []
    for param in cmd.get_params(ctx):
        if param.param_type_name == "argument":
            name = _argument_name(param)
            pieces.append(name if param.required else f"[{name}]")
        else:
            pieces.extend(param.get_usage_pieces(ctx))
    return pieces


def _help_records(cmd: click.Command, ctx: click.Context) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    args, opts = [], []
    for param in cmd.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        if param.param_type_name == "argument":
            args.append((_argument_name(param), record[1]))
        elif param.param_type_name == "option":
            if param.metavar is None and not param.is_flag and not param.count:
                # typer appended "<type>": show the value's name instead (--port PORT)
                value = (param.name or "value").upper()
                head = ", ".join(f"{o} {value}" if i == len(param.opts) - 1 else o for i, o in enumerate(param.opts))
                record = (head, record[1])
            opts.append(record)
    return args, opts


def _format_options(cmd: click.Command, ctx: click.Context, formatter: click.HelpFormatter) -> None:
    args, opts = _help_records(cmd, ctx)
    if args:
        with formatter.section("Arguments"):
            formatter.write_dl(args)
    if opts:
        with formatter.section("Options"):
            formatter.write_dl(opts)


class PlainCommand(TyperCommand):
    """A Typer command whose help uses click's plain argument names (no braces, no type names)."""

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return _usage_pieces(self, ctx)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _format_options(self, ctx, formatter)


class PlainGroup(TyperGroup):
    """A Typer group with the same plain help as :class:`PlainCommand`, its subcommands listed after the options."""

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [*_usage_pieces(self, ctx), self.subcommand_metavar]

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _format_options(self, ctx, formatter)
        self.format_commands(ctx, formatter)


def plain_help(app: typer.Typer) -> typer.Typer:
    """Give every command and group of ``app`` (recursively) the plain help classes; returns ``app``."""
    # a command keeps a class of its own; typer's defaults (None or its own classes) are replaced
    if app.info.cls in (None, TyperGroup):
        app.info.cls = PlainGroup
    for info in app.registered_commands:
        if info.cls in (None, TyperCommand):
            info.cls = PlainCommand
    for group in app.registered_groups:
        if group.cls in (None, TyperGroup):
            group.cls = PlainGroup
        if group.typer_instance is not None:
            plain_help(group.typer_instance)
    return app


__all__ = ["PlainCommand", "PlainGroup", "plain_help"]
