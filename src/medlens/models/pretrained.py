"""Pretrained backbone weights: where they come from, whether they are here, and what was loaded.

``model.pretrained`` is ``false``, ``true`` (timm's default pretrained tag for the backbone, e.g.
``timm/resnet18.a1_in1k`` for ``resnet18``), a Hugging Face hub id (``timm/resnet18.tv_in1k``, optionally
``hf-hub:`` prefixed and ``@revision`` suffixed), or a local file (``.safetensors``; ``.pth``/``.pt``/``.bin``
are read with ``torch.load(weights_only=True)``).

Hub weights are looked up in the Hugging Face cache exactly where ``huggingface_hub`` keeps them
(``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``; the environment is read at call
time), and downloaded there when online. With ``HF_HUB_OFFLINE=1`` nothing is downloaded: a file missing from
the cache is a :class:`PretrainedWeightsError` that says where to put it. Without it, a file missing from the cache
is fetched only after a quick look at the hub (:func:`hub_unreachable`, a few seconds at most): an unreachable hub
is said at once, before any data is read, instead of after a minute of retries that end in "holds none of the files".
A local file is opened (its header, or its weights memory-mapped) when it is checked, so a garbage file is one line
naming ``model.pretrained`` before any data is read. timm then loads the resolved file
through its normal path (``timm.create_model(pretrained=True, pretrained_cfg_overlay={"file": ...})``), which
drops the ImageNet classifier and sums a 3-channel first convolution over RGB for 1-channel inputs.

A local file whose tensor names are not timm's (a third-party self-supervised checkpoint: a DINO ``teacher``, a
Lightning ``state_dict``, ``module.``/``backbone.``/``encoder.`` prefixes) is read by :func:`load_weights_file`:
unwrapped, prefixes stripped, matched by name and shape; the match report (matched, missing, unexpected, shape
mismatches) is logged and stored in the manifest, and a file matching under half the backbone's tensors is refused.

:func:`resolve_pretrained` returns what the manifest records: the source and the SHA-256 of the exact file
loaded. :func:`check_pretrained_available` answers "will this work?" without building a model or hashing.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("medlens.models")

#: Files a timm hub repository holds weights in, in the order timm tries them (safetensors first).
HUB_WEIGHT_FILES: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".tar", ".ckpt")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")
_TRUE = {"1", "ON", "YES", "TRUE"}  # how huggingface_hub reads boolean environment variables
#: seconds the look at the hub may take (connect + first answer)
HUB_PROBE_TIMEOUT_S = 5.0


class PretrainedWeightsError(ValueError):
    """Pretrained weights cannot be had (offline and not cached, a missing file, or a file that does not fit).

    The message is one line naming the backbone, the hub id or file, and how to provide the weights.
    """


# ------------------------------------------------------------------------------------------ environment
def hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder, from the environment as it is now (as ``huggingface_hub`` resolves it).

    Example:
        >>> hub_cache_dir().name
        'hub'
    """
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.path.expanduser(os.environ[var])))
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(os.path.expandvars(os.path.expanduser(home))) / "hub"


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, now or when ``huggingface_hub`` was imported."""
    if (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").upper() in _TRUE:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - huggingface_hub is a timm dependency
        return True


def hub_endpoint() -> str:
    """The hub's address: ``$HF_ENDPOINT`` as it is now, else huggingface_hub's (``https://huggingface.co``)."""
    if os.environ.get("HF_ENDPOINT"):
        return os.environ["HF_ENDPOINT"].rstrip("/")
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT).rstrip("/")
    except ImportError:  # pragma: no cover
        return "https://huggingface.co"


def hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the hub cannot be reached (no network, refused, timed out, DNS), or None when it answers.

    One ``HEAD`` request to :func:`hub_endpoint` through the environment's proxies; any HTTP answer, an error
    status included, means the hub is reachable.

    Example:
        >>> hub_unreachable() is None or isinstance(hub_unreachable(), str)  # doctest: +SKIP
        True
    """
    import urllib.error
    import urllib.request

    url = hub_endpoint()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD", headers={"User-Agent": "medlens"}), timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # it answered
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        return f"{url} cannot be reached ({type(reason).__name__ if not str(reason) else str(reason)[:160]})"


# ------------------------------------------------------------------------------------------ parsing
def _default_hub_id(backbone: str) -> str:
    """timm's default pretrained tag of a backbone as a hub id (``resnet18`` -> ``timm/resnet18.a1_in1k``)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(backbone)
    if cfg is None:
        raise PretrainedWeightsError(f"model.pretrained: timm has no pretrained weights for backbone {backbone!r}; set model.pretrained: false, a hub id or a local file")
    hub_id = cfg.hf_hub_id
    if not hub_id:
        url = f" (download {cfg.url} and" if cfg.url else " ("
        raise PretrainedWeightsError(f"model.pretrained: backbone {backbone!r} has no Hugging Face hub weights in timm{url} set model.pretrained: /path/to/the/file)")
    if cfg.hf_hub_filename:
        return f"{hub_id}::{cfg.hf_hub_filename}"
    return hub_id


def parse_pretrained(backbone: str, pretrained: bool | str | None) -> tuple[str, str] | None:
    """What ``model.pretrained`` names: ``("hub", "org/name[@revision]")``, ``("file", "/abs/path")`` or None.

    Example:
        >>> parse_pretrained("resnet18", True)
        ('hub', 'timm/resnet18.a1_in1k')
        >>> parse_pretrained("resnet18", "hf-hub:timm/resnet18.tv_in1k")
        ('hub', 'timm/resnet18.tv_in1k')
    """
    if pretrained is None or pretrained is False:
        return None
    if pretrained is True:
        return "hub", _default_hub_id(backbone)
    if not isinstance(pretrained, str) or not pretrained.strip():
        raise PretrainedWeightsError(f"model.pretrained: expected true/false, a hub id or a file path, got {pretrained!r}")
    s = pretrained.strip()
    if s.lower() in ("true", "false"):
        return parse_pretrained(backbone, s.lower() == "true")
    if s.startswith("hf-hub:"):
        return "hub", s.removeprefix("hf-hub:")
    p = Path(os.path.expanduser(s))
    if p.exists() or s.lower().endswith(_FILE_SUFFIXES) or s.startswith((".", "/", "~")):
        return "file", str(p.resolve())
    if _HUB_ID.fullmatch(s):
        return "hub", s
    raise PretrainedWeightsError(f"model.pretrained: {s!r} is neither an existing file nor a hub id such as 'timm/{backbone}.<tag>'")


def _split_hub(ref: str) -> tuple[str, str | None, tuple[str, ...]]:
    """``org/name[@revision][::filename]`` -> (repo id, revision, candidate file names)."""
    ref, _, filename = ref.partition("::")
    repo, _, revision = ref.partition("@")
    return repo, revision or None, ((filename,) if filename else HUB_WEIGHT_FILES)


def _offline_help(backbone: str, repo: str, files: tuple[str, ...], cache: Path, why: str = "HF_HUB_OFFLINE is set") -> str:
    folder = cache / f"models--{repo.replace('/', '--')}"
    return (
        f"model.pretrained: no weights for backbone {backbone!r} (hub id {repo}): not in the Hugging Face cache {cache} and "
        f"{why}; download them once online, or place the file at {folder}/snapshots/<commit>/{files[0]} "
        f"with {folder}/refs/main holding <commit>, or set model.pretrained: /path/to/{files[0]}"
    )


def _cached(repo: str, revision: str | None, files: tuple[str, ...], cache: Path) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for name in files:
        hit = try_to_load_from_cache(repo, name, cache_dir=str(cache), revision=revision)
        if isinstance(hit, str) and os.path.isfile(hit):
            return hit
    return None


# ------------------------------------------------------------------------------------------ public API
def check_pretrained_available(backbone: str, pretrained: bool | str | None) -> dict[str, Any] | None:
    """Whether ``model.pretrained`` can be honoured, without building the model or touching the network.

    Call it before reading data, so that an offline run with an empty cache fails in a second, not after the
    dataset scan.

    Args:
        backbone: the timm model name (``model.backbone``).
        pretrained: ``model.pretrained``.

    Returns:
        None when ``pretrained`` is false; else ``{"source": ..., "file": path or None}``, where ``file`` is
        None when the weights are not cached yet and will be downloaded (online).

    Raises:
        PretrainedWeightsError: a missing local file, or hub weights not cached while ``HF_HUB_OFFLINE`` is set.

    Example:
        >>> check_pretrained_available("resnet18", False) is None
        True
    """
    what = parse_pretrained(backbone, pretrained)
    if what is None:
        return None
    kind, ref = what
    if kind == "file":
        if not os.path.isfile(ref):
            raise PretrainedWeightsError(f"model.pretrained: weights file not found: {ref} (backbone {backbone!r})")
        weight_names(ref)  # opened now: a garbage file is one line before any data is read
        return {"source": ref, "file": ref}
    repo, revision, files = _split_hub(ref)
    cache = hub_cache_dir()
    hit = _cached(repo, revision, files, cache)
    if hit is None and hub_offline():
        raise PretrainedWeightsError(_offline_help(backbone, repo, files, cache))
    if hit is None and (why := hub_unreachable()) is not None:  # seconds, not a minute of retries
        raise PretrainedWeightsError(_offline_help(backbone, repo, files, cache, f"{why}; with HF_HUB_OFFLINE=1 nothing is tried"))
    return {"source": f"hf-hub:{repo}" + (f"@{revision}" if revision else ""), "file": hit}


def resolve_pretrained(backbone: str, pretrained: bool | str | None) -> dict[str, Any] | None:
    """The weights file ``model.pretrained`` names, fetched into the Hugging Face cache if needed, and its SHA-256.

    Args:
        backbone: the timm model name.
        pretrained: ``model.pretrained`` (false, true, a hub id or a file path).

    Returns:
        None when ``pretrained`` is false, else ``{"source", "revision", "file", "sha256"}``: ``source`` is
        ``hf-hub:<repo id>`` or the file's absolute path, ``revision`` the hub snapshot (commit) the file came
        from (None for a local file), ``file`` the path timm loads, ``sha256`` that file's hash. A manifest
        records ``{"source", "revision", "sha256"}`` (``file`` is a path on this machine).

    Raises:
        PretrainedWeightsError: one line naming the backbone and hub id or file, and how to provide it offline.

    Example:
        >>> info = resolve_pretrained("resnet18", True)  # doctest: +SKIP
        >>> info["source"], len(info["sha256"])  # doctest: +SKIP
        ('hf-hub:timm/resnet18.a1_in1k', 64)
    """
    found = check_pretrained_available(backbone, pretrained)
    if found is None:
        return None
    path = found["file"]
    if path is None:  # online, not cached: download into the cache the way timm would
        repo, revision, files = _split_hub(parse_pretrained(backbone, pretrained)[1])
        path = _download(backbone, repo, revision, files)
    revision = None
    parts = Path(path).parts
    if "snapshots" in parts:  # <cache>/models--org--name/snapshots/<commit>/<file>
        revision = parts[parts.index("snapshots") + 1]
    return {"source": found["source"], "revision": revision, "file": str(path), "sha256": file_sha256(path)}


def _download(backbone: str, repo: str, revision: str | None, files: tuple[str, ...]) -> str:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    cache = hub_cache_dir()
    last: Exception | None = None
    for name in files:
        try:
            return hf_hub_download(repo, name, revision=revision, cache_dir=str(cache))
        except LocalEntryNotFoundError:  # (an EntryNotFoundError too) the hub did not answer and the cache has nothing
            why = f"the hub at {hub_endpoint()} did not answer; with HF_HUB_OFFLINE=1 nothing is tried"
            raise PretrainedWeightsError(_offline_help(backbone, repo, files, cache, why)) from None
        except EntryNotFoundError as e:  # the hub answered: no such file; try the next name (pytorch_model.bin)
            last = e
        except Exception as e:  # no network, unknown repository, gated repository, ...
            why = f"the download failed ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
            raise PretrainedWeightsError(_offline_help(backbone, repo, files, cache, why)) from None
    raise PretrainedWeightsError(f"model.pretrained: hub repository {repo} holds none of {list(files)} (backbone {backbone!r}); {type(last).__name__}")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks; cached per (path, size, mtime).

    Example:
        >>> file_sha256(__file__) == file_sha256(__file__)
        True
    """
    st = os.stat(path)
    return _sha256(os.path.realpath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weight_names(path: str | Path) -> set[str]:
    """Tensor names in a weights file, as timm's loader sees them (``module.`` stripped, EMA weights preferred).

    A ``.safetensors`` file is read for its header only; a torch file is memory-mapped, weights only.
    """
    p = str(path)
    try:
        return _weight_names(p)
    except PretrainedWeightsError:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors, pickle, zip and torch each raise their own kinds
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise PretrainedWeightsError(f"model.pretrained: {p} is not a readable weights file ({type(e).__name__}"
                                     f"{': ' + first if first else ''}); give a .safetensors or a weights-only torch file") from None


def _weight_names(p: str) -> set[str]:
    if p.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(p, framework="pt") as f:
            names = list(f.keys())
    else:
        import torch

        try:
            sd = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
            sd = torch.load(p, map_location="cpu", weights_only=True)
        if isinstance(sd, dict):
            for key in ("state_dict_ema", "model_ema", "state_dict", "model"):  # timm's load_state_dict order
                if isinstance(sd.get(key), dict):
                    sd = sd[key]
                    break
        names = list(sd) if isinstance(sd, dict) else []
    return {n.removeprefix("module.") for n in names}


def missing_backbone_weights(backbone_keys: list[str], path: str | Path) -> list[str]:
    """Backbone tensors a weights file does not hold (timm loads non-strictly once the classifier is dropped,
    so a file with other tensor names would otherwise leave the network silently random).

    Example:
        >>> missing_backbone_weights(["conv1.weight"], __file__)  # doctest: +SKIP
    """
    have = weight_names(path)
    return [k for k in backbone_keys if k not in have]


# ------------------------------------------------------------------------------------------ third-party checkpoints
#: Keys a checkpoint nests its weights under, tried in this order at each level: timm's EMA copies first (as timm's
#: loader does), then Lightning/most trainers (``state_dict``), DINO/iBOT (``teacher`` before ``student``), others.
NESTED_KEYS: tuple[str, ...] = ("state_dict_ema", "model_ema", "state_dict", "teacher", "model", "student")
#: Prefixes stripped from a tensor name the backbone does not know (repeatedly: ``module.backbone.conv1.weight``):
#: DDP (``module.``), DINO heads (``backbone.``, ``teacher.``), MoCo/SimCLR (``encoder.``), wrappers (``model.``),
#: torch.compile (``_orig_mod.``).
STRIP_PREFIXES: tuple[str, ...] = ("module.", "backbone.", "teacher.", "encoder.", "model.", "_orig_mod.")
#: A file must match at least this share of the backbone's tensors, or it is refused (random weights in disguise).
MIN_MATCH_FRACTION = 0.5


def read_weights_file(path: str | Path) -> tuple[dict[str, Any], list[str]]:
    """The tensors of a ``.safetensors`` or weights-only torch file, unwrapped from nested dicts.

    Returns:
        (name -> tensor, the keys descended through, e.g. ``["teacher"]``).

    Raises:
        PretrainedWeightsError: unreadable, needs code to unpickle, or holds no tensors.

    Example:
        >>> read_weights_file("w.safetensors")  # doctest: +SKIP
        ({'conv1.weight': tensor(...), ...}, [])
    """
    import torch

    p = str(path)
    try:
        if p.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd: Any = load_file(p)
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)  # never unpickles code
    except Exception as e:  # noqa: BLE001 - safetensors, pickle, zip and torch each raise their own kinds
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise PretrainedWeightsError(f"model.pretrained: {p} is not a readable weights file ({type(e).__name__}"
                                     f"{': ' + first if first else ''}); give a .safetensors or a weights-only torch file") from None
    nested: list[str] = []
    while isinstance(sd, dict) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
        key = next((k for k in NESTED_KEYS if isinstance(sd.get(k), dict)), None)
        if key is None:
            break
        nested.append(key)
        sd = sd[key]
    tensors = {str(k): v for k, v in sd.items() if isinstance(v, torch.Tensor)} if isinstance(sd, dict) else {}
    if not tensors:
        top = list(sd)[:5] if isinstance(sd, dict) else type(sd).__name__
        raise PretrainedWeightsError(f"model.pretrained: {p} holds no tensors (top-level keys {top}; weights are looked "
                                     f"for under {list(NESTED_KEYS)})")
    return tensors, nested


def _strip_prefixes(name: str, known: Any) -> tuple[str, list[str]]:
    stripped: list[str] = []
    while name not in known:
        pre = next((p for p in STRIP_PREFIXES if name.startswith(p)), None)
        if pre is None:
            break
        name = name[len(pre) :]
        stripped.append(pre)
    return name, stripped


def match_weights(target: dict[str, Any], source: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Map a file's tensors onto a backbone's state dict: prefixes stripped, an RGB first convolution summed for a
    one-channel input, misshapen tensors left out.

    Returns:
        (the tensors to load, the match report ``{"backbone_tensors", "matched", "missing", "unexpected",
        "shape_mismatches", "prefixes_stripped", "examples"}``).

    Example:
        >>> import torch
        >>> _, r = match_weights({"w": torch.zeros(2)}, {"module.w": torch.ones(2), "head.b": torch.ones(1)})
        >>> (r["matched"], r["missing"], r["unexpected"], r["prefixes_stripped"])
        (1, 0, 1, ['module.'])
    """
    loaded: dict[str, Any] = {}
    unexpected: list[str] = []
    shape: list[str] = []
    prefixes: dict[str, None] = {}
    for key, v in source.items():
        name, stripped = _strip_prefixes(key, target)
        if name not in target or name in loaded:
            unexpected.append(key)
            continue
        t = target[name]
        if v.shape != t.shape and v.ndim == 4 and t.ndim == 4 and t.shape[1] == 1 and v.shape[1] == 3 \
                and v.shape[0] == t.shape[0] and v.shape[2:] == t.shape[2:]:
            v = v.sum(dim=1, keepdim=True)  # an RGB stem for grey input, as timm adapts its own weights
        if v.shape != t.shape:
            shape.append(f"{name} {tuple(v.shape)}->{tuple(t.shape)}")
            continue
        loaded[name] = v
        prefixes.update(dict.fromkeys(stripped))
    missing = [k for k in target if k not in loaded]
    report = {
        "backbone_tensors": len(target), "matched": len(loaded), "missing": len(missing), "unexpected": len(unexpected),
        "shape_mismatches": len(shape), "prefixes_stripped": list(prefixes),
        "examples": {"missing": missing[:3], "unexpected": unexpected[:3], "shape_mismatches": shape[:3]},
    }
    return loaded, report


def match_line(report: dict[str, Any]) -> str:
    """The match report as one line.

    Example:
        >>> match_line({"backbone_tensors": 4, "matched": 3, "missing": 1, "unexpected": 0, "shape_mismatches": 0})
        'matched 3 of 4 backbone tensors (75 %), 1 missing, 0 unexpected, 0 shape mismatches'
    """
    ex = report.get("examples", {})

    def part(n: int, what: str, key: str) -> str:
        return f"{n} {what}" + (f" (e.g. {ex[key]})" if n and ex.get(key) else "")

    n, m = report["backbone_tensors"], report["matched"]
    line = (f"matched {m} of {n} backbone tensors ({100 * m / max(n, 1):.0f} %), {part(report['missing'], 'missing', 'missing')}, "
            f"{part(report['unexpected'], 'unexpected', 'unexpected')}, "
            f"{part(report['shape_mismatches'], 'shape mismatches', 'shape_mismatches')}")
    if report.get("nested"):
        line += "; weights under " + "/".join(repr(k) for k in report["nested"])
    if report.get("prefixes_stripped"):
        line += "; prefixes stripped: " + " ".join(report["prefixes_stripped"])
    return line


def load_weights_file(net: Any, path: str | Path, backbone: str) -> dict[str, Any]:
    """Load a third-party weights file into a built timm backbone (before any stem adaptation), non-strictly.

    Nested dicts (:data:`NESTED_KEYS`) are unwrapped and :data:`STRIP_PREFIXES` stripped, so a DINO teacher, a
    Lightning checkpoint or a DDP export load as they are. What matched is logged and returned (it is stored in the
    manifest); tensors the file lacks keep their initialisation.

    Raises:
        PretrainedWeightsError: the file matches under :data:`MIN_MATCH_FRACTION` of the backbone's tensors; the
            one-line message carries the match report.
    """
    source, nested = read_weights_file(path)
    loaded, report = match_weights(net.state_dict(), source)
    report["nested"] = nested
    if report["matched"] < MIN_MATCH_FRACTION * report["backbone_tensors"]:
        raise PretrainedWeightsError(f"model.pretrained: {path} does not fit backbone {backbone!r} (under "
                                     f"{100 * MIN_MATCH_FRACTION:.0f} % of its tensors): {match_line(report)}")
    net.load_state_dict(loaded, strict=False)
    log.info("backbone %s: weights file %s: %s", backbone, path, match_line(report))
    if report["missing"]:
        log.warning("backbone %s: %d tensors are not in %s and keep their initialisation, e.g. %s", backbone,
                    report["missing"], path, report["examples"]["missing"])
    return report


def pretrained_record(info: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a manifest stores of :func:`resolve_pretrained`'s answer: ``{"source", "revision", "sha256"}``.

    Example:
        >>> pretrained_record({"source": "hf-hub:timm/x", "revision": "abc", "file": "/tmp/x", "sha256": "00"})
        {'source': 'hf-hub:timm/x', 'revision': 'abc', 'sha256': '00'}
    """
    if info is None:
        return None
    return {k: info[k] for k in ("source", "revision", "sha256")}


# ------------------------------------------------------------------------------------------ medlens-pretrained backbones
#: key of the safetensors header metadata that marks a backbone written by ``medlens pretrain``
MEDLENS_BACKBONE_KEY = "medlens_backbone"


def medlens_backbone_info(path: str | Path) -> dict[str, Any] | None:
    """The record ``medlens pretrain`` wrote into a ``.safetensors`` header (backbone, in_chans, stem reduction), else None.

    Example:
        >>> medlens_backbone_info(__file__) is None
        True
    """
    p = str(path)
    if not p.endswith(".safetensors") or not os.path.isfile(p):
        return None
    import json

    from safetensors import safe_open

    try:
        with safe_open(p, framework="pt") as f:
            meta = f.metadata() or {}
        raw = meta.get(MEDLENS_BACKBONE_KEY)
        return json.loads(raw) if raw else None
    except Exception as e:  # noqa: BLE001 - a garbage header (SafetensorError) or a garbage record (JSON)
        raise PretrainedWeightsError(f"model.pretrained: {p} is not a readable safetensors file ({type(e).__name__}: "
                                     f"{str(e).strip()[:160]})") from None


def check_input_norm(pretrained: bool | str | None, input_norm: str) -> None:
    """Refuse a ``medlens pretrain`` file whose views were normalised otherwise than this model's inputs will be.

    ``medlens pretrain`` records ``task_options.input_norm`` in the file: a backbone pretrained on per-image
    standardised views (``image``) describes other inputs badly, and the reverse. Files without the record pass.

    Raises:
        PretrainedWeightsError: the file's ``input_norm`` differs from ``input_norm``.
    """
    if not isinstance(pretrained, str):
        return
    info = medlens_backbone_info(pretrained) or {}
    if "input_norm" in info and info["input_norm"] != input_norm:
        raise PretrainedWeightsError(f"model.pretrained: {pretrained} was pretrained with task_options.input_norm: {info['input_norm']}, "
                                     f"this model uses {input_norm}; pretrain again with this config (or set task_options.input_norm: {info['input_norm']})")


def load_medlens_backbone(net: Any, path: str | Path, backbone: str, in_chans: int, stem_reduction: int) -> dict[str, Any]:
    """Load a ``medlens pretrain`` file into a built (stem-adapted) timm backbone, every tensor, strictly.

    The small-input stem changes the first convolution's shape (a 3x3 stride-1 conv instead of ResNet's 7x7),
    so timm's own loader cannot read these files; here the network is built exactly as it was pretrained and
    then must match the file tensor for tensor.

    Raises:
        PretrainedWeightsError: another backbone, channel count or stem, or any missing/extra/misshapen tensor.
    """
    from safetensors.torch import load_file

    info = medlens_backbone_info(path) or {}
    want = {"backbone": backbone, "in_chans": int(in_chans), "stem_reduction": int(stem_reduction)}
    diff = [f"{k} {info.get(k)!r} (this model: {v!r})" for k, v in want.items() if info.get(k) != v]
    if diff:
        raise PretrainedWeightsError(f"model.pretrained: {path} was pretrained with a different network: {'; '.join(diff)}; "
                                     "pretrain again with this config's model.backbone, data.channels, data.image_size and model.small_input")
    sd = load_file(str(path))
    target = net.state_dict()
    missing = [k for k in target if k not in sd]
    extra = [k for k in sd if k not in target]
    shape = [f"{k} {tuple(sd[k].shape)}->{tuple(t.shape)}" for k, t in target.items() if k in sd and sd[k].shape != t.shape]
    if missing or extra or shape:
        raise PretrainedWeightsError(f"model.pretrained: {path} does not match backbone {backbone!r}: {len(missing)} missing "
                                     f"(e.g. {missing[:3]}), {len(extra)} unexpected (e.g. {extra[:3]}), {len(shape)} misshapen (e.g. {shape[:3]})")
    net.load_state_dict(sd, strict=True)
    return info
