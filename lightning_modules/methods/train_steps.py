"""Training-step building blocks shared by the methods (mixed into :class:`~lightning_modules.methods.base.BaseModule`);
a method's ``training_step`` combines them with its own loss (the base class has none)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attacks.core import fgsm_rs, pgd, trades_attack
from ..losses import trades_kl
from ..settings import TrainingMode


class TrainSteps:
    """Uses the module's ``model_fn``, ``eval_classifier``, ``*_cfg``, ``training_mode`` and ``train_acc``."""

    def train_inputs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The classification inputs of a training step: clean, noisy or attacked (``attack.mode``)."""
        a, mode, amp = self.attack_cfg, self.training_mode, self.speed_cfg.attack_amp
        if mode is TrainingMode.standard:
            return (x + a.noise_std * torch.randn_like(x)).clamp_(0, 1) if a.noise_std > 0 else x
        with self.eval_classifier():  # attack with frozen BN statistics
            if mode is TrainingMode.pgd:
                return pgd(self.model_fn, x, y, a.eps, a.alpha, a.steps, amp=amp)
            if mode is TrainingMode.fgsm_rs:
                return fgsm_rs(self.model_fn, x, y, a.eps, amp=amp)
            return trades_attack(self.model_fn, x, a.eps, a.alpha, a.steps, amp=amp)

    def ssl_share(self, x: torch.Tensor) -> torch.Tensor:
        """The first images of a training batch whose views feed InfoNCE (``ssl.fraction``, at least 2)."""
        return x[: max(2, round(len(x) * self.ssl_cfg.fraction))]

    def classification_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy on the training inputs (+ TRADES' KL term): ``(loss, logits)``."""
        smoothing = self.optim_cfg.label_smoothing
        logits = self.model_fn(self.train_inputs(x, y))
        loss = F.cross_entropy(logits.float(), y, label_smoothing=smoothing)
        if self.training_mode is TrainingMode.trades:
            clean = self.model_fn(x)
            loss = F.cross_entropy(clean.float(), y, label_smoothing=smoothing)
            loss = loss + self.attack_cfg.trades_beta * trades_kl(logits, clean)
        return loss, logits

    def log_train(
        self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, bar: tuple = (), **parts: torch.Tensor
    ) -> None:
        """Log the step's loss, its parts (``train/<name>``; those named in ``bar`` also in the progress
        bar, unless ``speed.train_progress_bar`` is off) and the training accuracy."""
        show = self.speed_cfg.train_progress_bar  # Lightning reads progress-bar values to the host every step
        self.train_acc(logits.detach(), y)
        self.log("train/loss", loss.detach(), prog_bar=show)
        for name, value in parts.items():
            self.log(f"train/{name}", value.detach(), prog_bar=show and name in bar)
        self.log("train/acc", self.train_acc, prog_bar=show)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} defines no training loss; fit a subclass")
