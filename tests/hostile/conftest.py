"""Fixtures of the hostile corpus: tiny random bundles (no training), a synthetic config, log handler restore."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _restore_logging():
    """The CLI installs a rich log handler on the root logger; put the test runner's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def pristine_bundle(tmp_path_factory) -> Path:
    """A binary resnet10t bundle with random weights (32 px, grey)."""
    from tests.unit._bundles import random_bundle

    return random_bundle(tmp_path_factory.mktemp("hostile") / "bundle", intended_use="Test model. Not a diagnosis.")


@pytest.fixture
def bundle(pristine_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the bundle, free to tamper with."""
    dst = tmp_path / "bundle"
    shutil.copytree(pristine_bundle, dst)
    return dst


@pytest.fixture(scope="session")
def fusion_bundle(tmp_path_factory) -> Path:
    """A binary image + metadata (age numeric, sex categorical) bundle with random weights."""
    from medlens.config import MetadataConfig
    from medlens.data.metadata import MetadataEncoder
    from tests.unit._bundles import random_bundle

    enc = MetadataEncoder.fit_columns({"age": ["40", "60", "80"], "sex": ["male", "female", "male"]},
                                      MetadataConfig(numeric=["age"], categorical=["sex"]))
    arch = {"type": "fusion", "backbone": "resnet10t", "num_outputs": 1, "in_chans": 1, "image_size": 32, "meta_dim": enc.dim,
            "meta_hidden": [8], "meta_dropout": 0.0, **enc.architecture()}
    return random_bundle(tmp_path_factory.mktemp("hostile_fusion") / "bundle", arch=arch, metadata_encoder=enc.to_dict())
