"""The Python API mirrors the CLI: medlens.train / evaluate / predict / load_bundle are callables."""

from __future__ import annotations

import inspect


def test_api_names_are_callable_even_after_submodule_import() -> None:
    import medlens.evaluation  # noqa: F401 - importing the submodules must not hide the functions
    import medlens.inference  # noqa: F401
    from medlens import evaluate, predict, train

    assert callable(predict) and callable(evaluate) and inspect.isfunction(train)
    assert "bundle" in inspect.signature(predict).parameters
    assert medlens.inference.Predictor is not None  # the module's names stay reachable
    for name in medlens.__all__:
        assert getattr(medlens, name) is not None, name  # medlens is bound by the imports above


def test_cli_help_does_not_import_heavy_libraries() -> None:
    """`medlens --help` must stay fast (< 1 s): no torch, Lightning or timm at import or for --help."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from medlens.cli import app\n"
        "try:\n"
        "    app(['--help'], standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in ('torch', 'lightning', 'timm', 'albumentations', 'cv2', 'pandas') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout, out.stdout[-500:]
    assert "train" in out.stdout and "predict" in out.stdout
