"""``POST /v1/report``: one image -> the per-image HTML report (a download): the prediction of ``/v1/predict``,
the explanation overlay, the findings and the model card.

An exported ONNX model served without its PyTorch weights gets the report without the overlay.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import HTMLResponse, Response

from medlens.serve.deps import get_state
from medlens.serve.errors import HTML_RESPONSE, UPLOAD_ERRORS
from medlens.serve.state import ServerState
from medlens.serve.uploads import (
    FILE_SCHEMA,
    METADATA_ONE_SCHEMA,
    optional_text,
    parse_metadata,
    read_upload,
    safe_name,
)

router = APIRouter()


# response_class Response: the 200 is declared as text/html (HTML_RESPONSE), the errors as JSON
@router.post("/v1/report", responses={**UPLOAD_ERRORS, **HTML_RESPONSE}, response_class=Response)
async def report(file: UploadFile = File(..., json_schema_extra=FILE_SCHEMA), method: str | None = Form(None, json_schema_extra=optional_text),
                 metadata: str | None = Form(None, json_schema_extra=METADATA_ONE_SCHEMA),
                 state: ServerState = Depends(get_state)):
    """One image, optional ``method`` and ``metadata`` -> the per-image HTML report."""
    data = await read_upload(file, state.settings.max_upload_bytes)
    name = safe_name(file.filename)
    html = await state.report_html(data, name, method, parse_metadata(metadata, 1))
    stem = name.rsplit(".", 1)[0] or "image"
    return HTMLResponse(html, headers={"Content-Disposition": f'attachment; filename="medlens-report-{stem}.html"'})
