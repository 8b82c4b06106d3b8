"""The command line: ``lightning fit|validate|test|predict --config experiments/...yaml``.

A LightningCLI over every LightningModule and DataModule of the package. The base trainer
settings (``experiments/base.yaml``: W&B offline logging, checkpoints, ``inference_mode: false``)
load first when the file is there, so an experiment file holds only what differs. Logging falls
back to CSV when W&B is disabled (``WANDB_MODE=disabled``).

Safety and resuming:

- checkpoints given with ``--ckpt_path`` load with ``weights_only=True`` (no pickle can run
  code); a file that needs more fails with :class:`UnsafeCheckpointError` naming it. Pass
  ``--weights_only false`` only for files you trust.
- checkpoints of an experiment go to ``<trainer.default_root_dir>/checkpoints/<experiment>/``
  (``<experiment>`` is the first ``--config`` file's path under ``experiments/`` without
  ``.yaml``, e.g. ``cifar10/pgd_at``; ``default`` without one) unless the checkpoint callback sets
  ``dirpath``; so ``--ckpt_path last`` after a crash resumes that experiment's newest ``last.ckpt``.
"""
from __future__ import annotations

import os
import pickle
import sys
import warnings
from pathlib import Path
from typing import Optional

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI

REPO = Path(__file__).resolve().parent.parent
BASE_CONFIG = REPO / "experiments" / "base.yaml"
CHECKPOINT_CALLBACKS = ("AtomicCheckpoint", "ModelCheckpoint")


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint holds pickled objects beyond tensors and plain containers (loading it could run code)."""


def _unsafe_message(path: object, err: BaseException) -> str:
    detail = next((ln.strip() for ln in str(err).splitlines() if "Unsupported global" in ln), str(err).splitlines()[0])
    return (f"refusing to load checkpoint {path}: it holds objects other than tensors and plain containers "
            f"({detail}); loading it with weights_only=False could run code. If you trust its source, pass "
            "--weights_only false.")


def experiment_name(config_files: Optional[list]) -> str:
    """``cifar10/pgd_at`` for ``experiments/cifar10/pgd_at.yaml`` (the first ``--config`` other than
    the base file), the file stem for files elsewhere, ``default`` without one."""
    for f in config_files or []:
        path = Path(os.fspath(f) if hasattr(f, "__fspath__") else str(f)).resolve()
        if path == BASE_CONFIG.resolve():
            continue
        try:
            return str(path.relative_to((REPO / "experiments").resolve()).with_suffix(""))
        except ValueError:
            return path.stem
    return "default"


class ReversalCLI(LightningCLI):
    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the hyperparameters of a --ckpt_path file (always weights_only=True)
        try:
            super()._parse_ckpt_path()
        except pickle.UnpicklingError as e:
            sub = self.config.get("subcommand")
            cfg = self.config[sub] if sub else self.config
            if cfg.get("weights_only") is False:  # trusted by the user: let the Trainer load it in full
                warnings.warn(f"{cfg.get('ckpt_path')}: hyperparameters not read ({e.__class__.__name__}); "
                              "using the configured model")
                return
            raise UnsafeCheckpointError(_unsafe_message(cfg.get("ckpt_path"), e)) from None

    def parse_arguments(self, parser, args) -> None:
        """Parse; a setting of the evaluation's earlier flat layout gets a line saying where it lives now."""
        from lightning_modules.evaluation.config import legacy_hint

        subs = getattr(getattr(parser, "_subcommands_action", None), "_name_parser_map", {}) or {}
        for p in [parser, *subs.values()]:
            def error(message: str, *a, _orig=p.error, **k):
                hint = legacy_hint(str(message))
                return _orig(f"{message}\n{hint}" if hint else message, *a, **k)

            p.error = error
        super().parse_arguments(parser, args)

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except pickle.UnpicklingError as e:
            path = getattr(self.trainer, "ckpt_path", None) or self.config[subcommand].get("ckpt_path")
            raise UnsafeCheckpointError(_unsafe_message(path, e)) from None

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand and cfg.get("weights_only") is None:
            cfg.weights_only = True  # safe default for --ckpt_path (Lightning leaves it to torch)
        self._fixed_checkpoint_dirs(cfg)
        if os.environ.get("WANDB_MODE", "").lower() == "disabled":
            logger = cfg.trainer.get("logger")
            items = logger if isinstance(logger, list) else [logger]
            for item in items:
                if getattr(item, "class_path", "").endswith("WandbLogger"):
                    save_dir = item.init_args.get("save_dir", "logs")
                    item.class_path = "lightning.pytorch.loggers.CSVLogger"
                    item.init_args = type(item.init_args)(save_dir=save_dir, name=item.init_args.get("name") or "csv")

    @staticmethod
    def _fixed_checkpoint_dirs(cfg) -> None:
        """Give checkpoint callbacks without ``dirpath`` the experiment's own folder (see module doc)."""
        trainer = cfg.get("trainer")
        callbacks = trainer.get("callbacks") if trainer is not None else None
        if not callbacks:
            return
        root = Path(trainer.get("default_root_dir") or ".")
        folder = root / "checkpoints" / experiment_name(cfg.get("config"))
        for item in callbacks if isinstance(callbacks, list) else [callbacks]:
            if not str(getattr(item, "class_path", "")).endswith(CHECKPOINT_CALLBACKS):
                continue
            if item.get("init_args") is None:
                continue
            if item.init_args.get("dirpath") is None:
                item.init_args.dirpath = str(folder)


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
