"""Reading run checkpoints: once, without executing code, and handing that very object to Lightning.

A resume checkpoint is read by :func:`read_resume` with ``torch.load(weights_only=True)`` as the first thing a
run does (before any data is read or any network built), so a missing, corrupt or code-carrying file is one
line at once. The :class:`ResumeCheckpoint` it returns travels to :func:`medlens.engine.fit.fit`, which checks it
against the network and gives it to the Trainer's checkpoint plugin
(:class:`~medlens.engine.callbacks.AtomicCheckpointIO`): when Lightning asks for the file, the plugin returns
the object already read instead of opening the file again. A file swapped between the check and the resume
is therefore never read (the check and the state Lightning restores are the same bytes), and any other read
the plugin does is ``weights_only=True`` too: no checkpoint can run code by any route.

Example:
    >>> ck = read_resume("runs/x/checkpoints/last.ckpt")  # doctest: +SKIP
    >>> ck.state["epoch"]  # doctest: +SKIP
    4
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a checkpoint is read: `from medlens.engine import ...` stays light
    from torch import nn

#: torch.compile wraps the network; its state-dict keys carry this prefix
COMPILE_PREFIX = "_orig_mod."


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, foreign, or would need code execution to load."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a Lightning checkpoint without executing code (``weights_only=True``).

    Raises:
        CheckpointError: missing, empty, truncated, not a checkpoint, or holding objects other than plain data
            (which is how a crafted checkpoint would run code).

    Example:
        >>> load_checkpoint("no/such.ckpt")
        Traceback (most recent call last):
        ...
        medlens.engine.checkpoint.CheckpointError: no/such.ckpt: checkpoint not found
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: checkpoint is empty")
    import torch

    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{p}: refused: the checkpoint holds objects that only arbitrary code could rebuild "
                              f"({str(e).splitlines()[0][:160]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{p}: not a readable checkpoint (truncated or corrupt: {type(e).__name__})") from None
    if not isinstance(ck, dict) or not isinstance(ck.get("state_dict"), dict):
        raise CheckpointError(f"{p}: not a medlens/Lightning checkpoint (no state_dict)")
    return ck


@dataclass
class ResumeCheckpoint:
    """A resume checkpoint read once: its path (for messages and Lightning's bookkeeping) and its contents.

    ``state`` is what Lightning restores; :meth:`take` hands it over exactly once and drops the reference, so
    the (possibly large) dict is not kept alive for the whole run.
    """

    path: str
    state: dict[str, Any] | None = field(repr=False)

    def matches(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` names this checkpoint's file (as given, or after resolving links)."""
        if str(path) == self.path:
            return True
        try:
            return os.path.realpath(path) == os.path.realpath(self.path)
        except OSError:  # pragma: no cover - an unreadable path
            return False

    def take(self) -> dict[str, Any]:
        """The checkpoint's contents (once); a second call is an error rather than a silent second read."""
        if self.state is None:
            raise CheckpointError(f"{self.path}: the checkpoint was already handed to the trainer")
        state, self.state = self.state, None
        return state


def read_resume(resume: str | os.PathLike[str] | ResumeCheckpoint | None) -> ResumeCheckpoint | None:
    """Read a resume checkpoint once (``weights_only=True``); pass an already read one through.

    Call it before data and model are built, so a bad ``--resume`` file fails in a second with one line.

    Raises:
        CheckpointError: see :func:`load_checkpoint`.

    Example:
        >>> read_resume(None) is None
        True
    """
    if resume is None or isinstance(resume, ResumeCheckpoint):
        return resume
    return ResumeCheckpoint(str(resume), load_checkpoint(resume))


def check_resume_checkpoint(resume: str | os.PathLike[str] | ResumeCheckpoint, module: nn.Module) -> ResumeCheckpoint:
    """Refuse a resume checkpoint that is unsafe, corrupt or of another network, before Lightning restores it.

    Returns:
        The checkpoint as read (a path is read here, once).
    """
    ck = read_resume(resume)
    assert ck is not None and ck.state is not None
    want = {k.replace(COMPILE_PREFIX, "") for k in module.state_dict()}
    have = {k.replace(COMPILE_PREFIX, "") for k in ck.state["state_dict"]}
    if want != have:
        missing = sorted(want - have)[:3] or sorted(have - want)[:3]
        raise CheckpointError(f"{ck.path}: this checkpoint belongs to another network (e.g. {missing} differ); "
                              "resume only from this run's checkpoints/last.ckpt")
    return ck
