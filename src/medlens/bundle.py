"""Trained bundles: ``model.safetensors`` + ``manifest.json``, nothing pickled.

The manifest carries everything inference needs: architecture, label space, preprocessing, thresholds,
temperature, metadata encoders, metrics, the resolved config, package versions and intended use. The weights'
SHA-256 is recorded, so a tampered or truncated file fails to load with a clear error.

Bundles are written to a temporary folder beside the target and renamed into place: a failed run never leaves
a partial bundle.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import platform
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medlens._atomic import chmod_as_created, jsonable, write_json_atomic
from medlens.data.labels import LAYOUT, LabelSpace, layout_from_dict
from medlens.data.transforms import Preprocessing
from medlens.ood import OOD_FILE
from medlens.runfolder import replace_dir_atomically, restore_interrupted_replace

if TYPE_CHECKING:  # torch is imported only where a network is built or saved (the ONNX path needs none)
    from torch import nn

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"


class BundleError(ValueError):
    """A bundle is missing, incomplete, tampered with or of an unknown format."""


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("medlens", "torch", "torchvision", "timm", "lightning", "numpy", "albumentations", "onnxruntime"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_temperature(value: Any) -> float | list[float]:
    """The manifest's ``temperature``: a positive number (old bundles, binary/multiclass) or a list of them
    (one per output, multi-label); missing means 1. Raises ValueError naming the field otherwise.

    Example:
        >>> read_temperature([1.5, "2"]), read_temperature(None)
        ([1.5, 2.0], 1.0)
    """
    if value is None or (not isinstance(value, list) and not value):  # old bundles: missing or 0 read as 1
        return 1.0
    vals = value if isinstance(value, list) else [value]
    try:
        out = [float(v) for v in vals]
    except (TypeError, ValueError):
        raise ValueError(f"field 'temperature' must be a positive number or a list of them, not {value!r}") from None
    if not out or not all(v > 0 and v == v and v != float("inf") for v in out):
        raise ValueError(f"field 'temperature' must be a positive number or a list of them, not {value!r}")
    return out if isinstance(value, list) else out[0]


@dataclass
class Manifest:
    """Everything needed to rebuild and use a trained model."""

    architecture: dict[str, Any]
    label_space: LabelSpace
    preprocessing: Preprocessing
    thresholds: list[float] = field(default_factory=list)
    temperature: float | list[float] = 1.0  # one per output, or one for all
    metadata_encoder: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    weights_source: str = "raw"  # "raw" or "ema": which weights were kept
    intended_use: str = ""
    #: what the model was trained on (``medlens.provenance``): source kind and name, n per split and class, date,
    #: population, intended use, ``generated``; None: a bundle written before it was recorded
    training_data: dict[str, Any] | None = None
    #: the task's own section (operating-point details, score settings, intervals): written and read by the task only
    task_section: dict[str, Any] | None = None
    #: the out-of-distribution gate's record (method, threshold, sha256 of ``ood.safetensors``); None: the bundle has none
    ood: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=package_versions)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    weights_sha256: str | None = None
    format_version: int = FORMAT_VERSION

    @property
    def task(self) -> str:
        return self.label_space.task

    @property
    def label_names(self) -> list[str]:
        return list(self.label_space.names)

    def to_dict(self) -> dict[str, Any]:
        return jsonable({
            "format": "medlens-bundle",
            "format_version": self.format_version,
            "created": self.created,
            "task": self.label_space.task,
            "label_names": list(self.label_space.names),
            "label_layout": self.label_space.to_dict()["layout"],
            "architecture": self.architecture,
            "preprocessing": self.preprocessing.to_dict(),
            "thresholds": self.thresholds,
            "temperature": self.temperature,
            "metadata_encoder": self.metadata_encoder,
            "task_section": self.task_section,
            "ood": self.ood,
            "weights_source": self.weights_source,
            "weights_sha256": self.weights_sha256,
            "metrics": self.metrics,
            "history": self.history,
            "intended_use": self.intended_use,
            "training_data": self.training_data,
            "versions": self.versions,
            "config": self.config,
            "extra": self.extra,
        })

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "") -> Manifest:
        if d.get("format") != "medlens-bundle":
            raise BundleError(f"{source}: not a medlens bundle manifest")
        if int(d.get("format_version", 0)) > FORMAT_VERSION:
            raise BundleError(f"{source}: bundle format {d.get('format_version')} is newer than this medlens supports ({FORMAT_VERSION})")
        try:
            d = migrate_manifest(d)
            space = LabelSpace(tuple(d["label_names"]), d["task"], layout_from_dict(d["label_layout"]))
            arch = d["architecture"]
            if not isinstance(arch, dict):
                raise BundleError(f"{source}: manifest field 'architecture' must be an object")
            thresholds = _check_thresholds(d.get("thresholds"), space.num_outputs, source)
            temperature = _check_temperature(d.get("temperature", 1.0), space.num_outputs, source)
            k = arch.get("num_outputs")
            if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k != space.num_outputs):
                raise BundleError(f"{source}: manifest field 'label_names': {space.num_labels} {space.task} labels do not fit the "
                                  f"network head (architecture.num_outputs is {k!r}; {space.num_outputs} expected)")
            return cls(
                architecture=arch,
                label_space=space,
                preprocessing=Preprocessing.from_dict(d["preprocessing"]),
                thresholds=thresholds,
                temperature=temperature,
                metadata_encoder=d.get("metadata_encoder"),
                metrics=d.get("metrics") or {},
                history=d.get("history") or [],
                config=d.get("config") or {},
                weights_source=d.get("weights_source", "raw"),
                intended_use=d.get("intended_use", ""),
                training_data=d.get("training_data") if isinstance(d.get("training_data"), dict) else None,
                task_section=d.get("task_section"),
                ood=d.get("ood") if isinstance(d.get("ood"), dict) else None,
                extra=d.get("extra") or {},
                versions=d.get("versions") or {},
                created=d.get("created", ""),
                weights_sha256=d.get("weights_sha256"),
                format_version=int(d.get("format_version", FORMAT_VERSION)),
            )
        except BundleError:
            raise
        except KeyError as e:
            raise BundleError(f"{source}: manifest field {e.args[0]!r} is missing") from None
        except (TypeError, ValueError) as e:  # wrong types, or a label space that contradicts its task
            raise BundleError(f"{source}: invalid manifest ({e})") from None


def migrate_manifest(d: dict[str, Any]) -> dict[str, Any]:
    """A manifest of an older layout in today's (a copy; the one place that knows the old layouts).

    * ``anomaly`` (the detector's section, before tasks owned theirs) becomes ``task_section``;
    * a manifest without ``label_layout`` predates it: the reader kinds have their known layout, and the one other
      kind written then (the normal-vs-abnormal view) was laid out like ``binary``: two names, one output.
    """
    d = dict(d)
    old_section = d.pop("anomaly", None)  # format 1's name of the detector's section
    if d.get("task_section") is None and old_section is not None:
        d["task_section"] = old_section
    if d.get("label_layout") is None:
        lay = LAYOUT.get(d.get("task"), LAYOUT["binary"])  # type: ignore[arg-type]
        d["label_layout"] = {"exclusive": lay.exclusive, "single_output": lay.single_output, "values": lay.values}
    return d


def _finite_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_thresholds(value: Any, num_outputs: int, source: str) -> list[float]:
    """``thresholds``: empty (argmax decisions) or one finite number per network output."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BundleError(f"{source}: manifest field 'thresholds' must be a list of numbers, got {type(value).__name__}")
    for i, x in enumerate(value):
        if not _finite_number(x):
            raise BundleError(f"{source}: manifest field 'thresholds[{i}]': {x!r} is not a finite number")
    if value and len(value) != num_outputs:
        raise BundleError(f"{source}: manifest field 'thresholds': {len(value)} values for {num_outputs} outputs")
    return [float(x) for x in value]


def _check_temperature(value: Any, num_outputs: int, source: str) -> float | list[float]:
    """``temperature``: one positive finite number, or one per network output (null: 1, uncalibrated)."""
    if value is None:
        return 1.0
    if isinstance(value, list):
        if len(value) != num_outputs:
            raise BundleError(f"{source}: manifest field 'temperature': {len(value)} values for {num_outputs} outputs")
        for i, x in enumerate(value):
            if not (_finite_number(x) and x > 0):
                raise BundleError(f"{source}: manifest field 'temperature[{i}]': {x!r} is not a positive number")
        return [float(x) for x in value]
    if not (_finite_number(value) and value > 0):
        raise BundleError(f"{source}: manifest field 'temperature': {value!r} is not a positive number")
    return float(value)


@dataclass
class Bundle:
    """A loaded bundle: the network (eval mode, CPU) and its manifest."""

    model: nn.Module
    manifest: Manifest
    path: Path | None = None


def save_bundle(model: nn.Module, manifest: Manifest, path: str | Path, overwrite: bool = True, ood: Any = None) -> Path:
    """Write a bundle folder atomically (temp folder, then :func:`~medlens.runfolder.replace_dir_atomically`).

    ``ood``: an :class:`~medlens.ood.OodDetector` written beside the weights (``ood.safetensors``, its record in
    ``manifest.ood``); None keeps the manifest's record and copies nothing.

    Example:
        >>> save_bundle(model, manifest, "runs/demo/bundle")  # doctest: +SKIP
    """
    from safetensors.torch import save_file

    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    restore_interrupted_replace(dest)  # a save killed between its renames: the previous bundle first
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{dest} exists")
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp"))
    try:
        chmod_as_created(tmp, directory=True)  # mkdtemp makes 0700: the bundle folder follows the user's umask
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        chmod_as_created(tmp / WEIGHTS)  # safetensors writes 0600
        manifest.weights_sha256 = sha256_file(tmp / WEIGHTS)
        if ood is not None:
            manifest.ood = ood.save(tmp)
            chmod_as_created(tmp / OOD_FILE)
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest.to_dict(), f, indent=2)
        replace_dir_atomically(tmp, dest)  # the old bundle or the new one exists at every instant
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def read_manifest(path: str | Path) -> Manifest:
    """Read and validate a bundle's manifest (the folder or the manifest file)."""
    p = Path(path)
    mf = p / MANIFEST if p.is_dir() else p
    if not mf.is_file():
        raise BundleError(f"{p}: no {MANIFEST} (not a medlens bundle folder)")
    try:
        d = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{mf}: manifest is not valid JSON ({e})") from None
    return Manifest.from_dict(d, str(mf))


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Load a bundle folder: rebuild the network from the manifest and load the safetensors weights.

    No pickled code is ever executed. With ``verify`` the weights' SHA-256 must match the manifest.

    Example:
        >>> b = load_bundle("runs/pneumoniamnist/bundle")  # doctest: +SKIP
        >>> b.manifest.label_names  # doctest: +SKIP
        ['normal', 'pneumonia']
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from medlens.models import ArchitectureError, check_architecture, model_from_manifest
    from medlens.runfolder import readable_dir

    p = readable_dir(Path(path))  # where a replacement without atomic exchange was cut short, the old bundle
    if not p.is_dir():
        raise BundleError(f"{p}: bundle folder not found")
    manifest = read_manifest(p)
    wf = p / WEIGHTS
    if not wf.is_file():
        raise BundleError(f"{p}: {WEIGHTS} is missing")
    where = f"{p / MANIFEST}: architecture"
    try:  # bounds before anything is read or allocated: a 2 KB manifest cannot ask for a 12 GB network
        check_architecture(manifest.architecture, where, weights_bytes=wf.stat().st_size)
    except ArchitectureError as e:
        raise BundleError(str(e)) from None
    if verify and not manifest.weights_sha256:
        raise BundleError(f"{p / MANIFEST}: manifest field 'weights_sha256' is missing (cannot verify {WEIGHTS})")
    if verify and sha256_file(wf) != manifest.weights_sha256:
        raise BundleError(f"{wf}: checksum does not match the manifest (file modified or corrupt)")
    try:
        state = load_file(str(wf))
    except (SafetensorError, OSError, ValueError) as e:
        raise BundleError(f"{wf}: not a valid safetensors file ({e})") from None
    model = model_from_manifest(manifest.architecture, where)  # never pretrained: the weights are the bundle's
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise BundleError(f"{wf}: weights do not fit the architecture in the manifest ({str(e)[:300]})") from None
    model.eval()
    return Bundle(model=model, manifest=manifest, path=p)


def update_manifest(path: str | Path, **fields: Any) -> Manifest:
    """Change manifest fields of an existing bundle (e.g. evaluation results), atomically."""
    p = Path(path)
    m = read_manifest(p)
    for k, v in fields.items():
        if not hasattr(m, k):
            raise AttributeError(f"manifest has no field {k!r}")
        setattr(m, k, v)
    write_json_atomic(p / MANIFEST, m.to_dict())
    return m
