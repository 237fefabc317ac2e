"""``medlens db init`` and ``medlens db import``: images and annotations in a SQL database."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medlens.cli.common import command_group, guarded, need

DB_URL_HELP = "Database URL (sqlite:///file.db or postgresql+psycopg://user@host/db); default $MEDLENS_DB_URL."
PW_ENV_HELP = "Environment variable holding the password."
PW_FILE_HELP = "File whose first line is the password."


def db_init(
    url: Annotated[str | None, typer.Option(metavar="URL", help=DB_URL_HELP)] = None,
    password_env: Annotated[str, typer.Option(metavar="VAR", help=PW_ENV_HELP)] = "MEDLENS_DB_PASSWORD",
    password_file: Annotated[Path | None, typer.Option(metavar="FILE", help=PW_FILE_HELP)] = None,
) -> None:
    """Create the medlens tables (existing tables and rows are kept)."""
    need("sql", "sqlalchemy")
    from medlens.data.db import init_db, safe_url

    engine = init_db(url, password_env, password_file)
    typer.echo(f"schema ready: {safe_url(engine.url)}")
    engine.dispose()


def db_import(
    source: Annotated[Path, typer.Argument(metavar="SOURCE", help="A class folder, a .csv, a .jsonl, or a YAML config with a data section.")],
    dataset: Annotated[str, typer.Option(metavar="NAME", help="Dataset name in the database.")],
    label_set: Annotated[str, typer.Option(metavar="NAME", help="Label set name (a new version is made when the labels differ).")],
    version: Annotated[int | None, typer.Option(metavar="N", help="Explicit label set version.")] = None,
    url: Annotated[str | None, typer.Option(metavar="URL", help=DB_URL_HELP)] = None,
    image_root: Annotated[Path | None, typer.Option(metavar="FOLDER", help="Store image paths relative to this folder.")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Replace a dataset of the same name.")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help="Reader option: data.key=value (repeatable).")] = None,
    password_env: Annotated[str, typer.Option(metavar="VAR", help=PW_ENV_HELP)] = "MEDLENS_DB_PASSWORD",
    password_file: Annotated[Path | None, typer.Option(metavar="FILE", help=PW_FILE_HELP)] = None,
) -> None:
    """Load a folder, CSV or JSONL dataset into the database (the schema is created when missing)."""
    need("sql", "sqlalchemy")
    from medlens.data.db import import_dataset

    s = import_dataset(source, url, dataset, label_set, version, overrides=set_ or [], password_env=password_env,
                       password_file=password_file, image_root=image_root, replace=replace)
    typer.echo(f"imported {s.images} images, {s.annotations} annotations into {s.url} "
               f"(dataset {s.dataset!r}, label set {s.label_set!r} v{s.version}: {len(s.labels)} labels)")


def register(app: typer.Typer) -> None:
    group = command_group(app, "db", "Images and annotations in a SQL database (SQLite file or PostgreSQL).")
    group.command("init")(guarded(db_init))
    group.command("import")(guarded(db_import))
