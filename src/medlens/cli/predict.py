"""``medlens predict``, ``medlens explain`` and ``medlens export``: using a trained bundle.

Results are rendered by the bundle's task only (``task.summary_line`` for the table, ``task.record`` for
``--json``; the CSV by :func:`medlens.inference.write_predictions_csv`), so a new task needs nothing here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from medlens.cli.common import (
    BUNDLE_HELP,
    bundle_folder,
    fail,
    guarded,
    need,
    note,
    print_json,
    show_progress,
)

#: file extensions ``medlens predict FOLDER`` picks up (recursively)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm")


def image_paths(items: list[Path]) -> list[str]:
    """Files as given; folders expanded (recursively, sorted) to the images with a known extension."""
    paths: list[str] = []
    for item in items:
        if item.is_dir():
            found = sorted(str(f) for f in item.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {item}")
            paths += found
        else:
            paths.append(str(item))
    return paths


def require_explanations(bundle: Path, what: str, method: str | None = None) -> None:
    """Stop with one line (exit 2) when the bundle's task offers no explanation method (or not ``method``)."""
    from medlens.bundle import read_manifest
    from medlens.tasks import task_of

    task = task_of(read_manifest(bundle))
    methods = task.explain_methods()
    if not methods:
        fail(f"error: {what}: this model ({task.name}) offers no explanation methods")
    if method is not None and method not in methods:
        fail(f"error: {what}: unknown explanation method {method!r} for this model; valid: {', '.join(methods)}")


def predict(
    bundle: Annotated[Path, typer.Argument(metavar="BUNDLE", help=BUNDLE_HELP, callback=bundle_folder)],
    images: Annotated[list[Path], typer.Argument(metavar="IMAGE_OR_FOLDER...", help="Image files (PNG, JPEG, TIFF, BMP, DICOM) or folders (searched recursively for those extensions).")],
    out: Annotated[Path | None, typer.Option(metavar="FILE", help="Write a CSV here: per image the model's values, per finding its threshold and decision, errors.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the predictions as JSON on stdout (one record per image, as the API returns them).")] = False,
    batch_size: Annotated[int, typer.Option(metavar="N", help="Images per forward pass.")] = 64,
    tta: Annotated[str, typer.Option(metavar="PRESET", help="Test-time augmentation: none, hflip, flips or d4.")] = "none",
    backend: Annotated[str, typer.Option(metavar="torch|onnx", help="Runtime: torch, or onnx (needs the 'onnx' extra and an exported model).")] = "torch",
    calibrated: Annotated[bool, typer.Option("--calibrated/--uncalibrated", help="Apply the bundle's temperature scaling.")] = True,
    metadata: Annotated[str | None, typer.Option(metavar="JSON_OR_FILE", help="Fusion models: patient metadata as a JSON object (every image), a JSON list (one per image) or a .json/.csv file; missing fields allowed.")] = None,
    report: Annotated[Path | None, typer.Option(metavar="FOLDER", help="Also write one HTML report per image (image, overlay, findings, model card) into this folder.")] = None,
    report_method: Annotated[str | None, typer.Option(metavar="METHOD", help="Explanation method shown in the reports (default: the model's first, e.g. gradcam or error_map).")] = None,
    keep_going: Annotated[bool, typer.Option("--keep-going", help="Exit 0 even when some images could not be read (they are still listed).")] = False,
    text: Annotated[Path | None, typer.Option(metavar="FILE", help="A CSV with an image column and the bundle's data.text_column (else 'text'), e.g. each image's report: carried to the CSV and the reports, never given to the model.")] = None,
) -> None:
    """Predict IMAGES with BUNDLE: per finding the value, its threshold and the decision."""
    from medlens.bundle import read_manifest
    from medlens.data.metadata import metadata_rows_for, texts_for
    from medlens.inference import predict as predict_images
    from medlens.inference.table import plain_error, text_column_name
    from medlens.tasks import task_of

    if backend == "onnx":
        need("onnx", "onnxruntime")
    if out is not None and out.is_dir():
        fail(f"error: --out {out}: is a directory; give a file name for the CSV, e.g. {out / 'predictions.csv'}")
    if report is not None:
        require_explanations(bundle, "--report", report_method)
    preset = tta if tta != "none" else False
    paths = image_paths(images)
    meta = metadata_rows_for(metadata, paths) if metadata else None
    texts = texts_for(str(text), paths, text_column_name(read_manifest(bundle))) if text is not None else None
    progress = show_progress(sys.stderr.isatty() or len(paths) > 50)
    if report is not None:
        from medlens.clinical_report import predict_with_reports

        preds = predict_with_reports(bundle, paths, report, out, report_method, meta, progress, texts=texts, backend=backend,
                                     batch_size=batch_size, tta=preset, calibrated=calibrated)
    else:
        preds = predict_images(bundle, paths, out, batch_size, preset, backend, metadata=meta, progress=progress, calibrated=calibrated,
                               texts=texts)
    manifest = read_manifest(bundle)
    task = task_of(manifest)
    bad = [p for p in preds if not p.ok]
    if json_:
        print_json([task.record(p, manifest) for p in preds])
    elif out is None:
        for p in preds:
            if p.ok:
                typer.echo(f"{p.source}\t{task.summary_line(p, manifest)}")
    written = [f"wrote {out} ({len(preds) - len(bad)} predicted, {len(bad)} failed)"] if out is not None else []
    written += [f"reports: {report / 'index.html'}"] if report is not None else []
    for line in written:
        if json_:
            note(line)  # beside JSON on stdout: a note on stderr
        else:
            typer.echo(line)
    for p in bad:
        typer.echo(f"could not predict {p.source}: {plain_error(p.source, p.error)}", err=True)
    if bad and (len(bad) == len(preds) or not keep_going):
        raise typer.Exit(code=2)


def explain(
    bundle: Annotated[Path, typer.Argument(metavar="BUNDLE", help=BUNDLE_HELP, callback=bundle_folder)],
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="Image file (PNG, JPEG, DICOM, ...).")],
    out: Annotated[Path, typer.Option("--out", metavar="FOLDER", help="Folder for the overlay PNGs, heatmaps (.npy) and a JSON summary.")],
    label: Annotated[list[str] | None, typer.Option(metavar="LABEL", help="Label to explain (repeatable); default: the positive/predicted labels.")] = None,
    method: Annotated[str | None, typer.Option(metavar="METHOD", help="gradcam, gradcam++, eigencam, layercam, hirescam, xgradcam (anomaly models: error_map); default: the model's first.")] = None,
    target_layer: Annotated[str | None, typer.Option(metavar="MODULE", help="Module to explain, e.g. backbone.layer3 (default: last conv stage).")] = None,
    metadata: Annotated[str | None, typer.Option(metavar="JSON", help="Fusion models: patient metadata as a JSON object.")] = None,
) -> None:
    """Explain IMAGE with BUNDLE: one heatmap overlay per label."""
    from medlens.interpret import explain_to_dir

    require_explanations(bundle, "medlens explain")
    exps = explain_to_dir(bundle, image, out, label, method, target_layer, metadata)
    for e in exps:
        typer.echo(f"{e.label}\tvalue={e.probability:.4g}\t{e.method}\t{e.target_layer or '-'}")
    typer.echo(f"wrote {len(exps)} overlay(s) to {out}")


def export(
    bundle: Annotated[Path, typer.Argument(metavar="BUNDLE", help=BUNDLE_HELP, callback=bundle_folder)],
    format: Annotated[str, typer.Option("--format", metavar="FORMAT", help="Export format: onnx.")] = "onnx",
    out: Annotated[Path | None, typer.Option("--out", metavar="FOLDER", help="Output folder (default: inside the bundle).")] = None,
    opset: Annotated[int, typer.Option(metavar="N", help="ONNX opset version.")] = 17,
) -> None:
    """Export BUNDLE (ONNX with a dynamic batch axis, manifest beside it)."""
    need("onnx", "onnx", "onnxruntime")
    from medlens.export import export as export_bundle

    path = export_bundle(bundle, format, out, opset)
    typer.echo(f"exported {path}")


def register(app: typer.Typer) -> None:
    app.command("predict")(guarded(predict))
    app.command("explain")(guarded(explain))
    app.command("export")(guarded(export))
