"""README's shell blocks that need no GPU or network, or their equivalents: the two setup commands, the version,
`python -m medlens --help`, and `medlens init` configs that load."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from medlens import __version__
from medlens.config import load_config

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _setup_blocks() -> list[str]:
    section = README.split("## Set up on a new machine", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_exactly_two_setup_commands_install_the_extras_and_run_the_tests():
    blocks = _setup_blocks()
    assert len(blocks) == 2
    assert 'pip install -e ".[all]"' in blocks[0] and "medlens demo" in blocks[0]
    assert blocks[1] == "bash scripts/test.sh"
    script = (ROOT / "scripts" / "test.sh").read_text()
    assert '".[all,dev]"' in script  # the tests install what the README installs, plus the test tools


def _medlens(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env_path = str(ROOT / "src")
    return subprocess.run([sys.executable, "-m", "medlens", *args], capture_output=True, text=True, cwd=cwd,
                          env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}, timeout=120)


def test_version_and_help_from_python_dash_m():
    r = _medlens("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"medlens {__version__}"
    r = _medlens("--help")
    assert r.returncode == 0 and "init" in r.stdout and "predict" in r.stdout


def test_init_from_the_readme_writes_configs_that_load(tmp_path, monkeypatch):
    line = next(x for x in README.splitlines() if x.startswith("medlens init "))
    args = line.split("#")[0].split()[2:]
    r = _medlens("init", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    configs = sorted((tmp_path / args[0]).glob("*.yaml"))
    assert configs
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MEDLENS_DATA_DIR", raising=False)
    cache = str(tmp_path / "home" / ".cache" / "medlens" / "data")
    for c in configs:
        cfg = load_config(c)
        if "DATA_DIR/" in c.read_text():  # the data sets of the examples: read from the user cache
            assert any(str(getattr(cfg.data, k, "")).startswith(cache) for k in ("path", "root", "image_root"))


def test_cpu_only_install_is_documented():
    section = README.split("## CPU-only machines", 1)[1].split("\n## ", 1)[0]
    assert "--index-url https://download.pytorch.org/whl/cpu" in section and "torch torchvision" in section
