"""Example configs shipped with the package, so they work from an installed medlens (no clone needed).

Each YAML here is a byte-for-byte copy of a file of the repository's ``configs/`` folder (a test checks), with its
data paths written as ``DATA_DIR/<dataset folder>/...``. The config loader reads such a path below the data folder:
``$MEDLENS_DATA_DIR``, the user cache ``~/.cache/medlens/data``, or a checkout's ``../shared/data``
(:func:`medlens.config.data_dir_candidates`). :func:`init_configs` (``medlens init DIR``) copies them into ``DIR``
unchanged, or with ``--data-dir D`` with ``DATA_DIR`` replaced by the absolute folder ``D``. A few sample images
(``samples/``) come along so ``medlens predict`` has something to read.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from medlens._atomic import write_bytes_atomic, write_text_atomic
from medlens.config import DATA_DIR_PREFIX

#: the placeholder for the data folder in the shipped configs
DATA_DIR = DATA_DIR_PREFIX.rstrip("/")


@dataclass(frozen=True)
class DatasetInfo:
    """One data set the example configs read: its folder below the data folder and how to get it."""

    folder: str
    title: str
    how: str  # one line: automatic download, or where to fetch it and what to put where
    license: str


#: the data sets the examples use, by folder name below the data folder (``DATA_DIR/<folder>/...``)
DATASETS: dict[str, DatasetInfo] = {d.folder: d for d in (
    DatasetInfo("medmnist_pneumoniamnist", "PneumoniaMNIST (MedMNIST v2, 28 px chest X-rays)",
                "downloaded on first use from Zenodo (MD5-checked) into ~/.cache/medlens/medmnist, or put "
                "pneumoniamnist.npz here", "CC BY 4.0"),
    DatasetInfo("medmnist_breastmnist", "BreastMNIST (MedMNIST v2, 28 px breast ultrasound)",
                "downloaded on first use from Zenodo (MD5-checked) into ~/.cache/medlens/medmnist, or put "
                "breastmnist.npz here", "CC BY 4.0"),
    DatasetInfo("nih_chestxray14_nih1000_64px", "NIH ChestX-ray14, 1,000 images at 64 px (\"NIH1000\")",
                "from the NIH release https://nihcc.app.box.com/v/ChestXray-NIHCC: Data_Entry_2017_v2020.csv.gz, "
                "images downsampled to 64 px as {train,valid,test}/{0_normal,1_abnormal}/*.png, and "
                "nih1000_labels.csv (path, Finding Labels, Patient ID, ...)",
                "NIH: unrestricted use, cite Wang et al. 2017"),
    DatasetInfo("ham10000_subset100", "HAM10000 dermoscopy subset with patient metadata",
                "images and HAM10000_metadata.csv from doi:10.7910/DVN/DBW86T (Harvard Dataverse); "
                "subset100_metadata.csv lists the images used (a path column)", "CC BY-NC 4.0"),
    DatasetInfo("kermany_chestxray_224", "Kermany paediatric chest X-rays, 224 px",
                "doi:10.17632/rscbjbr9sj.2 (Mendeley Data), resized to 224 px, as {train,test}/{NORMAL,PNEUMONIA}/*.jpeg",
                "CC BY 4.0"),
)}


def list_examples() -> list[str]:
    """Names of the shipped example configs (file names without ``.yaml``).

    Example:
        >>> "pneumoniamnist" in list_examples()
        True
    """
    return sorted(p.name[: -len(".yaml")] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))


def list_samples() -> list[str]:
    """File names of the shipped sample images (``samples/*.png``).

    Example:
        >>> len(list_samples()) >= 2
        True
    """
    return sorted(p.name for p in resources.files(__name__).joinpath("samples").iterdir() if p.name.endswith(".png"))


def example_text(name: str) -> str:
    """The raw text of one shipped example (with the ``DATA_DIR`` placeholder).

    Raises:
        KeyError: no such example; the message lists the valid names.
    """
    if name not in list_examples():
        raise KeyError(f"unknown example {name!r}; the examples are: {', '.join(list_examples())}")
    return resources.files(__name__).joinpath(f"{name}.yaml").read_text(encoding="utf-8")


def datasets_used(name: str) -> list[str]:
    """The data set folders one example reads (``DATA_DIR/<folder>/...``), in order of appearance.

    Example:
        >>> datasets_used("pneumoniamnist")
        ['medmnist_pneumoniamnist']
    """
    out: list[str] = []
    for line in example_text(name).splitlines():
        code = line.split("#", 1)[0]
        if DATA_DIR_PREFIX in code:
            folder = code.split(DATA_DIR_PREFIX, 1)[1].split("/", 1)[0].strip()
            if folder and folder not in out:
                out.append(folder)
    return out


def init_configs(directory: str | Path, data_dir: str | Path | None = None, overwrite: bool = False) -> list[Path]:
    """Copy every example config (and the sample images, into ``directory/samples``) into ``directory``.

    Args:
        directory: where the configs go (created when missing).
        data_dir: the folder holding the data sets (``medmnist_pneumoniamnist/pneumoniamnist.npz``, ...), written
            into the configs as an absolute path (a relative one is taken from the current working directory).
            None keeps the ``DATA_DIR/`` paths, read at load time from ``$MEDLENS_DATA_DIR`` or
            ``~/.cache/medlens/data``.
        overwrite: replace files that already exist (default: refuse, nothing is written).

    Returns:
        The written configs (the sample images are not listed).

    Raises:
        FileExistsError: a config or sample exists already and ``overwrite`` is false.

    Example:
        >>> init_configs("my-project/configs", data_dir="/data/medlens")  # doctest: +SKIP
        [PosixPath('my-project/configs/anomaly_patchcore.yaml'), ...]
    """
    out = Path(directory)
    prefix = DATA_DIR_PREFIX if data_dir is None else Path(data_dir).expanduser().resolve().as_posix() + "/"
    targets = {name: out / f"{name}.yaml" for name in list_examples()}
    samples = {name: out / "samples" / name for name in list_samples()}
    existing = [str(p) for p in [*targets.values(), *samples.values()] if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists already ({len(existing)} of {len(targets) + len(samples)} files); "
                              "pass --overwrite to replace them")
    (out / "samples").mkdir(parents=True, exist_ok=True)
    for name, path in targets.items():
        write_text_atomic(path, example_text(name).replace(DATA_DIR_PREFIX, prefix))
    src = resources.files(__name__).joinpath("samples")
    for name, path in samples.items():
        write_bytes_atomic(path, src.joinpath(name).read_bytes())
    return list(targets.values())


def init_guidance(directory: str | Path, data_dir: str | Path | None = None) -> list[str]:
    """What ``medlens init`` says after copying: where each data set is (or how to get it), then the next commands.

    Example:
        >>> print("\n".join(init_guidance("my-configs")))  # doctest: +SKIP
        data sets (DATA_DIR/ in the configs is $MEDLENS_DATA_DIR, else ~/.cache/medlens/data):
        ...
    """
    from medlens.config import data_dir_candidates

    out = Path(directory)
    if data_dir is None:
        lines = ["data sets (DATA_DIR/ in the configs is read from $MEDLENS_DATA_DIR if set, else ~/.cache/medlens/data):"]
        roots = data_dir_candidates(out)
    else:
        root = Path(data_dir).expanduser().resolve()
        lines = [f"data sets (the configs read them below {root}):"]
        roots = [root]
    users: dict[str, list[str]] = {}
    own: list[str] = []
    for name in list_examples():
        used = datasets_used(name)
        for folder in used:
            users.setdefault(folder, []).append(name)
        if not used:
            own.append(name)
    for folder, names in users.items():
        info = DATASETS.get(folder)
        found = next((r / folder for r in roots if (r / folder).exists()), None)
        where = f"found at {found}" if found else (info.how if info else "not found")
        title = info.title if info else folder
        lines.append(f"  {folder}/ ({', '.join(names)}): {title}; {where}")
    if own:
        lines.append(f"  your own data ({', '.join(own)}): edit data.path / data.url in the file")
    first = out / "pneumoniamnist.yaml"
    lines += ["next steps:",
              f"  medlens train {first.as_posix()}",
              "  medlens evaluate runs/pneumoniamnist/bundle --split test",
              f"  medlens predict runs/pneumoniamnist/bundle {(out / 'samples').as_posix()}/ --out preds.csv"]
    return lines


__all__ = ["DATASETS", "DatasetInfo", "datasets_used", "example_text", "init_configs", "init_guidance", "list_examples", "list_samples"]
