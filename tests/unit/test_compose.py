"""compose.yaml serves a bundle: port, read-only bundle mount, healthcheck on /health, built from the Dockerfile."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_service_port_readonly_bundle_and_health() -> None:
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    svc = doc["services"]["medlens"]
    assert svc["build"] == "." and (ROOT / "Dockerfile").is_file()
    assert any(str(p).endswith(":8000") for p in svc["ports"])
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "EXPOSE 8000" in dockerfile and '"serve", "/bundle"' in dockerfile  # the port and mount the image expects
    mount = svc["volumes"][0]
    assert mount["target"] == "/bundle" and mount["read_only"] is True
    hc = svc["healthcheck"]
    assert any("/health" in part for part in hc["test"]) and hc["interval"] and hc["retries"] >= 1
    assert svc["read_only"] is True


def test_dockerfile_caches_dependencies_pins_its_base_and_runs_unprivileged() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [x.strip() for x in text.splitlines() if x.strip() and not x.strip().startswith("#")]
    base = next(x for x in lines if x.startswith("FROM "))
    # a pinned base: a digest or a full X.Y.Z version, never a floating tag
    assert "@sha256:" in base or re.search(r":\d+\.\d+\.\d+", base), base
    first = {key: next(i for i, x in enumerate(lines) if x.startswith(key)) for key in ("COPY src", "USER ")}
    deps = next(i for i, x in enumerate(lines) if "pip install" in x and "[serve" in x)
    torch = next(i for i, x in enumerate(lines) if "download.pytorch.org/whl/cpu" in x)
    assert torch < deps < first["COPY src"], "dependencies must be installed before the source is copied"
    assert "--no-deps" in next(x for x in lines[first["COPY src"]:] if "pip install" in x)
    user = lines[first["USER "]].split()[1]
    assert user not in ("root", "0")
    hc = next(x for x in lines if x.startswith("HEALTHCHECK"))
    assert "--start-period=" in hc
    assert "OMP_NUM_THREADS=" not in " ".join(x for x in lines if x.startswith("ENV"))  # from the CPU quota instead
    entry = (ROOT / "docker" / "entrypoint.sh").read_text()
    assert "cpu.max" in entry and "cfs_quota_us" in entry and 'exec "$@"' in entry


def test_compose_has_a_training_service() -> None:
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    train = doc["services"]["train"]
    assert train["build"] == "." and "train" in train["profiles"]
    assert train["entrypoint"][-2:] == ["medlens", "train"]
    targets = {v["target"]: v for v in train["volumes"]}
    assert {"/data", "/app/runs"} <= set(targets) and train["environment"]["MEDLENS_DATA_DIR"] == "/data"


def test_entrypoint_threads_follow_the_cpu_quota(tmp_path) -> None:
    """The entrypoint's arithmetic on a fake cgroup v2 file: 150000/100000 -> 2 threads; -e OMP_NUM_THREADS wins."""
    if shutil.which("sh") is None:
        pytest.skip("no sh")
    script = (ROOT / "docker" / "entrypoint.sh").read_text().replace("/sys/fs/cgroup", str(tmp_path))
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    run = tmp_path / "entry.sh"
    run.write_text(script)
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run(["sh", str(run), "sh", "-c", "echo $OMP_NUM_THREADS $MKL_NUM_THREADS"], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["2", "2"]
    out = subprocess.run(["sh", str(run), "sh", "-c", "echo $OMP_NUM_THREADS"], env={**env, "OMP_NUM_THREADS": "5"},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["5"]
