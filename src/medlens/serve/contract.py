"""The OpenAPI contract of a running server: what the routes declare, narrowed to what this model accepts.

The routes declare what holds for every model (a non-empty file, a metadata part that is JSON, JSON errors; see
:mod:`medlens.serve.routes`). On an open server the schema also names the values this model takes -- the
``label``, ``method`` and ``target_layer`` choices and the metadata fields of a fusion model, which ``GET /v1/model``
publishes anyway -- so a request the schema calls valid is one the server accepts, and Swagger UI offers them as
choices. With an API key set, the open ``/openapi.json`` stays generic (it says nothing about the model) and the
narrowed schema is at ``/v1/openapi.json``, behind the key.

What no JSON Schema can say -- that the bytes are an image the server can read (415 otherwise), that a metadata
list has one entry per file (422) -- is listed for schemathesis in the repository's ``schemathesis.toml``.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from medlens.serve.public import metadata_fields
from medlens.serve.state import ServerState

#: a numeric metadata value: a finite number (JSON has no NaN); bounded so that it converts to a float
NUMBER = {"type": "number", "minimum": -1e300, "maximum": 1e300}


def model_choices(state: ServerState) -> dict[str, list[str]]:
    """The values of the form fields this model takes: its labels, explanation methods and target layers (empty:
    unknown, e.g. the layers of an ONNX model before its first explanation)."""
    return {"label": list(state.manifest.label_names), "method": state.explain_methods(), "target_layer": state.target_layers()}


def metadata_object(state: ServerState) -> dict[str, Any] | None:
    """A fusion model's metadata object: each field with the values it takes (None: the model reads no metadata)."""
    if state.predictor.meta_encoder is None:
        return None
    fields = metadata_fields(state.manifest)
    props: dict[str, Any] = {name: {"anyOf": [NUMBER, {"type": "null"}]} for name in fields["numeric"]}
    for name, values in fields["categorical"].items():
        props[str(name)] = {"anyOf": [{"type": "string", "enum": [str(v) for v in values]}, {"type": "null"}]} if values else {}
    return {"type": "object", "properties": props}


def narrow(schema: dict[str, Any], state: ServerState) -> dict[str, Any]:
    """Narrow the upload routes' form fields of ``schema`` (FastAPI's OpenAPI dict, changed in place) to this model."""
    choices = {k: v for k, v in model_choices(state).items() if v}
    meta = metadata_object(state)
    components = schema.get("components", {}).get("schemas", {})
    for ops in schema.get("paths", {}).values():
        for op in ops.values():
            ref = (((op.get("requestBody") or {}).get("content") or {}).get("multipart/form-data") or {}).get("schema", {}).get("$ref", "")
            props = components.get(ref.rsplit("/", 1)[-1], {}).get("properties", {})
            for name, values in choices.items():
                if name in props:  # "" is taken as "not sent" (the page sends it for "the default")
                    props[name]["enum"] = [*values, ""]
            if meta is not None and "metadata" in props:
                for branch in props["metadata"].get("anyOf", []):
                    if branch.get("type") == "object":
                        branch.update(meta)
                    elif branch.get("type") == "array":
                        branch["items"] = {"anyOf": [meta, {"type": "null"}]}
    return schema


#: where a client with the key reads the schema narrowed to the model (the open ``/openapi.json`` stays generic)
KEYED_OPENAPI = "/v1/openapi.json"


def install_contract(app: FastAPI, state: ServerState) -> None:
    """Serve the contract: ``app.openapi`` narrowed to the model on an open server; with an API key, the open
    ``/openapi.json`` stays generic and :data:`KEYED_OPENAPI` (behind the key, like every ``/v1`` route) has the
    narrowed one. Call it after the routers are included.

    Example:
        >>> install_contract(app, state)  # doctest: +SKIP
        >>> # schemathesis run http://127.0.0.1:8000/v1/openapi.json -H "X-API-Key: $KEY" --checks all
    """
    base = app.openapi
    keyed = bool(state.settings.api_key)
    narrowed: dict[str, Any] = {}

    def model_schema() -> dict[str, Any]:
        if not narrowed:
            narrowed.update(narrow(copy.deepcopy(base()), state))
        return narrowed

    def openapi() -> dict[str, Any]:
        return base() if keyed else model_schema()

    async def keyed_openapi() -> JSONResponse:
        return JSONResponse(model_schema())

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_api_route(KEYED_OPENAPI, keyed_openapi, methods=["GET"], include_in_schema=False)
