"""Training engine: LightningModules per task, callbacks and the Trainer factory.

Public here: :class:`TrainingInterrupted` (a run stopped by SIGTERM or Ctrl-C, with its last checkpoint and exit
code) and :class:`CheckpointError` (a resume checkpoint that is missing, corrupt, unsafe or of another network).
"""

from medlens.engine.checkpoint import CheckpointError
from medlens.engine.signals import TrainingInterrupted

__all__ = ["CheckpointError", "TrainingInterrupted"]
