"""``POST /v1/explain``: one image -> the overlay PNG of one label's explanation, its value in the headers.

The value is the one ``/v1/predict`` gives for the same image (:meth:`ServerState.predict`).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import Response

from medlens.serve.deps import KEY, get_state
from medlens.serve.errors import PNG_RESPONSE, UPLOAD_ERRORS, ApiError
from medlens.serve.state import ServerState
from medlens.serve.uploads import header_safe, parse_metadata, read_upload, safe_name

router = APIRouter()


@router.post("/v1/explain", dependencies=[KEY], responses={**UPLOAD_ERRORS, **PNG_RESPONSE}, response_class=Response)
async def explain(file: UploadFile = File(...), label: str | None = Form(None), method: str | None = Form(None),
                  metadata: str | None = Form(None), target_layer: str | None = Form(None), state: ServerState = Depends(get_state)):
    """One image, optional ``label``, ``method``, ``target_layer`` and ``metadata`` -> overlay PNG."""
    data = await read_upload(file, state.settings.max_upload_bytes)
    name = safe_name(file.filename)
    method = state.check_method(method)
    if label and label not in state.manifest.label_names:
        raise ApiError(422, "unknown_label", f"label {label!r} is not one of {state.manifest.label_names}")
    rows = parse_metadata(metadata, 1)
    state.check_metadata(rows)  # wrong types: 422 naming the field, before any work
    await asyncio.to_thread(state.require_explainer)  # loads the PyTorch copy once, off the event loop
    async with state.decoded(data, name) as img:
        pred = await state.predict_image(img, name, rows)
        exps = await asyncio.to_thread(state.explain, img, [label] if label else None, method, None if rows is None else rows[0],
                                       target_layer or None, pred)
    if not exps:
        raise ApiError(422, "nothing_to_explain", "no label to explain for this image")
    e = exps[0]
    kind = state.task.presentation(state.manifest).value_kind
    return Response(e.overlay_png, media_type="image/png", headers={
        "X-Medlens-Label": header_safe(e.label), "X-Medlens-Method": e.method, "X-Medlens-Value": f"{e.probability:.6g}",
        "X-Medlens-Value-Kind": kind, "X-Medlens-Target-Layer": e.target_layer or ""})
