"""``EnsembleNet``: several trained classifiers of one label space as one network (the mean of their probabilities).

Each member's logits are first put on its own calibrated scale (its bundle's orientation and temperature, kept
as the buffer ``member_scale``), turned into probabilities (softmax for exclusive classes, sigmoid otherwise)
and averaged. The output is a logit again -- ``log(p)`` for softmax, ``log(p) - log(1 - p)`` for sigmoid -- so the
bundle's own activation (temperature 1) gives back exactly the mean probability, and predictors, thresholds,
ONNX export and class-activation maps treat an ensemble like any other classifier. Members are rebuilt from
their architecture dicts (``members``); their weights sit under ``members.<i>.`` in the bundle's safetensors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medlens.models.registry import MODELS

#: most members a manifest may list (a k-fold ensemble has k); more is refused before any network is built
MAX_MEMBERS = 64
#: probabilities are kept in [EPS, 1 - EPS] before the logit, so a unanimous ensemble stays finite in float32
EPS = 1e-6


class EnsembleNet(nn.Module):
    """The mean of the members' calibrated probabilities, returned as a logit.

    Args:
        members: the members' architecture dicts (as in their manifests).
        activation: ``softmax`` (binary/multiclass with exclusive outputs) or ``sigmoid`` (one logit per label).
        num_outputs: outputs of every member.
        **display: the members' shared fields kept at the top of the manifest for people and tools
            (``backbone``, ``image_size``, ``in_chans``, ``meta_dim``); ignored here.
    """

    def __init__(self, members: list[dict[str, Any]], activation: str, num_outputs: int, **display: Any) -> None:  # noqa: ARG002
        super().__init__()
        from medlens.models.registry import build_model as create_model

        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"ensemble activation must be softmax or sigmoid, not {activation!r}")
        if not isinstance(members, list) or not 1 <= len(members) <= MAX_MEMBERS:
            raise ValueError(f"architecture.members: an ensemble has 1 to {MAX_MEMBERS} members, not {len(members) if isinstance(members, list) else members!r}")
        for i, a in enumerate(members):
            if not isinstance(a, dict) or a.get("type", "classifier") not in ("classifier", "fusion"):
                raise ValueError(f"architecture.members[{i}]: a member is a classifier or fusion network, not {a.get('type') if isinstance(a, dict) else a!r}")
        self.activation = activation
        self.members = nn.ModuleList(create_model(a) for a in members)  # checked as a whole by create_model
        self.register_buffer("member_scale", torch.ones(len(members), int(num_outputs)))

    def forward(self, x: torch.Tensor, metadata: torch.Tensor | None = None) -> torch.Tensor:
        probs = None
        for i, m in enumerate(self.members):
            z = m(x, metadata) * self.member_scale[i]
            p = torch.softmax(z, dim=-1) if self.activation == "softmax" else torch.sigmoid(z)
            probs = p if probs is None else probs + p
        p = (probs / len(self.members)).clamp(EPS, 1.0 - EPS)
        return torch.log(p) if self.activation == "softmax" else torch.log(p) - torch.log1p(-p)


@MODELS.register("ensemble")
def _make_ensemble(**kw: Any) -> nn.Module:
    return EnsembleNet(**kw)
