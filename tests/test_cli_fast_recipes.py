"""The fast recipes parse and train through the CLI (tiny model, CPU, their own bf16 setting)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from callbacks import DeviceEMA
from lightning_modules.cli import run_cli
from lightning_modules.views.fast import FastSimCLRViews

CONFIGS = Path(__file__).resolve().parent.parent / "experiments" / "cifar10"


@pytest.mark.parametrize("config,training", [("fast_recipe.yaml", "pgd"), ("fast_trades.yaml", "trades")])
def test_fast_recipe_trains_a_few_steps(tiny_cifar10, tmp_path, config, training):
    cli = run_cli(
        [
            "fit",
            "--config",
            str(CONFIGS / config),
            "--data.init_args.data_dir",
            str(tiny_cifar10),
            "--data.init_args.strict_counts",
            "false",
            "--data.init_args.batch_size",
            "16",
            "--data.init_args.eval_batch_size",
            "16",
            "--data.init_args.n_examples",
            "16",
            "--model.init_args.backbone",
            "small_cnn",
            "--model.init_args.backbone_kwargs",
            "{width: 4}",
            "--model.init_args.attack.steps",
            "2",
            "--model.init_args.inference.val_attack_steps",
            "1",
            "--model.init_args.reversal",
            "{steps: 1, n_views: 2, views: fast}",
            "--trainer.max_steps",
            "3",
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.check_val_every_n_epoch",
            "1",
            "--trainer.accelerator",
            "cpu",
            "--trainer.default_root_dir",
            str(tmp_path / "logs"),
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "logs"),
        ]
    )
    m, trainer = cli.model, cli.trainer
    assert m.attack_cfg.mode == training and m.speed_cfg.attack_amp and m.speed_cfg.channels_last
    assert isinstance(m.views, FastSimCLRViews) and m.reversal_cfg.views == "fast"
    assert trainer.precision == "bf16-mixed" and trainer.global_step == 3
    assert any(isinstance(c, DeviceEMA) for c in trainer.callbacks)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
