"""Example configs shipped with the package, so they work from an installed medlens (no clone needed).

Each YAML here mirrors a file of the repository's ``configs/`` folder, with its data paths written as
``DATA_DIR/...``; :func:`init_configs` (``medlens init DIR --data-dir D``) copies them into ``DIR`` with
``DATA_DIR`` replaced by the absolute data folder ``D``, so ``medlens train DIR/pneumoniamnist.yaml`` finds
``D/medmnist_pneumoniamnist/pneumoniamnist.npz`` wherever it is run from.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from medlens._atomic import write_text_atomic

#: the placeholder for the data folder in the shipped configs
DATA_DIR = "DATA_DIR"


def list_examples() -> list[str]:
    """Names of the shipped example configs (file names without ``.yaml``).

    Example:
        >>> "pneumoniamnist" in list_examples()
        True
    """
    return sorted(p.name[: -len(".yaml")] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))


def example_text(name: str) -> str:
    """The raw text of one shipped example (with the ``DATA_DIR`` placeholder).

    Raises:
        KeyError: no such example; the message lists the valid names.
    """
    if name not in list_examples():
        raise KeyError(f"unknown example {name!r}; the examples are: {', '.join(list_examples())}")
    return resources.files(__name__).joinpath(f"{name}.yaml").read_text(encoding="utf-8")


def init_configs(directory: str | Path, data_dir: str | Path = "data", overwrite: bool = False) -> list[Path]:
    """Copy every example config into ``directory``, data paths pointing into ``data_dir``.

    Args:
        directory: where the configs go (created when missing).
        data_dir: the folder holding the data sets (``medmnist_pneumoniamnist/pneumoniamnist.npz``, ...);
            a relative path is taken from the current working directory and written as an absolute path.
        overwrite: replace configs that already exist (default: refuse, nothing is written).

    Returns:
        The written files.

    Raises:
        FileExistsError: a config exists already and ``overwrite`` is false.

    Example:
        >>> init_configs("my-project/configs", data_dir="/data/medlens")  # doctest: +SKIP
        [PosixPath('my-project/configs/anomaly_pneumoniamnist.yaml'), ...]
    """
    out = Path(directory)
    data = Path(data_dir).expanduser().resolve().as_posix()
    targets = {name: out / f"{name}.yaml" for name in list_examples()}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists already ({len(existing)} of {len(targets)} configs); pass --overwrite to replace them")
    out.mkdir(parents=True, exist_ok=True)
    for name, path in targets.items():
        write_text_atomic(path, example_text(name).replace(f"{DATA_DIR}/", f"{data}/"))
    return list(targets.values())
