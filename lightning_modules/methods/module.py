"""The method of the package (Mao et al. 2021): a classifier and a contrastive head trained jointly;
the reversal runs at prediction time (:class:`~lightning_modules.methods.base.BaseModule`'s ``predict_step``).

Training loss = classification loss (standard, PGD-AT, TRADES or FGSM-RS inputs: ``attack.mode``)
+ ``ssl.weight`` x InfoNCE on clean SimCLR views of a share ``ssl.fraction`` of the batch. With
``freeze_backbone`` only the head trains (Mao et al.'s setting on top of a given robust classifier).

Example:
    >>> import torch
    >>> m = ReversalModule(backbone="small_cnn", backbone_kwargs={"width": 8}, head_hidden=32, head_dim=16,
    ...                    attack={"mode": "fgsm_rs"}, ssl={"weight": 0.5, "views": "fast"})
    >>> x, y = torch.rand(8, 3, 32, 32), torch.arange(8)
    >>> loss_cls, logits = m.classification_loss(x, y)  # on FGSM-RS inputs
    >>> loss = loss_cls + m.ssl_cfg.weight * m.ssl_loss(x)
    >>> tuple(logits.shape), loss.ndim
    ((8, 10), 0)
"""

from __future__ import annotations

import torch

from ..settings import TrainingMode
from .base import BaseModule

__all__ = ["ReversalModule", "TrainingMode"]


class ReversalModule(BaseModule):
    """Joint training of the classifier and the contrastive head (arguments: :class:`BaseModule`)."""

    def head_in_loss(self) -> bool:
        return self.ssl_cfg.weight > 0

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = self._prep(batch[0]), batch[1]
        s = self.ssl_cfg
        loss_ssl = self.ssl_loss(self.ssl_share(x)) if s.weight > 0 or self.freeze_backbone else x.new_zeros(())
        if self.freeze_backbone:  # the head alone learns
            with torch.no_grad():
                logits = self.model_fn(x)
            self.log_train(loss_ssl, logits, y, bar=("loss_ssl",), loss_ssl=loss_ssl)
            return loss_ssl
        loss_cls, logits = self.classification_loss(x, y)
        loss = loss_cls + s.weight * loss_ssl
        self.log_train(loss, logits, y, bar=("loss_ssl",), loss_cls=loss_cls, loss_ssl=loss_ssl)
        return loss
