"""Atomic file writes: a temp file beside the target, renamed into place.

A reader (or a user whose run was killed half-way) sees the old file or the new one, never a half-written one.
Every file medlens writes for a user goes through here.

Files and folders get the modes a plain ``open``/``mkdir`` would give under the user's umask (0644 and 0755 with
the usual 022), not the private 0600/0700 that ``tempfile`` uses for its temp files: a run folder shared with a
group, or served by a web server, stays readable. A file that is replaced keeps its own mode.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np


def current_umask() -> int:
    """The process umask, read without changing it (``os.umask`` can only be read by setting it, which would
    briefly change it for every thread)."""
    try:
        with open("/proc/self/status") as f:  # Linux >= 4.7
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, then put it back at once
    os.umask(mask)
    return mask


def chmod_as_created(path: str | Path, directory: bool = False, like: str | Path | None = None) -> None:
    """Give a ``tempfile``-made file (0600) or folder (0700) the mode a plain ``open``/``mkdir`` would have given.

    Args:
        path: the temp file or folder.
        directory: ``path`` is a folder (0777 & ~umask, else 0666 & ~umask).
        like: a file being replaced: when it exists, its mode is kept instead.

    Example:
        >>> fd, tmp = tempfile.mkstemp(dir="runs")  # doctest: +SKIP
        >>> chmod_as_created(tmp)  # 0644 under umask 022  # doctest: +SKIP
    """
    if like is not None:
        try:
            os.chmod(path, stat.S_IMODE(os.stat(like).st_mode))
            return
        except OSError:
            pass  # no such file yet: the umask decides
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on a clean exit it replaces ``path``, on an error it is removed.

    Example:
        >>> with atomic_open("out/preds.csv", newline="") as f:  # doctest: +SKIP
        ...     f.write("a,b\\n")
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        chmod_as_created(tmp, like=path)  # mkstemp makes 0600; the user's umask (or the replaced file) decides
    except OSError:  # pragma: no cover - a filesystem without modes
        pass
    if mode == "w":
        kwargs.setdefault("encoding", "utf-8")
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def jsonable(x: Any) -> Any:
    """Plain JSON types for numpy scalars/arrays, paths and NaN (-> null), recursively."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return None if v != v else v
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, Path):
        return str(x)
    return x


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (numpy values converted, NaN as null) atomically.

    Example:
        >>> write_json_atomic("out/metrics.json", {"auroc": 0.9})  # doctest: +SKIP
    """
    import json

    path = Path(path)
    with atomic_open(path, "w") as f:
        json.dump(jsonable(obj), f, indent=2)
    return path
