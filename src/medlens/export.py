"""Export a bundle to ONNX, and predict with ONNX Runtime behind the same :class:`~medlens.inference.Predictor` API.

``export_onnx(bundle)`` writes ``model.onnx`` (input ``image`` (N, C, H, W) float32 already preprocessed, plus
``metadata`` (N, D) for fusion models; output ``logits`` (N, K), or ``reconstruction`` for anomaly
autoencoders, scored like the PyTorch predictor; the batch axis is dynamic) and the manifest
beside it. The manifest keeps the labels, preprocessing, thresholds and temperature, so the ONNX folder is all
a CPU-only server needs; ``extra.onnx`` records the file's SHA-256, the opset and the largest difference from
PyTorch measured at export time.

By default the model is written INTO the bundle folder (next to ``model.safetensors``), so
``Predictor.from_bundle(bundle, backend="onnx")`` and ``medlens serve --backend onnx`` find it. Loading checks
the SHA-256 before ONNX Runtime sees the bytes; ONNX files are protobuf, never pickles.

Example:
    >>> from medlens.export import export_onnx
    >>> from medlens import Predictor
    >>> export_onnx("runs/pneumoniamnist/bundle")  # doctest: +SKIP
    PosixPath('runs/pneumoniamnist/bundle/model.onnx')
    >>> p = Predictor.from_bundle("runs/pneumoniamnist/bundle", backend="onnx")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medlens._atomic import write_bytes_atomic, write_json_atomic
from medlens.bundle import MANIFEST, Manifest, load_bundle
from medlens.inference.onnx import ONNX_FILE, OnnxPredictor, onnx_session
from medlens.ood import OOD_FILE
from medlens.tasks import task_of

log = logging.getLogger("medlens.export")

DEFAULT_OPSET = 17
#: the opsets torch's exporters write (checked before any work: an opset outside makes both exporters fail or guess)
MIN_OPSET = 7
MAX_OPSET = int(getattr(getattr(torch.onnx, "_constants", None), "ONNX_MAX_OPSET", 20))
FORMATS = ("onnx",)


def metadata_dim(manifest: Manifest) -> int:
    """Width of the encoded metadata vector of a fusion bundle (0 for image-only models)."""
    if manifest.metadata_encoder:
        from medlens.data.metadata import MetadataEncoder

        return int(MetadataEncoder.from_dict(manifest.metadata_encoder).dim)
    return int(manifest.architecture.get("meta_dim") or 0)


def _example_inputs(manifest: Manifest, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    pp = manifest.preprocessing
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, pp.channels, pp.image_size, pp.image_size, generator=g)
    d = metadata_dim(manifest)
    m = torch.randn(n, d, generator=g) if d > 0 else None
    return x, m


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send what native code writes to file descriptor 1 to stderr for the duration: the TorchScript exporter
    prints its whole IR graph there when it gives up on a model, and stdout carries only results."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):  # no real stdout (embedded, captured): nothing to protect
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def export_to_bytes(model: nn.Module, manifest: Manifest, opset: int, dynamo: bool | None) -> tuple[bytes, str]:
    """Trace the network to ONNX in memory; returns (bytes, exporter used).

    The TorchScript exporter is tried first: it is several times faster than the dynamo exporter on CPU and
    gives identical graphs for these CNNs; the dynamo exporter is the fallback (and the only one in torch
    versions without the former).
    """
    wrapper = export_head(model, manifest)
    x, m = _example_inputs(manifest, 2)  # batch 2, so no size-1 special case is baked in
    args = (x,) if m is None else (x, m)
    names = ["image"] if m is None else ["image", "metadata"]
    outputs = output_names(model, manifest)
    dyn_axes = {n: {0: "batch"} for n in [*names, *outputs]}
    errors = []
    for use_dynamo in ([False, True] if dynamo is None else [dynamo]):
        buf = io.BytesIO()
        try:
            with warnings.catch_warnings(), torch.no_grad(), _stdout_to_stderr():
                warnings.simplefilter("ignore")
                if use_dynamo:
                    batch = torch.export.Dim("batch", min=1, max=4096)
                    shapes = {"image": {0: batch}} if m is None else {"image": {0: batch}, "metadata": {0: batch}}
                    prog = torch.onnx.export(wrapper, args, input_names=names, output_names=outputs, dynamic_shapes=shapes, opset_version=max(opset, 18), dynamo=True, external_data=False, verbose=False)
                    buf.write(prog.model_proto.SerializeToString())
                else:
                    torch.onnx.export(wrapper, args, buf, input_names=names, output_names=outputs, dynamic_axes=dyn_axes, opset_version=opset, do_constant_folding=True, dynamo=False)
            data = buf.getvalue()
            if data:
                return data, "dynamo" if use_dynamo else "torchscript"
            errors.append(f"{'dynamo' if use_dynamo else 'torchscript'}: empty output")
        except Exception as e:  # exporters raise many types; try the other one, then report both
            errors.append(f"{'dynamo' if use_dynamo else 'torchscript'}: {type(e).__name__}: {str(e)[:300]}")
    raise RuntimeError(f"ONNX export of {manifest.architecture.get('backbone', manifest.architecture.get('type'))} failed ({'; '.join(errors)})")


def export_head(model: nn.Module, manifest: Manifest) -> nn.Module:
    """The graph exported: the task's inference head, or its feature head (outputs and penultimate features) when
    the bundle has an out-of-distribution gate, so ONNX Runtime scores the gate too."""
    task = task_of(manifest)
    fh = task.feature_head(model, manifest) if manifest.ood is not None and task.supports_ood else None
    if fh is None:
        fh = task.map_head(model, manifest)  # e.g. an anomaly detector's error map beside its score
    return (fh if fh is not None else task.inference_head(model, manifest)).eval()


def output_names(model: nn.Module, manifest: Manifest) -> list[str]:
    """The graph's outputs: the task's output, then ``features`` for the gate, or the task's per-pixel map."""
    task = task_of(manifest)
    if manifest.ood is not None and task.supports_ood and task.feature_head(model, manifest) is not None:
        return [output_name(manifest), "features"]
    if task.map_output and task.map_head(model, manifest) is not None:
        return [output_name(manifest), task.map_output]
    return [output_name(manifest)]


def output_name(manifest: Manifest) -> str:
    """The task's output name (``logits`` for classifiers, ``score`` for anomaly detectors)."""
    return task_of(manifest).output_name


def export_onnx(bundle_path: str | Path, out_dir: str | Path | None = None, opset: int = DEFAULT_OPSET, dynamo: bool | None = None, check: bool = True) -> Path:
    """Export a bundle's network to ONNX with a dynamic batch axis; write the manifest beside it.

    Args:
        bundle_path: a bundle folder (``model.safetensors`` + ``manifest.json``).
        out_dir: where ``model.onnx`` and ``manifest.json`` go; default: the bundle folder itself.
        opset: ONNX opset (the dynamo exporter uses at least 18).
        dynamo: force the dynamo (True) or TorchScript (False) exporter; default: TorchScript, then dynamo.
        check: run ONNX Runtime on a batch of 3 random inputs and record the largest difference in logits.

    Returns:
        The path of ``model.onnx``.

    Raises:
        ValueError: an opset outside ``MIN_OPSET``-``MAX_OPSET``.
        BundleError: the bundle is missing or tampered with.
        RuntimeError: the network cannot be exported.

    Example:
        >>> export_onnx("runs/pneumoniamnist/bundle", "exported/pneumonia")  # doctest: +SKIP
        PosixPath('exported/pneumonia/model.onnx')
    """
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"ONNX opset {opset!r} cannot be written; valid: {MIN_OPSET}-{MAX_OPSET} (default {DEFAULT_OPSET})")
    src = Path(bundle_path)
    bundle = load_bundle(src)
    manifest = bundle.manifest
    data, exporter = export_to_bytes(bundle.model, manifest, opset, dynamo)
    info: dict[str, Any] = {
        "file": ONNX_FILE, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "opset": opset if exporter == "torchscript" else max(opset, 18),
        "exporter": exporter, "inputs": ["image", "metadata"] if metadata_dim(manifest) else ["image"], "output": output_name(manifest),
        "outputs": output_names(bundle.model, manifest),
        "dynamic_axes": {"batch": 0}, "torch": torch.__version__,
        "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if check:
        x, m = _example_inputs(manifest, 3, seed=1)
        with torch.no_grad():
            ref = task_of(manifest).inference_head(bundle.model, manifest).eval()(x, m).float().numpy()
        sess = onnx_session(data)
        feeds = {"image": x.numpy()} if m is None else {"image": x.numpy(), "metadata": m.numpy()}
        out = sess.run(None, feeds)[0]
        diff = float(np.abs(out - ref).max())
        info["max_abs_diff"] = diff
        if diff > 1e-3:
            log.warning("ONNX Runtime and PyTorch outputs differ by up to %.2e on random inputs", diff)
    dest = Path(out_dir) if out_dir is not None else src
    dest.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(dest / ONNX_FILE, data)
    if manifest.ood is not None and dest.resolve() != src.resolve():  # the gate travels with the exported model
        write_bytes_atomic(dest / OOD_FILE, (src / OOD_FILE).read_bytes())
    extra = {**manifest.extra, "onnx": info}
    if dest.resolve() == src.resolve():
        from medlens.bundle import update_manifest

        update_manifest(src, extra=extra)
    else:
        manifest.extra = extra
        write_json_atomic(dest / MANIFEST, manifest.to_dict())
    log.info("exported %s to %s (%s exporter, opset %s, %.1f MB)", src, dest / ONNX_FILE, exporter, info["opset"], len(data) / 1e6)
    return dest / ONNX_FILE


def export(bundle_path: str | Path, format: str = "onnx", out_dir: str | Path | None = None, opset: int = DEFAULT_OPSET) -> Path:
    """``medlens export``: dispatch on the format (only ``onnx`` today)."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; valid: {', '.join(FORMATS)}")
    return export_onnx(bundle_path, out_dir, opset=opset)


__all__ = ["ONNX_FILE", "OnnxPredictor", "export", "export_onnx", "export_to_bytes", "metadata_dim"]
