"""Losses: hand-computed values, masks (unknown labels get no gradient), class weights from counts."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medlens.tasks.classification.losses import (
    FocalLoss,
    MaskedBCE,
    SoftCrossEntropy,
    class_weights_from_counts,
    create_loss,
    list_losses,
    loss_kwargs,
    pos_weight_from_counts,
)

NAN = float("nan")


def _sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def test_focal_loss_equals_hand_computed_value():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    gamma, alpha = 2.0, 0.25
    terms = []
    for z, t in ((2.0, 1), (-1.0, 0), (0.5, 0), (3.0, 1)):
        p = _sig(z)
        p_t = p if t == 1 else 1 - p
        a_t = alpha if t == 1 else 1 - alpha
        terms.append(-a_t * (1 - p_t) ** gamma * math.log(p_t))
    expected = sum(terms) / 4
    got = FocalLoss(gamma=gamma, alpha=alpha)(logits, targets, mask)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_focal_with_gamma_zero_and_no_alpha_is_bce():
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    targets = (torch.rand(6, 3, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    mask = torch.ones(6, 3, dtype=torch.bool)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert float(FocalLoss(gamma=0.0)(logits, targets, mask)) == pytest.approx(float(bce), rel=1e-6)


@pytest.mark.parametrize("name", ["bce", "focal"])
def test_unknown_labels_get_zero_gradient_and_do_not_change_the_loss(name):
    logits = torch.tensor([[1.5, -0.5, 0.2], [-2.0, 0.7, 3.0]], requires_grad=True)
    targets = torch.tensor([[1.0, NAN, 0.0], [NAN, 1.0, NAN]])
    mask = ~torch.isnan(targets)
    loss = create_loss(name, "multilabel", gamma=0.5)  # gamma < 1: the derivative of (1-p_t)**g is unbounded at 0
    value = loss(logits, targets, mask)
    value.backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad[~mask] == 0).all()
    assert (logits.grad[mask] != 0).all()
    # the same loss computed over the known entries alone: unknown entries are not counted in the mean
    known = loss(logits[mask][None, :], targets[mask][None, :], torch.ones(1, int(mask.sum()), dtype=torch.bool))
    assert float(value.detach()) == pytest.approx(float(known.detach()), rel=1e-6)


def test_fully_unknown_batch_gives_zero_loss_with_zero_gradient():
    logits = torch.zeros(2, 2, requires_grad=True)
    targets = torch.full((2, 2), NAN)
    value = MaskedBCE()(logits, targets, ~torch.isnan(targets))
    value.backward()
    assert float(value) == 0.0 and (logits.grad == 0).all()


def test_extreme_logits_keep_focal_gradient_finite():
    logits = torch.tensor([[-200.0, 200.0]], requires_grad=True)  # sigmoid saturates to exactly 0 and 1
    targets = torch.tensor([[0.0, NAN]])
    FocalLoss(gamma=0.5)(logits, targets, ~torch.isnan(targets)).backward()
    assert torch.isfinite(logits.grad).all()


def test_multiclass_unknown_rows_get_zero_gradient():
    logits = torch.randn(3, 4, requires_grad=True)
    targets = torch.tensor([[0, 1, 0, 0], [NAN, NAN, NAN, NAN], [0, 0, 0, 1.0]])
    mask = ~torch.isnan(targets)
    for name in ("ce", "focal"):
        logits.grad = None
        create_loss(name, "multiclass", label_smoothing=0.1)(logits, targets, mask).backward()
        assert (logits.grad[1] == 0).all() and (logits.grad[[0, 2]] != 0).any()


def test_cross_entropy_label_smoothing_matches_torch():
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 2, 1, 1, 0])
    targets = torch.eye(3)[y]
    ours = SoftCrossEntropy(label_smoothing=0.1)(logits, targets, torch.ones(5, dtype=torch.bool))
    ref = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1)
    assert float(ours) == pytest.approx(float(ref), rel=1e-6)


def test_bce_pos_weight_matches_torch():
    logits = torch.randn(4, 2, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([[1.0, 0], [0, 1], [1, 1], [0, 0]])
    pw = torch.tensor([3.0, 0.5])
    ours = MaskedBCE(pos_weight=pw)(logits, targets, torch.ones(4, 2, dtype=torch.bool))
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=pw)
    assert float(ours) == pytest.approx(float(ref), rel=1e-6)


def test_class_weights_follow_the_counts():
    # binary/multilabel: (2, K), negatives then positives, n / (2 * count); rarer class -> larger weight
    w = class_weights_from_counts([10, 50, 0], [100, 100, 80], "multilabel")
    assert w.shape == (2, 3)
    assert w[1, 0] == pytest.approx(100 / 20) and w[0, 0] == pytest.approx(100 / 180)
    assert w[1, 1] == pytest.approx(1.0) and w[0, 1] == pytest.approx(1.0)  # balanced label
    assert w[:, 2].tolist() == [1.0, 1.0]  # no positives: no reweighting
    # the weighted contribution of each class is the same: count * weight = n / 2
    assert 10 * w[1, 0] == pytest.approx(90 * w[0, 0])
    # multiclass: inverse frequency, mean 1
    m = class_weights_from_counts([100, 50, 25], 175, "multiclass")
    assert float(m.mean()) == pytest.approx(1.0)
    assert m[1] / m[0] == pytest.approx(2.0) and m[2] / m[0] == pytest.approx(4.0)
    assert pos_weight_from_counts([10, 0], [100, 100]).tolist() == [9.0, 1.0]


def test_balanced_weights_equalise_class_gradients():
    # 1 positive, 3 negatives, all predicted at p = 0.5: with balanced weights both classes pull equally
    logits = torch.zeros(4, 1, requires_grad=True)
    targets = torch.tensor([[1.0], [0.0], [0.0], [0.0]])
    w = class_weights_from_counts([1], [4], "binary")
    MaskedBCE(weight=w)(logits, targets, torch.ones(4, 1, dtype=torch.bool)).backward()
    g = logits.grad[:, 0]
    assert float(g[0]) == pytest.approx(-float(g[1:].sum()))


def _optim(**kw):
    base = dict(focal_gamma=2.0, focal_alpha=None, label_smoothing=0.0, pos_weight="none", class_weights="none")
    return SimpleNamespace(**{**base, **kw})


def test_loss_kwargs_maps_config_to_weights():
    pos, known = np.array([300.0, 100.0]), np.array([400.0, 400.0])  # binary: columns negative, positive class
    kw = loss_kwargs(_optim(pos_weight="auto"), "binary", pos, known)
    assert kw["pos_weight"].tolist() == [3.0]
    kw = loss_kwargs(_optim(class_weights="auto"), "binary", pos, known)
    assert kw["weight"].shape == (2, 1) and kw["weight"][1, 0] == pytest.approx(2.0)
    kw = loss_kwargs(_optim(class_weights=[1.0, 4.0]), "binary", pos, known)
    assert kw["weight"].tolist() == [[1.0], [4.0]]
    kw = loss_kwargs(_optim(class_weights="auto"), "multiclass", np.array([10.0, 30.0]), np.array([40.0, 40.0]))
    assert kw["weight"][0] / kw["weight"][1] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="class_weights has 3 values but there are 2 labels"):
        loss_kwargs(_optim(class_weights=[1.0, 2.0, 3.0]), "multilabel", np.array([1.0, 2.0]), np.array([5.0, 5.0]))


def test_registry_names_and_errors():
    assert list_losses() == ["bce", "ce", "focal"]
    with pytest.raises(KeyError, match="valid: bce, ce, focal"):
        create_loss("dice", "binary")
    with pytest.raises(ValueError, match="multiclass"):
        create_loss("ce", "binary")
    assert isinstance(create_loss("auto", "multiclass"), SoftCrossEntropy)
    assert isinstance(create_loss("auto", "multilabel"), MaskedBCE)


# ------------------------------------------------------------------ focal loss composes with every option
_LOGITS = np.array([[2.0, -1.0, 0.3], [0.5, 3.0, -0.7]])
_TARGETS = np.array([[1.0, 0.0, NAN], [0.0, 1.0, 1.0]])  # one unknown entry


def _np_focal(z: np.ndarray, y: np.ndarray, gamma: float = 2.0, alpha: float | None = None, pos_weight=None, weight=None, eps: float = 0.0) -> float:
    """Sigmoid focal loss by hand: each known entry's term, averaged over the known entries."""
    known = ~np.isnan(y)
    total = 0.0
    for i, k in zip(*np.nonzero(known), strict=True):
        p = 1.0 / (1.0 + np.exp(-z[i, k]))
        t = y[i, k] * (1 - eps) + eps / 2  # label smoothing for a sigmoid output
        pw = 1.0 if pos_weight is None else pos_weight[k]
        ce = -(pw * t * np.log(p) + (1 - t) * np.log(1 - p))
        p_t = p * t + (1 - p) * (1 - t)
        a_t = 1.0 if alpha is None else alpha * t + (1 - alpha) * (1 - t)
        if weight is None:
            w = 1.0
        elif np.ndim(weight) == 1:
            w = weight[k]
        else:  # (2, K): negatives, positives
            w = weight[0][k] * (1 - t) + weight[1][k] * t
        total += w * a_t * (1 - p_t) ** gamma * ce
    return total / known.sum()


def _focal(**kw) -> float:
    t = torch.tensor(_TARGETS, dtype=torch.float32)
    return float(create_loss("focal", "multilabel", **kw)(torch.tensor(_LOGITS, dtype=torch.float32), t, ~torch.isnan(t)))


def test_focal_pos_weight_weighs_the_positive_term():
    pw = np.array([3.0, 0.5, 2.0])
    base, got = _focal(gamma=2.0), _focal(gamma=2.0, pos_weight=torch.tensor(pw))
    assert got == pytest.approx(_np_focal(_LOGITS, _TARGETS, 2.0, pos_weight=pw), rel=1e-5)
    assert got != pytest.approx(base, rel=1e-3)
    # a hard positive: -pos_weight * (1 - p) ** gamma * log(p); a negative is untouched
    p = _sig(2.0)
    one = FocalLoss(gamma=2.0, pos_weight=torch.tensor([3.0]))(torch.tensor([[2.0]]), torch.tensor([[1.0]]), torch.tensor([[True]]))
    assert float(one) == pytest.approx(-3.0 * (1 - p) ** 2 * math.log(p), rel=1e-5)
    neg = FocalLoss(gamma=2.0, pos_weight=torch.tensor([3.0]))(torch.tensor([[2.0]]), torch.tensor([[0.0]]), torch.tensor([[True]]))
    assert float(neg) == pytest.approx(-(p**2) * math.log(1 - p), rel=1e-5)


@pytest.mark.parametrize("weight", [np.array([1.0, 4.0, 0.5]), np.array([[0.5, 1.0, 2.0], [2.0, 1.0, 0.25]])], ids=["per-label", "neg-pos"])
def test_focal_class_weights(weight):
    got = _focal(gamma=2.0, weight=torch.tensor(weight, dtype=torch.float32))
    assert got == pytest.approx(_np_focal(_LOGITS, _TARGETS, 2.0, weight=weight), rel=1e-5)
    assert got != pytest.approx(_focal(gamma=2.0), rel=1e-3)


def test_focal_label_smoothing_smooths_the_targets():
    got = _focal(gamma=2.0, label_smoothing=0.2)
    assert got == pytest.approx(_np_focal(_LOGITS, _TARGETS, 2.0, eps=0.2), rel=1e-5)
    assert got != pytest.approx(_focal(gamma=2.0), rel=1e-3)


def test_focal_all_options_together_and_the_unknown_mask():
    pw, w = np.array([3.0, 0.5, 2.0]), np.array([[0.5, 1.0, 2.0], [2.0, 1.0, 0.25]])
    kw = dict(gamma=1.5, alpha=0.25, pos_weight=torch.tensor(pw, dtype=torch.float32), weight=torch.tensor(w, dtype=torch.float32), label_smoothing=0.1)
    got = _focal(**kw)
    assert got == pytest.approx(_np_focal(_LOGITS, _TARGETS, 1.5, 0.25, pw, w, 0.1), rel=1e-5)
    # the unknown entry contributes nothing: any logit there gives the same loss, and no gradient
    z = torch.tensor(_LOGITS, dtype=torch.float32)
    z[0, 2] = 40.0
    z.requires_grad_(True)
    t = torch.tensor(_TARGETS, dtype=torch.float32)
    value = create_loss("focal", "multilabel", **kw)(z, t, ~torch.isnan(t))
    value.backward()
    assert float(value) == pytest.approx(got, rel=1e-6) and float(z.grad[0, 2]) == 0.0


def test_bce_label_smoothing_smooths_the_targets():
    t = torch.tensor(_TARGETS, dtype=torch.float32)
    z = torch.tensor(_LOGITS, dtype=torch.float32)
    got = float(create_loss("bce", "multilabel", label_smoothing=0.2)(z, t, ~torch.isnan(t)))
    assert got == pytest.approx(_np_focal(_LOGITS, _TARGETS, 0.0, eps=0.2), rel=1e-5)  # gamma 0: BCE
    assert got != pytest.approx(float(create_loss("bce", "multilabel")(z, t, ~torch.isnan(t))), rel=1e-3)


def test_multiclass_focal_label_smoothing_and_class_weights():
    z = np.array([[1.0, -0.5, 0.2], [0.1, 0.4, 2.0], [0.0, 0.0, 0.0]])
    y = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [NAN, NAN, NAN]])  # the last row is unknown
    w, eps, gamma = np.array([2.0, 1.0, 0.5]), 0.3, 2.0
    total = 0.0
    for i in range(2):
        logp = z[i] - np.log(np.exp(z[i]).sum())
        t = y[i] * (1 - eps) + eps / 3  # eps / K for softmax
        total += -(t * (1 - np.exp(logp)) ** gamma * logp * w).sum()
    expected = total / 2
    zt, yt = torch.tensor(z, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    rows = ~torch.isnan(yt).all(dim=1)
    loss = create_loss("focal", "multiclass", gamma=gamma, weight=torch.tensor(w, dtype=torch.float32), label_smoothing=eps)
    assert float(loss(zt, yt, rows)) == pytest.approx(expected, rel=1e-5)
    plain = float(create_loss("focal", "multiclass", gamma=gamma)(zt, yt, rows))
    assert plain != pytest.approx(expected, rel=1e-3)


def test_options_that_cannot_act_are_refused():
    with pytest.raises(ValueError, match="task_options.pos_weight .* use task_options.class_weights"):
        create_loss("focal", "multiclass", pos_weight=torch.tensor([2.0, 1.0]))
    with pytest.raises(ValueError, match="task_options.pos_weight"):
        create_loss("ce", "multiclass", pos_weight=torch.tensor([2.0, 1.0]))
    with pytest.raises(ValueError, match="task_options.focal_alpha acts only with task_options.loss: focal"):
        create_loss("bce", "multilabel", alpha=0.25)
    with pytest.raises(ValueError, match="task_options.focal_alpha"):
        create_loss("auto", "multiclass", alpha=0.25)
    with pytest.raises(ValueError, match="task_options.focal_alpha"):
        create_loss("focal", "multiclass", alpha=0.25)
