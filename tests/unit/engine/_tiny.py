"""Helpers for engine tests: a tiny network, synthetic loaders and a task module built like training does."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medlens.config import config_from_dict
from medlens.data.dataset import ImageDataset, make_loader
from medlens.data.labels import LabelSpace
from medlens.data.readers.synthetic import make_synthetic
from medlens.data.samples import SampleTable
from medlens.data.transforms import make_transform, resolve_preprocessing
from medlens.engine.module import optim_settings
from medlens.models import create_model
from medlens.tasks.classification.losses import create_loss
from medlens.tasks.classification.module import MODULES

SIZE = 16


def tiny_cfg(tmp_path: Path, **sections):
    raw = {
        "seed": 0,
        "data": {"kind": "synthetic", "num_samples": 96, "image_size": SIZE, "channels": 1, "batch_size": 16, "augment": "none"},
        "model": {"backbone": "resnet10t", "small_input": False},
        "optim": {"lr": 3e-3},
        "trainer": {"max_epochs": 2, "progress_bar": False, "log_every_n_steps": 1, "channels_last": False},  # pinned: `auto` is timed
        "output": {"dir": str(tmp_path / "runs"), "name": "t", "overwrite": True},
    }
    for k, v in sections.items():
        raw.setdefault(k, {}).update(v)
    return config_from_dict(raw)


def tiny_net(small_input: bool | int = False):
    """resnet10t on 16 px grey images: a few milliseconds a batch.

    The stock stride-32 stem (default) leaves 1x1 feature maps, whose batch norm is fine in float32 but can
    overflow under bf16 autocast; ``small_input=4`` keeps 2x2 maps, as medlens does for small images.
    """
    return create_model({"type": "classifier", "backbone": "resnet10t", "num_outputs": 1, "in_chans": 1, "image_size": SIZE, "small_input": small_input})


def tiny_loaders(n: int = 96, batch_size: int = 16, seed: int = 0):
    x, y = make_synthetic(n, SIZE, 2, "binary", seed)
    space = LabelSpace(("negative", "positive"), "binary")
    table = SampleTable(space, [str(i) for i in range(n)], x, np.eye(2, dtype=np.float32)[y], None, None, None, source="tiny")
    pp = resolve_preprocessing(SIZE, 1)
    ds = ImageDataset(table, make_transform(pp), pp)
    return space, make_loader(ds, batch_size, True, 0, None, seed, drop_last=True), make_loader(ds, 64, False, 0)


def tiny_module(cfg, space=None, small_input: bool | int = False):
    space = space or LabelSpace(("negative", "positive"), "binary")
    return MODULES[space.task](model=tiny_net(small_input), label_space=space, loss=create_loss("bce", space.task),
        optim=optim_settings(cfg), seed=cfg.seed, channels_last=cfg.trainer.channels_last,
    )
