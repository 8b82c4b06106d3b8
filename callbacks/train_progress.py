"""Progress of a ``fit`` you can read in a log: epoch, speed, validation accuracy and the time left.

The progress bar shows the current epoch only; :class:`TrainProgress` prints one line per epoch
for the whole run, e.g.::

    [train] epoch 2/4: 3.3 steps/s, 421 images/s; val/acc 52.1%, val/pgd_acc 28.4%; about 4.1 min left

and, when the progress bar is off (logs, batch jobs), a line about every ``interval`` seconds within
the epoch as well. Nothing is printed for ``fast_dev_run`` or on ranks other than 0.

Example:
    >>> from callbacks.train_progress import epoch_line
    >>> epoch_line(2, 4, steps=780, images=99840, seconds=236.0, metrics={"val/acc": 0.521}, left="about 4 min left")
    '[train] epoch 2/4: 3.3 steps/s, 423 images/s; val/acc 52.1%; about 4 min left'
"""

from __future__ import annotations

import math
import time
from typing import Optional

import lightning.pytorch as pl

from lightning_modules.util import time_left

SHOWN = ("val/acc", "val/pgd_acc")


def epoch_line(
    epoch: int, epochs: Optional[int], steps: int, images: int, seconds: float, metrics: dict, left: str
) -> str:
    of = f"/{epochs}" if epochs else ""
    shown = [f"{k} {100 * float(v):.1f}%" for k, v in metrics.items() if k in SHOWN]
    speed = f"{steps / seconds:.1f} steps/s, {images / seconds:.0f} images/s" if seconds > 0 else "-"
    return f"[train] epoch {epoch}{of}: {speed}" + (f"; {', '.join(shown)}" if shown else "") + f"; {left}"


class TrainProgress(pl.Callback):
    """Epoch lines with the time left for the whole fit (see the module doc).

    Args:
        interval: seconds between lines within an epoch when the progress bar is off.
    """

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._start = self._epoch_start = self._last = 0.0
        self._steps = self._images = self._done = 0
        self._validated = -1  # the last epoch whose validation ran (a fit cut by max_steps skips the last one)

    def _quiet(self, trainer: pl.Trainer) -> bool:
        return bool(trainer.fast_dev_run) or not trainer.is_global_zero or trainer.sanity_checking

    def _left(self, trainer: pl.Trainer) -> str:
        total = trainer.estimated_stepping_batches
        if total is None or not math.isfinite(total):
            return "time left unknown"
        return time_left(time.perf_counter() - self._start, self._done, float(total))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = self._last = time.perf_counter()
        self._done = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.perf_counter()
        self._steps = self._images = 0

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated = trainer.current_epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._steps += 1
        self._done += 1
        self._images += len(batch[0])
        if self._quiet(trainer) or trainer.progress_bar_callback is not None:
            return
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._last = now
            n = trainer.num_training_batches
            of = f"/{n}" if isinstance(n, int) else ""
            rate = self._steps / max(now - self._epoch_start, 1e-9)
            where = f"epoch {trainer.current_epoch + 1} step {batch_idx + 1}{of}"
            print(f"[train] {where}: {rate:.1f} steps/s; {self._left(trainer)}", flush=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._quiet(trainer):
            return
        seconds = time.perf_counter() - self._epoch_start
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        fresh = self._validated == trainer.current_epoch  # no stale numbers from an earlier epoch
        metrics = {k: v for k, v in trainer.callback_metrics.items() if k in SHOWN} if fresh else {}
        left = self._left(trainer)
        line = epoch_line(trainer.current_epoch + 1, epochs, self._steps, self._images, seconds, metrics, left)
        bar = trainer.progress_bar_callback
        if bar is not None and hasattr(bar, "print"):  # above a live progress bar (tqdm.write), not through it
            bar.print(line)
        else:
            print(line, flush=True)
