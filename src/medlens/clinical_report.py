"""Per-image reports for clinicians: one self-contained HTML file (and optionally a PDF) per image.

A report shows what went in and when (the input's file name; for DICOM only its Study/Series/SOP Instance
UIDs, never patient attributes; the metadata a fusion model was given; the model's name and weights SHA-256;
the date and time in UTC), the image, the explanation overlay(s) with a caption true to each method, every
finding's decision and its score (or probability) against the threshold, the operating point at that threshold
(sensitivity, specificity, PPV and NPV with Wilson and, with patient ids, patient-bootstrap intervals, the split
named), the model's version, intended use and training data (with a banner when it was generated images), and a
plain statement that it is not a diagnosis.
HTML reports embed their images (base64 PNG) and styles, so they open offline and can be archived as one
file. PDFs are drawn with matplotlib (already a dependency), one page per image.

Example:
    >>> from medlens import Predictor
    >>> from medlens.interpret import explain
    >>> from medlens.clinical_report import image_report_html
    >>> p = Predictor.from_bundle("runs/nih/bundle")  # doctest: +SKIP
    >>> img = load_image("chest.png")  # doctest: +SKIP
    >>> html = image_report_html(img, p.predict_one(img), explain(p, img), p.manifest)  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medlens._atomic import write_bytes_atomic
from medlens.explanation import Explanation, image_png
from medlens.inference import ImageInput, Prediction, Predictor, decode_input
from medlens.progress import progress_iter
from medlens.provenance import manifest_training_data
from medlens.tasks import task_of
from medlens.tasks.base import ood_text

if TYPE_CHECKING:
    from medlens.bundle import Manifest

log = logging.getLogger("medlens.clinical_report")

DISCLAIMER = (
    "This report was produced automatically by a machine-learning model. It is NOT a diagnosis and must not "
    "be used as the sole basis for any clinical decision. Probabilities are model outputs, not the likelihood "
    "of disease in a given patient; all findings must be reviewed by a qualified clinician together with the "
    "patient's history and other examinations."
)
NO_INTENDED_USE = "Not stated by the model's author. Research use only."

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#1a1a1a;max-width:1000px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:20px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.warn{background:#fff4e5;border:1px solid #f0a020;padding:10px 12px;border-radius:6px;font-size:14px}
.err{background:#fdecea;border:1px solid #d93025;padding:10px 12px;border-radius:6px}
.imgs{display:flex;flex-wrap:wrap;gap:16px}.imgs figure{margin:0}.imgs img{max-width:360px;max-height:360px;
image-rendering:auto;border:1px solid #ccc;min-width:180px}
figcaption{font-size:13px;color:#444;margin-top:4px}
table{border-collapse:collapse;font-size:14px}th,td{border:1px solid #ccc;padding:4px 10px;text-align:left}
th{background:#f4f4f4}tr.pos td{background:#fdecea;font-weight:600}
.bar{display:inline-block;height:10px;background:#5b8def;vertical-align:middle}
.meta{font-size:13px;color:#444}.meta td{border:none;padding:1px 12px 1px 0}
"""


def _b64_png(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def model_card(manifest: Manifest) -> dict[str, str]:
    """Name, version and provenance of the model, as shown in reports."""
    cfg = manifest.config or {}
    arch = manifest.architecture or {}
    name = str(cfg.get("name") or (manifest.extra or {}).get("name") or arch.get("backbone") or arch.get("type") or "model")
    versions = manifest.versions or {}
    card = {
        "Model": name,
        "Architecture": f"{arch.get('type', 'classifier')} / {arch.get('backbone', '-')}",
        "Task": f"{manifest.task} ({len(manifest.label_names)} labels)",
        "Trained": manifest.created or "-",
        "Version": f"bundle format {manifest.format_version}, medlens {versions.get('medlens', '?')}",
        "Weights SHA-256": (manifest.weights_sha256 or "-")[:16],
        "Input": f"{manifest.preprocessing.image_size} px, {manifest.preprocessing.channels} channel(s)",
    }
    data = manifest_training_data(manifest)
    card["Training data"] = data["summary"] + (f" ({data['banner']})" if data["banner"] else "")
    test = (manifest.metrics or {}).get("test") or {}
    if isinstance(test, dict) and test.get("auroc_macro") is not None:
        card["Test AUROC" if manifest.label_space.num_outputs == 1 else "Test AUROC (macro)"] = (
            f"{float(test['auroc_macro']):.3f}" + (" (on generated images)" if data["generated"] else ""))
    return card


#: the only DICOM attributes a report copies: identifiers of the study, series and image, never the patient's
DICOM_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_UNNAMED = ("<array>", "<bytes>", "<PIL image>")


def report_title(source: str | None) -> str:
    """The file name of the input, or "image" for an in-memory array/bytes/PIL image.

    Example:
        >>> report_title("/data/scans/chest 1.dcm"), report_title("<array>")
        ('chest 1.dcm', 'image')
    """
    src = str(source or "")
    if not src or src in _UNNAMED:
        return "image"
    return Path(src).name or "image"


def input_identifiers(x: ImageInput, source: str | None = None) -> dict[str, str]:
    """What identifies the input in a report: its file name, and for DICOM its Study/Series/SOP Instance UIDs.

    Only the three UIDs are read (``specific_tags``); patient name, ID, birth date and every other attribute are
    never copied into a report. In-memory arrays are described as such.

    Example:
        >>> input_identifiers(np.zeros((4, 4), np.uint8))
        {'Input': 'in-memory image (no file name)'}
    """
    src = str(source or "")
    out: dict[str, str] = {}
    if isinstance(x, (str, Path)):
        out["File"] = Path(str(x)).name
    elif src and src not in _UNNAMED:
        out["File"] = Path(src).name
    else:
        out["Input"] = "in-memory image (no file name)"
    head: bytes = b""
    data: Any = None
    try:
        if isinstance(x, (str, Path)):
            with open(x, "rb") as f:
                head = f.read(132)
            data = str(x)
        elif isinstance(x, (bytes, bytearray)):
            head, data = bytes(x[:132]), io.BytesIO(bytes(x))
    except OSError:
        return out
    if data is None or not (len(head) >= 132 and head[128:132] == b"DICM"):
        return out
    try:
        import pydicom

        ds = pydicom.dcmread(data, stop_before_pixels=True, specific_tags=list(DICOM_UIDS))
        for key in DICOM_UIDS:
            v = ds.get(key)
            if v:
                out[key] = str(v)
    except Exception as e:  # noqa: BLE001 -- a damaged header: the report still names the file
        log.warning("%s: DICOM identifiers not read (%s)", out.get("File", "input"), e)
    return out


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _finding_rows(prediction: Prediction, manifest: Manifest) -> list[dict[str, Any]]:
    """The task's findings as report rows (one vocabulary with the page and the CLI)."""
    return [{"finding": f, "label": f.label, "positive": f.positive} for f in task_of(manifest).findings(prediction, manifest)]


def image_report_html(image: np.ndarray, prediction: Prediction, explanations: Sequence[Explanation], manifest: Manifest, title: str | None = None,
                      metadata: dict[str, Any] | None = None, identifiers: dict[str, str] | None = None, generated: str | None = None) -> str:
    """A self-contained HTML report for one image.

    Args:
        image: the decoded uint8 image (H, W) or (H, W, C).
        prediction: its :class:`~medlens.tasks.Prediction` (the task's own subclass).
        explanations: overlays to show (may be empty).
        manifest: the bundle manifest (model name, version, intended use).
        title: page title (default: "medlens report: " and the input's file name, or "image").
        metadata: the metadata a fusion model was given for this image (shown as a table, escaped).
        identifiers: the input's identifiers (:func:`input_identifiers`; default: its file name).
        generated: when the report was made (default: now, UTC).

    Returns:
        HTML text with images embedded as base64 PNGs; no external resources.

    Example:
        >>> html = image_report_html(img, pred, explain(p, img), p.manifest)  # doctest: +SKIP
        >>> "not a diagnosis" in html.lower()  # doctest: +SKIP
        True
    """
    esc = html.escape
    task = task_of(manifest)
    src = prediction.source or "image"
    title = title or f"medlens report: {report_title(src)}"
    ids = identifiers if identifiers is not None else input_identifiers(None, src)
    when = generated or _utc_now()
    data = manifest_training_data(manifest)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p class='warn' role='note'><strong>Not a diagnosis.</strong> {esc(DISCLAIMER)}</p>",
        *([f"<p class='err' role='alert' id='generated-banner'><strong>{esc(data['banner'])}</strong></p>"] if data["banner"] else []),
        "<h2>What went in</h2><table class='meta'>",
        *[f"<tr><td><strong>{esc(k)}</strong></td><td>{esc(v)}</td></tr>" for k, v in ids.items()],
        f"<tr><td><strong>Model</strong></td><td>{esc(model_card(manifest)['Model'])}</td></tr>",
        f"<tr><td><strong>Weights SHA-256</strong></td><td><code>{esc(manifest.weights_sha256 or '-')}</code></td></tr>",
        f"<tr><td><strong>Report generated</strong></td><td>{esc(when)}</td></tr>",
        "</table>",
    ]
    if prediction.text:  # text carried with the image (e.g. its radiology report): shown as text, escaped
        parts.append(f"<h2>Text carried with the image</h2><p id='carried-text' style='white-space:pre-wrap'>{esc(prediction.text)}</p>"
                     "<p class='meta'>Shown for reference; the model did not read it.</p>")
    if metadata:
        parts.append("<h2>Metadata given to the model</h2><table><thead><tr><th>Field</th><th>Value</th></tr></thead><tbody>")
        parts.extend(f"<tr><td>{esc(str(k))}</td><td>{esc('' if v is None else str(v))}</td></tr>" for k, v in metadata.items())
        parts.append("</tbody></table>")
    if not prediction.ok:
        parts.append(f"<p class='err'>This image could not be analysed: {esc(str(prediction.error))}</p>")
    elif prediction.ood:  # the out-of-distribution gate: shown before the findings, which stay visible but marked
        parts.append(f"<p class='err' role='alert'><strong>Outside the training distribution.</strong> "
                     f"{esc(ood_text(prediction))}.</p>")
    elif manifest.ood is None:
        parts.append("<p class='meta'>This model has no out-of-distribution gate: an image unlike its training images is not flagged.</p>")
    parts.append("<h2>Image and explanation</h2><div class='imgs'>")
    parts.append(f"<figure><img alt='input image' src='{_b64_png(image_png(image, 768))}'><figcaption>Input ({image.shape[1]}&times;{image.shape[0]} px)</figcaption></figure>")
    # the task's word for the number, as on the page ("score" unless calibration is good enough for "probability")
    pres = task.presentation(manifest)
    symbol = (pres.value_name or "score").lower() if pres.value_kind == "probability" else "value"
    for e in explanations:
        cap = f"{esc(e.label)}: {esc(e.method)}" + (f" at {esc(e.target_layer)}" if e.target_layer else "") + f" ({symbol} = {e.probability:.4g})"
        parts.append(f"<figure><img alt='{esc(e.method)} overlay for {esc(e.label)}' src='{_b64_png(e.overlay_png)}'><figcaption>{cap}</figcaption></figure>")
    parts.append("</div>")
    for method in dict.fromkeys(e.method for e in explanations):
        parts.append(f"<p class='meta'>{esc(method)}: {esc(task.caption(method))} Maps show where the model looked, not where disease is.</p>")
    if prediction.ok:
        pres = task.presentation(manifest)
        # the decision first, then the number it was made on (a score unless calibration is good) and the threshold
        parts.append("<h2>Findings</h2><table><thead><tr><th>Finding</th><th>Decision</th>"
                     f"<th>{esc(pres.value_name)}</th><th>Threshold</th></tr></thead><tbody>")
        for f in task.findings(prediction, manifest):
            p = f.value
            bar = "" if p is None or f.value_kind != "probability" else f"<span class='bar' style='width:{int(round(100 * max(0.0, min(1.0, p))))}px'></span> "
            decision = f.decision or (f.text if f.text else "-")  # a task without decisions: its own words
            parts.append(f"<tr class='{'pos' if f.positive else ''}'><td>{esc(f.label)}</td><td>{esc(decision)}</td>"
                         f"<td>{bar}{esc(f.value_text())}</td><td>{esc(f.threshold_text())}</td></tr>")
        parts.append("</tbody></table>")
        if pres.summary:
            parts.append(f"<p class='meta'>{esc(pres.summary)}</p>")
        op = task.operating_point(manifest)
        if op:  # how the model does at the deployed threshold, with intervals, on a named split
            parts.append("<h3>At this threshold</h3><ul id='operating-point'>")
            parts.extend(f"<li>{esc(line)}</li>" for line in op.get("text") or [])
            if op.get("calibration"):
                parts.append(f"<li>{esc(op['calibration'])}</li>")
            parts.append("</ul>")
            if op.get("interval_method"):
                parts.append(f"<p class='meta' id='interval-method'>Intervals: {esc(op['interval_method'])}.</p>")
        parts.append(f"<p><strong>Model output:</strong> {esc(task.outcome(prediction, manifest))}</p>")
    parts.append("<h2>Intended use</h2>")
    parts.append(f"<p>{esc(manifest.intended_use or NO_INTENDED_USE)}</p>")
    parts.append(f"<h2>Training data</h2><p id='training-data'>{esc(data['summary'])}</p>")
    parts.append("<h2>Model</h2><table class='meta'>")
    for k, v in model_card(manifest).items():
        parts.append(f"<tr><td><strong>{esc(k)}</strong></td><td>{esc(v)}</td></tr>")
    parts.append("</table>")
    parts.append(f"<p class='meta'>Source: {esc(report_title(src) if str(src) not in _UNNAMED else 'in-memory image')}</p>")
    parts.append(f"<p class='warn'><strong>Not a diagnosis.</strong> {esc(DISCLAIMER)}</p></body></html>")
    return "\n".join(parts)


#: findings whose operating point a one-page PDF lists (the HTML report lists them all)
OP_LINES_PDF = 6


def image_report_pdf(image: np.ndarray, prediction: Prediction, explanations: Sequence[Explanation], manifest: Manifest,
                     metadata: dict[str, Any] | None = None, identifiers: dict[str, str] | None = None, generated: str | None = None) -> bytes:
    """The same report as a one-page A4 PDF (matplotlib, no extra dependency); arguments as :func:`image_report_html`.

    Example:
        >>> pdf = image_report_pdf(img, pred, exps, p.manifest)  # doctest: +SKIP
        >>> pdf[:4]  # doctest: +SKIP
        b'%PDF'
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import textwrap

    import cv2
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.27, 11.69))  # A4 portrait, inches
    title = f"medlens report: {report_title(prediction.source)}"
    fig.text(0.06, 0.965, title[:90], fontsize=13, weight="bold", va="top")
    ids = identifiers if identifiers is not None else input_identifiers(None, prediction.source)
    when = generated or _utc_now()
    fig.text(0.06, 0.935, "\n".join(textwrap.wrap("NOT A DIAGNOSIS. " + DISCLAIMER, 110)), fontsize=7.5, va="top", color="#8a4b00")
    data = manifest_training_data(manifest)
    if data["banner"]:  # a model trained on generated images says so above everything it shows
        fig.text(0.06, 0.882, data["banner"], fontsize=10, weight="bold", va="top", color="#b3261e")
    panels = [(image, "Input")] + [
        (cv2.imdecode(np.frombuffer(e.overlay_png, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1], f"{e.label}: {e.method} ({e.probability:.3g})")
        for e in list(explanations)[:3]
    ]
    w = 0.88 / len(panels)
    for i, (im, cap) in enumerate(panels):
        ax = fig.add_axes([0.06 + i * w, 0.6, w - 0.02, 0.24])
        ax.imshow(im, cmap="gray" if im.ndim == 2 else None)
        ax.set_title(cap[:40], fontsize=8)
        ax.axis("off")
    lines = []
    if not prediction.ok:
        lines.append(f"Could not be analysed: {prediction.error}")
    elif prediction.ood:
        lines.append(ood_text(prediction)[:110])
    else:
        for f in task_of(manifest).findings(prediction, manifest):
            lines.append(f"{f.label[:28]:<30}{f.value_text():>10}{f.threshold_text():>12}   {f.decision or f.text}")
    y = 0.56
    # the task's word for the number ("Score" unless calibration is good enough for "Probability"), as on the page
    name = task_of(manifest).presentation(manifest).value_name or "Value"
    value_name = name if len(name) <= 10 else name[:4] + "."
    fig.text(0.06, y, f"{'Finding':<30}{value_name:>10}{'Threshold':>12}   Decision", family="monospace", fontsize=8, weight="bold", va="top")
    for ln in lines[:25]:
        y -= 0.016
        fig.text(0.06, y, ln, family="monospace", fontsize=8, va="top")
    op = task_of(manifest).operating_point(manifest) if prediction.ok else None
    if op:  # how the model does at the deployed threshold, with intervals, on a named split (as the HTML report)
        y -= 0.026
        fig.text(0.06, y, "At this threshold", fontsize=8, weight="bold", va="top")
        shown = (op.get("text") or [])[:OP_LINES_PDF]
        more = len(op.get("text") or []) - len(shown)
        extra = [f"... and {more} more finding(s): see the HTML report"] if more > 0 else []
        for item in [*shown, *extra, *([op["calibration"]] if op.get("calibration") else []),
                     *([f"Intervals: {op['interval_method']}."] if op.get("interval_method") else [])]:
            for ln in textwrap.wrap(item, 125):
                y -= 0.013
                fig.text(0.07, y, ln, fontsize=7, va="top")
    y -= 0.03
    fig.text(0.06, y, "Intended use: " + "\n".join(textwrap.wrap(manifest.intended_use or NO_INTENDED_USE, 100)), fontsize=8, va="top")
    y -= 0.05
    card = {**model_card(manifest), "Weights SHA-256": manifest.weights_sha256 or "-"}
    for k, v in card.items():
        fig.text(0.06, y, f"{k}: {v}", fontsize=7.5, va="top")
        y -= 0.014
    y -= 0.01
    for k, v in {**ids, "Report generated": when}.items():
        fig.text(0.06, y, f"{k}: {v}"[:140], fontsize=7.5, va="top")
        y -= 0.014
    if metadata:
        y -= 0.01
        fig.text(0.06, y, "Metadata given to the model:", fontsize=7.5, weight="bold", va="top")
        for k, v in list(metadata.items())[:12]:
            y -= 0.014
            fig.text(0.08, y, f"{k}: {'' if v is None else v}"[:120], fontsize=7.5, va="top")
    for method in dict.fromkeys(e.method for e in explanations):
        y -= 0.02
        fig.text(0.06, y, "\n".join(textwrap.wrap(f"{method}: {task_of(manifest).caption(method)} Maps show where the model looked, not where disease is.", 120)),
                 fontsize=7, va="top", color="#444444")
        y -= 0.012
    buf = io.BytesIO()
    fig.savefig(buf, format="pdf", metadata={"Title": title})
    return buf.getvalue()


def _stem(src: str, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(src)).stem).strip("_") or "image"
    stem, k = base, 1
    while stem in used:
        k += 1
        stem = f"{base}_{k}"
    used.add(stem)
    return stem


def write_reports(
    predictor: Predictor,
    inputs: Sequence[ImageInput],
    predictions: Sequence[Prediction],
    out_dir: str | Path,
    method: str | None = None,
    metadata: Sequence[dict | None] | None = None,
    pdf: bool = False,
    progress: bool = False,
) -> list[Path]:
    """Write ``<image>.html`` (and ``.pdf``) per input plus ``index.html`` into ``out_dir``.

    Inputs that could not be predicted get a report that says so. An explanation that fails (e.g. an ONNX-only
    folder without PyTorch weights) leaves the report without overlay and is logged.

    Example:
        >>> preds = p.predict(paths)  # doctest: +SKIP
        >>> write_reports(p, paths, preds, "reports/")  # doctest: +SKIP
    """
    from medlens.interpret import explain

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inputs = list(inputs)
    if len(inputs) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(inputs)} inputs")
    used: set[str] = set()
    written: list[Path] = []
    index_rows = []
    for i in progress_iter(range(len(inputs)), progress, "reports"):
        pred = predictions[i]
        stem = _stem(pred.source, used)
        img = np.zeros((8, 8), np.uint8)
        exps: list[Explanation] = []
        meta = None if metadata is None else metadata[i]
        if pred.ok:
            try:
                img, _ = decode_input(inputs[i], pred.source)
                exps = explain(predictor, img, method=method, metadata=meta)
            except (ValueError, TypeError, RuntimeError) as e:
                log.warning("%s: no explanation in the report (%s)", pred.source, e)
        ids = input_identifiers(inputs[i], pred.source)
        when = _utc_now()
        page = image_report_html(img, pred, exps, predictor.manifest, metadata=meta, identifiers=ids, generated=when)
        path = out / f"{stem}.html"
        write_bytes_atomic(path, page.encode("utf-8"))
        written.append(path)
        if pdf:
            pp = out / f"{stem}.pdf"
            write_bytes_atomic(pp, image_report_pdf(img, pred, exps, predictor.manifest, metadata=meta, identifiers=ids, generated=when))
            written.append(pp)
        status = "error" if not pred.ok else task_of(predictor.manifest).outcome(pred, predictor.manifest)
        index_rows.append(f"<tr><td><a href='{html.escape(path.name)}'>{html.escape(str(pred.source))}</a></td><td>{html.escape(status)}</td></tr>")
    index = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>medlens reports</title>"
        f"<style>{_CSS}</style></head><body><h1>medlens reports ({len(index_rows)} images)</h1>"
        f"<p class='warn'><strong>Not a diagnosis.</strong> {html.escape(DISCLAIMER)}</p>"
        "<table><thead><tr><th>Image</th><th>Model output</th></tr></thead><tbody>" + "".join(index_rows) + "</tbody></table></body></html>"
    )
    write_bytes_atomic(out / "index.html", index.encode("utf-8"))
    written.append(out / "index.html")
    log.info("wrote %d reports to %s", len(index_rows), out)
    return written


def predict_with_reports(bundle: str | Path, images: Sequence[ImageInput], report_dir: str | Path, out: str | Path | None = None,
                         method: str | None = None, metadata: Sequence[dict | None] | None = None, progress: bool = False,
                         texts: Sequence[str | None] | None = None, **predictor_kw: Any) -> list[Prediction]:
    """Predict images and write one self-contained HTML report per image plus ``index.html`` into ``report_dir``.

    Each report holds the image, the ``method`` overlay (default: the task's first method), the findings against
    their thresholds, the model card and the not-a-diagnosis statement.

    Example:
        >>> preds = predict_with_reports("runs/demo/bundle", ["a.png"], "reports/")  # doctest: +SKIP
    """
    from medlens.inference import write_predictions_csv
    from medlens.inference.loading import carry_texts

    predictor = Predictor.from_bundle(bundle, **predictor_kw)
    preds = predictor.predict(images, metadata=metadata, progress=progress)
    carry_texts(preds, texts)  # e.g. the image's report: in the CSV and the page, never given to the model
    if out is not None:
        write_predictions_csv(preds, predictor.label_names, out, predictor.manifest)
    write_reports(predictor, images, preds, report_dir, method=method, metadata=metadata, progress=progress)
    return preds
