"""``medlens serve``: the REST API and web page over a bundle (:func:`medlens.serve.app.serve`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medlens.cli.common import bundle_folder, guarded, need


def serve(
    bundle: Annotated[Path, typer.Argument(metavar="BUNDLE", help="Bundle folder, the run folder holding it (RUN/bundle), or an exported ONNX folder with --backend onnx.",
                                           callback=bundle_folder)],
    host: Annotated[str, typer.Option(metavar="ADDRESS", help="Interface to bind; 127.0.0.1 keeps it local.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="PORT", help="TCP port (1-65535).")] = 8000,
    backend: Annotated[str, typer.Option(metavar="torch|onnx", help="Runtime: torch, or onnx (needs the 'onnx' extra).")] = "torch",
    api_key: Annotated[str | None, typer.Option(metavar="KEY", help="Require this key on /v1 routes (or env MEDLENS_API_KEY).")] = None,
    api_key_file: Annotated[Path | None, typer.Option(metavar="FILE", help="Read the API key from this file's first line (not visible in ps).")] = None,
    max_upload_mb: Annotated[float, typer.Option(metavar="MIB", help="Largest request body in MiB.")] = 32.0,
    max_pixels: Annotated[int, typer.Option(metavar="PIXELS", help="Largest image (width x height) decoded.")] = 50_000_000,
    max_pixels_in_flight: Annotated[int | None, typer.Option(metavar="PIXELS", help="Decoded pixels held at once over all requests (default: twice --max-pixels); more waits, then 503.")] = None,
    tta: Annotated[str, typer.Option(metavar="PRESET", help="Test-time augmentation for every prediction: none, hflip, flips or d4.")] = "none",
    ui: Annotated[str, typer.Option(metavar="page|gradio", help="page: the web page at /; gradio: also a Gradio app at /gradio on the same model (needs the 'gradio' extra).")] = "page",
) -> None:
    """Serve BUNDLE: REST API (/v1/predict, /v1/explain, /v1/model, /health) and a web page at /."""
    need("serve", "fastapi", "uvicorn")
    if backend == "onnx":
        need("onnx", "onnxruntime")
    if ui == "gradio":
        need("gradio", "gradio")
    from medlens.serve.app import serve as serve_bundle

    serve_bundle(bundle, host, port, backend, api_key, max_upload_mb, max_pixels, api_key_file=api_key_file, tta=tta,
                 max_pixels_in_flight=max_pixels_in_flight, ui=ui)


def register(app: typer.Typer) -> None:
    app.command("serve")(guarded(serve))
