"""``kind: medmnist`` -- the official MedMNIST v2/v3 ``.npz`` files.

A local file is used when present (``data.path``, or ``<root>/<flag>[_<size>].npz`` with root from
``data.root``, ``$MEDLENS_DATA_DIR`` or ``~/.cache/medlens/medmnist``). Otherwise, with ``download: true``, the
file is fetched from the MedMNIST Zenodo record and its MD5 checked before it is renamed into place.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from medlens._atomic import chmod_as_created
from medlens.data.labels import LabelSpace
from medlens.data.readers import READERS
from medlens.data.samples import SampleTable

log = logging.getLogger("medlens.data")

ZENODO_URL = "https://zenodo.org/records/10519652/files/{name}?download=1"

# flag -> (task, label names, {size: md5}); from medmnist's INFO table (v3).
MEDMNIST_INFO: dict[str, tuple[str, list[str], dict[int, str]]] = {
    "pneumoniamnist": ("binary", ["normal", "pneumonia"], {
        28: "28209eda62fecd6e6a2d98b1501bb15f", 64: "8f4eceb4ccffa70c672198ea285246c6",
        128: "05b46931834c231683c68f40c47b2971", 224: "d6a3c71de1b945ea11211b03746c1fe1"}),
    "breastmnist": ("binary", ["malignant", "normal, benign"], {
        28: "750601b1f35ba3300ea97c75c52ff8f6", 64: "742edef2a1fd1524b2efff4bd7ba9364",
        128: "363e4b3f8d712e9b5de15470a2aaadf1", 224: "b56378a6eefa9fed602bb16d192d4c8b"}),
    "dermamnist": ("multiclass", [
        "actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma", "benign keratosis-like lesions",
        "dermatofibroma", "melanoma", "melanocytic nevi", "vascular lesions"], {
        28: "0744692d530f8e62ec473284d019b0c7", 64: "b70a2f5635c6199aeaa28c31d7202e1f",
        128: "2defd784463fa5243564e855ed717de1", 224: "8974907d8e169bef5f5b96bc506ae45d"}),
    "bloodmnist": ("multiclass", [
        "basophil", "eosinophil", "erythroblast", "immature granulocytes", "lymphocyte", "monocyte",
        "neutrophil", "platelet"], {
        28: "7053d0359d879ad8a5505303e11de1dc", 64: "2b94928a2ae4916078ca51e05b6b800b",
        128: "adace1e0ed228fccda1f39692059dd4c", 224: "b718ff6835fcbdb22ba9eacccd7b2601"}),
    "chestmnist": ("multilabel", [
        "atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia", "pneumothorax",
        "consolidation", "edema", "emphysema", "fibrosis", "pleural", "hernia"], {
        28: "02c8a6516a18b556561a56cbdd36c4a8", 64: "9de6cd0b934ebb5b7426cfba5efbae16",
        128: "db107e5590b27930b62dbaf558aebee3", 224: "45bd33e6f06c3e8cdb481c74a89152aa"}),
    "pathmnist": ("multiclass", [
        "adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle", "normal colon mucosa",
        "cancer-associated stroma", "colorectal adenocarcinoma epithelium"], {
        28: "a8b06965200029087d5bd730944a56c1", 64: "55aa9c1e0525abe5a6b9d8343a507616",
        128: "ac42d08fb904d92c244187169d1fd1d9", 224: "2c51a510bcdc9cf8ddb2af93af1eadec"}),
    "organamnist": ("multiclass", [
        "bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver", "lung-left",
        "lung-right", "pancreas", "spleen"], {
        28: "68e3f8846a6bd62f0c9bf841c0d9eacc", 64: "2dcccc29b88e6da5a01161ef20cda288",
        128: "eeae80d0a227a8d099027e1b3cfd3b60", 224: "50747347e05c87dd3aaf92c49f9f3170"}),
}

_SPLITS = (("train", "train"), ("val", "val"), ("test", "test"))


class DatasetNotAvailable(FileNotFoundError):
    """The dataset file is not on disk and could not be downloaded."""


def default_root() -> Path:
    env = os.environ.get("MEDLENS_DATA_DIR")
    return Path(env) if env else Path.home() / ".cache" / "medlens" / "medmnist"


def file_name(flag: str, size: int) -> str:
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def download_medmnist(flag: str, size: int, root: Path, timeout: float = 30.0) -> Path:
    """Download ``<flag>[_size].npz`` into ``root`` with an MD5 check; atomic (temp file, then rename)."""
    if flag not in MEDMNIST_INFO:
        raise DatasetNotAvailable(f"no download address known for MedMNIST flag {flag!r}; known: {sorted(MEDMNIST_INFO)}")
    name = file_name(flag, size)
    dest = root / name
    root.mkdir(parents=True, exist_ok=True)
    url = ZENODO_URL.format(name=name)
    expected = MEDMNIST_INFO[flag][2].get(size)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{name}.", suffix=".part")
    try:
        chmod_as_created(tmp)  # a shared data cache: the user's umask decides, not mkstemp's 0600
        log.info("downloading %s", url)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - fixed https URL
            while block := resp.read(1 << 20):
                out.write(block)
        got = md5sum(Path(tmp))
        if expected and got != expected:
            raise DatasetNotAvailable(f"{url}: MD5 mismatch (got {got}, expected {expected}); file discarded")
        os.replace(tmp, dest)
        return dest
    except DatasetNotAvailable:
        raise
    except Exception as e:
        raise DatasetNotAvailable(
            f"MedMNIST {flag!r} is not at {dest} and downloading it failed ({type(e).__name__}: {e}). "
            f"Offline? Put the official file at {dest}, or set data.path."
        ) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def locate_medmnist(flag: str | None, path: str | None, root: str | None, size: int, download: bool) -> Path:
    """Find (or fetch) the ``.npz`` file for a config."""
    if path:
        p = Path(path)
        if p.is_file():
            return p
        if not download or flag is None:
            raise DatasetNotAvailable(f"data.path: MedMNIST file not found: {p}")
    if flag is None:
        raise ValueError("data: a medmnist source needs data.flag or data.path")
    r = Path(root) if root else default_root()
    p = r / file_name(flag, size)
    if p.is_file():
        return p
    if not download:
        raise DatasetNotAvailable(f"MedMNIST file not found: {p} (download is off)")
    try:
        return download_medmnist(flag, size, r)
    except DatasetNotAvailable as e:
        if path:  # say that the configured file is missing too, not only the cache location
            raise DatasetNotAvailable(f"data.path {path} not found, and {e}") from None
        raise


def load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:
        raise ValueError(f"{path}: not a readable MedMNIST .npz ({type(e).__name__}: {e})") from None


def table_from_npz(data: dict[str, np.ndarray], flag: str, label_names: list[str] | None, task: str | None, source: str) -> SampleTable:
    """Build a SampleTable from MedMNIST arrays (train/val/test images and labels)."""
    info = MEDMNIST_INFO.get(flag)
    images, labels, splits, ids = [], [], [], []
    for key, split in _SPLITS:
        for part in ("images", "labels"):
            if f"{key}_{part}" not in data:
                raise ValueError(f"{source}: key {key}_{part} missing; keys are {sorted(data)}")
        x, y = data[f"{key}_images"], data[f"{key}_labels"]
        if len(x) != len(y):
            raise ValueError(f"{source}: {key}_images has {len(x)} images but {key}_labels {len(y)} labels")
        images.append(x)
        labels.append(y.reshape(len(y), int(np.prod(y.shape[1:])) if y.ndim > 1 else 1))  # an empty split keeps its columns
        splits += [split] * len(x)
        ids += [f"{flag}/{split}/{i}" for i in range(len(x))]
    x = np.concatenate(images).astype(np.uint8)
    y = np.concatenate(labels)
    if info:
        src_task, names, _ = info
    else:
        src_task = "multilabel" if y.shape[1] > 1 else ("binary" if y.max() == 1 else "multiclass")
        names = [str(i) for i in range(y.shape[1] if y.shape[1] > 1 else int(y.max()) + 1)]
    names = list(label_names) if label_names else names
    the_task = task or src_task
    space = LabelSpace(tuple(names), the_task)  # type: ignore[arg-type]
    if src_task == "multilabel":
        if y.shape[1] != len(names):
            raise ValueError(f"{source}: {y.shape[1]} label columns but {len(names)} label names")
        targets = y.astype(np.float32)
    else:
        k = len(names)
        if int(y.max()) >= k:
            raise ValueError(f"{source}: label value {int(y.max())} but only {k} label names")
        targets = np.eye(k, dtype=np.float32)[y[:, 0].astype(np.int64)]
    return SampleTable(space, ids, x, targets, None, splits, None, source=source)


@READERS.register("medmnist")
def read_medmnist(cfg) -> SampleTable:
    """Read a MedMNIST ``.npz``; images stay in memory as uint8 (N, H, W[, 3])."""
    flag = cfg.flag
    if flag is None and cfg.path:
        flag = Path(cfg.path).stem.split("_")[0]
    path = locate_medmnist(flag, cfg.path, cfg.root, cfg.size, cfg.download)
    table = table_from_npz(load_npz(path), flag or path.stem, cfg.label_names, cfg.task, str(path))
    table.check_nonempty_classes()
    return table
