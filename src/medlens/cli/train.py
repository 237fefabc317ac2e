"""``medlens train`` (and ``train --sweep``) and ``medlens cv``: training from a config.

A run stopped by SIGTERM or Ctrl-C exits 143 or 130 with one line naming its last checkpoint and the command
that resumes it (:mod:`medlens.cli.common`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medlens.cli.common import guarded, quiet_overrides, resume_command


def train(
    config: Annotated[Path, typer.Argument(metavar="CONFIG", help="Run config (YAML).")],
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override: section.key=value (repeatable).")] = None,
    resume: Annotated[str | None, typer.Option(metavar="CHECKPOINT", help="Continue from a checkpoint (e.g. RUN/checkpoints/last.ckpt).")] = None,
    sweep: Annotated[list[str] | None, typer.Option(metavar="KEY=V1,V2", help="Grid sweep: section.key=v1,v2 (repeatable); one run each, then a table.")] = None,
    env_file: Annotated[Path | None, typer.Option(metavar="FILE", help="A .env file with MEDLENS__SECTION__KEY=value lines (default ./.env).")] = None,
) -> None:
    """Train a model from CONFIG and write its bundle; ends with the headline metric, its 95% CI and n."""
    from medlens.config import load_config
    from medlens.training import train as train_run

    if sweep:
        return train_sweep(config, quiet_overrides(set_), sweep, env_file)
    cfg = load_config(config, quiet_overrides(set_), env_file)
    result = train_run(cfg, resume=resume)
    if not result.metrics:  # a DDP process other than rank 0: rank 0 evaluates and reports
        return
    typer.echo(f"bundle:  {result.bundle_dir}")
    typer.echo(f"metrics: {result.run_dir / 'metrics.json'}")
    from medlens.console import headline
    from medlens.targets import format_target_checks

    for split in ("val", "test"):
        m = result.metrics.get(split)
        if isinstance(m, dict) and m:
            typer.echo(headline(m, split))
    final = result.metrics.get("test") or result.metrics.get("val") or {}
    from medlens.bundle import read_manifest
    from medlens.tasks import task_of

    task = task_of(read_manifest(result.bundle_dir)) if cfg.targets and result.bundle_dir.is_dir() else None
    for line in format_target_checks(final, cfg.targets, task) if cfg.targets else []:
        typer.echo(line)


def train_sweep(config: Path, overrides: list[str], sweeps: list[str], env_file: Path | None = None) -> None:
    """``medlens train CONFIG --sweep key=v1,v2 ...``: train the grid, print the comparison table."""
    from medlens.sweep import format_sweep_table, run_sweep

    res = run_sweep(config, sweeps, overrides, env_file)
    typer.echo(format_sweep_table(res))
    typer.echo(f"sweep table: {res.csv_path}")


def cv(
    config: Annotated[Path, typer.Argument(metavar="CONFIG", help="Run config (YAML).")],
    folds: Annotated[int | None, typer.Option(metavar="K", help="Number of folds (default: data.split.folds).")] = None,
    out: Annotated[Path | None, typer.Option(metavar="FOLDER", help="Output folder (default: output.dir/name).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override: section.key=value (repeatable).")] = None,
    ensemble: Annotated[bool, typer.Option("--ensemble", help="Also save the folds' models as one bundle (mean of their probabilities): FOLDER/ensemble.")] = False,
) -> None:
    """Group-aware stratified k-fold cross-validation of CONFIG: one model per fold, mean +- std report."""
    from medlens.config import load_config
    from medlens.cv import cross_validate

    cfg = load_config(config, quiet_overrides(set_))
    r = cross_validate(cfg, folds, out, ensemble=ensemble)
    typer.echo(f"report:  {r.report}")
    typer.echo(f"metrics: {r.json_path}")
    if r.extra.get("ensemble"):
        typer.echo(f"ensemble bundle: {r.extra['ensemble']}")
    for m in ("auroc_macro", "f1_macro", "accuracy"):
        s = r.summary.get(m)
        if s and s["mean"] is not None:
            typer.echo(f"{m}: {s['mean']:.4f} +- {s['std']:.4f} over {s['n_folds']} folds")


def register(app: typer.Typer) -> None:
    app.command("train")(guarded(train, resume=resume_command("train")))
    app.command("cv")(guarded(cv))
