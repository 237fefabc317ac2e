"""MkDocs hooks: the configuration, CLI and API reference pages, generated at build time from the code.

A page holding the line ``<!-- generated: config -->`` (``cli``, ``api``) gets the generated Markdown in its place,
so the reference cannot drift from the pydantic schema and the click commands. ``tests/unit/test_docs.py`` imports
this file to check that every key and every command reaches the built site.
"""

from __future__ import annotations

import inspect
import io
import logging
import re
import tokenize
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

MARKER = re.compile(r"^<!-- generated: (config|cli|api) -->$", re.M)


# ------------------------------------------------------------------------------------------------ config
def _comments(cls: type) -> dict[str, str]:
    """Field name -> the source comment on its line, or the comment lines right above it (``# why, units``)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not (isinstance(klass, type) and issubclass(klass, BaseModel)) or klass is BaseModel:
            continue
        try:
            src = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        lines = src.splitlines()
        trailing: dict[int, str] = {}
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.COMMENT:
                trailing[tok.start[0]] = tok.string.lstrip("#").strip()
        for i, line in enumerate(lines, start=1):
            m = re.match(r"^    (\w+)\s*:", line)
            if not m or line.strip().startswith("#"):
                continue
            above = []
            j = i - 1
            while j >= 1 and lines[j - 1].strip().startswith("#"):
                above.insert(0, trailing.get(j, ""))
                j -= 1
            text = " ".join(x for x in [*above, trailing.get(i, "") if not line.strip().startswith("#") else ""] if x)
            if m.group(1) not in out or text:
                out[m.group(1)] = text
    return out


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is typing.Literal:
        return " \\| ".join(repr(a) if isinstance(a, str) else str(a) for a in typing.get_args(tp))
    if origin is typing.Annotated:
        return _type_name(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple, set):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        k, v = typing.get_args(tp) or (str, Any)
        return f"mapping {_type_name(k)} to {_type_name(v)}"
    if tp is Any:
        return "any"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _default(field: Any) -> str:
    if field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:
            return ""
        return "" if isinstance(value, BaseModel) else f"`{value!r}`"
    if field.default is PydanticUndefined:
        return "required"
    return f"`{field.default!r}`"


def _model_of(tp: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``tp`` (``X``, ``X | None``), if any."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for a in typing.get_args(tp):
        m = _model_of(a)
        if m is not None:
            return m
    return None


def _rows(model: type[BaseModel], prefix: str, skip: set[str] | None = None) -> tuple[list[str], list[tuple[str, type[BaseModel]]]]:
    """Table rows for ``model``'s plain keys, and its nested sections (``prefix.key``, model) to render after."""
    comments = _comments(model)
    rows, nested = [], []
    for name, field in model.model_fields.items():
        if skip and name in skip:
            continue
        sub = _model_of(field.annotation)
        if sub is not None and typing.get_origin(field.annotation) not in (list, dict):
            nested.append((f"{prefix}.{name}", sub))
            continue
        doc = (comments.get(name) or field.description or "").replace("|", "\\|")
        rows.append(f"| `{prefix}.{name}` | {_type_name(field.annotation)} | {_default(field)} | {doc} |")
    return rows, nested


def _section(title: str, model: type[BaseModel], prefix: str, skip: set[str] | None = None, level: int = 3) -> list[str]:
    rows, nested = _rows(model, prefix, skip)
    doc = inspect.getdoc(model) or ""
    out = [f"{'#' * level} {title}", ""]
    if doc and doc != inspect.getdoc(BaseModel):
        out += [doc.split("\n\n")[0].replace("\n", " "), ""]
    if rows:
        out += ["| key | type | default | what it does |", "|---|---|---|---|", *rows, ""]
    for p, sub in nested:
        out += _section(f"`{p}`", sub, p, level=min(level + 1, 6))
    return out


def _data_kinds() -> list[type[BaseModel]]:
    from medlens.config import DataConfig

    return list(typing.get_args(typing.get_args(DataConfig)[0]))


def config_keys() -> list[str]:
    """Every dotted config key the reference lists (core sections, every data kind, every task's options)."""
    from medlens.config import RunConfig

    keys: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            sub = _model_of(field.annotation)
            key = f"{prefix}.{name}" if prefix else name
            if sub is not None and typing.get_origin(field.annotation) not in (list, dict):
                walk(sub, key)
            elif key != "data":
                keys.append(key)

    walk(RunConfig, "")
    for kind in _data_kinds():
        walk(kind, "data")
    for model in _task_options().values():
        walk(model, "task_options")
    return sorted(set(keys))


def _task_options() -> dict[str, type[BaseModel]]:
    from medlens.tasks import get_task, list_kinds

    out: dict[str, type[BaseModel]] = {}
    for kind in list_kinds():
        task = get_task(kind)
        out.setdefault(task.name, task.options_model)
    return out


def config_reference() -> str:
    """The configuration reference as Markdown: one table per section, data kind and task."""
    from medlens.config import RunConfig

    lines = ["## Top level", "", "| key | type | default | what it does |", "|---|---|---|---|"]
    top_rows, sections = _rows(RunConfig, "")
    lines += [r.replace("| `.", "| `", 1) for r in top_rows] + [""]
    for prefix, model in sections:
        p = prefix.lstrip(".")
        if p == "data":
            continue
        lines += _section(f"`{p}`", model, p, level=2)
    kinds = _data_kinds()
    common = set(kinds[0].__mro__[1].model_fields)  # _DataBase: the keys every source shares
    lines += ["## `data`", "", "`data.kind` picks the source; the keys below the first table belong to that kind.", ""]
    lines += _section("Every kind", kinds[0].__mro__[1], "data", level=3)
    for kind in kinds:
        tag = kind.model_fields["kind"].default
        lines += _section(f"`data.kind: {tag}`", kind, "data", skip=common, level=3)
    lines += ["## `task_options`", "", "Validated by the task that `data.task` selects; a key of another task is refused.", ""]
    for name, model in _task_options().items():
        lines += _section(f"task `{name}`", model, "task_options", level=3)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ CLI
def cli_commands() -> list[tuple[str, str]]:
    """(``medlens train``, its ``--help`` text) for the root and every command and subcommand."""
    import typer.main

    from medlens.cli import app

    root = typer.main.get_command(app)
    out: list[tuple[str, str]] = []

    # typer builds on its own copy of click: groups are told by list_commands, contexts made by each command's class
    def walk(cmd: Any, ctx: Any) -> None:
        out.append((ctx.command_path, cmd.get_help(ctx)))
        if hasattr(cmd, "list_commands"):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    walk(sub, sub.context_class(sub, info_name=name, parent=ctx, terminal_width=100, max_content_width=100))

    walk(root, root.context_class(root, info_name="medlens", terminal_width=100, max_content_width=100))
    return out


def cli_reference() -> str:
    """Every command's help text, as ``medlens X --help`` prints it."""
    lines = []
    for path, text in cli_commands():
        level = "#" * min(1 + path.count(" "), 4) + "#"
        lines += [f"{level} `{path}`", "", "```text", text, "```", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ API
def api_reference() -> str:
    """One mkdocstrings block per public name of ``medlens`` (``medlens.__all__``)."""
    import importlib

    import medlens

    lines = []
    exports: dict[str, str] = medlens._EXPORTS  # public name -> module (the package re-exports lazily)
    for name in sorted(n for n in medlens.__all__ if not n.startswith("_")):
        obj = getattr(importlib.import_module(exports[name]), name)
        # the defining module: static analysis cannot follow a re-export done at run time
        target = f"{obj.__module__}.{obj.__qualname__}"
        lines += [f"## `medlens.{name}`", "", f"::: {target}", "    options:", "      show_root_heading: false",
                  "      heading_level: 3", ""]
    return "\n".join(lines)


class _SubscriptRefs(logging.Filter):
    """Drop autorefs' warning for ``metrics["auroc_macro"]`` in a docstring: Markdown reads ``x["a"]`` like a
    reference link, but a quoted target is a dictionary key, never a name to link. Every other warning stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not re.search(r"Could not find cross-reference target '[\"']", record.getMessage())


def on_config(config: Any) -> Any:
    """MkDocs hook: install the filter above on MkDocs' handlers (the strict-mode counter is one of them)."""
    for handler in logging.getLogger("mkdocs").handlers:
        if not any(isinstance(f, _SubscriptRefs) for f in handler.filters):
            handler.addFilter(_SubscriptRefs())
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs hook: replace a ``<!-- generated: ... -->`` line with the generated reference."""
    makers = {"config": config_reference, "cli": cli_reference, "api": api_reference}
    return MARKER.sub(lambda m: makers[m.group(1)](), markdown)
