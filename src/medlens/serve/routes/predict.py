"""``POST /v1/predict`` (one or more images -> the task's record of each) and ``POST /v1/preview`` (one image ->
a PNG of what the server decoded, e.g. for DICOM files a browser cannot show)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import JSONResponse, Response

from medlens.serve.deps import get_state
from medlens.serve.errors import PNG_RESPONSE, UPLOAD_ERRORS, ApiError
from medlens.serve.schemas import PredictResponse
from medlens.serve.state import ServerState
from medlens.serve.uploads import (
    FILE_SCHEMA,
    METADATA_SCHEMA,
    parse_metadata,
    preview_png,
    read_upload,
    safe_name,
)

router = APIRouter()


@router.post("/v1/predict", responses=UPLOAD_ERRORS, response_model=PredictResponse)
async def predict(files: list[UploadFile] = File(..., description="Images: PNG, JPEG, DICOM, ...", min_length=1, json_schema_extra={"items": FILE_SCHEMA}),
                  metadata: str | None = Form(None, description="A JSON object (every image) or a list of one object per file (fusion models)",
                                              json_schema_extra=METADATA_SCHEMA),
                  state: ServerState = Depends(get_state)) -> JSONResponse:
    """Predict each image; optional ``metadata``: a JSON object, or a list with one object per file (fusion models)."""
    s = state.settings
    if len(files) > s.max_files:
        raise ApiError(413, "too_many_files", f"{len(files)} files; at most {s.max_files} per request")
    blobs = [await read_upload(f, s.max_upload_bytes) for f in files]  # each upload read once, never re-encoded
    names = [safe_name(f.filename) for f in files]
    rows = parse_metadata(metadata, len(blobs))
    state.check_metadata(rows)
    items = await state.prepare_uploads(blobs, names)
    preds = await state.predict(items, rows, names)
    # a JSONResponse directly: the body is plain JSON types already, FastAPI's encoder pass would only cost time
    return JSONResponse({"model": state.model_name, "task": state.manifest.task, "predictions": [state.record(p) for p in preds]})


@router.post("/v1/preview", responses={**UPLOAD_ERRORS, **PNG_RESPONSE}, response_class=Response)
async def preview(file: UploadFile = File(..., description="One image: PNG, JPEG, DICOM, ...", json_schema_extra=FILE_SCHEMA), state: ServerState = Depends(get_state)):
    """A PNG of the decoded image (longest side at most 1024 px): how the page shows DICOM files."""
    data = await read_upload(file, state.settings.max_upload_bytes)
    async with state.decoded(data, safe_name(file.filename)) as img:
        png = await asyncio.to_thread(preview_png, img)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})
