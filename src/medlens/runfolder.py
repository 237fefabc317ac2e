"""Run folders: where a run may write, one run per folder at a time, and bundles replaced without a gap.

- :func:`contained_run_dir` joins ``output.dir`` and ``output.name``, refusing a name that would leave the folder;
- :func:`check_writable` says at once when ``output.dir`` is a file or cannot be written;
- :class:`RunLock` makes a second training into the same run folder fail at once instead of mixing two runs;
- :func:`replace_dir_atomically` replaces a bundle folder so that a complete bundle is at its path at every
  instant (one atomic exchange of the two folders where the system has one: Linux ``renameat2``, macOS
  ``renamex_np``), and :func:`restore_interrupted_replace` / :func:`readable_dir` cover the two-rename fallback
  of other systems when a process was killed half-way.

Folders and files are created with the user's umask (``mkdir``/``open`` defaults), never forced private.
Only the standard library is used, so every layer may import this module.

Example:
    >>> run_dir = contained_run_dir("runs", "pneumonia/resnet18")  # doctest: +SKIP
    >>> with RunLock(run_dir):  # doctest: +SKIP
    ...     train_into(run_dir)
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import TracebackType

log = logging.getLogger("medlens.runs")

#: The lock file inside a run folder (it holds the pid of the run that has the folder).
LOCK_FILE = ".lock"


class RunInUseError(RuntimeError):
    """Another process holds the run folder's lock; the message names the folder and that process."""


# ---------------------------------------------------------------------------------------- naming
def contained_run_dir(output_dir: str | os.PathLike[str], name: str) -> Path:
    """The run folder ``output_dir / name``, refusing a name that would put it anywhere else.

    ``name`` may have sub-folders (``pneumonia/resnet18``) but not ``..``, an absolute path, a drive, a NUL
    character, or nothing at all; nor may it name ``output_dir`` itself. The check is on the text, so it holds
    before any folder exists.

    Args:
        output_dir: ``output.dir``.
        name: ``output.name``.

    Returns:
        ``Path(output_dir) / name`` (``~`` expanded in ``output_dir``).

    Raises:
        ValueError: one line naming ``output.name`` and what is wrong with it.

    Example:
        >>> contained_run_dir("runs", "exp1/fold0").as_posix()
        'runs/exp1/fold0'
        >>> contained_run_dir("runs", "../elsewhere")
        Traceback (most recent call last):
        ...
        ValueError: output.name '../elsewhere' leads outside output.dir 'runs' ('..' is not allowed in a run name)
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"output.name {name!r} is empty; give the run a name (a folder inside output.dir)")
    if "\0" in name:
        raise ValueError(f"output.name {name!r} contains a NUL character")
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    on_windows = os.name == "nt"
    if posix.is_absolute() or name.startswith("\\") or (on_windows and (windows.drive or windows.root)):
        raise ValueError(
            f"output.name {name!r} is an absolute path; give a name inside output.dir {str(output_dir)!r} "
            "(or set output.dir to the parent folder)"
        )
    if ".." in posix.parts or ".." in windows.parts:  # "..\\x" too: a config may travel to Windows
        raise ValueError(
            f"output.name {name!r} leads outside output.dir {str(output_dir)!r} ('..' is not allowed in a run name)"
        )
    parts = [p for p in (windows if on_windows else posix).parts if p not in ("", ".")]
    if not parts:
        raise ValueError(f"output.name {name!r} names output.dir itself; give the run its own folder name")
    return Path(output_dir).expanduser().joinpath(*parts)


def check_writable(path: str | os.PathLike[str], what: str = "output.dir") -> Path:
    """Check that ``path`` is (or can be made) a folder that this process can write into.

    The nearest existing folder on the way is tried with a real temp file, so a read-only mount or a
    missing permission is found before a run starts, not after an hour of training.

    Args:
        path: the folder (it need not exist yet).
        what: the config key, for the message.

    Returns:
        The path, ``~`` expanded.

    Raises:
        NotADirectoryError: ``path``, or a folder on the way to it, is a file.
        PermissionError: it cannot be written.

    Example:
        >>> check_writable("runs")  # doctest: +SKIP
        PosixPath('runs')
    """
    p = Path(path).expanduser()
    probe = p
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "" if probe == p else f" ({probe} on the way is a file)"
        raise NotADirectoryError(f"{what} {str(p)!r} is a file, not a folder{where}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {str(p)!r} is not writable ({probe}: permission denied)")
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=".medlens-write-check."):
            pass
    except OSError as e:  # read-only file system, quota, ACLs that os.access does not see
        raise PermissionError(f"{what} {str(p)!r} is not writable ({probe}: {e.strerror or e})") from None
    return p


# ------------------------------------------------------------------------------------------ locking
def _lock(fd: int) -> bool:
    """Take an exclusive lock on an open file without waiting; False when another process holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


def _unlock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_UN)


class RunLock:
    """An exclusive, non-blocking lock on a run folder (``fcntl.flock`` on ``run_dir/.lock``).

    A second training into a folder that a live run holds fails at once with one line naming the folder and
    the holder's pid. The operating system drops the lock when the holder exits or is killed, so a crashed
    run never leaves a stale lock behind (the ``.lock`` file itself stays; it is only a name to lock).
    Under DDP, take it in the launching process or on global rank 0 only: each rank is a process of its own.

    Args:
        run_dir: the run folder (created when missing, with the user's umask).

    Raises:
        RunInUseError: on entering, when another process (or another ``RunLock`` in this one) holds the folder.

    Example:
        >>> with RunLock("runs/pneumonia"):  # doctest: +SKIP
        ...     train(cfg)
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def locked(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock; returns ``self``. See the class for the errors."""
        if self._fd is not None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies
        try:
            if not _lock(fd):
                holder = self._holder(fd)
                raise RunInUseError(
                    f"{self.run_dir} is in use by another run (pid {holder}); wait for it to finish, or give this "
                    "run another output.name"
                )
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (nothing happens when it is not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # no pid left behind for a later reader to blame
            _unlock(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        except (OSError, AttributeError):  # pragma: no cover - no pread on Windows
            text = ""
        return text if text.isdigit() else "unknown"

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def __del__(self) -> None:  # a lock object dropped without release: do not keep the folder locked
        if getattr(self, "_fd", None) is not None:
            try:
                self.release()
            except OSError:  # pragma: no cover - interpreter shutdown
                pass


# ------------------------------------------------------------------------------- replacing a folder
def backup_path(final_dir: str | os.PathLike[str]) -> Path:
    """Where :func:`replace_dir_atomically` keeps the old folder while the new one moves in: ``.<name>.old``."""
    final = Path(final_dir)
    return final.with_name(f".{final.name}.old")


def readable_dir(final_dir: str | os.PathLike[str]) -> Path:
    """The folder to read for ``final_dir``: itself, or its backup while a two-rename replacement is cut short.

    Readers (``load_bundle``) use it, so even on a system without an atomic folder exchange a bundle being
    replaced (or whose replacement was killed between the renames) is read from its complete previous version.

    Example:
        >>> readable_dir("runs/x/bundle")  # doctest: +SKIP
        PosixPath('runs/x/bundle')
    """
    final = Path(final_dir)
    if not final.exists() and not final.is_symlink() and backup_path(final).is_dir():
        return backup_path(final)
    return final


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - no C library to load (Windows)
        return None


def exchange_paths(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Swap two existing paths in one atomic step (``renameat2(RENAME_EXCHANGE)`` on Linux >= 3.15,
    ``renamex_np(RENAME_SWAP)`` on macOS >= 10.12). Both must be on one file system.

    Returns:
        True when swapped; False where the system or file system has no such call (nothing changed then).

    Raises:
        OSError: the call exists but failed (a missing path, permissions, different file systems).
    """
    libc = _libc()
    fa, fb = os.fsencode(os.fspath(a)), os.fsencode(os.fspath(b))
    if libc is None:  # pragma: no cover
        return False
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        at_fdcwd, rename_exchange = -100, 2
        rc = libc.renameat2(at_fdcwd, fa, at_fdcwd, fb, rename_exchange)
    elif sys.platform == "darwin" and hasattr(libc, "renamex_np"):  # pragma: no cover - macOS
        rename_swap = 2
        rc = libc.renamex_np(fa, fb, rename_swap)
    else:  # pragma: no cover - no exchange call
        return False
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, getattr(errno, "ENOTSUP", -1), getattr(errno, "EOPNOTSUPP", -1)):
        return False  # the kernel or this file system cannot exchange: the caller falls back
    raise OSError(err, os.strerror(err), os.fspath(a), None, os.fspath(b))


def restore_interrupted_replace(final_dir: str | os.PathLike[str]) -> bool:
    """Finish what a replacement killed between its two renames left: the old folder goes back in place.

    Returns:
        True when a folder was restored (``final_dir`` was missing and its backup was there).

    Example:
        >>> restore_interrupted_replace("runs/pneumonia/bundle")  # doctest: +SKIP
        False
    """
    final, backup = Path(final_dir), backup_path(final_dir)
    if final.exists() or final.is_symlink() or not backup.is_dir():
        return False
    os.replace(backup, final)
    _fsync_dir(final.parent)
    log.warning("%s: restored from %s (an earlier replacement was interrupted)", final, backup.name)
    return True


def replace_dir_atomically(tmp_dir: str | os.PathLike[str], final_dir: str | os.PathLike[str]) -> Path:
    """Move the complete folder ``tmp_dir`` to ``final_dir``, replacing what is there without a gap.

    Where the system can exchange two folders atomically (:func:`exchange_paths`), ``tmp_dir`` and ``final_dir``
    swap in one step: a reader of ``final_dir`` finds the old folder or the new one at every instant, and a kill at
    any moment leaves one of them in place. The old folder then moves to the sibling backup
    (:func:`backup_path`) and is removed; a kill before that leaves a stale backup, removed by the next call.

    Elsewhere two renames: the old ``final_dir`` goes to the backup, ``tmp_dir`` into place, the backup is
    removed. Between the renames the complete old folder is at the backup, where :func:`readable_dir` finds it;
    a failure there puts it back, and a kill there is undone by :func:`restore_interrupted_replace` (run first
    by this function). ``tmp_dir`` must be on the same file system as ``final_dir`` (make it beside it).

    Args:
        tmp_dir: the new, complete folder.
        final_dir: where it goes.

    Returns:
        ``final_dir``.

    Raises:
        FileNotFoundError: ``tmp_dir`` is not a folder.
        NotADirectoryError: ``final_dir`` is a file.

    Example:
        >>> tmp = Path(tempfile.mkdtemp(dir="runs/x", prefix=".bundle.tmp"))  # doctest: +SKIP
        >>> ...  # write the bundle's files into tmp  # doctest: +SKIP
        >>> replace_dir_atomically(tmp, "runs/x/bundle")  # doctest: +SKIP
    """
    tmp, final = Path(tmp_dir), Path(final_dir)
    if not tmp.is_dir():
        raise FileNotFoundError(f"{tmp}: no such folder to move into {final}")
    if final.exists() and not final.is_dir():
        raise NotADirectoryError(f"{final} is a file, not a folder; it is not replaced")
    restore_interrupted_replace(final)
    backup = backup_path(final)
    if backup.exists():  # left by a run killed after the second rename: final is the newer, complete one
        shutil.rmtree(backup)
    if not final.exists():
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        return final
    if exchange_paths(tmp, final):  # one atomic step: the new folder at final, the old one at tmp
        _fsync_dir(final.parent)
        os.replace(tmp, backup)  # a name the next call cleans up, should this process die now
        shutil.rmtree(backup, ignore_errors=True)
        return final
    os.replace(final, backup)
    try:
        os.replace(tmp, final)
    except BaseException:
        if not final.exists():
            os.replace(backup, final)  # the old folder back where it was
        raise
    _fsync_dir(final.parent)
    shutil.rmtree(backup, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    """Make renames in ``path`` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)
