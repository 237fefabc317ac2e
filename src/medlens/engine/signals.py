"""Stopping a training cleanly on SIGTERM (a scheduler's stop) or Ctrl-C: a last checkpoint, then an exception.

Lightning turns a SIGTERM into ``SIGTERMException`` (a ``SystemExit`` with code 0, which a scheduler would record
as success) at the next batch boundary. :class:`~medlens.engine.callbacks.GracefulStop` makes a first Ctrl-C (SIGINT) take the same
route: the batch in flight finishes (no half-applied optimiser step), then the run stops, ``checkpoints/last.ckpt``
is written (atomically, through the run's checkpoint plugin) and :func:`medlens.engine.fit.fit` raises
:class:`TrainingInterrupted`, which carries the signal, the checkpoint and the conventional exit code
(143 for SIGTERM, 130 for SIGINT). A second Ctrl-C stops at once without a new checkpoint.

The checkpoint is the state after the last finished batch. Resuming from it continues the epoch where it
stopped, but the data loader restarts that epoch's iteration, so the rest of that one epoch sees other batches
than an uninterrupted run would: the run is resumable, not bit-identical (an end-of-epoch ``last.ckpt``, the one
a crash or ``kill -9`` leaves, resumes exactly). A training split streamed from tar shards (``data.kind: webdataset``)
resumes exactly mid-epoch too: its loader skips what was trained (:mod:`medlens.data.stream`) and the checkpoint
carries the random state (dropout, mixup).

Example:
    >>> e = TrainingInterrupted("SIGTERM", "runs/x/checkpoints/last.ckpt")
    >>> e.exit_code, e.code
    (143, 143)
    >>> str(e)
    'training stopped by SIGTERM; last checkpoint: runs/x/checkpoints/last.ckpt (continue with --resume runs/x/checkpoints/last.ckpt)'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: the exit codes shells and schedulers read as "terminated by this signal" (128 + signal number)
EXIT_CODES = {"SIGTERM": 143, "SIGINT": 130}


class TrainingInterrupted(SystemExit):
    """Training was stopped by a signal; a last checkpoint was saved when it could be.

    A ``SystemExit`` (like ``KeyboardInterrupt``, not an ``Exception``): a loop of runs (a sweep, folds) that
    catches ``Exception`` to go on with the next run still stops, and a program that does not catch it exits
    with :attr:`exit_code`, so a scheduler never records a stopped run as a success.

    Attributes:
        signal_name: ``"SIGTERM"`` or ``"SIGINT"``.
        checkpoint: the checkpoint to resume from (``checkpoints/last.ckpt``), or None when none exists.
        exit_code: 143 (SIGTERM) or 130 (SIGINT); also ``code``.
    """

    def __init__(self, signal_name: str, checkpoint: str | Path | None) -> None:
        self.signal_name = signal_name
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.exit_code = EXIT_CODES.get(signal_name, 1)
        super().__init__(self.exit_code)

    def __str__(self) -> str:
        if self.checkpoint is None:
            return f"training stopped by {self.signal_name} before any checkpoint was written; start it again"
        return f"training stopped by {self.signal_name}; last checkpoint: {self.checkpoint} (continue with --resume {self.checkpoint})"

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (DDP workers, multiprocessing)
        return (type(self), (self.signal_name, self.checkpoint))
