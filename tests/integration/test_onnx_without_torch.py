"""An exported bundle predicts on ONNX Runtime without importing torch, timm or Lightning (CLI, API, server).

The child processes install an import hook that makes ``import torch`` (and timm, lightning, torchvision)
fail, so any import of them on the ONNX path is an error, not a slowdown.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")

from medlens.export import export_onnx  # noqa: E402
from tests.unit._bundles import random_bundle  # noqa: E402

BLOCK = """
import importlib.abc, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'timm', 'lightning', 'torchvision', 'pytorch_lightning'):
            raise ImportError(f'{name} must not be imported on the ONNX path')
        return None
sys.meta_path.insert(0, _NoTorch())
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("onnx-no-torch")
    bundle = random_bundle(d / "bundle")
    export_onnx(bundle)
    img = d / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)).save(img)
    return bundle, img


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2] / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, env=env, timeout=120)


def test_cli_predict_with_onnx_imports_no_torch(exported) -> None:
    bundle, img = exported
    r = _run(f"import sys; sys.argv = ['medlens', 'predict', {str(bundle)!r}, {str(img)!r}, '--backend', 'onnx']\n"
             "from medlens.cli import main\nmain()")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "predicted=" in r.stdout and "Traceback" not in r.stderr


def test_api_and_server_with_onnx_import_no_torch(exported) -> None:
    bundle, img = exported
    code = f"""
import json, sys
from medlens.inference import predict
from medlens.serve.app import ServeSettings, create_app
from fastapi.testclient import TestClient
preds = predict({str(bundle)!r}, [{str(img)!r}], backend="onnx")
with TestClient(create_app({str(bundle)!r}, "onnx", ServeSettings())) as c:
    m = c.get("/v1/model").json()
    r = c.post("/v1/predict", files={{"files": ("x.png", open({str(img)!r}, "rb").read(), "image/png")}}).json()
print(json.dumps({{"api": preds[0].probabilities, "http": r["predictions"][0]["probabilities"], "task": m["task"]}}))
"""
    r = _run(code)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for k, v in out["api"].items():
        assert abs(v - out["http"][k]) < 1e-5
