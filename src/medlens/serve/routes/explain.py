"""``POST /v1/explain``: one image -> the overlay PNG of one label's explanation, its value in the headers.

The value is the one ``/v1/predict`` gives for the same image (:meth:`ServerState.predict`).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import Response

from medlens.serve.deps import get_state
from medlens.serve.errors import PNG_RESPONSE, UPLOAD_ERRORS
from medlens.serve.state import ServerState
from medlens.serve.uploads import (
    FILE_SCHEMA,
    METADATA_ONE_SCHEMA,
    header_safe,
    optional_text,
    parse_metadata,
    read_upload,
    safe_name,
)

router = APIRouter()


@router.post("/v1/explain", responses={**UPLOAD_ERRORS, **PNG_RESPONSE}, response_class=Response)
async def explain(file: UploadFile = File(..., json_schema_extra=FILE_SCHEMA),
                  label: str | None = Form(None, json_schema_extra=optional_text),
                  method: str | None = Form(None, json_schema_extra=optional_text),
                  metadata: str | None = Form(None, json_schema_extra=METADATA_ONE_SCHEMA),
                  target_layer: str | None = Form(None, json_schema_extra=optional_text),
                  state: ServerState = Depends(get_state)):
    """One image, optional ``label``, ``method``, ``target_layer`` and ``metadata`` -> overlay PNG."""
    data = await read_upload(file, state.settings.max_upload_bytes)
    e = await state.explanation(data, safe_name(file.filename), label, method, parse_metadata(metadata, 1), target_layer)
    kind = state.task.presentation(state.manifest).value_kind
    return Response(e.overlay_png, media_type="image/png", headers={
        "X-Medlens-Label": header_safe(e.label), "X-Medlens-Method": e.method, "X-Medlens-Value": f"{e.probability:.6g}",
        "X-Medlens-Value-Kind": kind, "X-Medlens-Target-Layer": e.target_layer or ""})
