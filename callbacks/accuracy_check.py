"""Clean and PGD accuracy of the classifier after training, in one printed line.

:class:`AccuracyCheck` (``lightning test``, in place of the module's quick check) counts the clean and
PGD predictions (``steps`` steps, the model's eps, one restart) over all batches and processes and logs
``test/pgd<steps>_acc``. No reversal (that is ``make eval-cifar10``); a first look at a checkpoint, not
an evaluation: no AutoAttack, no adaptive attack.

Example:
    >>> from callbacks.accuracy_check import accuracy_line
    >>> accuracy_line(correct_clean=612, correct_pgd=331, n=1000, steps=20, eps=8 / 255)
    'accuracy on 1000 test images: clean 61.2% [58.1-64.2], PGD-20 (L-inf 8/255) 33.1% [30.3-36.1] (Wilson 95%)'
"""

from __future__ import annotations

from typing import Optional

import lightning.pytorch as pl
import torch

from lightning_modules.evaluation.stats import wilson
from lightning_modules.util import eps_label


def accuracy_line(correct_clean: int, correct_pgd: int, n: int, steps: int, eps: float) -> str:
    def pct(k: int) -> str:
        lo, hi = wilson(k, n)
        return f"{100 * k / n:.1f}% [{100 * lo:.1f}-{100 * hi:.1f}]"

    return (
        f"accuracy on {n} test images: clean {pct(correct_clean)}, "
        f"PGD-{steps} (L-inf {eps_label(eps, 'Linf')}) {pct(correct_pgd)} (Wilson 95%)"
    )


class AccuracyCheck(pl.Callback):
    """Clean and PGD-``steps`` accuracy on the test loader, printed and logged (see the module doc).

    Args:
        steps: PGD steps (step size: the model's ``alpha``, 2/255 by default).
        eps: L-inf radius; None: the model's training eps.
    """

    replaces_test_attacks = True  # the module's test_step then only logs clean accuracy

    def __init__(self, steps: int = 20, eps: Optional[float] = None) -> None:
        if steps < 1:
            raise ValueError(f"AccuracyCheck steps must be >= 1, got {steps}")
        self.steps, self.eps = steps, eps
        self._counts = torch.zeros(3, dtype=torch.long)  # clean, pgd, n
        self.line: Optional[str] = None

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._counts = torch.zeros(3, dtype=torch.long, device=pl_module.device)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = pl_module._prep(batch[0]), batch[1]
        with torch.inference_mode(False), torch.enable_grad():
            x_adv = pl_module.attack(x, y, steps=self.steps, eps=self.eps)
        with torch.no_grad():
            clean = (pl_module.model_fn(x).argmax(1) == y).sum()
            robust = (pl_module.model_fn(x_adv).argmax(1) == y).sum()
        self._counts += torch.stack([clean, robust, torch.tensor(len(y), device=y.device)]).to(self._counts)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        counts = trainer.strategy.reduce(self._counts, reduce_op="sum") if trainer.world_size > 1 else self._counts
        clean, robust, n = (int(c) for c in counts)
        if n == 0:
            return
        eps = self.eps if self.eps is not None else float(pl_module.attack_cfg.eps)
        pl_module.log(f"test/pgd{self.steps}_acc", robust / n, rank_zero_only=True)  # test_step logs clean
        self.line = accuracy_line(clean, robust, n, self.steps, eps)
        if trainer.is_global_zero:
            print(self.line, flush=True)
