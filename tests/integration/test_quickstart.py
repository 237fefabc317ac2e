"""README's Quickstart, run verbatim as a new user would: in an empty folder, data in a fresh user cache.

The block between the ``quickstart`` markers of README.md runs under ``bash -eo pipefail`` with HOME pointed at a
temporary home whose ``~/.cache/medlens/data`` holds PneumoniaMNIST (a link to the shared copy), no network, and
the run shortened through the documented environment overrides (``MEDLENS__TRAINER__MAX_EPOCHS``,
``MEDLENS__DATA__MAX_SAMPLES``, ...): the shipped config's stride-8 ResNet-18 costs about 1.8 GFLOP an image, so the
full recipe takes minutes; 200 rows and one epoch keep the run to well under a minute of 2 quiet CPU cores.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medlens.examples import list_examples, list_samples

ROOT = Path(__file__).resolve().parents[2]


def quickstart_block() -> str:
    """The shell block between README's ``--8<-- [start:quickstart]`` and ``[end:quickstart]`` markers."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- --8<-- \[start:quickstart\] -->\n```bash\n(.*?)```\n<!-- --8<-- \[end:quickstart\] -->", text, re.S)
    assert m, "README.md has no quickstart block between the markers"
    return m.group(1)


def test_quickstart_block_is_plain_medlens_commands() -> None:
    lines = [x for x in quickstart_block().splitlines() if x.strip()]
    assert lines[0].startswith("medlens init configs")
    assert all(x.startswith("medlens ") for x in lines)  # nothing a user would have to adapt


@pytest.mark.slow
def test_readme_quickstart_runs_verbatim(tmp_path: Path, pneumonia_npz: Path) -> None:
    home = tmp_path / "home"
    data = home / ".cache" / "medlens" / "data"
    data.mkdir(parents=True)
    (data / "medmnist_pneumoniamnist").mkdir()
    shutil.copy2(pneumonia_npz, data / "medmnist_pneumoniamnist" / pneumonia_npz.name)  # a copy: paths stay in the cache
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDLENS_", "MEDLENS__"))}
    env.update({
        "HOME": str(home),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "MEDLENS_OFFLINE": "1",
        "MEDLENS_CACHE_DIR": str(tmp_path / "image-cache"),
        "MEDLENS__TRAINER__MAX_EPOCHS": "1",  # the documented short first run
        "MEDLENS__DATA__MAX_SAMPLES": "200",  # rows kept in the official split's shares
        "MEDLENS__DATA__NUM_WORKERS": "0",
        "MEDLENS__TRAINER__CHANNELS_LAST": "false",  # no layout probe (several training steps)
    })
    r = subprocess.run(["bash", "-eo", "pipefail", "-c", quickstart_block()], cwd=work, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.stem for p in (work / "configs").glob("*.yaml")) == list_examples()
    assert sorted(p.name for p in (work / "configs" / "samples").iterdir()) == list_samples()
    bundle = work / "runs" / "pneumoniamnist" / "bundle"
    assert (bundle / "manifest.json").is_file()
    metrics = json.loads((work / "metrics.json").read_text())  # stdout of --json is JSON only
    assert metrics
    rows = list(csv.DictReader((work / "preds.csv").open()))
    assert len(rows) == len(list_samples())
    assert "next steps:" in r.stderr  # init's guidance goes to stderr, not into the results
    # the data came from the temporary user cache, not from a checkout's shared folder
    saved = (work / "runs" / "pneumoniamnist").rglob("config*.yaml")
    assert any(str(data / "medmnist_pneumoniamnist") in p.read_text() for p in saved)
