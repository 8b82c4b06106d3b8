"""EMA of the weights without host synchronization: Lightning's ``EMAWeightAveraging``, updated on the device.

Lightning 2.6's :class:`~lightning.pytorch.callbacks.EMAWeightAveraging` updates through
``AveragedModel.update_parameters``, which tests ``n_averaged`` on a device tensor: 2 host syncs per
step (``experiments/bench.py --ema``) that stall the GPU queue. :class:`DeviceEMA` keeps the rest of
that callback (evaluation with the average, the average at the end, checkpoints, resuming) and replaces
the per-step update by one ``torch._foreach_lerp_`` over the float parameters and buffers, with a
host-side "first update" flag; integer buffers (``num_batches_tracked``) are copied. Until the first
update the live weights are used (Lightning's callback would use the initial weights copied at setup).

Example (YAML):
    trainer:
      callbacks:
        - class_path: callbacks.DeviceEMA
          init_args: {decay: 0.999}
"""

from __future__ import annotations

import itertools
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.utilities import rank_zero_warn


class DeviceEMA(EMAWeightAveraging):
    """:class:`~lightning.pytorch.callbacks.EMAWeightAveraging` with a sync-free update.

    Args: as ``EMAWeightAveraging`` (``decay``, ``update_every_n_steps``, ``update_starting_at_step``,
    ``update_starting_at_epoch``, ``use_buffers``, ``device``).
    """

    def __init__(self, *args: Any, decay: float = 0.999, **kwargs: Any) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1], got {decay}")
        super().__init__(*args, decay=decay, **kwargs)
        self.decay = decay
        self._updated_once = False

    def _groups(self, pl_module: pl.LightningModule):
        avg = self._average_model
        assert avg is not None
        if self._use_buffers:
            mine = itertools.chain(avg.module.parameters(), avg.module.buffers())
            theirs = itertools.chain(pl_module.parameters(), pl_module.buffers())
        else:
            mine, theirs = avg.module.parameters(), pl_module.parameters()
        floats, others = ([], []), ([], [])
        for a, m in zip(mine, theirs):
            target = floats if a.is_floating_point() else others
            target[0].append(a.detach())
            target[1].append(m.detach())
        return floats, others

    @torch.no_grad()
    def _update(self, pl_module: pl.LightningModule) -> None:
        (fa, fm), (oa, om) = self._groups(pl_module)
        if not self._updated_once:
            torch._foreach_copy_(fa, [m.to(a.device) for a, m in zip(fa, fm)])
        else:
            torch._foreach_lerp_(fa, [m.to(a.device) for a, m in zip(fa, fm)], 1.0 - self.decay)
        for a, m in zip(oa, om):
            a.copy_(m)
        if not self._use_buffers:
            for b_avg, b_model in zip(self._average_model.module.buffers(), pl_module.buffers()):
                b_avg.copy_(b_model)
        self._average_model.n_averaged.add_(1)  # kept right for checkpoints; never read here
        self._updated_once = True

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step_idx = trainer.global_step - 1
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=step_idx):
            self._update(pl_module)
            self._latest_update_step = trainer.global_step

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch > self._latest_update_epoch and self.should_update(epoch_idx=trainer.current_epoch):
            self._update(pl_module)
            self._latest_update_epoch = trainer.current_epoch

    # before the first update the "average" is the initial weights: the live ones stay (module doc)
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._updated_once:
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._updated_once:
            super().on_validation_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._updated_once:
            super().on_train_end(trainer, pl_module)
        else:
            rank_zero_warn(
                "DeviceEMA never updated (training ended before update_starting_at_step/epoch): "
                "the model keeps its trained weights, not an average"
            )

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if self._updated_once:
            super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._updated_once = self._latest_update_step > 0
