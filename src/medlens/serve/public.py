"""What the server tells about the model: ``GET /v1/model`` and the OpenAPI description.

An allow-list of manifest fields, with host paths dropped at any depth; nothing about the host (config, extra,
history, environment). With an API key set, only the keyed ``/v1/model`` describes the model: the open routes
(``/health``, ``/openapi.json``, ``/docs``) stay generic.
"""

from __future__ import annotations

import re
from typing import Any

from medlens.provenance import manifest_training_data

#: Fields of the manifest a client may see; the rest (config, extra, history, environment) stays on the host.
PUBLIC_FIELDS = ("format", "format_version", "created", "task", "label_names", "architecture", "preprocessing", "thresholds",
                 "temperature", "task_section", "ood", "weights_source", "metrics", "intended_use")
_PATH_LIKE = re.compile(r"^(~|/|[A-Za-z]:[\\/]|\\\\)")
#: formats ``/v1/predict`` reads (recognised from bytes, not names)
INPUT_FORMATS = ["png", "jpeg", "tiff", "bmp", "dicom"]


def scrub(value: Any) -> Any:
    """Drop path-like strings (absolute or home paths) at any depth: they describe the host, not the model."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if not (isinstance(v, str) and _PATH_LIKE.match(v))}
    if isinstance(value, list):
        return [scrub(v) for v in value if not (isinstance(v, str) and _PATH_LIKE.match(v))]
    return value


def public_model_info(manifest: Any) -> dict[str, Any]:
    """The manifest as ``GET /v1/model`` publishes it: an allow-list of fields, no host paths, medlens' version only.

    Example:
        >>> public_model_info(read_manifest("runs/x/bundle"))["label_names"]  # doctest: +SKIP
        ['normal', 'pneumonia']
    """
    d = manifest.to_dict()
    out = {k: scrub(d[k]) for k in PUBLIC_FIELDS if k in d}
    out["versions"] = {"medlens": str(manifest.versions.get("medlens", ""))}
    # what the model was trained on (kind, base name, counts, date; a banner for generated images), scrubbed like the rest
    out["training_data"] = scrub(manifest_training_data(manifest))
    return out


def metadata_fields(manifest: Any) -> dict[str, Any]:
    """The metadata a fusion model reads: numeric field names and categorical fields with their values."""
    enc = manifest.metadata_encoder or {}
    out: dict[str, Any] = {"numeric": [], "categorical": {}}
    for item in enc.get("numeric", []) or []:
        out["numeric"].append(item["name"] if isinstance(item, dict) else item)
    for item in enc.get("categorical", []) or []:
        if isinstance(item, dict):
            out["categorical"][item.get("name")] = [v for v in item.get("vocabulary", item.get("vocab", item.get("categories", []))) if v != "unknown"]
    return out


def api_description(manifest: Any, keyed: bool) -> str:
    """The OpenAPI description: the model and its labels on an open server; nothing about the model behind a key."""
    if keyed:
        return "medlens model server. Every /v1 route needs the API key (X-API-Key); GET /v1/model describes the model."
    arch = manifest.architecture
    return (f"Model: {arch.get('backbone', arch.get('type'))} ({manifest.task}); labels: {', '.join(manifest.label_names)}. "
            f"{manifest.intended_use}")
