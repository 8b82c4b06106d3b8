"""Checkpoints written atomically: to a temporary file in the same folder, then renamed.

A run killed while saving leaves either the previous checkpoint or the new one, never a
truncated file; ``--ckpt_path last`` resumes from ``last.ckpt``.
"""
from __future__ import annotations

import os

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint


class AtomicCheckpoint(ModelCheckpoint):
    """:class:`~lightning.pytorch.callbacks.ModelCheckpoint` whose every write is temp file + ``os.replace``."""

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        tmp = f"{filepath}.tmp-{os.getpid()}"
        trainer.save_checkpoint(tmp, self.save_weights_only)
        if trainer.is_global_zero and os.path.exists(tmp):
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, filepath)
        trainer.strategy.barrier("atomic_checkpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)
