"""``GET /v1/model``: what a client needs -- labels, task, thresholds, presentation, explanation methods, input
spec, metrics -- and nothing about the host."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from medlens.serve.deps import get_state
from medlens.serve.public import INPUT_FORMATS, metadata_fields, public_model_info
from medlens.serve.schemas import ModelInfo
from medlens.serve.state import ServerState

router = APIRouter()


@router.get("/v1/model", response_model=ModelInfo)
async def model_info(state: ServerState = Depends(get_state)) -> dict:
    """What a client needs: labels, task, thresholds, presentation, explanation methods, input spec, metrics."""
    m, s = state.manifest, state.settings
    d = public_model_info(m)
    d["input"] = {"formats": INPUT_FORMATS, "max_upload_bytes": s.max_upload_bytes, "max_pixels": s.max_pixels,
                  "max_files": s.max_files, "preprocessing": m.preprocessing.to_dict()}
    d["backend"] = state.predictor.backend
    d["explain_methods"] = state.explain_methods()
    d["presentation"] = state.task.presentation(m).to_dict()
    d["operating_point"] = state.task.operating_point(m)  # None: the task shows none
    d["tta"] = s.tta
    d["target_layers"] = state.target_layers()
    d["metadata_fields"] = metadata_fields(m)
    return d
