"""Let ``medlens.predict(...)`` and ``medlens.evaluate(...)`` stay functions although submodules share their names.

Importing the submodule ``medlens.predict`` makes Python set the package attribute ``medlens.predict`` to the
module, hiding the lazily exported function of the same name (so ``from medlens import predict`` would give a
module). Such a module is made callable: calling it calls the function, and its other names stay reachable.
"""

from __future__ import annotations

import sys
import types
from typing import Any


def make_module_callable(module_name: str, function_name: str) -> None:
    """Make ``sys.modules[module_name](...)`` call its ``function_name``.

    Example:
        >>> make_module_callable("medlens.predict", "predict")  # doctest: +SKIP
    """
    module = sys.modules[module_name]

    class _CallableModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return getattr(self, function_name)(*args, **kwargs)

    _CallableModule.__name__ = f"CallableModule[{module_name}.{function_name}]"
    module.__class__ = _CallableModule
