"""Help text without Python type names: ``medlens train [OPTIONS] CONFIG``, never ``{CONFIG}`` or ``<path>``."""

from __future__ import annotations

import re

import pytest
import typer.main
from typer.testing import CliRunner

from medlens.cli import app

#: what typer would print: a required argument in braces, a type after a name (<path>, <list[Path]>, <int>, ...)
#: (after a space: "OUT/<class>/<file>" in a help sentence is a path pattern, not a type)
TYPE_NAMES = re.compile(r"\{[A-Z_]+(\.\.\.)?\}|(?<= )<(path|int|float|str|text|bool|file|directory|list\[[^\]]*\]|[a-z]+ range)>")


def _command_paths() -> list[list[str]]:
    root = typer.main.get_command(app)
    out: list[list[str]] = []

    def walk(cmd, path: list[str]) -> None:
        out.append(path)
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            if not sub.hidden:
                walk(sub, [*path, name])

    walk(root, [])
    return out


COMMANDS = _command_paths()


def test_every_command_is_walked() -> None:
    names = {" ".join(p) for p in COMMANDS}
    assert {"", "train", "evaluate", "predict", "init", "demo", "serve"} <= names
    assert any(" " in n for n in names)  # the subcommands of the groups (db, split, runs) too


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "medlens")
def test_help_has_no_type_names(path: list[str]) -> None:
    r = CliRunner().invoke(app, [*path, "--help"])
    assert r.exit_code == 0, r.output
    usage = r.output.splitlines()[0]
    assert usage.startswith(("Usage: medlens", "Usage: root")), usage
    bad = TYPE_NAMES.search(r.output)
    assert bad is None, f"medlens {' '.join(path)} --help shows {bad.group(0)!r}:\n{r.output}"


def test_usage_reads_like_click() -> None:
    out = CliRunner().invoke(app, ["predict", "--help"]).output
    assert "Usage: medlens predict [OPTIONS] BUNDLE IMAGE_OR_FOLDER...\n" in out
    out = CliRunner().invoke(app, ["runs", "list", "--help"]).output
    assert "[DIRECTORY]" in out.splitlines()[0]  # optional argument in brackets
    assert "  CONFIG  " in CliRunner().invoke(app, ["train", "--help"]).output  # the argument, no type after it
