"""One bundle from the fold bundles of ``medlens cv --ensemble``: the mean of the members' calibrated probabilities.

The network is :class:`~medlens.models.ensemble.EnsembleNet` (members' weights and calibration inside), so the
bundle predicts, explains (class-activation maps through every member), exports to ONNX and is served like any
classifier bundle. Its operating point comes from the pooled out-of-fold probabilities -- every row scored by
the member that never saw it -- through the task's own threshold rule (``task_options.threshold_method``).

Members must share task, labels, preprocessing and metadata encoding; anything else is refused with one line.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from medlens.bundle import Bundle, BundleError, Manifest, load_bundle, read_temperature, save_bundle
from medlens.tasks import task_of

log = logging.getLogger("medlens.ensemble")

#: architecture fields copied from the members to the top of the ensemble's manifest (reports, the web page)
DISPLAY_FIELDS = ("backbone", "image_size", "in_chans", "meta_dim")


def probs_to_raw(probs: np.ndarray, activation: str) -> np.ndarray:
    """The ensemble network's output for given mean probabilities (the inverse of the bundle's activation at T=1).

    Example:
        >>> probs_to_raw(np.array([[0.5], [0.9]]), "sigmoid").round(3).ravel().tolist()
        [0.0, 2.197]
    """
    from medlens.models.ensemble import EPS

    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(p) if activation == "softmax" else np.log(p) - np.log1p(-p)


def _check_members(bundles: list[Bundle]) -> None:
    first = bundles[0].manifest
    for b in bundles[1:]:
        m, src = b.manifest, b.path
        if m.task != first.task or m.label_names != first.label_names:
            raise BundleError(f"{src}: labels {m.task} {m.label_names} differ from the first member's ({first.task} {first.label_names})")
        if m.preprocessing.to_dict() != first.preprocessing.to_dict():
            raise BundleError(f"{src}: preprocessing differs from the first member's (size, channels, mean/std)")
        if (m.metadata_encoder or None) != (first.metadata_encoder or None):
            raise BundleError(f"{src}: its metadata encoding (fitted on its own training rows) differs from the first member's; "
                              "metadata models cannot be ensembled yet")
    for b in bundles:
        if b.manifest.architecture.get("type") == "ensemble":
            raise BundleError(f"{b.path}: is an ensemble already")
        if task_of(b.manifest).ensemble_activation is None:
            raise BundleError(f"{b.path}: {task_of(b.manifest).name} bundles cannot be ensembled")


def build_ensemble(members: list[str | Path], out: str | Path, cfg: Any, oof_probs: np.ndarray, oof_targets: np.ndarray,
                   metrics: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                   provenance: dict[str, Any] | None = None) -> Path:
    """Write the ensemble bundle of ``members`` (bundle folders) to ``out``.

    Args:
        members: bundle folders of one label space (the folds of ``medlens cv``).
        out: the new bundle folder (replaced atomically).
        cfg: the run config; its ``task_options.threshold_method`` sets the thresholds; it is saved in the manifest.
        oof_probs: pooled out-of-fold (calibrated) probabilities of the members, (N, K_out).
        oof_targets: their targets (N, K) as the task stores them.
        metrics: metrics to record in the manifest (the cross-validation's pooled ones).
        extra: more manifest ``extra`` fields.
        provenance: more fields of ``extra["ensemble"]`` (``trained_on``, ``held_out``: whether rows of the
            config's data were kept from every member; without them evaluating on that data is refused).

    Returns:
        The bundle folder.
    """
    import torch

    from medlens.models import create_model
    from medlens.tasks import task_of

    bundles = [load_bundle(m) for m in members]
    if not bundles:
        raise ValueError("an ensemble needs at least one member bundle")
    _check_members(bundles)
    first = bundles[0].manifest
    task = task_of(first)
    activation = task.ensemble_activation
    if activation is None:
        raise BundleError(f"{bundles[0].path}: {task.name} bundles cannot be ensembled")
    n_out = task.num_outputs(first)
    scales = []
    for b in bundles:
        t = np.broadcast_to(np.asarray(read_temperature(b.manifest.temperature), dtype=np.float64), (n_out,))
        scales.append(float((b.manifest.extra or {}).get("orientation", 1)) / t)
    arch: dict[str, Any] = {"type": "ensemble", "members": [copy.deepcopy(b.manifest.architecture) for b in bundles],
                            "activation": activation, "num_outputs": n_out}
    arch.update({k: first.architecture[k] for k in DISPLAY_FIELDS if k in first.architecture})
    model = create_model(arch)
    with torch.no_grad():
        for net, b in zip(model.members, bundles, strict=True):
            net.load_state_dict(b.model.state_dict(), strict=True)
        model.member_scale.copy_(torch.as_tensor(np.stack(scales), dtype=torch.float32))
    model.eval()
    manifest = Manifest(
        architecture=arch, label_space=first.label_space, preprocessing=first.preprocessing, temperature=1.0,
        metadata_encoder=first.metadata_encoder, metrics=dict(metrics or {}),
        config=cfg.model_dump(mode="json") if hasattr(cfg, "model_dump") else dict(cfg or {}),
        weights_source="ensemble", intended_use=first.intended_use,
        extra={"ensemble": {"members": [str(b.path) for b in bundles], "member_sha256": [b.manifest.weights_sha256 for b in bundles],
                            "combine": "mean of the members' calibrated probabilities", **(provenance or {})}, **(extra or {})},
    )
    # the operating point: the task's own rule on the pooled out-of-fold probabilities (members are calibrated)
    op = task.refit_thresholds(cfg, manifest, probs_to_raw(oof_probs, activation), SimpleNamespace(targets=np.asarray(oof_targets)), None) or {}
    manifest.extra["ensemble"]["operating_point"] = {**op, "fitted_on": f"{len(oof_probs)} pooled out-of-fold predictions"}
    dest = save_bundle(model, manifest, out)
    log.info("ensemble of %d members: %s", len(bundles), dest)
    return dest
