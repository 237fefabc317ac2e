"""``medlens split audit``, ``medlens split folders`` and ``medlens download``: preparing data sets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from medlens.cli.common import EXIT_FAILED, command_group, fail, guarded, show_progress


def split_audit(
    config: Annotated[Path, typer.Argument(metavar="CONFIG", help="Run config (YAML).")],
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override: section.key=value (repeatable).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", metavar="FILE", help="Also write the report as JSON here.")] = None,
    duplicates: Annotated[bool, typer.Option("--duplicates/--no-duplicates", help="Also look for exact and near-duplicate images (reads every image).")] = True,
    near_bits: Annotated[int, typer.Option("--near-bits", metavar="BITS", min=-1, max=255,
                                           help="Near-duplicate threshold: Hamming distance of the 255-bit perceptual hashes (default 24: re-encoded, "
                                                "resized or brightened copies; distinct chest X-rays are 40+ apart; -1: exact duplicates only).")] = 24,
) -> None:
    """List every patient/exam group in more than one split, and duplicated images (exit code 1 when any crosses splits)."""
    from medlens.config import load_config
    from medlens.data.audit import audit_config

    report = audit_config(load_config(config, set_ or []), duplicates=duplicates, near_bits=near_bits)
    typer.echo(report.to_text())
    if json_out is not None:
        json_out.write_text(json.dumps(report.as_dict(), indent=2))
    if not report.ok:
        raise typer.Exit(code=1)


def split_folders(
    src: Annotated[Path, typer.Argument(metavar="SRC", help="Class-folder tree: SRC/<class>/<images>.")],
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Output folder: OUT/train|val|test/<class>/ (hard links).")],
    val: Annotated[float, typer.Option(metavar="SHARE", help="Validation share.")] = 0.15,
    test: Annotated[float, typer.Option(metavar="SHARE", help="Test share (0: no test folder).")] = 0.15,
    seed: Annotated[int, typer.Option(metavar="N", help="Split seed (same seed, same split).")] = 0,
    group_regex: Annotated[str | None, typer.Option(metavar="REGEX", help="Regex on the path below SRC whose first group is the patient/study id; a group stays in one split.")] = None,
    clear_existing: Annotated[bool, typer.Option("--clear-existing", help="Replace OUT/train, OUT/val and OUT/test.")] = False,
    link_mode: Annotated[str, typer.Option(metavar="hard|symlink|copy", help="hard (copy where refused), symlink or copy.")] = "hard",
    follow_links: Annotated[bool, typer.Option("--follow-links", help="Keep images that are links to files outside SRC (default: left out, one warning each).")] = False,
) -> None:
    """Split a class-folder tree into train/val/test folders: stratified, group-aware, deterministic."""
    from medlens.data.split_folders import split_folders as split_tree

    s = split_tree(src, out, val, test, seed, group_regex, clear_existing, link_mode, follow_links)
    typer.echo(f"{out}: {s.method} split" + (f" over {s.groups} groups" if s.groups else "") + (f", {s.copied} copied" if s.copied else ""))
    for line in s.lines():
        typer.echo(line)


def download(
    csv_file: Annotated[Path, typer.Argument(metavar="CSV", help="Rows of url,class (header optional).")],
    out: Annotated[Path, typer.Option("--out", metavar="FOLDER", help="Output folder: OUT/<class>/<file>.")],
    workers: Annotated[int, typer.Option(metavar="N", help="Concurrent downloads.")] = 8,
    timeout: Annotated[float, typer.Option(metavar="SECONDS", help="Seconds per attempt.")] = 30.0,
    retries: Annotated[int, typer.Option(metavar="N", help="Retries per file.")] = 3,
    source: Annotated[str | None, typer.Option(metavar="NAME", help="Source name: files kept under OUT_sources/NAME/, merged into OUT/<class>/ as NAME__file.")] = None,
    link_mode: Annotated[str, typer.Option(metavar="hard|symlink|copy", help="hard (copy where refused), symlink or copy.")] = "hard",
    split_after_download: Annotated[float | None, typer.Option(metavar="SHARE", help="Train share, e.g. 0.85: write a stratified OUT_split/train|val/<class>/ tree.")] = None,
    max_mb: Annotated[float, typer.Option("--max-mb", metavar="MIB", help="Largest file kept, in MiB (a larger one is a listed failure).")] = 100.0,
) -> None:
    """Download images listed in CSV into a class-folder tree (resumable; failures listed; exit 1 when any failed, 0 when
    every row is in, downloaded now or before)."""
    from medlens.data.download import SUMMARY
    from medlens.data.download import download as download_images

    s = download_images(csv_file, out, workers, timeout, retries, source=source, link_mode=link_mode,
                        split_after_download=split_after_download, progress=show_progress(),
                        max_bytes=max(1, int(max_mb * 2**20)))
    typer.echo(f"{out}: {s.downloaded} downloaded, {s.kept} already present, {s.linked} linked into "
               f"{len(s.classes)} class folders, {len(s.failed)} failed (details in {s.summary_path or out / SUMMARY})")
    for line in s.class_lines():
        typer.echo(f"  {line}")
    for f in s.failed[:20]:
        typer.echo(f"  line {f.line}: {f.url}: {f.reason}", err=True)
    if len(s.failed) > 20:
        typer.echo(f"  ... and {len(s.failed) - 20} more", err=True)
    if s.failed:  # a partial download is not a success: a script or scheduler must see it (exit 1)
        first = s.failed[0]
        fail(f"error: {len(s.failed)} of {s.rows} rows failed, the first line {first.line}: {first.url} ({first.reason}); "
             f"all listed in {s.summary_path or out / SUMMARY}", EXIT_FAILED)


def register(app: typer.Typer) -> None:
    group = command_group(app, "split", "Dataset splits.")
    group.command("audit")(guarded(split_audit))
    group.command("folders")(guarded(split_folders))
    app.command("download")(guarded(download))
