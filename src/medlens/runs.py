"""Run folders: the reproducibility record, listing and comparing runs.

A run folder (``<output.dir>/<name>/``, written by :func:`medlens.train`) holds::

    config.yaml         the resolved config (written first)
    environment.json    reproducibility record: seed, package versions, git commit, hardware, launch
    tracking.json       where the trackers wrote (MLflow URI + run id, TensorBoard and CSV folders)
    checkpoints/        best.ckpt, last.ckpt (for resume)
    logs/               metrics.csv + hparams.yaml (csv), tensorboard/ (event files)
    history.csv         per-epoch validation metrics
    metrics.json        final validation and test metrics
    predictions.npz     validation/test probabilities, targets and ids
    bundle/             model.safetensors + manifest.json (written last)

``medlens runs list [DIR]`` and ``medlens runs compare RUN RUN...`` read these files only; nothing is imported
from the training stack, so they are fast.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import logging
import math
import os
import platform
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("medlens.runs")

CONFIG = "config.yaml"
ENVIRONMENT = "environment.json"
TRACKING = "tracking.json"
METRICS = "metrics.json"
HISTORY = "history.csv"
BUNDLE = "bundle"

#: Packages whose versions are listed first in the reproducibility record (all installed ones follow).
KEY_PACKAGES = (
    "medlens", "torch", "torchvision", "timm", "lightning", "numpy", "pandas", "opencv-python-headless",
    "albumentations", "pillow", "pydantic", "safetensors", "onnxruntime", "mlflow", "tensorboard", "wandb",
)
#: Headline metrics (per split), in this order, when any run has them: ``runs list`` shows the first four
#: present, ``runs compare`` all of them (``--all-metrics``: every scalar metric). ``auroc`` etc.: anomaly runs.
KEY_METRICS = (
    "auroc_macro", "auroc", "average_precision_macro", "average_precision", "accuracy", "balanced_accuracy",
    "f1_macro", "f1", "sensitivity_macro", "specificity_macro", "ece", "brier", "loss", "n",
)
#: Folders that trackers fill with copies of runs (MLflow's artifact store beside its SQLite database holds
#: ``<run id>/artifacts/config.yaml`` and ``bundle/``): never searched for runs.
TRACKER_STORES = frozenset({"mlartifacts", "mlruns", "wandb"})
#: Config keys that never make two runs' results differ (``runs compare`` leaves them out).
IGNORED_CONFIG_KEYS = ("output.name", "output.dir", "output.overwrite", "trainer.progress_bar", "trainer.resume")
#: Environment fields ``runs compare`` shows when they differ.
ENV_SECTIONS = ("git", "versions", "launch", "seed")


# ------------------------------------------------------------------------------ reproducibility record
def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(path: str | Path) -> dict[str, Any] | None:
    """The git commit, branch and dirtiness of the repository holding ``path`` (None outside a repository).

    Example:
        >>> git_state(".")  # doctest: +SKIP
        {'root': '/work/project', 'commit': '3f2c...', 'branch': 'main', 'dirty': False}
    """
    p = Path(path)
    p = p if p.is_dir() else p.parent
    root = _git(p, "rev-parse", "--show-toplevel")
    if not root:
        return None
    commit = _git(p, "rev-parse", "HEAD")
    if commit is None:  # a repository without commits
        return None
    status = _git(p, "status", "--porcelain", "--untracked-files=no")
    return {"root": root, "commit": commit, "branch": _git(p, "rev-parse", "--abbrev-ref", "HEAD"), "dirty": bool(status)}


def installed_versions() -> tuple[dict[str, str], dict[str, str]]:
    """(key package versions, every installed distribution's version), both name -> version."""
    from importlib import metadata

    every: dict[str, str] = {}
    for dist in metadata.distributions():
        name = (dist.metadata.get("Name") or "").strip()
        if name:
            every.setdefault(name.lower().replace("_", "-"), dist.version)
    key = {"python": platform.python_version()}
    key.update({n: every[n] for n in KEY_PACKAGES if n in every})
    return key, dict(sorted(every.items()))


def hardware_info() -> dict[str, Any]:
    """CPU, memory and accelerators of this machine."""
    info: dict[str, Any] = {
        "hostname": socket.gethostname(), "platform": platform.platform(), "machine": platform.machine(),
        "processor": platform.processor() or None, "cpu_count": os.cpu_count(),
    }
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError, AttributeError):  # not on every OS
        info["memory_gb"] = None
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        gpus = []
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                gpus.append({"name": p.name, "memory_gb": round(p.total_memory / 1e9, 1), "capability": f"{p.major}.{p.minor}"})
        info["gpus"] = gpus
        info["mps"] = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return info


def launch_info(cfg: Any = None, trainer: Any = None) -> dict[str, Any]:
    """How the run was launched: world size, strategy, devices, the cluster launcher's job id."""
    env = os.environ
    launcher = "torchrun" if "TORCHELASTIC_RUN_ID" in env else "slurm" if "SLURM_JOB_ID" in env else None
    out: dict[str, Any] = {"launcher": launcher, "slurm_job_id": env.get("SLURM_JOB_ID")}
    if cfg is not None:
        t = cfg.trainer
        out.update(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy, precision=t.precision)
    if trainer is not None:
        world = int(trainer.world_size)
        out.update(
            world_size=world, num_nodes=int(trainer.num_nodes), devices_per_node=int(trainer.num_devices),
            strategy_class=type(trainer.strategy).__name__, accelerator_class=type(trainer.accelerator).__name__,
            root_device=str(trainer.strategy.root_device),
        )
        if cfg is not None:  # data.batch_size is per process
            accum = int(getattr(cfg.optim, "accumulate_grad_batches", 1))
            out["global_batch_size"] = int(cfg.data.batch_size) * world * accum
    return out


def collect_environment(cfg: Any = None, trainer: Any = None, project_dir: str | Path | None = None) -> dict[str, Any]:
    """The reproducibility record of a run: seed, package versions, git commit, hardware and launch.

    Args:
        cfg: the run's :class:`~medlens.config.RunConfig` (for the seeds and trainer settings), or None.
        trainer: the Lightning trainer, for the resolved world size, devices and strategy, or None.
        project_dir: the project whose git commit is recorded (default: the working directory). The commit
            of medlens' own source is added when medlens is installed from a different git checkout.

    Returns:
        A JSON-ready dict (``run_dir/environment.json``, and ``extra["environment"]`` in the bundle manifest).

    Example:
        >>> env = collect_environment()
        >>> sorted(env)[:3]
        ['created', 'git', 'hardware']
    """
    key, every = installed_versions()
    project = git_state(project_dir or Path.cwd())
    source = git_state(Path(__file__).resolve().parent)
    record: dict[str, Any] = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seed": None,
        "git": project,
        "medlens_source_git": source if source and (not project or source["root"] != project["root"]) else None,
        "python": {"version": sys.version.split()[0], "executable": sys.executable},
        "versions": key,
        "hardware": hardware_info(),
        "launch": launch_info(cfg, trainer),
        "packages": every,
    }
    if cfg is not None:
        record["seed"] = {"seed": cfg.seed, "split_seed": cfg.data.split.seed, "deterministic": cfg.trainer.deterministic}
    return record


def write_environment(run_dir: str | Path, record: dict[str, Any], resumed_from: str | None = None) -> Path:
    """Write ``run_dir/environment.json`` atomically; a resumed run keeps the earlier sessions' records."""
    from medlens.bundle import write_json_atomic

    path = Path(run_dir) / ENVIRONMENT
    record = dict(record)
    if resumed_from is not None:
        record["resumed_from"] = str(resumed_from)
        old = _read_json(path)
        if old:
            earlier = old.pop("previous_sessions", [])
            old.pop("packages", None)  # the full list is kept for the current session only
            record["previous_sessions"] = [*earlier, old]
    write_json_atomic(path, record)
    return path


# ---------------------------------------------------------------------------------------- reading runs
def flatten(d: Any, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b.c": value}``; lists stay values.

    Example:
        >>> flatten({"optim": {"lr": 0.001, "milestones": [30, 60]}, "seed": 0})
        {'optim.lr': 0.001, 'optim.milestones': [30, 60], 'seed': 0}
    """
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            key = f"{prefix}{sep}{k}" if prefix else str(k)
            if isinstance(v, dict) and v:
                out.update(flatten(v, key, sep))
            else:
                out[key] = v
    else:
        out[prefix] = d
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        d = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return d if isinstance(d, dict) else {}


@dataclass
class RunInfo:
    """What a run folder holds, read from its files.

    Attributes:
        path: the run folder (or a bare bundle folder).
        name: the folder name.
        status: ``done`` (bundle written), ``incomplete`` (checkpoints, no bundle) or ``started`` (config only).
        config: the resolved config (nested dict).
        metrics: ``metrics.json`` (per split, plus train_time_s ...).
        environment: ``environment.json`` (empty for runs made before it existed).
        epochs: number of validated epochs in ``history.csv``.
        updated: the newest modification time among the run's files (seconds since the epoch).
    """

    path: Path
    name: str
    status: str
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    epochs: int = 0
    updated: float = 0.0

    @property
    def task(self) -> str | None:
        val = self.metrics.get("val") if isinstance(self.metrics.get("val"), dict) else {}
        return self.config.get("data", {}).get("task") or val.get("task") or self.metrics.get("task")

    def metric(self, split: str, name: str) -> float | None:
        """A split's scalar metric (``None`` when absent or not a finite number)."""
        v = self.metrics.get(split, {}).get(name) if isinstance(self.metrics.get(split), dict) else None
        return float(v) if _is_number(v) else None

    def scalar_metrics(self) -> dict[str, int | float]:
        """Every scalar metric as ``split/name`` (per-label values left out), plus top-level numbers."""
        out: dict[str, int | float] = {}
        for k, v in self.metrics.items():
            if isinstance(v, dict):
                for m, x in v.items():
                    if _is_number(x):
                        out[f"{k}/{m}"] = x
            elif _is_number(v):
                out[k] = v
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "name": self.name, "status": self.status, "epochs": self.epochs,
            "updated": _dt.datetime.fromtimestamp(self.updated).isoformat(timespec="seconds") if self.updated else None,
            "backbone": self.config.get("model", {}).get("backbone"), "metrics": self.scalar_metrics(),
        }


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def is_run_dir(path: str | Path) -> bool:
    """A folder medlens trained into (it has the resolved ``config.yaml``)."""
    p = Path(path)
    return (p / CONFIG).is_file() and ((p / BUNDLE).is_dir() or (p / "checkpoints").is_dir() or (p / METRICS).is_file() or (p / ENVIRONMENT).is_file())


def resolve_bundle(source: str | Path) -> tuple[Path, Path | None]:
    """(bundle folder, run folder or None) from a run folder or a bundle folder: what every command that reads a
    bundle accepts (``evaluate``, ``report``, ``predict``, ``explain``, ``export``, ``serve``).

    Raises:
        FileNotFoundError: neither (naming the runs or bundles one level below, and a run whose training has not
            written its bundle yet).
        ValueError: ambiguous: a bundle folder that holds another bundle in ``bundle/``.

    Example:
        >>> resolve_bundle("runs/nih_multilabel")  # doctest: +SKIP
        (PosixPath('runs/nih_multilabel/bundle'), PosixPath('runs/nih_multilabel'))
    """
    p = Path(source)
    own, inner = (p / "manifest.json").is_file(), (p / BUNDLE / "manifest.json").is_file()
    if own and inner:
        raise ValueError(f"{p}: ambiguous: a bundle itself (manifest.json) and a run folder with another bundle in "
                         f"{p / BUNDLE}; name the one to use")
    if inner:
        return p / BUNDLE, p
    if own:
        return p, (p.parent if p.name == BUNDLE else None)
    if not p.exists():
        raise FileNotFoundError(f"{p}: not found (give a run folder with bundle/ or a bundle folder with manifest.json)")
    if not p.is_dir():
        raise NotADirectoryError(f"{p}: not a folder (give a run folder with bundle/ or a bundle folder with manifest.json)")
    if (p / CONFIG).is_file() and (p / "checkpoints").is_dir():
        raise FileNotFoundError(f"{p}: a run folder without a bundle yet (its training has not finished; resume it "
                                f"with --resume {p / 'checkpoints' / 'last.ckpt'})")
    below = sorted(c for c in p.iterdir() if c.is_dir() and ((c / "manifest.json").is_file() or (c / BUNDLE / "manifest.json").is_file()))
    where = f"{p}: neither a run folder (with bundle/) nor a bundle folder (with manifest.json)"
    if below:
        names = ", ".join(str(c) for c in below[:5]) + (f" and {len(below) - 5} more" if len(below) > 5 else "")
        raise FileNotFoundError(f"{where}; it holds {len(below)} ({names}): name the one to use")
    raise FileNotFoundError(where)


def load_run(path: str | Path) -> RunInfo:
    """Read a run folder (or a bundle folder: its run folder when it has one, else its manifest).

    Raises:
        FileNotFoundError: ``path`` is neither a run folder nor a bundle.

    Example:
        >>> run = load_run("runs/pneumoniamnist")  # doctest: +SKIP
        >>> run.metric("val", "auroc_macro")  # doctest: +SKIP
        0.953
    """
    p = Path(path)
    if (p / "manifest.json").is_file() and not (p / CONFIG).is_file():
        if is_run_dir(p.parent):
            p = p.parent
        else:  # a bundle copied out of its run folder: the manifest has the config and metrics
            m = _read_json(p / "manifest.json")
            hist = m.get("history") or []
            return RunInfo(
                path=p, name=p.name, status="done", config=m.get("config") or {}, metrics=m.get("metrics") or {},
                environment=(m.get("extra") or {}).get("environment") or {}, epochs=len(hist),
                updated=(p / "manifest.json").stat().st_mtime,
            )
    if not p.is_dir():
        raise FileNotFoundError(f"run folder not found: {p}")
    if not (p / CONFIG).is_file():
        raise FileNotFoundError(f"{p} is not a medlens run folder (no {CONFIG})")
    files = [p / n for n in (CONFIG, METRICS, HISTORY, ENVIRONMENT)] + [p / BUNDLE / "manifest.json"]
    updated = max((f.stat().st_mtime for f in files if f.exists()), default=0.0)
    status = "done" if (p / BUNDLE / "manifest.json").is_file() else "incomplete" if (p / "checkpoints").is_dir() else "started"
    epochs = 0
    if (p / HISTORY).is_file():
        with open(p / HISTORY, newline="") as f:
            epochs = sum(1 for _ in csv.DictReader(f))
    return RunInfo(
        path=p, name=p.name, status=status, config=_read_yaml(p / CONFIG), metrics=_read_json(p / METRICS),
        environment=_read_json(p / ENVIRONMENT), epochs=epochs, updated=updated,
    )


def _tracker_copy(d: Path) -> bool:
    """A tracker's store or its copy of a run (``<32-hex MLflow run id>/artifacts``), not a run of its own."""
    return d.name in TRACKER_STORES or (d.name == "artifacts" and len(d.parent.name) == 32
                                        and all(c in "0123456789abcdef" for c in d.parent.name))


def find_runs(root: str | Path, max_depth: int = 3) -> list[Path]:
    """Run folders under ``root`` (itself included), at most ``max_depth`` levels down."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"runs folder not found: {root}")
    found: list[Path] = []

    def walk(d: Path, depth: int) -> None:
        if is_run_dir(d):
            found.append(d)
            return  # a run's own sub-folders (bundle, logs) are not runs
        if depth >= max_depth:
            return
        try:
            subs = sorted(x for x in d.iterdir() if x.is_dir() and not x.name.startswith(".") and not _tracker_copy(x))
        except OSError:
            return
        for s in subs:
            walk(s, depth + 1)

    walk(root, 0)
    return found


def list_runs(root: str | Path = "runs") -> list[RunInfo]:
    """Every run under ``root``, oldest first.

    Example:
        >>> for run in list_runs("runs"):  # doctest: +SKIP
        ...     print(run.name, run.metric("val", "auroc_macro"))
    """
    return sorted((load_run(p) for p in find_runs(root)), key=lambda r: (r.updated, str(r.path)))


@dataclass
class RunComparison:
    """Runs side by side.

    Attributes:
        runs: the compared runs, in the order given.
        labels: a column label per run (folder name, or a longer path when names repeat).
        metrics: ``(split/metric, [value per run])`` for every scalar metric any run has.
        config: ``(config key, [value per run])`` for config keys whose values differ.
        environment: ``(env.section.key, [value per run])`` for differing seeds, versions, git commits, launch.
    """

    runs: list[RunInfo]
    labels: list[str]
    metrics: list[tuple[str, list[Any]]]
    config: list[tuple[str, list[Any]]]
    environment: list[tuple[str, list[Any]]]

    def to_dict(self) -> dict[str, Any]:
        rows = lambda items: {k: dict(zip(self.labels, v, strict=True)) for k, v in items}  # noqa: E731
        return {
            "runs": {lab: str(r.path) for lab, r in zip(self.labels, self.runs, strict=True)},
            "metrics": rows(self.metrics), "config_differences": rows(self.config),
            "environment_differences": rows(self.environment),
        }


_MISSING = object()


def _differing(flat: list[dict[str, Any]], ignore: tuple[str, ...] = ()) -> list[tuple[str, list[Any]]]:
    keys: list[str] = []
    for f in flat:
        keys.extend(k for k in f if k not in keys)
    out = []
    for k in keys:
        if k in ignore:
            continue
        vals = [f.get(k, _MISSING) for f in flat]
        if any(json.dumps(v, sort_keys=True, default=str) != json.dumps(vals[0], sort_keys=True, default=str) for v in vals[1:]):
            out.append((k, [None if v is _MISSING else v for v in vals]))
    return out


def _labels(runs: list[RunInfo]) -> list[str]:
    names = [r.name for r in runs]
    if len(set(names)) == len(names):
        return names
    labels = [str(r.path) for r in runs]
    return labels if len(set(labels)) == len(labels) else [f"{i + 1}:{lab}" for i, lab in enumerate(labels)]


def compare_runs(
    paths: list[str | Path], ignore: tuple[str, ...] = IGNORED_CONFIG_KEYS, all_metrics: bool = False,
) -> RunComparison:
    """Metrics of several runs side by side, and the config keys in which they differ.

    Args:
        paths: run folders (or their bundle folders); at least two.
        ignore: config keys left out of the differences (output location and naming by default).
        all_metrics: every scalar metric instead of the headline ones (:data:`KEY_METRICS`).

    Returns:
        :class:`RunComparison`.

    Example:
        >>> cmp = compare_runs(["runs/lr1e-3", "runs/lr3e-4"])  # doctest: +SKIP
        >>> dict(cmp.config)["optim.lr"]  # doctest: +SKIP
        [0.001, 0.0003]
    """
    if len(paths) < 2:
        raise ValueError("runs compare needs at least two run folders")
    runs = [load_run(p) for p in paths]
    per_run = [r.scalar_metrics() for r in runs]
    keys: list[str] = []
    for m in per_run:
        keys.extend(k for k in m if k not in keys)
    split_order = {"val": 0, "test": 1}

    def order(k: str) -> tuple:  # val, test, other splits, then top-level numbers; headline metrics first
        split, _, name = k.rpartition("/")
        rank = KEY_METRICS.index(name) if name in KEY_METRICS else len(KEY_METRICS) + (name == "n")
        return (not split, split_order.get(split, 2), split, rank)

    keys.sort(key=order)
    if not all_metrics:
        keys = [k for k in keys if "/" not in k or k.rpartition("/")[2] in KEY_METRICS]
    metrics = [(k, [m.get(k) for m in per_run]) for k in keys]
    config = _differing([flatten(r.config) for r in runs], ignore)
    envs = [flatten({s: r.environment.get(s) for s in ENV_SECTIONS if r.environment.get(s) is not None}, "env") for r in runs]
    have_env = [bool(r.environment) for r in runs]
    environment = _differing(envs) if all(have_env) else []
    return RunComparison(runs, _labels(runs), metrics, config, environment)


# ------------------------------------------------------------------------------------------- tables
def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-3 and v != 0 else f"{v:.4f}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def _lower_is_better(metric: str) -> bool:
    name = metric.rsplit("/", 1)[-1]
    return any(w in name for w in ("loss", "ece", "brier", "time", "error"))


_SHORT = {"auroc_macro": "AUROC", "auroc": "AUROC", "average_precision_macro": "AP", "average_precision": "AP",
          "accuracy": "acc", "f1_macro": "F1", "f1": "F1"}


def runs_table(runs: list[RunInfo], title: str | None = None):
    """A rich table: one row per run with status, backbone, lr, epochs and headline val/test metrics."""
    from rich.table import Table

    def present(split: str, limit: int, skip: tuple[str, ...] = ()) -> list[str]:
        names = [m for m in _SHORT if _SHORT[m] not in skip and any(r.metric(split, m) is not None for r in runs)]
        return list({_SHORT[m]: m for m in reversed(names)}.values())[::-1][:limit]  # one column per short name

    cols = [("val", m) for m in present("val", 3)] + [("test", m) for m in present("test", 2, skip=("AP",))]
    t = Table(title=title)
    t.add_column("run", no_wrap=True)
    for col in ("status", "task", "backbone", "lr", "epochs"):
        t.add_column(col)
    for split, m in cols:
        t.add_column(f"{split} {_SHORT[m]}", justify="right")
    t.add_column("updated", no_wrap=True)
    for r in runs:
        cells = [
            r.name, r.status, _fmt(r.task), _fmt(r.config.get("model", {}).get("backbone")),
            _fmt(r.config.get("optim", {}).get("lr")), str(r.epochs),
        ]
        cells += [_fmt(r.metric(split, m)) for split, m in cols]
        cells.append(_dt.datetime.fromtimestamp(r.updated).strftime("%m-%d %H:%M") if r.updated else "—")
        t.add_row(*cells)
    return t


def comparison_tables(cmp: RunComparison) -> list:
    """Rich tables for a comparison: metrics (best value in bold), differing config keys, differing environment."""
    from rich.table import Table

    tables = []
    mt = Table(title="metrics")
    mt.add_column("metric", no_wrap=True)
    for lab in cmp.labels:
        mt.add_column(lab, justify="right")
    for key, vals in cmp.metrics:
        nums = [v for v in vals if v is not None]
        best = (min(nums) if _lower_is_better(key) else max(nums)) if len(nums) > 1 and len(set(nums)) > 1 else None
        mt.add_row(key, *[f"[bold]{_fmt(v)}[/bold]" if best is not None and v == best else _fmt(v) for v in vals])
    tables.append(mt)
    for title, rows in (("config differences", cmp.config), ("environment differences", cmp.environment)):
        if not rows and title.startswith("environment"):
            continue
        ct = Table(title=title)
        ct.add_column("key", no_wrap=True)
        for lab in cmp.labels:
            ct.add_column(lab)
        for key, vals in rows:
            ct.add_row(key, *[_fmt(v) for v in vals])
        if not rows:
            ct.add_row("(none: the configs are the same)", *[""] * len(cmp.labels))
        tables.append(ct)
    return tables


def print_tables(tables: list, width: int | None = None) -> None:
    """Print rich tables to stdout (wide when stdout is not a terminal, so piped output is not wrapped)."""
    from rich.console import Console

    console = Console(width=width or (None if sys.stdout.isatty() else 200), highlight=False)
    for t in tables:
        console.print(t)
