"""Checkpoints written atomically: to ``NAME.tmp-PID`` in the same folder, ``fsync``, then ``os.replace``.

A run killed at any moment leaves every ``.ckpt`` as it was or complete, never truncated (the folder
entry is flushed too; ``save_last="link"`` swaps the ``last.ckpt`` symlink the same way). Temporary
files of dead runs are removed when the next run starts and never taken for checkpoints (no ``.ckpt``).
Resume with ``--ckpt_path last`` (the CLI gives every experiment a fixed folder); the loaders continue
mid-epoch (:class:`~datamodules.device_loader.DeviceLoader` is stateful).

One folder, one run: a fit claims its folder with ``fit.lock`` (PID, host, command) and refuses a folder
in use, naming the holder; a killed run's lock (PID dead) is taken over. A new fit (no ``--ckpt_path``)
into a folder holding checkpoints is refused before training, naming them. When ``last.ckpt`` cannot
be written (a full disk), the same step's checkpoint is removed too, so ``last`` always is the newest.
Under DDP every rank calls the save, only global rank 0 writes, and all ranks use rank 0's temporary
name (broadcast), so strategies writing one file per rank land in the same place.

Example:
    >>> from callbacks import AtomicCheckpoint
    >>> cb = AtomicCheckpoint(save_last=True, every_n_train_steps=500)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import sys
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging

from lightning_modules.util import atomic_write_text, disk_full_error

_TMP = re.compile(r"\.tmp-(\d+)$")


def _fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder entry (a rename) to disk; a no-op where folders cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete ``*.tmp-PID`` files in ``folder`` whose writer process is gone; returns them."""
    folder, removed = Path(folder), []
    for p in folder.iterdir() if folder.is_dir() else ():
        m = _TMP.search(p.name)
        if m and p.is_file() and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def check_writable(folder: str | os.PathLike) -> None:
    """Create ``folder`` and write a probe file there, or fail naming it before any training step."""
    probe = Path(folder) / f"write-check.tmp-{os.getpid()}"
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OSError(
            f"checkpoint folder {folder} is not writable ({e.strerror or e}): fix its permissions, or "
            "write elsewhere with --trainer.default_root_dir DIR"
        ) from None


LOCK_NAME = "fit.lock"


class FolderInUseError(RuntimeError):
    """Another live fit writes checkpoints into the same folder."""


def acquire_folder_lock(folder: str | os.PathLike) -> Path:
    """Claim ``folder`` for this process: ``fit.lock`` holds its PID, host and command. A lock whose process
    is gone (same host, PID dead: a killed run) is taken over; a live one is refused, naming it.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> lock = acquire_folder_lock(d)
        >>> acquire_folder_lock(d) == lock  # this process again: allowed
        True
        >>> release_folder_lock(d); os.path.exists(lock)
        False
    """
    lock = Path(folder) / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                other = json.loads(lock.read_text())
            except (OSError, ValueError):
                other = {}
            pid, host = int(other.get("pid", -1)), other.get("host")
            if pid == me["pid"] and host == me["host"]:
                return lock
            if host == me["host"] and pid > 0 and not _pid_alive(pid) or not other:
                lock.unlink(missing_ok=True)  # stale: its run was killed
                continue
            raise FolderInUseError(
                f"checkpoint folder {folder} is in use by another fit (PID {pid} on {host}: "
                f"{other.get('command', '?')}); wait for it, or give this run its own folder with "
                f"--trainer.default_root_dir DIR (remove {lock} if that process is gone)"
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return lock
    raise FolderInUseError(f"checkpoint folder {folder}: cannot take its lock {lock}")


class FolderHoldsRunError(RuntimeError):
    """A new fit into a checkpoint folder that already holds an earlier run's checkpoints."""


def earlier_run_error(folder: str | os.PathLike) -> Optional[FolderHoldsRunError]:
    """The refusal for a new fit (nothing to resume) into ``folder`` when it holds checkpoints, else None.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> earlier_run_error(d) is None
        True
        >>> _ = (d / "last.ckpt").write_bytes(b"")
        >>> "holds an earlier run's checkpoints (last.ckpt)" in str(earlier_run_error(d))
        True
        >>> os.environ["SSL_REVERSAL_MAKE"] = "make train-cifar10"  # run by make: the fixes as make arguments
        >>> "resume that run with make train-cifar10 ARGS='--ckpt_path last'" in str(earlier_run_error(d))
        True
        >>> del os.environ["SSL_REVERSAL_MAKE"]
    """
    folder = Path(folder)
    found = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
    if not found:
        return None
    shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
    via = os.environ.get("SSL_REVERSAL_MAKE")  # the make target that runs this fit (its flags go in ARGS)

    def flags(f: str) -> str:
        return f"{via} ARGS='{f}'" if via else f

    return FolderHoldsRunError(
        f"checkpoint folder {folder} already holds an earlier run's checkpoints ({shown}) and a new fit there "
        f"would mix the two runs: resume that run with {flags('--ckpt_path last')}, give this run its own folder "
        f"with {flags('--trainer.default_root_dir DIR')}, or remove {folder} to start over"
    )


def release_folder_lock(folder: str | os.PathLike) -> None:
    """Remove ``fit.lock`` in ``folder`` when it is this process's."""
    lock = Path(folder) / LOCK_NAME
    try:
        mine = json.loads(lock.read_text()).get("pid") == os.getpid()
    except (OSError, ValueError):
        return
    if mine:
        lock.unlink(missing_ok=True)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def checkpoint_bytes(trainer: pl.Trainer, weights_only: bool = False) -> int:
    """About what a checkpoint of ``trainer`` takes on the disk: its weights (+ the optimizers' states)."""
    n = sum(t.numel() * t.element_size() for t in trainer.lightning_module.state_dict().values())
    if not weights_only:
        for opt in trainer.optimizers:
            for state in opt.state_dict()["state"].values():
                n += sum(v.numel() * v.element_size() for v in state.values() if hasattr(v, "numel"))
    return n


class AtomicCheckpoint(ModelCheckpoint):
    """:class:`~lightning.pytorch.callbacks.ModelCheckpoint` whose every write is temp file + ``os.replace``.

    Same arguments and bookkeeping, except ``save_on_train_epoch_end`` defaults to True (None, Lightning's
    choice, saves after validation only when it runs every k > 1 epochs, so ``max_time`` stopping
    mid-epoch leaves ``last.ckpt`` behind, which with weight averaging no final save covers for).
    """

    run_config: Optional[str] = None  # the run's config (set by the CLI), written beside its checkpoints

    def __init__(self, *args: Any, save_on_train_epoch_end: Optional[bool] = True, **kwargs: Any) -> None:
        super().__init__(*args, save_on_train_epoch_end=save_on_train_epoch_end, **kwargs)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and stage == "fit" and self.dirpath is not None:
            check_writable(self.dirpath)
            acquire_folder_lock(self.dirpath)
            remove_stale_temporaries(self.dirpath)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if not trainer.strategy.restore_checkpoint_after_setup:  # trainer.ckpt_path is known by now
            self._refuse_another_run(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if trainer.strategy.restore_checkpoint_after_setup:  # sharded strategies restore after on_fit_start
            self._refuse_another_run(trainer)

    def _refuse_another_run(self, trainer: pl.Trainer) -> None:
        """A fit with nothing to resume refuses a folder holding checkpoints (all ranks, rank 0 looks)."""
        if self.dirpath is None or trainer.ckpt_path or trainer.fast_dev_run:  # fast_dev_run saves nothing
            return
        error = str(earlier_run_error(self.dirpath) or "") if trainer.is_global_zero else ""
        error = trainer.strategy.broadcast(error)
        if error:
            raise FolderHoldsRunError(error)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        if trainer.is_global_zero and stage == "fit" and self.dirpath is not None:
            release_folder_lock(self.dirpath)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        if trainer.is_global_zero and self.dirpath is not None:
            release_folder_lock(self.dirpath)  # a fit that failed frees its folder (a killed one: stale lock)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """With ``save_last``, ``last.ckpt`` holds the final state even when the last save trigger fell
        before the end. Not with weight averaging (EMA): its ``on_train_end`` has already put the average
        into the model, which a resumed run would take for the raw weights."""
        if trainer.fast_dev_run:  # a smoke test saves nothing (Lightning's would still write last.ckpt here)
            return
        averaging = any(isinstance(cb, WeightAveraging) for cb in trainer.callbacks)
        if self.save_last and not averaging and not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            if self.save_last == "link":  # no newer top-k file to link to: write the file itself
                self.last_model_path = self.format_checkpoint_name(candidates, self.CHECKPOINT_NAME_LAST)
                self._save_checkpoint(trainer, self.last_model_path)
            else:
                self._save_last_checkpoint(trainer, candidates)
            return
        super().on_train_end(trainer, pl_module)

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict) -> None:
        """Lightning's, but when ``last.ckpt`` cannot be written, the checkpoint this step just wrote (an
        epoch's) is removed too: no checkpoint is ever newer than ``last.ckpt``."""
        step_file = self._last_checkpoint_saved if self._last_global_step_saved == trainer.global_step else None
        try:
            super()._save_last_checkpoint(trainer, monitor_candidates)
        except OSError as e:
            if not step_file or os.path.abspath(step_file) == os.path.abspath(self.last_model_path or ""):
                raise
            if trainer.is_global_zero:
                _remove(step_file)
            raise OSError(
                e.errno,
                f"{e.strerror or e}; {os.path.basename(step_file)} of the same step was removed too, so that "
                "--ckpt_path last resumes the newest checkpoint",
            ) from e

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        tmp = trainer.strategy.broadcast(f"{filepath}.tmp-{os.getpid()}")
        try:
            trainer.save_checkpoint(tmp, self.save_weights_only)  # collective; writes on rank 0 (+ barrier)
        except OSError as e:
            if trainer.is_global_zero:
                _remove(tmp)
            if e.errno == errno.ENOSPC:
                raise disk_full_error(Path(filepath), checkpoint_bytes(trainer, self.save_weights_only)) from None
            raise
        if trainer.is_global_zero:
            if not os.path.lexists(tmp):
                raise OSError(
                    f"checkpoint {filepath} was not written (its temporary file {tmp} is missing): is "
                    f"{os.path.dirname(os.path.abspath(filepath))} writable, with space left?"
                )
            if os.path.isfile(tmp):
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
            if os.path.isdir(filepath) and not os.path.islink(filepath) and os.path.isdir(tmp):
                shutil.rmtree(filepath)  # folder checkpoints (sharded strategies): replace the old one
            os.replace(tmp, filepath)
            _fsync_dir(os.path.dirname(os.path.abspath(filepath)))
            if self.run_config is not None:
                atomic_write_text(Path(filepath).parent / "config.yaml", self.run_config)
                self.run_config = None  # once per run
        trainer.strategy.barrier("atomic_checkpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)

    @staticmethod
    def _link_checkpoint(trainer: pl.Trainer, filepath: str, linkpath: str) -> None:
        """``save_last="link"``: point ``linkpath`` at ``filepath`` by renaming a fresh symlink over it."""
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            tmp = f"{linkpath}.tmp-{os.getpid()}"
            if os.path.lexists(tmp):
                os.remove(tmp)
            try:
                os.symlink(os.path.relpath(filepath, os.path.dirname(linkpath)), tmp)
            except OSError:  # no symlinks (some file systems, Windows without rights): copy
                shutil.copyfile(filepath, tmp)
            if os.path.isdir(linkpath) and not os.path.islink(linkpath):
                shutil.rmtree(linkpath)
            os.replace(tmp, linkpath)
            _fsync_dir(os.path.dirname(os.path.abspath(linkpath)))
        trainer.strategy.barrier()
