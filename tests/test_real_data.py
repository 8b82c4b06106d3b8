"""Learning on the real CIFAR-10 pack (JPEG re-encoded): a small joint model beats chance widely."""

import lightning.pytorch as pl
import torch

from datamodules import CIFAR10DataModule
from lightning_modules import ReversalModule


def test_small_joint_model_learns_real_cifar10(real_cifar10):
    pl.seed_everything(0)
    dm = CIFAR10DataModule(str(real_cifar10), batch_size=128, eval_batch_size=500, n_examples=1000, train_subset=4000)
    model = ReversalModule(
        backbone="small_cnn",
        backbone_kwargs={"width": 16},
        ssl=dict(weight=0.2, n_views=2),
        optim=dict(lr=0.05, schedule="onecycle"),
        inference=dict(val_attack_steps=0),
    )
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, dm)
    acc = float(trainer.callback_metrics["val/acc"])
    ssl = float(trainer.callback_metrics["val/loss_ssl"])
    print(f"real CIFAR-10, 4000 train images, 3 epochs: test accuracy (first 1000) {acc:.3f}, val InfoNCE {ssl:.3f}")
    assert acc > 0.30, acc  # chance is 0.10
    assert ssl < torch.log(torch.tensor(2 * 500 - 1.0)).item()  # below the loss of uninformative embeddings
