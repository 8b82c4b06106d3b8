"""The command line: ``lightning fit|validate|test|predict --config experiments/...yaml``.

A LightningCLI over every LightningModule and DataModule of the package. The base trainer
settings (``experiments/base.yaml``: W&B offline logging, checkpoints, ``inference_mode: false``)
load first when the file is there, so an experiment file holds only what differs. Logging falls
back to CSV when W&B is disabled (``WANDB_MODE=disabled``).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI

REPO = Path(__file__).resolve().parent.parent
BASE_CONFIG = REPO / "experiments" / "base.yaml"


class ReversalCLI(LightningCLI):
    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        if os.environ.get("WANDB_MODE", "").lower() == "disabled":
            logger = cfg.trainer.get("logger")
            items = logger if isinstance(logger, list) else [logger]
            for item in items:
                if getattr(item, "class_path", "").endswith("WandbLogger"):
                    save_dir = item.init_args.get("save_dir", "logs")
                    item.class_path = "lightning.pytorch.loggers.CSVLogger"
                    item.init_args = type(item.init_args)(save_dir=save_dir, name=item.init_args.get("name") or "csv")


def run_cli(args: Optional[list[str]] = None, run: bool = True) -> ReversalCLI:
    """Build (and with ``run``, execute) the CLI; returns it (tests read ``cli.trainer``, ``cli.model``)."""
    import callbacks  # noqa: F401
    import datamodules  # noqa: F401  (registers the DataModules for class_path lookup)
    import lightning_modules  # noqa: F401

    defaults = [str(BASE_CONFIG)] if BASE_CONFIG.is_file() and os.environ.get("SSL_REVERSAL_NO_BASE") != "1" else []
    return ReversalCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={sub: {"default_config_files": defaults} for sub in ("fit", "validate", "test", "predict")},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def main(args: Optional[list[str]] = None) -> None:
    """Console-script entry point (``lightning`` and ``ssl-reversal``)."""
    run_cli(args)


if __name__ == "__main__":
    main(sys.argv[1:])
