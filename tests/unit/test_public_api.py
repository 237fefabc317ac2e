"""The Python API mirrors the CLI: medlens.train / evaluate / predict / load_bundle are callables."""

from __future__ import annotations

import inspect

import medlens


def test_api_names_are_callable_even_after_submodule_import() -> None:
    import medlens.evaluate  # noqa: F401 - importing the submodules must not hide the functions
    import medlens.predict  # noqa: F401
    from medlens import evaluate, predict, train

    assert callable(predict) and callable(evaluate) and inspect.isfunction(train)
    assert "bundle" in inspect.signature(predict.predict).parameters
    assert medlens.predict.Predictor is not None  # the module's names stay reachable
    for name in medlens.__all__:
        assert getattr(medlens, name) is not None, name
