"""``medlens serve --ui gradio``: a Gradio Blocks app on the same FastAPI server and the same model.

Every handler goes through the one :class:`~medlens.serve.state.ServerState` the REST routes use -- the upload
limit, decoding within the pixel budget, the metadata checks, the micro-batcher, the explanation predictor and
the per-image report -- so a Gradio user and a REST client get the same numbers for the same image, and no second
model is loaded. What is shown comes from the task (its findings, presentation and operating point) and from the
bundle (training data, intended use, metadata fields); nothing here knows a task by name.

Gradio is imported only here (the ``gradio`` extra: ``pip install 'medlens[gradio]'``). Labels, file names and
metadata reach the browser through text components and escaped HTML only. With an API key set, Gradio's login page
asks for it (any user name, the key as password). Uploads stay in Gradio's cache for at most :data:`CACHE_MAX_AGE_S`.
"""

from __future__ import annotations

import functools
import hmac
import html
import io
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from medlens.provenance import manifest_training_data
from medlens.serve.errors import ApiError, one_line
from medlens.serve.public import metadata_fields
from medlens.serve.state import ServerState
from medlens.serve.uploads import safe_name

log = logging.getLogger("medlens.serve")

#: where ``medlens serve --ui gradio`` mounts the app
GRADIO_PATH = "/gradio"
#: uploads and reports older than this (seconds) are deleted from Gradio's cache and the report folder
CACHE_MAX_AGE_S = 900
#: the layer choice that lets the task pick its default target layer
DEFAULT_LAYER = "(default)"
_NOT_A_DIAGNOSIS = ("Not a diagnosis: a machine-learning model's output, to be reviewed by a qualified clinician together with "
                    "the clinical picture.")


def mount_gradio(app: FastAPI, state: ServerState, path: str = GRADIO_PATH) -> FastAPI:
    """Mount the Gradio app for ``state`` on ``app`` at ``path`` (the REST routes and the page stay as they are).

    Raises:
        ModuleNotFoundError: gradio is not installed (the ``gradio`` extra).

    Example:
        >>> app = create_app("runs/x/bundle", ui="gradio")  # doctest: +SKIP  (calls this)
    """
    import gradio as gr

    key = state.settings.api_key
    auth = None
    if key:
        def auth(user: str, password: str) -> bool:  # noqa: ARG001 -- any user name; the API key is the password
            return hmac.compare_digest(str(password).encode(), key.encode())

    return gr.mount_gradio_app(
        app, build_blocks(state), path=path, auth=auth, auth_message="Enter the server's API key as the password." if key else None,
        max_file_size=state.settings.max_upload_bytes, ssr_mode=False, mcp_server=False, show_error=True, footer_links=["api"],
        # system fonts: the default theme would load its font from Google's servers
        theme=gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]))


def fmt_value(value: float | None, kind: str) -> str:
    """A finding's number as the web page writes it: a percentage for a probability, 4 significant digits otherwise."""
    if value is None or value != value:
        return "-"
    return f"{100 * value:.1f}%" if kind == "probability" else f"{value:.4g}"


def findings_table(record: dict[str, Any], decision_words: tuple[str, ...] | list[str]) -> list[list[str]]:
    """The findings of a ``/v1/predict`` record as table rows (Finding, Decision, value, Threshold), as the page shows them."""
    rows = []
    for f in record.get("findings") or []:
        positive = f.get("positive")
        words = list(decision_words) if len(decision_words) >= 2 else [f.get("decision") or "positive", f.get("decision") or "negative"]
        decision = "" if positive is None else (words[0] if positive else words[1])
        rule = f.get("rule")
        threshold = "highest" if rule == "argmax" else "-" if rule == "none" else fmt_value(f.get("threshold"), f.get("value_kind", ""))
        rows.append([str(f.get("label")), decision, f.get("text") or fmt_value(f.get("value"), f.get("value_kind", "")), threshold])
    return rows


def outcome_text(record: dict[str, Any]) -> str:
    """The model's output in one phrase, from the findings only: the positive ones, else the task's own words."""
    found = record.get("findings") or []
    positive = [str(f["label"]) for f in found if f.get("positive") is True]
    if positive:
        return ", ".join(positive)
    words = [str(f["text"]) for f in found if f.get("text")]
    if words:
        return "; ".join(words)
    return "none" if any(f.get("positive") is False for f in found) else "-"


def ood_line(record: dict[str, Any]) -> str:
    """What the out-of-distribution gate says about this image (the task's note, or that it passed)."""
    if record.get("ood") is False and record.get("ood_score") is not None:
        return f"within the training distribution (score {record['ood_score']:.3g}, gate {record.get('ood_threshold', float('nan')):.3g})"
    return str(record.get("ood_note") or "")


def _header_html(state: ServerState) -> str:
    """The model's header: name, task, what it outputs, the generated-data banner, training data, intended use (escaped)."""
    m, esc = state.manifest, html.escape
    pres = state.task.presentation(m)
    data = manifest_training_data(m)
    parts = [f"<h2>medlens: {esc(state.model_name)} <small>({esc(str(m.task))}: {esc(', '.join(m.label_names))})</small></h2>"]
    if data["banner"]:
        parts.append(f"<p id='generated-banner' role='alert' style='background:#fdecea;border:1px solid #b3261e;color:#7a1712;"
                     f"padding:8px 12px;font-weight:600;border-radius:6px'>{esc(str(data['banner']))}</p>")
    parts.append(f"<p><strong>{esc(_NOT_A_DIAGNOSIS)}</strong></p>")
    if pres.summary:
        parts.append(f"<p>{esc(pres.summary)}</p>")
    parts.append(f"<p id='training-data'><em>Training data:</em> {esc(str(data['summary']))}</p>")
    if m.intended_use:
        parts.append(f"<p><em>Intended use:</em> {esc(str(m.intended_use))}</p>")
    return "\n".join(parts)


def _operating_point_text(state: ServerState) -> str:
    op = state.task.operating_point(state.manifest)
    if not op:
        return ""
    return "\n".join([*(op.get("text") or []), *([op["calibration"]] if op.get("calibration") else [])])


class _Reports:
    """A folder of per-image reports for download; files older than :data:`CACHE_MAX_AGE_S` are removed as new ones come."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="medlens-gradio-reports-"))

    def write(self, html_text: str, name: str) -> str:
        now = time.time()
        for old in self.root.glob("*/*.html"):
            try:
                if now - old.stat().st_mtime > CACHE_MAX_AGE_S:
                    old.unlink()
                    old.parent.rmdir()
            except OSError:
                pass
        stem = name.rsplit(".", 1)[0].strip(".") or "image"
        out = Path(tempfile.mkdtemp(dir=self.root)) / f"medlens-report-{stem}.html"
        tmp = out.with_suffix(".tmp")
        tmp.write_text(html_text, encoding="utf-8")
        tmp.replace(out)
        return str(out)


def build_blocks(state: ServerState) -> Any:
    """The Gradio Blocks app over ``state``: upload, findings, heatmap, metadata inputs (fusion bundles), report.

    Its API (``gradio_client``) has three endpoints: ``/predict`` (image, metadata values -> the decoded image, the
    out-of-distribution line, the findings table, the model output, the ``/v1/predict`` record), ``/explain``
    (image, label, method, layer, metadata values -> overlay, caption) and ``/report`` (image, method, metadata
    values -> the HTML report file).
    """
    import gradio as gr
    from PIL import Image

    m, task = state.manifest, state.task
    pres = task.presentation(m)
    fields = metadata_fields(m) if state.predictor.meta_encoder is not None else {"numeric": [], "categorical": {}}
    meta_names = [*fields["numeric"], *fields["categorical"]]
    methods = state.explain_methods()
    reports = _Reports()

    def guarded(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """A client's mistake is one line in the UI (gr.Error), never a traceback; the server keeps serving."""

        @functools.wraps(fn)
        async def run(*args: Any) -> Any:
            try:
                return await fn(*args)
            except ApiError as e:
                state.count_error()
                raise gr.Error(one_line(e.message), print_exception=False) from None
            except gr.Error:
                state.count_error()
                raise
            except Exception as e:  # noqa: BLE001 -- logged here; the user reads one line
                state.count_error()
                log.exception("gradio %s failed", fn.__name__)
                raise gr.Error(f"{type(e).__name__}: the request could not be processed", print_exception=False) from None

        return run

    def upload(path: str | None) -> tuple[bytes, str]:
        """The uploaded file's bytes and name, within the server's upload limit (400 empty, 413 too large)."""
        if not path:
            raise ApiError(400, "no_file", "choose an image first")
        p = Path(path)
        name = safe_name(p.name)
        limit = state.settings.max_upload_bytes
        if p.stat().st_size > limit:
            raise ApiError(413, "too_large", f"{name}: file is larger than {limit} bytes")
        data = p.read_bytes()
        if not data:
            raise ApiError(400, "empty_file", f"{name}: the file is empty")
        return data, name

    def metadata_rows(values: tuple[Any, ...]) -> list[dict | None] | None:
        """The metadata inputs as the one row ``/v1/predict`` takes (blank inputs left out: unknown)."""
        if not meta_names:
            return None
        row = {k: v for k, v in zip(meta_names, values, strict=True) if v is not None and v != ""}
        return [row]

    @guarded
    async def predict(path: str | None, *meta: Any) -> tuple[Any, str, list[list[str]], str, dict[str, Any]]:
        from medlens.serve.uploads import preview_png

        data, name = upload(path)
        rows = metadata_rows(meta)
        state.check_metadata(rows)
        async with state.decoded(data, name) as img:
            pred = await state.predict_image(img, name, rows)
            shown = Image.open(io.BytesIO(preview_png(img)))
        record = state.record(pred)
        return shown, ood_line(record), findings_table(record, pres.decision_words), outcome_text(record), record

    @guarded
    async def explain(path: str | None, label: str | None, method: str | None, layer: str | None, *meta: Any) -> tuple[Any, str]:
        data, name = upload(path)
        e = await state.explanation(data, name, label or None, method or None, metadata_rows(meta),
                                    None if layer in (None, "", DEFAULT_LAYER) else layer)
        kind = pres.value_kind
        word = (pres.value_name or "p").lower() if kind == "probability" else kind
        caption = f"{e.method} for {e.label} ({word} = {fmt_value(e.probability, kind)})" + (f" at {e.target_layer}" if e.target_layer else "")
        return Image.open(io.BytesIO(e.overlay_png)), caption

    @guarded
    async def report(path: str | None, method: str | None, *meta: Any) -> str:
        data, name = upload(path)
        return reports.write(await state.report_html(data, name, method or None, metadata_rows(meta)), name)

    with gr.Blocks(title="medlens", analytics_enabled=False, delete_cache=(CACHE_MAX_AGE_S // 3, CACHE_MAX_AGE_S)) as blocks:
        gr.HTML(_header_html(state))
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.File(label="Image (PNG, JPEG, TIFF, BMP or DICOM)", type="filepath", elem_id="image")
                meta_inputs: list[Any] = []
                if meta_names:
                    with gr.Group():
                        gr.Markdown("**Metadata** (blank: unknown)")
                        meta_inputs += [gr.Number(label=str(n), value=None) for n in fields["numeric"]]
                        meta_inputs += [gr.Dropdown(label=str(n), choices=[str(v) for v in values], value=None)
                                        for n, values in fields["categorical"].items()]
                analyse = gr.Button("Analyse", variant="primary", elem_id="analyse")
            with gr.Column(scale=2):
                shown = gr.Image(label="Image as decoded", interactive=False, format="png", elem_id="decoded", height=300,
                                 buttons=["download", "fullscreen"])  # no "share": images stay on this server
                ood = gr.Textbox(label="Out-of-distribution check", interactive=False, elem_id="ood")
                table = gr.Dataframe(headers=["Finding", "Decision", pres.value_name, "Threshold"], datatype="str", interactive=False,
                                     label="Findings (decision first, then the number it was made on)", elem_id="findings")
                outcome = gr.Textbox(label="Model output", interactive=False, elem_id="outcome")
                op_text = _operating_point_text(state)
                if op_text:
                    gr.Textbox(value=op_text, label="At this threshold", interactive=False, lines=max(2, op_text.count("\n") + 1))
                with gr.Accordion("Record (as /v1/predict returns it)", open=False):
                    record = gr.JSON(label="record")
        analysed = analyse.click(predict, inputs=[image, *meta_inputs], outputs=[shown, ood, table, outcome, record], api_name="predict")
        if methods:
            with gr.Row():
                with gr.Column(scale=1):
                    labels = list(pres.explain_labels) or list(m.label_names)
                    label = gr.Dropdown(label="Finding to explain", choices=labels, value=labels[0] if labels else None)
                    method = gr.Dropdown(label="Method", choices=methods, value=methods[0])
                    layers = [DEFAULT_LAYER, *state.target_layers()]
                    layer = gr.Dropdown(label="Layer", choices=layers, value=DEFAULT_LAYER)
                    explain_btn = gr.Button("Explain")
                with gr.Column(scale=2):
                    heatmap = gr.Image(label="Heatmap (where the model looked, not where disease is)", interactive=False, format="png",
                                       elem_id="heatmap", height=300, buttons=["download", "fullscreen"])
                    caption = gr.Textbox(label="Caption", interactive=False, elem_id="caption")
            explain_inputs = [image, label, method, layer, *meta_inputs]
            explain_btn.click(explain, inputs=explain_inputs, outputs=[heatmap, caption], api_name="explain")
            # as on the page: a prediction is followed by its heatmap (not a separate API endpoint)
            analysed.success(explain, inputs=explain_inputs, outputs=[heatmap, caption], api_visibility="private")
        with gr.Row():
            report_btn = gr.Button("Per-image report (HTML)")
            report_file = gr.File(label="Report", interactive=False)
        report_inputs = [image, method] if methods else [image, gr.State(None)]
        report_btn.click(report, inputs=[*report_inputs, *meta_inputs], outputs=report_file, api_name="report")
    blocks.queue(default_concurrency_limit=max(1, state.settings.max_batch))
    return blocks


__all__ = ["CACHE_MAX_AGE_S", "DEFAULT_LAYER", "GRADIO_PATH", "build_blocks", "findings_table", "fmt_value", "mount_gradio", "ood_line", "outcome_text"]
