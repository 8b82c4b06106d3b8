"""The command line: ``lightning fit|validate|test|predict --config experiments/...yaml``.

A LightningCLI over every LightningModule and DataModule of the package. The base trainer settings
(``lightning_modules/base.yaml``, package data: W&B offline logging, checkpoints, progress,
``inference_mode: false``) load first, so an experiment file holds only what differs; a missing base file
is an error. Logging falls back to CSV when W&B is disabled (``WANDB_MODE=disabled``).

- ``--ckpt_path`` files load with ``weights_only=True`` (no pickle can run code); one that needs more fails
  with :class:`UnsafeCheckpointError`. Pass ``--weights_only false`` only for files you trust.
- an experiment's checkpoints go to ``<trainer.default_root_dir>/checkpoints/<experiment>/`` (the first
  ``--config`` file's path under ``experiments/`` without ``.yaml``, e.g. ``cifar10/pgd_at``; ``default``
  without one) unless the callback sets ``dirpath``, so ``--ckpt_path last`` / ``auto`` find its ``last.ckpt``.
- with ``--ckpt_path`` the model is rebuilt from the checkpoint's hyperparameters, the command line's
  settings put back over them where they can be (:mod:`.cli_checks`).
- ``validate`` / ``test`` / ``predict`` refuse to run without ``--ckpt_path`` unless ``--allow_untrained
  true``; ``predict`` replaces a predictions file only with ``--overwrite true``. Each run's config goes to
  its own folders (:class:`RunConfig`); an error ends the output with one line ``error: TYPE: MESSAGE``.
"""

from __future__ import annotations

import copy
import os
import pickle
import sys
import warnings
from pathlib import Path
from typing import Optional

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from . import cli_checks as checks
from .parse_errors import one_line
from .util import atomic_write_text

BASE_CONFIG = Path(__file__).resolve().with_name("base.yaml")  # package data: found in any install
CHECKPOINT_CALLBACKS = ("AtomicCheckpoint", "ModelCheckpoint")


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint holds pickled objects beyond tensors and plain containers (loading it could run code)."""


def _unsafe_message(path: object, err: BaseException) -> str:
    detail = next((ln.strip() for ln in str(err).splitlines() if "Unsupported global" in ln), str(err).splitlines()[0])
    return (
        f"refusing to load checkpoint {path}: it holds objects other than tensors and plain containers "
        f"({detail}); loading it with weights_only=False could run code. If you trust its source, pass "
        "--weights_only false."
    )


def experiment_name(config_files: Optional[list]) -> str:
    """``cifar10/pgd_at`` for ``experiments/cifar10/pgd_at.yaml`` (the first ``--config`` other than
    the base file), the file stem for files elsewhere, ``default`` without one."""
    for f in config_files or []:
        path = Path(os.fspath(f) if hasattr(f, "__fspath__") else str(f)).resolve()
        if path == BASE_CONFIG.resolve():
            continue
        if "experiments" in path.parts[:-1]:  # the repository's tree, wherever the package is installed
            i = len(path.parts) - 1 - path.parts[::-1].index("experiments")
            return str(Path(*path.parts[i + 1 :]).with_suffix(""))
        return path.stem
    return "default"


class RunConfig(SaveConfigCallback):
    """Saves the run's full config (after the checkpoint's settings were merged) where the run's own
    outputs are, never in a folder that later runs share: the logger's run folder (CSV / TensorBoard
    version folder, W&B run's ``files/``), and, through the callbacks' ``run_config``, beside the
    checkpoints a fit writes and the predictions a predict writes."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        text = self.parser.dump(self.config, skip_none=False)
        for cb in trainer.callbacks:
            if hasattr(cb, "run_config"):
                cb.run_config = text
        folder = run_log_dir(trainer) if trainer.is_global_zero else None
        if folder is not None:
            atomic_write_text(Path(folder) / self.config_filename, text)
        self.already_saved = True


def run_log_dir(trainer: pl.Trainer) -> Optional[str]:
    """The first logger's per-run folder (``None`` without a logger or for loggers without one)."""
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger":
            return getattr(logger.experiment, "dir", None)
        if getattr(logger, "log_dir", None):
            return logger.log_dir
    return None


def checkpoint_callbacks(cfg) -> tuple[list, Path]:
    """The configured checkpoint callbacks and the experiment's checkpoint folder (see module doc)."""
    trainer = cfg.get("trainer")
    callbacks = (trainer.get("callbacks") if trainer is not None else None) or []
    root = Path((trainer.get("default_root_dir") if trainer is not None else None) or ".")
    items = callbacks if isinstance(callbacks, list) else [callbacks]
    found = [c for c in items if str(getattr(c, "class_path", "")).endswith(CHECKPOINT_CALLBACKS)]
    return found, root / "checkpoints" / experiment_name(cfg.get("config"))


def checkpoint_folders(cfg) -> list[Path]:
    """The folders of the configured checkpoint callbacks (their ``dirpath``, else the experiment's)."""
    items, folder = checkpoint_callbacks(cfg)
    dirpaths = [(c.get("init_args") or {}).get("dirpath") for c in items]
    return [Path(d) if d else folder for d in dirpaths]


class ReversalCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        for flag, text in (
            ("--allow_untrained", "let validate / test / predict run without --ckpt_path (untrained weights)"),
            ("--overwrite", "let predict replace an existing predictions file or reversal picture"),
        ):
            parser.add_argument(flag, type=bool, default=False, help=text)

    def parse_arguments(self, parser, args) -> None:
        """Parse, remembering the command line; a parser error names its setting in one line (:func:`one_line`)."""
        self._argv = list(args) if isinstance(args, (list, tuple)) else (sys.argv[1:] if args is None else [])
        subs = getattr(getattr(parser, "_subcommands_action", None), "_name_parser_map", {}) or {}
        for p in [parser, *subs.values()]:
            p.error = lambda message, *a, _orig=p.error, **k: _orig(one_line(message, self._argv) or message, *a, **k)
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Resolve ``--ckpt_path`` (see :mod:`lightning_modules.cli_checks`), refuse untrained
        evaluations, rebuild the model from the checkpoint's hyperparameters (as LightningCLI does)
        and put the settings given on the command line back over them."""
        sub = self.config.get("subcommand")
        if not sub:
            return
        cfg = self.config[sub]
        path = cfg.ckpt_path = checks.resolve_ckpt_path(cfg.get("ckpt_path"), checkpoint_folders(cfg))
        if sub != "fit" and not path and not cfg.get("allow_untrained"):
            raise checks.untrained_error(sub, checkpoint_folders(cfg))
        if not path or not Path(path).is_file():
            return
        try:
            ckpt = checks.read_checkpoint(path)
            checks.not_lightning_checkpoint(path, ckpt)
            hparams = dict(ckpt.get("hyper_parameters") or {})
        except pickle.UnpicklingError as e:
            if cfg.get("weights_only") is False:  # trusted by the user: let the Trainer load it in full
                warnings.warn(f"{path}: hyperparameters not read ({e.__class__.__name__}); using the configured model")
                return
            raise UnsafeCheckpointError(_unsafe_message(path, e)) from None
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        model = cfg.get("model")
        pre = copy.deepcopy(model.get("init_args")) if model is not None else None
        merged = dict(hparams)
        if "_class_path" in merged:
            merged = {"class_path": merged.pop("_class_path"), "dict_kwargs": merged}
        try:
            self.config = self.parser.parse_object({sub: {"model": merged}}, self.config)
        except SystemExit:
            sys.stderr.write(f"error: the hyperparameters of checkpoint {path} do not parse (see above)\n")
            raise
        init_args = self.config[sub].model.get("init_args")
        given = checks.given_model_flags(self._argv)
        for name, value in checks.reconcile(sub, path, hparams, given, pre, init_args).items():
            init_args[name] = value

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
        items, folder = checkpoint_callbacks(cfg)  # without dirpath: the experiment's own folder
        for item in items:
            if item.get("init_args") is not None and item.init_args.get("dirpath") is None:
                item.init_args.dirpath = str(folder)
        if os.environ.get("WANDB_MODE", "").lower() == "disabled":
            logger = cfg.trainer.get("logger")
            for item in logger if isinstance(logger, list) else [logger]:
                if getattr(item, "class_path", "").endswith("WandbLogger"):
                    save_dir = item.init_args.get("save_dir", "logs")
                    item.class_path = "lightning.pytorch.loggers.CSVLogger"
                    item.init_args = type(item.init_args)(save_dir=save_dir, name=item.init_args.get("name") or "csv")

    def after_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        if cfg.get("overwrite"):
            for cb in getattr(self.trainer, "callbacks", []):
                if hasattr(cb, "overwrite"):
                    cb.overwrite = True


def run_cli(args: Optional[list[str]] = None, run: bool = True) -> ReversalCLI:
    """Build (and with ``run``, execute) the CLI; returns it (tests read ``cli.trainer``, ``cli.model``)."""
    import callbacks  # noqa: F401
    import datamodules  # noqa: F401  (registers the DataModules for class_path lookup)

    from .methods import advcl, ascl, module  # noqa: F401  (the methods, so short class names and --model.help find them)

    use_base = os.environ.get("SSL_REVERSAL_NO_BASE") != "1"
    if use_base and not BASE_CONFIG.is_file():  # without it attacks fail (inference_mode) and nothing is saved
        raise FileNotFoundError(f"the package's base config {BASE_CONFIG} is missing: reinstall ssl-reversal")
    defaults = [str(BASE_CONFIG)] if use_base else []
    kw = dict(subclass_mode_model=True, subclass_mode_data=True, auto_configure_optimizers=False, args=args, run=run)
    kw["parser_kwargs"] = {sub: {"default_config_files": defaults} for sub in ("fit", "validate", "test", "predict")}
    kw.update(save_config_callback=RunConfig, save_config_kwargs={"overwrite": True})
    return ReversalCLI(pl.LightningModule, pl.LightningDataModule, **kw)


def main(args: Optional[list[str]] = None) -> None:
    """Console-script entry point (``lightning``, ``ssl-reversal``): errors end as the module doc says, status 1."""
    try:
        run_cli(args)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001
        checks.report_error(e)
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
