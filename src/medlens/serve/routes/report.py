"""``POST /v1/report``: one image -> the per-image HTML report (a download): the prediction of ``/v1/predict``,
the explanation overlay, the findings and the model card.

An exported ONNX model served without its PyTorch weights gets the report without the overlay.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import HTMLResponse

from medlens.serve.deps import KEY, get_state
from medlens.serve.errors import UPLOAD_ERRORS
from medlens.serve.state import ServerState
from medlens.serve.uploads import parse_metadata, read_upload, safe_name

router = APIRouter()


@router.post("/v1/report", dependencies=[KEY], responses=UPLOAD_ERRORS, response_class=HTMLResponse)
async def report(file: UploadFile = File(...), method: str | None = Form(None), metadata: str | None = Form(None),
                 state: ServerState = Depends(get_state)):
    """One image, optional ``method`` and ``metadata`` -> the per-image HTML report."""
    data = await read_upload(file, state.settings.max_upload_bytes)
    name = safe_name(file.filename)
    html = await state.report_html(data, name, method, parse_metadata(metadata, 1))
    stem = name.rsplit(".", 1)[0] or "image"
    return HTMLResponse(html, headers={"Content-Disposition": f'attachment; filename="medlens-report-{stem}.html"'})
