"""Honest dependencies: every distribution pyproject.toml declares is imported by src/medlens, and every third-party
module src/medlens imports is declared (in ``dependencies`` or an extra)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "medlens"

#: distribution name -> import name, where they differ
IMPORT_NAMES = {
    "pillow": "PIL", "pyyaml": "yaml", "scikit-learn": "sklearn", "grad-cam": "pytorch_grad_cam",
    "python-multipart": "python_multipart", "python-dotenv": "dotenv",
    "iterative-stratification": "iterstrat", "opencv-python-headless": "cv2", "huggingface-hub": "huggingface_hub",
}
#: declared but not imported by medlens, each for a stated reason
NOT_IMPORTED = {
    "python-multipart": "FastAPI imports it to parse the multipart uploads of /v1/predict",
    "httpx": "FastAPI's TestClient, for checking a served model",
    "httptools": "uvicorn's http='auto' parses requests with it when installed (the serving benchmark ran with it)",
    "uvloop": "uvicorn's loop='auto' runs on it when installed (the serving benchmark ran with it)",
    "onnx": "torch.onnx.export writes the model with it",
    "onnxscript": "torch.onnx.export (dynamo exporter) needs it",
    "psycopg": "SQLAlchemy's postgresql+psycopg driver",
    "pyarrow": "datasets reads its parquet files with it",
    "tensorboard": "Lightning's TensorBoardLogger writes through it",
}
#: extras that only gather others, test-only tools, and the documentation site's tools
NOT_CHECKED_EXTRAS = {"all", "dev", "docs"}


def _dist(req: str) -> str:
    return re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].strip().lower()


def declared() -> dict[str, str]:
    """distribution -> where it is declared (``dependencies`` or the extra's name)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = {_dist(r): "dependencies" for r in project["dependencies"]}
    for extra, reqs in project["optional-dependencies"].items():
        if extra not in NOT_CHECKED_EXTRAS:
            for r in reqs:
                out.setdefault(_dist(r), extra)
    return out


def imported_top_level() -> dict[str, str]:
    """Top-level module -> first file importing it, for every absolute import in src/medlens (functions included)."""
    out: dict[str, str] = {}
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for n in names:
                out.setdefault(n.split(".")[0], str(path.relative_to(ROOT)))
    return out


def third_party(mods: dict[str, str]) -> dict[str, str]:
    return {m: f for m, f in mods.items() if m != "medlens" and m not in sys.stdlib_module_names and m != "__future__"}


def test_every_declared_distribution_is_imported():
    imported = imported_top_level()
    unused = [d for d in declared() if IMPORT_NAMES.get(d, d.replace("-", "_")) not in imported and d not in NOT_IMPORTED]
    assert not unused, f"declared in pyproject.toml but never imported by src/medlens: {unused}"


def test_every_third_party_import_is_declared():
    provided = {IMPORT_NAMES.get(d, d.replace("-", "_")) for d in declared()}
    missing = {m: f for m, f in third_party(imported_top_level()).items() if m not in provided}
    assert not missing, f"imported but not declared in pyproject.toml (dependencies or an extra): {missing}"


def test_the_unused_dependencies_are_gone_and_the_allow_list_is_current():
    d = declared()
    assert not {"torchmetrics", "scikit-learn", "iterative-stratification"} & {k for k, v in d.items() if v == "dependencies"}
    assert set(NOT_IMPORTED) <= set(d), "an allow-listed distribution is no longer declared: drop it from NOT_IMPORTED"
    imported = imported_top_level()
    stale = [x for x in NOT_IMPORTED if IMPORT_NAMES.get(x, x.replace("-", "_")) in imported]
    assert not stale, f"now imported, remove from the allow-list: {stale}"


def test_the_checker_sees_imports_inside_functions(tmp_path, monkeypatch):
    pkg = tmp_path / "src" / "medlens"
    pkg.mkdir(parents=True)
    (pkg / "m.py").write_text("def f():\n    import somepkg.sub\n    from otherpkg import x\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", pkg)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert {"somepkg", "otherpkg"} <= set(imported_top_level())
