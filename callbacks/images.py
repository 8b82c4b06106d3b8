"""Image grids of clean / attacked / reversed inputs and their differences, for W&B or disk."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import lightning.pytorch as pl
import torch
from torchvision.utils import make_grid, save_image


def diff_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``|a - b|`` scaled so the largest difference of each image is white."""
    d = (a - b).abs()
    return d / d.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)


def reversal_grid(x: torch.Tensor, x_adv: torch.Tensor, x_rev: torch.Tensor) -> torch.Tensor:
    """Rows: x, x_adv, x_reversed, |x_adv - x|, |x_reversed - x_adv| (differences rescaled)."""
    rows = [x, x_adv, x_rev, diff_image(x_adv, x), diff_image(x_rev, x_adv)]
    return make_grid(torch.cat([r.detach().float().cpu() for r in rows]), nrow=len(x), padding=1)


class ImageGrid(pl.Callback):
    """After the first validation epoch and every ``every_n_epochs``: :func:`reversal_grid` of the first
    ``n_images`` of the first validation batch, to W&B, else as PNG under the run's log dir."""

    def __init__(self, n_images: int = 16, every_n_epochs: int = 5) -> None:
        self.n_images, self.every_n_epochs = n_images, every_n_epochs
        self._batch: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0 and dataloader_idx == 0:
            self._batch = (batch[0][: self.n_images], batch[1][: self.n_images])

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._batch is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        first = trainer.current_epoch == 0  # a run that ends early still has a picture
        if (trainer.current_epoch + 1) % self.every_n_epochs and not first and not trainer.fast_dev_run:
            return
        if not all(hasattr(pl_module, m) for m in ("attack", "reverse", "_prep")) or len(self._batch[0]) < 2:
            return
        x, y = pl_module._prep(self._batch[0]), self._batch[1]
        with torch.inference_mode(False), torch.enable_grad():
            x_adv = pl_module.attack(x, y)
            x_rev = pl_module.reverse(x_adv)
        grid = reversal_grid(x, x_adv, x_rev)
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                logger.log_image(key="images/x__x_adv__x_rev__diffs", images=[grid], step=trainer.global_step)
                return
        out = Path(trainer.log_dir or trainer.default_root_dir) / "images"
        out.mkdir(parents=True, exist_ok=True)
        save_image(grid, out / f"reversal_epoch{trainer.current_epoch:03d}.png")
