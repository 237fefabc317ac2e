"""``medlens evaluate`` (metrics of a bundle on a split) and ``medlens report`` (the HTML evaluation report)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medlens.cli.common import BUNDLE_HELP, bundle_folder, fmt, guarded, print_json

#: the --subgroups option of evaluate and report
SUBGROUPS_HELP = ("Metadata columns to report performance per subgroup of, comma-separated (default: every metadata column "
                  "with 2-12 levels, numbers in bands; none: no subgroups).")


def evaluate(
    bundle: Annotated[Path, typer.Argument(metavar="BUNDLE", help=BUNDLE_HELP, callback=bundle_folder)],
    config: Annotated[Path | None, typer.Option(metavar="FILE", help="Data config (default: the one saved in the bundle).")] = None,
    split: Annotated[str, typer.Option(metavar="SPLIT", help="train, val or test.")] = "test",
    out: Annotated[Path | None, typer.Option(metavar="FILE", help="Write metrics JSON here.")] = None,
    tta: Annotated[str, typer.Option(metavar="PRESET", help="Test-time augmentation: none, hflip, flips or d4.")] = "none",
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help="Config override (repeatable).")] = None,
    calibrated: Annotated[bool, typer.Option("--calibrated/--uncalibrated", help="Apply the bundle's temperature scaling.")] = True,
    record: Annotated[bool, typer.Option("--record/--no-record", help="Store the result in the bundle manifest.")] = True,
    threshold: Annotated[float | None, typer.Option(metavar="X", help="Decide at this threshold instead of the bundle's.")] = None,
    thresholds_from: Annotated[str | None, typer.Option(metavar="val|bundle", help="Where the decision thresholds come from: the bundle (default) or refitted on the val split.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print only the metrics JSON on stdout (logs go to stderr).")] = False,
    subgroups: Annotated[str | None, typer.Option(metavar="COL1,COL2", help=SUBGROUPS_HELP)] = None,
) -> None:
    """Evaluate BUNDLE on a split: a short table (headline with 95% CI and n, per label, targets), or --json."""
    from medlens.console import metrics_text
    from medlens.evaluation import evaluate as evaluate_bundle
    from medlens.subgroups import parse_columns, subgroups_text

    extra = {} if threshold is None else {"threshold": threshold}
    if thresholds_from is not None:
        extra["thresholds_from"] = thresholds_from
    r = evaluate_bundle(bundle, config, split, out, tta if tta != "none" else False, overrides=set_ or [], calibrated=calibrated,
                        record=record, subgroups=parse_columns(subgroups), **extra)
    if json_:
        print_json({"split": split, **r.metrics})
    else:
        typer.echo(metrics_text(r.metrics, split))
        if r.metrics.get("subgroups"):
            typer.echo("\n" + subgroups_text(r.metrics["subgroups"]))


def report(
    source: Annotated[Path, typer.Argument(metavar="RUN_OR_BUNDLE", help="Run folder (with bundle/) or bundle folder.")],
    out: Annotated[Path | None, typer.Option(metavar="FOLDER", help="Output folder (default: RUN/report).")] = None,
    split: Annotated[str, typer.Option(metavar="SPLIT", help="Split to report: test (default), val or train.")] = "test",
    config: Annotated[Path | None, typer.Option(metavar="FILE", help="Data config (default: the one saved in the bundle).")] = None,
    n_boot: Annotated[int, typer.Option(metavar="N", help="Bootstrap replicates for confidence intervals.")] = 1000,
    seed: Annotated[int, typer.Option(metavar="N", help="Bootstrap seed.")] = 0,
    calibrated: Annotated[bool, typer.Option("--calibrated/--uncalibrated", help="Apply the bundle's temperature scaling.")] = True,
    sensitivity: Annotated[float, typer.Option(metavar="X", help="Required sensitivity for the threshold sweep.")] = 0.9,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help="Config override (repeatable).")] = None,
    subgroups: Annotated[str | None, typer.Option(metavar="COL1,COL2", help=SUBGROUPS_HELP)] = None,
) -> None:
    """Write an HTML evaluation report (metrics with CIs, thresholds, calibration, plots) and metrics.json."""
    from medlens.report import build_report
    from medlens.subgroups import parse_columns

    r = build_report(source, out, split, config, n_boot=n_boot, seed=seed, calibrated=calibrated, required_sensitivity=sensitivity,
                     overrides=set_ or [], subgroups=parse_columns(subgroups))
    typer.echo(f"report:  {r.html}")
    typer.echo(f"metrics: {r.metrics_json}")
    headline = (r.metrics.get("ci") or {}).get("headline") or {}
    if headline:  # the task's first headline metric (classification: auroc_macro), with its interval
        key, h = next(iter(headline.items()))
        typer.echo(f"{r.metrics['split']}: {key}={fmt(h.get('value'))} (95% CI {fmt(h.get('low'))}-{fmt(h.get('high'))})")
    for t in r.metrics.get("targets") or []:
        typer.echo(f"target {t['metric']} {t['direction']} {t['target']}: {'n/a' if t['met'] is None else ('met' if t['met'] else 'NOT met')}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(guarded(evaluate))
    app.command("report")(guarded(report))
