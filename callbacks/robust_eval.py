"""The robustness evaluation during ``lightning test`` (:mod:`lightning_modules.evaluation`).

On each test batch, :class:`RobustEvaluation` runs :class:`~lightning_modules.evaluation.RobustEvaluator`
on the model's classifier and reversal and saves this rank's per-example results to
``output_dir/per_example.rank<r>.json`` after **every row** (atomically). A SIGTERM (as a cluster
sends before preemption) stops the evaluation before the next row, with everything done so far
saved. At the end of the test epoch rank 0 merges the ranks' results by data-set index into
``output_dir/per_example.json`` and writes the report (``robustness.json``, ``robustness.md``,
plots, ``reversal_grid.png``) to ``output_dir`` and the run's log dir, prints it, and logs the
table, the metrics, whether the headline is reliable and the grid to W&B.

A later run with the same ``output_dir`` resumes only if every setting that can change a result is
the same (weights, reversal, evaluation settings, data, eval batch size, world size, versions);
otherwise it stops with an error naming the settings that differ (``resume: false`` starts over).

Example (config; ``experiments/cifar10/eval.yaml`` holds the full list)::

    trainer:
      callbacks+:
        - class_path: callbacks.RobustEvaluation
          init_args:
            output_dir: results/eval/cifar10
            config: {threat_models: {Linf: 8/255}, attacks: [pgd, apgd_ce_bpda], scoring: {draws: 5}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info

from lightning_modules.attacks.core import frozen_params, logits_of, pgd
from lightning_modules.defense import DefendedModel
from lightning_modules.evaluation import EvalConfig, ResultStore, RobustEvaluator
from lightning_modules.evaluation.registry import validate
from lightning_modules.evaluation.report import flat_metrics
from lightning_modules.util import module_inputs

from .images import reversal_grid
from .run_records import model_fingerprint, publish, run_meta

STORE = "per_example.json"


def load_surrogate(path: str, pl_module: pl.LightningModule) -> tuple[torch.nn.Module, str]:
    """The transfer attack's surrogate (in eval mode) and its classifier's fingerprint; it must not hold
    the evaluated model's own weights."""
    from lightning_modules import ReversalModule

    try:
        sur = ReversalModule.load_from_checkpoint(path, map_location=pl_module.device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read it is the file's problem
        raise ValueError(f"transfer_from: cannot load {path} as a model of this package ({e})") from e
    sha = model_fingerprint(sur.classifier)
    if sha == model_fingerprint(pl_module.classifier):
        raise ValueError(
            f"transfer_from: {path} holds the evaluated model's own weights; a transfer "
            "attack needs an independently trained surrogate"
        )
    return sur.eval(), sha


class RobustEvaluation(pl.Callback):
    """Robust accuracy without and with the reversal, attacks on the whole defense, sanity checks.

    The reversal is the model's (``model.init_args.reversal``: a config file's or a flag's settings win
    over a checkpoint's).

    Args:
        config: what runs (:class:`~lightning_modules.evaluation.EvalConfig`); ``checks: {standard_model: null}``
            means true for a model trained with ``training: standard`` on its own backbone.
        output_dir: where the per-example store and the report go (also copied to the run's log dir).
        resume: reuse results stored in ``output_dir`` by an earlier run of the same evaluation.
        transfer_from: a checkpoint of an independently trained model: the transfer attack's surrogate
            (loaded with ``weights_only=True``). Without one the transfer row is absent, and the report says why.
        n_images: images in the clean / attacked / reversed grid.
        print_report: print the Markdown report at the end.
        dataloader_idx: the test loader to evaluate.
    """

    replaces_test_attacks = True  # ReversalModule.test_step then only logs clean accuracy

    def __init__(
        self,
        config: Optional[EvalConfig] = None,
        output_dir: str = "results/eval",
        resume: bool = True,
        transfer_from: Optional[str] = None,
        n_images: int = 16,
        print_report: bool = True,
        dataloader_idx: int = 0,
    ) -> None:
        self.config = validate(config or EvalConfig())
        self.output_dir, self.resume = Path(output_dir), resume
        self.transfer_from = transfer_from
        if transfer_from is not None and not Path(transfer_from).is_file():
            raise FileNotFoundError(f"transfer_from: no checkpoint at {transfer_from}")
        self.n_images, self.print_report, self.dataloader_idx = n_images, print_report, dataloader_idx
        self.evaluator: Optional[RobustEvaluator] = None
        self.summary: Optional[dict] = None
        self.paths: dict[str, Path] = {}
        self._grid_batch: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    # -- setup ----------------------------------------------------------------------------------
    def _config(self, pl_module: pl.LightningModule) -> EvalConfig:
        if self.config.checks.standard_model is not None:
            return self.config
        h, attack = getattr(pl_module, "hparams", {}), getattr(pl_module, "attack_cfg", None)
        standard = (
            attack is not None
            and attack.mode == "standard"
            and not attack.noise_std
            and not h.get("robustbench_model")
            and not h.get("freeze_backbone")
        )
        return self.config.replace("checks.standard_model", bool(standard))

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for attr in ("classifier", "head", "reversal_cfg"):
            if not hasattr(pl_module, attr):
                raise TypeError(
                    f"RobustEvaluation needs a model with .classifier, .head and .reversal_cfg "
                    f"(a ReversalModule); {type(pl_module).__name__} has no .{attr}"
                )
        cfg = self._config(pl_module)
        surrogate, sha = (None, None) if self.transfer_from is None else load_surrogate(self.transfer_from, pl_module)
        sur_fn = (lambda x: logits_of(surrogate.classifier, x)) if surrogate is not None else None
        defended = DefendedModel.from_module(pl_module, surrogate_fn=sur_fn)
        meta = run_meta(trainer, pl_module, defended, cfg, sha, self.dataloader_idx)
        store = ResultStore(meta)
        if self.resume:
            for f in sorted(self.output_dir.glob("per_example*.json")):
                store.merge(ResultStore.load(f, meta), str(f))
        else:  # start over: stale results must not be merged at the end
            if trainer.is_global_zero:
                for f in self.output_dir.glob("per_example*.json"):
                    f.unlink()
            trainer.strategy.barrier("robust_eval_fresh")
        n_batches = None
        try:
            n_batches = int(trainer.num_test_batches[self.dataloader_idx])
        except (AttributeError, IndexError, TypeError, ValueError, OverflowError):
            pass
        part = self.output_dir / f"per_example.rank{trainer.global_rank}.json"
        self.evaluator = RobustEvaluator(
            defended,
            cfg,
            store=store,
            should_stop=lambda: bool(getattr(trainer, "received_sigterm", False)),
            on_row_done=lambda: store.save(part),
            n_batches=n_batches,
            log=(lambda s: rank_zero_info(s)) if cfg.progress else (lambda s: None),
        )
        self._surrogate_module = surrogate
        self._grid_batch, self.summary = None, None
        self._checkpoint = trainer.ckpt_path

    # -- per batch ------------------------------------------------------------------------------
    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if dataloader_idx != self.dataloader_idx or self.evaluator is None:
            return
        if len(batch) < 3:
            raise ValueError(
                "RobustEvaluation needs batches (x, y, idx) with data-set indices (the DataModules "
                "of this package provide them) to key per-example results"
            )
        if len(batch[0]) < 2:
            raise ValueError(
                f"test batch {batch_idx} holds a single image: the reversal needs at least 2 (InfoNCE "
                "needs negatives); choose data.n_examples / eval_batch_size so that no batch has 1 image"
            )
        with torch.inference_mode(False), torch.enable_grad():
            x = batch[0].clone()
            y, idx = batch[1].clone(), batch[2].clone().cpu()
            x = module_inputs(pl_module, x)
            if batch_idx == 0 and trainer.is_global_zero and self.n_images >= 2:
                self._grid_batch = (x[: self.n_images].detach(), y[: self.n_images].detach())
            was = pl_module.training
            pl_module.eval()
            try:
                with frozen_params(pl_module, self._surrogate_module):
                    self.evaluator.evaluate_batch(x, y, idx, batch_idx)
            finally:
                pl_module.train(was)

    # -- end ------------------------------------------------------------------------------------
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.evaluator is None:
            return
        ev = self.evaluator
        ev.store.save(self.output_dir / f"per_example.rank{trainer.global_rank}.json")
        trainer.strategy.barrier("robust_eval_parts")
        summary = None
        if trainer.is_global_zero:
            for f in sorted(self.output_dir.glob("per_example.rank*.json")):
                ev.store.merge(ResultStore.load(f, ev.store.meta), str(f))
            ev.store.save(self.output_dir / STORE)
            for f in self.output_dir.glob("per_example.rank*.json"):
                f.unlink(missing_ok=True)
            summary = ev.summary()
            summary["meta"]["checkpoint"] = str(self._checkpoint) if self._checkpoint else None
            self.paths = publish(trainer, summary, self.output_dir, lambda: self._grid(pl_module), self.print_report)
        summary = trainer.strategy.broadcast(summary, src=0)
        self.summary = summary
        for k, v in flat_metrics(summary).items():
            pl_module.log(k, v, sync_dist=False)

    def _grid(self, pl_module: pl.LightningModule) -> Optional[torch.Tensor]:
        """Clean / PGD (first threat model, on the classifier) / reversed, and the differences."""
        ev = self.evaluator
        if self._grid_batch is None or ev is None or not ev.defense.has("reverse"):
            return None
        x, y = self._grid_batch
        norm, eps = ev.cfg.main
        was = pl_module.training
        pl_module.eval()
        try:
            with torch.inference_mode(False), torch.enable_grad(), frozen_params(pl_module):
                torch.manual_seed(ev.cfg.scoring.seed)
                x_adv = pgd(ev.defense.model_fn, x, y, eps, ev.cfg.attack.step_size * eps, ev.cfg.attack.steps, norm)
                x_rev = ev.defense.reverse(x_adv)
        finally:
            pl_module.train(was)
        return reversal_grid(x, x_adv, x_rev)
