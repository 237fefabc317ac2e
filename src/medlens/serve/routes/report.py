"""``POST /v1/report``: one image -> the per-image HTML report (a download): the prediction of ``/v1/predict``,
the explanation overlay, the findings and the model card.

An exported ONNX model served without its PyTorch weights gets the report without the overlay.
"""

from __future__ import annotations

import asyncio

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
    from medlens.clinical_report import image_report_html

    data = await read_upload(file, state.settings.max_upload_bytes)
    name = safe_name(file.filename)
    method = state.check_method(method)
    rows = parse_metadata(metadata, 1)
    state.check_metadata(rows)
    async with state.decoded(data, name) as img:
        pred = await state.predict_image(img, name, rows)

        def render() -> str:
            exps = [] if state.explainer() is None else state.explain(img, None, method, None if rows is None else rows[0], None, pred)
            return image_report_html(img, pred, exps, state.manifest)

        html = await asyncio.to_thread(render)
    stem = name.rsplit(".", 1)[0] or "image"
    return HTMLResponse(html, headers={"Content-Disposition": f'attachment; filename="medlens-report-{stem}.html"'})
