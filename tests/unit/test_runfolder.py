"""Run folders: contained names, writable output.dir, one run per folder (a real lock across processes),
bundle folders replaced without a gap (also when a process dies between the renames), umask-respecting modes."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

import medlens
from medlens import runfolder
from medlens._atomic import atomic_open, write_text_atomic
from medlens.runfolder import (
    RunInUseError,
    RunLock,
    backup_path,
    check_writable,
    contained_run_dir,
    replace_dir_atomically,
    restore_interrupted_replace,
)

SRC = str(Path(medlens.__file__).resolve().parents[1])


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


# ------------------------------------------------------------------------------------------ names
@pytest.mark.parametrize(("name", "parts"), [("r", ("r",)), ("exp1/fold0", ("exp1", "fold0")), ("./r", ("r",)),
                                             ("a/./b/", ("a", "b")), ("2024-01-01 run", ("2024-01-01 run",))])
def test_contained_run_dir_accepts_names_inside(tmp_path: Path, name: str, parts: tuple[str, ...]) -> None:
    assert contained_run_dir(tmp_path / "runs", name) == tmp_path.joinpath("runs", *parts)


@pytest.mark.parametrize(("name", "why"), [
    ("../x", "leads outside output.dir"),
    ("a/../../x", "leads outside output.dir"),
    ("a/..", "leads outside output.dir"),
    ("..\\x", "leads outside output.dir"),
    ("/etc/cron.d", "is an absolute path"),
    ("\\\\server\\share", "is an absolute path"),
    ("", "is empty"),
    ("   ", "is empty"),
    ("a\0b", "contains a NUL character"),
    (".", "names output.dir itself"),
])
def test_contained_run_dir_refuses_names_that_escape(tmp_path: Path, name: str, why: str) -> None:
    with pytest.raises(ValueError, match=rf"^output\.name .*{why}") as e:
        contained_run_dir(tmp_path / "runs", name)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ writable
def test_check_writable_accepts_existing_and_missing_folders(tmp_path: Path) -> None:
    assert check_writable(tmp_path) == tmp_path
    assert check_writable(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # checking creates nothing
    assert sorted(tmp_path.iterdir()) == []  # and leaves no probe file behind


def test_output_dir_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "runs"
    f.write_text("not a folder")
    with pytest.raises(NotADirectoryError, match=r"^output\.dir '.*runs' is a file, not a folder$"):
        check_writable(f)
    with pytest.raises(NotADirectoryError, match=r"runs/sub' is a file, not a folder \(.*runs on the way is a file\)"):
        check_writable(f / "sub")


@pytest.mark.skipif(os.name == "nt" or os.geteuid() == 0, reason="root writes anywhere; POSIX modes")
def test_read_only_output_dir_is_a_clear_error(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    with pytest.raises(PermissionError, match=r"output\.dir '.*ro/runs' is not writable"):
        check_writable(ro / "runs")


def test_unwritable_output_dir_is_a_clear_error_even_for_root(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(runfolder.os, "access", lambda *a, **k: False)
    with pytest.raises(PermissionError, match=r"output\.dir '.*' is not writable \(.*: permission denied\)"):
        check_writable(tmp_path)
    monkeypatch.undo()

    def read_only(*a, **k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(runfolder.tempfile, "TemporaryFile", read_only)  # what os.access cannot see
    with pytest.raises(PermissionError, match=r"is not writable \(.*Read-only file system\)"):
        check_writable(tmp_path / "x", what="output.dir")


# ------------------------------------------------------------------------------------------ locking
def test_second_lock_on_a_run_folder_fails_at_once(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "r"
    with RunLock(run) as lock:
        assert lock.locked and (run / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(RunInUseError, match=rf"^{run} is in use by another run \(pid {os.getpid()}\);") as e:
            RunLock(run).acquire()
        assert "\n" not in str(e.value)
        RunLock(tmp_path / "runs" / "other").acquire().release()  # another folder is free
    assert not lock.locked
    with RunLock(run):  # released on exit
        pass


def test_lock_is_released_when_the_block_raises(tmp_path: Path) -> None:
    with pytest.raises(KeyError), RunLock(tmp_path):
        raise KeyError("boom")
    RunLock(tmp_path).acquire().release()


_HOLD = textwrap.dedent("""
    import sys, time
    from medlens.runfolder import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(60)
""")


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL")
def test_lock_held_by_another_process_names_it_and_dies_with_it(tmp_path: Path) -> None:
    run = tmp_path / "r"
    child = subprocess.Popen([sys.executable, "-c", _HOLD, str(run)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": SRC})
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        with pytest.raises(RunInUseError, match=rf"{run} is in use by another run \(pid {child.pid}\)"):
            RunLock(run).acquire()
    finally:
        child.send_signal(signal.SIGKILL)  # a crashed run: no chance to release anything
        child.wait(timeout=30)
    with RunLock(run):  # the operating system dropped the dead process's lock
        assert (run / ".lock").read_text().strip() == str(os.getpid())


# ------------------------------------------------------------------------------- replacing a folder
def bundle(path: Path, version: str) -> Path:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(version)
    (path / "model.safetensors").write_text(version * 3)
    return path


def complete(path: Path) -> str | None:
    """The version of a complete bundle at ``path``, or None."""
    try:
        v = (path / "manifest.json").read_text()
        return v if (path / "model.safetensors").read_text() == v * 3 else None
    except OSError:
        return None


def test_replace_dir_atomically_moves_in_and_replaces(tmp_path: Path) -> None:
    final = tmp_path / "run" / "bundle"
    final.parent.mkdir()
    assert replace_dir_atomically(bundle(tmp_path / "run" / ".t1", "v1"), final) == final
    assert complete(final) == "v1"
    replace_dir_atomically(bundle(tmp_path / "run" / ".t2", "v2"), final)
    assert complete(final) == "v2"
    assert sorted(p.name for p in final.parent.iterdir()) == ["bundle"]  # no backup, no temp folder
    with pytest.raises(FileNotFoundError, match="no such folder"):
        replace_dir_atomically(tmp_path / "missing", final)


@pytest.fixture
def two_renames(monkeypatch):
    """The fallback of systems without an atomic folder exchange (the exchange path: tests/hostile/test_bundle_bounds.py)."""
    monkeypatch.setattr(runfolder, "exchange_paths", lambda a, b: False)


def _fail_on_call(monkeypatch, calls: set[int]) -> list[tuple[str, str]]:
    real, seen = os.replace, []

    def replace(src, dst):
        seen.append((Path(src).name, Path(dst).name))
        if len(seen) in calls:
            raise OSError(5, "simulated failure")
        real(src, dst)

    monkeypatch.setattr(runfolder.os, "replace", replace)
    return seen


def test_failure_between_the_renames_keeps_the_old_bundle(tmp_path: Path, monkeypatch, two_renames) -> None:
    final = bundle(tmp_path / "bundle", "old")
    new = bundle(tmp_path / ".bundle.tmp", "new")
    seen = _fail_on_call(monkeypatch, {2})  # old -> backup works, new -> final fails
    with pytest.raises(OSError, match="simulated failure"):
        replace_dir_atomically(new, final)
    assert seen == [("bundle", ".bundle.old"), (".bundle.tmp", "bundle"), (".bundle.old", "bundle")]
    assert complete(final) == "old" and not backup_path(final).exists()
    assert complete(new) == "new"  # the caller still has its new bundle


def test_a_kill_between_the_renames_never_leaves_zero_bundles(tmp_path: Path, monkeypatch, two_renames) -> None:
    final = bundle(tmp_path / "bundle", "old")
    _fail_on_call(monkeypatch, {2, 3})  # the undo fails too: as if the process had died after the first rename
    with pytest.raises(OSError):
        replace_dir_atomically(bundle(tmp_path / ".t", "new"), final)
    assert not final.exists() and complete(backup_path(final)) == "old"  # a complete bundle still exists
    assert complete(runfolder.readable_dir(final)) == "old"  # and readers find it
    monkeypatch.undo()
    assert restore_interrupted_replace(final) is True  # start-up: the old bundle back in place
    assert complete(final) == "old" and not backup_path(final).exists()
    assert restore_interrupted_replace(final) is False


def test_next_replace_recovers_a_killed_one(tmp_path: Path) -> None:
    final = bundle(tmp_path / "bundle", "old")
    os.replace(final, backup_path(final))  # the state a kill after the first rename leaves
    replace_dir_atomically(bundle(tmp_path / ".t", "new"), final)
    assert complete(final) == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    bundle(backup_path(final), "stale")  # a kill after the second rename: final is the newer one
    replace_dir_atomically(bundle(tmp_path / ".t", "newer"), final)
    assert complete(final) == "newer" and sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


_KILLED = textwrap.dedent("""
    import os, sys
    from medlens import runfolder
    real, n = os.replace, [0]
    def replace(src, dst):
        n[0] += 1
        if n[0] == 2:
            os._exit(9)  # killed between the renames: no except, no finally
        real(src, dst)
    runfolder.os.replace = replace
    runfolder.exchange_paths = lambda a, b: False  # the two-rename fallback
    runfolder.replace_dir_atomically(sys.argv[1], sys.argv[2])
""")


def test_a_process_killed_between_the_renames(tmp_path: Path) -> None:
    final = bundle(tmp_path / "bundle", "old")
    new = bundle(tmp_path / ".t", "new")
    r = subprocess.run([sys.executable, "-c", _KILLED, str(new), str(final)], env={**os.environ, "PYTHONPATH": SRC},
                       timeout=60)
    assert r.returncode == 9
    assert not final.exists() and complete(backup_path(final)) == "old"  # killed with no bundle in place, yet one
    assert restore_interrupted_replace(final)
    assert complete(final) == "old"


# ------------------------------------------------------------------------------------------- modes
@pytest.mark.skipif(os.name == "nt", reason="POSIX modes")
def test_files_and_folders_follow_the_umask(tmp_path: Path, umask022) -> None:
    with atomic_open(tmp_path / "new" / "a.json") as f:  # mkstemp alone would give 0600
        f.write("{}")
    assert mode(tmp_path / "new" / "a.json") == 0o644 and mode(tmp_path / "new") == 0o755
    write_text_atomic(tmp_path / "b.txt", "x")
    assert mode(tmp_path / "b.txt") == 0o644
    os.chmod(tmp_path / "b.txt", 0o600)  # a file the user made private stays private when replaced
    write_text_atomic(tmp_path / "b.txt", "y")
    assert mode(tmp_path / "b.txt") == 0o600
    run = tmp_path / "runs" / "r"
    with RunLock(run):
        assert mode(run) == 0o755 and mode(run / ".lock") == 0o644
    tmp = Path(tempfile.mkdtemp(dir=tmp_path, prefix=".bundle.tmp"))  # 0700, as save_bundle starts
    (tmp / "manifest.json").write_text("{}")
    from medlens._atomic import chmod_as_created

    chmod_as_created(tmp, directory=True)
    final = replace_dir_atomically(tmp, tmp_path / "bundle")
    assert mode(final) == 0o755 and mode(final / "manifest.json") == 0o644


@pytest.mark.skipif(os.name == "nt", reason="POSIX modes")
def test_saved_bundle_follows_the_umask(tmp_path: Path, umask022) -> None:
    from tests.unit._bundles import random_bundle

    b = random_bundle(tmp_path / "run" / "bundle", backbone="resnet10t", image_size=16)
    assert mode(b) == 0o755
    assert {p.name: mode(p) for p in b.iterdir()} == {"manifest.json": 0o644, "model.safetensors": 0o644}
    old = os.umask(0o077)  # a user who wants private files gets them
    try:
        b = random_bundle(tmp_path / "run2" / "bundle", backbone="resnet10t", image_size=16)
    finally:
        os.umask(old)
    assert mode(b) == 0o700 and mode(b / "manifest.json") == 0o600


@pytest.mark.skipif(os.name == "nt", reason="POSIX modes")
def test_checkpoints_follow_the_umask(tmp_path: Path, umask022) -> None:
    from medlens.engine.callbacks import AtomicCheckpointIO

    AtomicCheckpointIO().save_checkpoint({"x": 1}, tmp_path / "ckpt" / "last.ckpt")
    assert mode(tmp_path / "ckpt" / "last.ckpt") == 0o644
