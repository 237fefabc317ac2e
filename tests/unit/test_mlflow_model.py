"""The bundle logged to MLflow as a pyfunc model predicts what `medlens predict` predicts."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens.inference import predict
from tests.unit._bundles import random_bundle

mlflow = pytest.importorskip("mlflow")


def _logged(tmp_path: Path, bundle: Path) -> tuple[str, str]:
    """A bundle logged as the pyfunc model of a new run in a SQLite tracking store: (tracking URI, run id)."""
    from mlflow.tracking import MlflowClient

    from medlens.engine.tracking import log_bundle_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("e", artifact_location=(tmp_path / "mlartifacts").as_uri())
    run_id = client.create_run(exp).info.run_id
    log_bundle_model(uri, run_id, bundle)
    return uri, run_id


def test_pyfunc_model_equals_medlens_predict(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bundle = random_bundle(tmp_path / "bundle", thresholds=[0.4])
    paths = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32), dtype=np.uint8)).save(p)
        paths.append(str(p))
    uri, run_id = _logged(tmp_path, bundle)

    mlflow.set_tracking_uri(uri)
    try:
        got = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(paths)
    finally:
        mlflow.set_tracking_uri("")
    predict(bundle, paths, out=tmp_path / "cli.csv")
    want = list(csv.DictReader((tmp_path / "cli.csv").open()))
    assert list(got.columns) == list(want[0].keys())
    assert got.to_dict("records") == want
    assert not (tmp_path / "mlruns").exists()


def test_logged_model_has_signature_example_and_installable_requirement(tmp_path, monkeypatch):
    from medlens.engine.tracking import medlens_requirement

    monkeypatch.chdir(tmp_path)
    bundle = random_bundle(tmp_path / "bundle", thresholds=[0.4])
    uri, run_id = _logged(tmp_path, bundle)

    mlflow.set_tracking_uri(uri)
    try:
        info = mlflow.models.get_model_info(f"runs:/{run_id}/model")
        local = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path / "dl"))
    finally:
        mlflow.set_tracking_uri("")
    sig = info.signature
    assert sig is not None and len(sig.inputs.inputs) == 1 and sig.inputs.inputs[0].type.name == "string"
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(img)
    predict(bundle, [str(img)], out=tmp_path / "cli.csv")
    header = next(csv.reader((tmp_path / "cli.csv").open()))
    assert sig.outputs.input_names() == header  # the predictions table, column for column
    assert info.saved_input_example_info is not None
    reqs = (Path(local) / "requirements.txt").read_text().splitlines()
    mine = medlens_requirement()
    assert mine in reqs and not any(r.startswith("medlens==") for r in reqs)
    # this checkout is installed from its folder (editable): the requirement points pip there
    assert mine.startswith("medlens @ file:") and (Path(mine.split("file://", 1)[1]) / "pyproject.toml").is_file()
