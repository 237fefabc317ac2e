"""Grid sweeps: ``medlens train CFG --sweep model.backbone=resnet18,efficientnet_b0 --sweep optim.lr=1e-3,3e-4``.

Every combination of the swept values is one ordinary run (``medlens.train``) in its own folder
``<output.name>__<key>=<value>...``; a comparison table (swept values, validation headline metric with its n,
test headline metric, wall time) is returned, printed by the CLI and written to
``<output.dir>/<output.name>-sweep/sweep.csv``. Choose on validation: the test column is there to report the
chosen run, not to choose it.

Example:
    >>> res = run_sweep("configs/breastmnist.yaml", ["optim.lr=1e-3,3e-4"])  # doctest: +SKIP
    >>> print(format_sweep_table(res))  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import itertools
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medlens._atomic import atomic_open
from medlens.config import ConfigError, RunConfig, load_config

log = logging.getLogger("medlens.train")

SELECTION_NOTE = "choose on validation: the best validation value picks the run; its test value is the figure to report"


@dataclass
class SweepRun:
    """One run of a sweep."""

    values: dict[str, str]
    name: str
    run_dir: Path
    metric: str
    val: float | None
    val_n: int | None
    test: float | None
    test_n: int | None
    wall_time_s: float


@dataclass
class SweepResult:
    """All runs of a sweep, the CSV written and the run chosen on validation."""

    keys: list[str]
    runs: list[SweepRun] = field(default_factory=list)
    csv_path: Path | None = None

    @property
    def best(self) -> SweepRun | None:
        """The run with the highest validation headline metric (never chosen on test)."""
        scored = [r for r in self.runs if r.val is not None]
        return max(scored, key=lambda r: r.val) if scored else None


def parse_sweeps(items: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["optim.lr=1e-3,3e-4"]`` -> ``[("optim.lr", ["1e-3", "3e-4"])]``; a malformed item is one clear error.

    Example:
        >>> parse_sweeps(["model.backbone=resnet18,efficientnet_b0"])
        [('model.backbone', ['resnet18', 'efficientnet_b0'])]
    """
    out: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        values = [v.strip() for v in text.split(",") if v.strip()]
        if not sep or not key or not values:
            raise ConfigError(f"--sweep {item!r} must look like section.key=value1,value2")
        if key in (k for k, _ in out):
            raise ConfigError(f"--sweep {key} is given twice; list all its values in one --sweep")
        if key in ("output.name", "output.dir", "name"):
            raise ConfigError(f"--sweep {key}: the sweep names its runs itself")
        out.append((key, values))
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("._")[:60]


def run_name(base: str, values: dict[str, str]) -> str:
    """The run folder name for one combination: ``base__lr=0.001__backbone=resnet18`` (last key part only).

    Example:
        >>> run_name("demo", {"optim.lr": "1e-3", "model.backbone": "resnet18"})
        'demo__lr=1e-3__backbone=resnet18'
    """
    return "__".join([base, *(_slug(f"{k.split('.')[-1]}={v}") for k, v in values.items())])


def run_sweep(config: str | Path, sweeps: Sequence[str], overrides: Sequence[str] = (), env_file: str | Path | None = None,
              train_fn: Callable[[RunConfig], Any] | None = None) -> SweepResult:
    """Train every combination of the swept values and compare them.

    All configs are built and validated before the first run, so a bad value fails at once.

    Args:
        config: the run config (YAML).
        sweeps: ``section.key=v1,v2`` items; the grid is their product.
        overrides: ``--set`` overrides applied to every run (before the swept values).
        env_file: a ``.env`` file (see :func:`medlens.config.load_config`).
        train_fn: the training function (default :func:`medlens.training.train`).

    Returns:
        :class:`SweepResult`; the table is also written to ``<output.dir>/<output.name>-sweep/sweep.csv``.

    Example:
        >>> run_sweep("configs/breastmnist.yaml", ["optim.lr=1e-3,3e-4"], ["trainer.max_epochs=1"])  # doctest: +SKIP
    """
    from medlens.bundle import read_manifest
    from medlens.tasks import task_of
    from medlens.training import run_dir_for

    if train_fn is None:
        from medlens.training import train as train_fn
    grid = parse_sweeps(sweeps)
    if not grid:
        raise ConfigError("--sweep needs at least one section.key=value1,value2")
    keys = [k for k, _ in grid]
    base_cfg = load_config(config, list(overrides), env_file=env_file)
    base = base_cfg.output.name or base_cfg.name or Path(config).stem
    planned: list[tuple[dict[str, str], RunConfig]] = []
    for combo in itertools.product(*(vals for _, vals in grid)):
        values = dict(zip(keys, combo, strict=True))
        cfg = load_config(config, [*overrides, *(f"{k}={v}" for k, v in values.items())], env_file=env_file)
        cfg.output.name = run_name(base, values)
        planned.append((values, cfg))
    log.info("sweep: %d runs over %s", len(planned), ", ".join(keys))
    result = SweepResult(keys)
    for i, (values, cfg) in enumerate(planned, 1):
        log.info("sweep run %d/%d: %s", i, len(planned), ", ".join(f"{k}={v}" for k, v in values.items()))
        t0 = time.perf_counter()
        res = train_fn(cfg)
        wall = time.perf_counter() - t0
        run_dir = Path(getattr(res, "run_dir", run_dir_for(cfg)))
        metrics = getattr(res, "metrics", {}) or {}
        metric = task_of(read_manifest(res.bundle_dir)).headline_metric
        splits = (getattr(res, "data_summary", {}) or {}).get("splits", {})

        def value(split: str) -> float | None:
            v = (metrics.get(split) or {}).get(metric)  # noqa: B023 -- used at once, in this iteration
            return float(v) if isinstance(v, int | float) and v == v else None

        result.runs.append(SweepRun(values, cfg.output.name, run_dir, metric, value("val"), splits.get("val"), value("test"),
                                    splits.get("test"), round(wall, 1)))
    out_dir = Path(base_cfg.output.dir) / f"{_slug(base)}-sweep"
    out_dir.mkdir(parents=True, exist_ok=True)
    result.csv_path = out_dir / "sweep.csv"
    write_sweep_csv(result, result.csv_path)
    return result


def sweep_rows(result: SweepResult) -> list[dict[str, Any]]:
    """One dict per run: swept values, ``val <metric>``, ``val n``, ``test <metric>``, ``test n``, wall time, run."""
    rows = []
    for r in result.runs:
        rows.append({**r.values, f"val {r.metric}": r.val, "val n": r.val_n, f"test {r.metric}": r.test, "test n": r.test_n,
                     "wall time s": r.wall_time_s, "run": r.name})
    return rows


def write_sweep_csv(result: SweepResult, path: str | Path) -> Path:
    """The comparison table as CSV (atomic write)."""
    rows = sweep_rows(result)
    cols = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return Path(path)


def format_sweep_table(result: SweepResult) -> str:
    """The comparison table as aligned text, best validation run marked ``*``, and the selection note.

    Example:
        >>> print(format_sweep_table(res))  # doctest: +SKIP
    """
    rows = sweep_rows(result)
    if not rows:
        return "no runs"
    best = result.best
    cols = ["", *rows[0].keys()]

    def cell(k: str, v: Any) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:.1f}" if k == "wall time s" else f"{v:.4f}"
        return str(v)

    body = [["*" if best is not None and r.name == best.name else "", *(cell(k, v) for k, v in row.items())]
            for r, row in zip(result.runs, rows, strict=True)]
    widths = [max(len(str(c)), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)).rstrip() for b in body]
    lines.append(SELECTION_NOTE + (f" (best: {best.name})" if best else ""))
    return "\n".join(lines)
