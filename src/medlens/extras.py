"""Optional dependencies: which ``pip install 'medlens[extra]'`` brings a missing module.

The base install trains, evaluates and predicts; serving, Grad-CAM, ONNX, tracking, SQL, DICOM and Hugging Face
datasets come with extras (``pyproject.toml``). An entry point calls :func:`require` before it starts, and the
CLI maps any other missing module to its extra with :func:`extra_for_module`, so a user reads one line
that says what to install instead of a traceback.
"""

from __future__ import annotations

import importlib

#: extra -> the import names it provides (the distributions are listed in pyproject.toml)
EXTRAS: dict[str, tuple[str, ...]] = {
    "serve": ("fastapi", "uvicorn", "starlette", "python_multipart", "multipart", "httpx"),
    "explain": ("pytorch_grad_cam",),
    "onnx": ("onnx", "onnxruntime", "onnxscript"),
    "tracking": ("mlflow", "tensorboard"),
    "sql": ("sqlalchemy", "psycopg"),
    "dicom": ("pydicom",),
    "hf": ("datasets", "pyarrow"),
    "wandb": ("wandb",),
    "gradio": ("gradio",),
}


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is not installed; the message names the extra that provides it.

    Attributes:
        extra: the extra to install (``serve``, ``onnx``, ...).
        what: what needed it (``medlens serve``).
    """

    def __init__(self, extra: str, module: str, what: str) -> None:
        super().__init__(f"{what} needs the '{extra}' extra: pip install 'medlens[{extra}]'", name=module)
        self.extra = extra
        self.what = what


def extra_for_module(module: str | None) -> str | None:
    """The extra that provides ``module`` (a dotted name is looked up by its top-level package), or None.

    Example:
        >>> extra_for_module("pytorch_grad_cam.utils")
        'explain'
    """
    top = (module or "").split(".", 1)[0]
    return next((extra for extra, mods in EXTRAS.items() if top in mods), None)


def require(extra: str, *modules: str, what: str | None = None) -> None:
    """Import ``modules`` (default: the extra's first module) or raise :class:`MissingExtraError`.

    Args:
        extra: the extra that provides them.
        modules: import names to check.
        what: who needs them, for the message (default: ``medlens``).

    Raises:
        MissingExtraError: one of the modules cannot be imported.

    Example:
        >>> require("serve", "fastapi", "uvicorn", what="medlens serve")  # doctest: +SKIP
    """
    if extra not in EXTRAS:
        raise KeyError(f"unknown extra {extra!r}; the extras are: {', '.join(EXTRAS)}")
    for module in modules or EXTRAS[extra][:1]:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and (e.name == module or module.startswith(e.name + ".") or e.name.startswith(module + ".")):
                raise MissingExtraError(extra, module, what or "medlens") from None
            raise
