"""Validation, test and predict steps shared by every method (mixed into :class:`~.base.BaseModule`);
test runs a quick robust check only (the full evaluation is :mod:`lightning_modules.evaluation`)."""

from __future__ import annotations

import torch

from ..util import check_pixels


class EvalSteps:
    @staticmethod
    def _need_grad_mode() -> None:
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "attacks and the reversal need gradients: set `trainer.inference_mode: false` "
                "(the configs in experiments/ do)"
            )

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = self._prep(batch[0]), batch[1]
        self.val_acc(self.model_fn(x), y)
        self.val_ssl(self.ssl_loss(x))
        self.log("val/acc", self.val_acc, prog_bar=True)
        self.log("val/loss_ssl", self.val_ssl)
        if self.inference_cfg.val_attack_steps > 0:
            self._need_grad_mode()
            x_adv = self.attack(x, y, steps=self.inference_cfg.val_attack_steps)
            self.val_pgd_acc(self.model_fn(x_adv), y)
            self.log("val/pgd_acc", self.val_pgd_acc, prog_bar=True)

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Clean accuracy ``test/clean_acc`` (per test loader). The quick robust check (``test/pgd_acc``,
        ``test/clean_reversed_acc``, ``test/pgd_reversed_acc``) runs only with a single test loader and no callback
        doing the full evaluation (one with ``replaces_test_attacks``, e.g. :class:`callbacks.RobustEvaluation`)."""
        x, y, trainer = self._prep(batch[0]), batch[1], self._trainer
        quick = trainer is None or (
            len(trainer.num_test_batches) <= 1
            and not any(getattr(cb, "replaces_test_attacks", False) for cb in trainer.callbacks)
        )
        if not quick:
            with torch.no_grad():
                acc = (self.model_fn(x).argmax(1) == y).float().mean()
            self.log("test/clean_acc", acc, batch_size=len(y), sync_dist=True)
            return
        self._need_grad_mode()
        x_adv = self.attack(x, y)
        for name, xi in (("clean", x), ("pgd", x_adv)):
            self.test_metrics[name](self.model_fn(xi), y)
            self.test_metrics[f"{name}_reversed"](self.model_fn(self.reverse(xi)), y)
        for k, m in self.test_metrics.items():
            self.log(f"test/{k}_acc", m)

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        """Attack (``inference.predict_attack``) then reverse; predictions before/after and the images."""
        self._need_grad_mode()
        x, y, idx = batch[0], batch[1], batch[2]
        check_pixels(x, "predict input")
        x = self._prep(x)
        x_in = self.attack(x, y) if self.inference_cfg.predict_attack == "pgd" else x
        x_rev = self.reverse(x_in)
        with torch.no_grad():
            preds = {k: self.model_fn(v).argmax(1) for k, v in (("clean", x), ("before", x_in), ("after", x_rev))}
        return {"idx": idx, "y": y, **{f"pred_{k}": v for k, v in preds.items()}, "x_input": x_in, "x_reversed": x_rev}
