"""AccuracyCheck against a manual loop with the same seed; its line; its refusal of bad settings."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from callbacks.accuracy_check import AccuracyCheck, accuracy_line
from datamodules.device_loader import DeviceLoader
from lightning_modules import ReversalModule


def _model() -> ReversalModule:
    torch.manual_seed(0)
    return ReversalModule(backbone="small_cnn", backbone_kwargs={"width": 4}, head_hidden=16, head_dim=8)


def test_counts_equal_a_manual_loop_with_the_same_seed(capsys, one_thread):
    torch.manual_seed(1)
    x, y = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (20,))
    loader = DeviceLoader(x, y, batch_size=8)
    m, cb = _model(), AccuracyCheck(steps=3, eps=16 / 255)
    trainer = pl.Trainer(
        callbacks=[cb],
        logger=False,
        enable_progress_bar=False,
        inference_mode=False,
        accelerator="cpu",
        devices=1,
        enable_model_summary=False,
    )
    torch.manual_seed(5)
    trainer.test(m, dataloaders=loader, verbose=False)
    torch.manual_seed(5)
    clean = robust = 0
    m.eval()
    for xb, yb, _ in loader:
        xp = m._prep(xb)
        x_adv = m.attack(xp, yb, steps=3, eps=16 / 255)
        with torch.no_grad():
            clean += int((m.model_fn(xp).argmax(1) == yb).sum())
            robust += int((m.model_fn(x_adv).argmax(1) == yb).sum())
    line = accuracy_line(clean, robust, 20, 3, 16 / 255)
    assert cb.line == line and line in capsys.readouterr().out
    assert robust <= clean
    assert trainer.callback_metrics["test/pgd3_acc"].item() == pytest.approx(robust / 20)


def test_line_and_bad_settings():
    assert accuracy_line(1, 0, 3, 20, 8 / 255) == (
        "accuracy on 3 test images: clean 33.3% [6.1-79.2], PGD-20 (L-inf 8/255) 0.0% [0.0-56.1] (Wilson 95%)"
    )
    with pytest.raises(ValueError, match="steps must be >= 1"):
        AccuracyCheck(steps=0)
