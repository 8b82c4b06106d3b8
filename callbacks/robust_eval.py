"""The full robustness evaluation during ``lightning test``: every attack, with and without the
reversal, adaptive attacks, sweeps and sanity checks (:mod:`lightning_modules.evaluation`).

On each test batch, :class:`RobustEvaluation` runs :class:`~lightning_modules.evaluation.RobustEvaluator`
on the model's classifier and reversal (``pl_module.classifier``, ``.head``, ``.reversal_cfg``,
``.hparams.temperature``) and saves the per-example results of this rank to
``output_dir/per_example.rank<r>.json`` (atomically, after every batch). At the end of the test
epoch rank 0 merges every rank's results by data-set index into ``output_dir/per_example.json``
and writes the report (:mod:`lightning_modules.report`: ``robustness.json``, ``robustness.md``,
plots, ``reversal_grid.png``) to ``output_dir`` and to the run's log dir, prints the Markdown
report, and logs the table and the metrics to W&B when the logger is W&B.

A later run with the same ``output_dir`` resumes: the results already stored for a batch (same
weights, reversal, data and row settings) are not recomputed; a store written for other weights
is refused with an error naming the file (``resume: false`` starts over).

Example (config; ``experiments/cifar10/eval.yaml`` holds the full list)::

    trainer:
      callbacks+:
        - class_path: callbacks.RobustEvaluation
          init_args: {output_dir: results/eval/cifar10, threat_models: {Linf: 8/255, L2: 0.5}}
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Optional, Union

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info

from lightning_modules.adaptive import ReversalFns
from lightning_modules.attacks import pgd
from lightning_modules.autoattack import frozen_params
from lightning_modules.evaluation import EvalConfig, ResultStore, RobustEvaluator
from lightning_modules.report import failed_checks, flat_metrics, markdown_report, write_report

from .images import reversal_grid

STORE = "per_example.json"


def model_fingerprint(module: torch.nn.Module) -> str:
    """SHA-1 of every tensor of the state dict (names, shapes, bytes): identifies the weights."""
    h = hashlib.sha1()
    for k, v in sorted(module.state_dict().items()):
        if not torch.is_tensor(v):
            continue
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if v.numel() else b"")
    return h.hexdigest()


class RobustEvaluation(pl.Callback):
    """Robust accuracy without and with the reversal, adaptive attacks and sanity checks at test time.

    Args:
        output_dir: where the per-example store and the report go (also copied to the run's log dir).
        resume: reuse results stored in ``output_dir`` by an earlier run on the same weights.
        reversal: overrides of the model's reversal settings (``{steps: 20}``...; the model's own
            settings come from the checkpoint, so change them here).
        n_images: images in the clean / attacked / reversed grid.
        print_report: print the Markdown report at the end.
        dataloader_idx: the test loader to evaluate.
        threat_models ... seed: see :class:`~lightning_modules.evaluation.EvalConfig` (None keeps its
            default). ``standard_model`` defaults to true for a model trained with
            ``training: standard`` (not a RobustBench or frozen backbone).
    """

    replaces_test_attacks = True  # ReversalModule.test_step then only logs clean accuracy

    def __init__(
        self,
        output_dir: str = "results/eval",
        resume: bool = True,
        reversal: Optional[dict[str, Any]] = None,
        n_images: int = 16,
        print_report: bool = True,
        dataloader_idx: int = 0,
        threat_models: Optional[dict[str, Union[float, str]]] = None,
        attacks: Optional[list[str]] = None,
        adaptive: Optional[list[str]] = None,
        steps: Optional[int] = None,
        restarts: Optional[int] = None,
        step_size: Optional[float] = None,
        apgd_steps: Optional[int] = None,
        adaptive_steps: Optional[int] = None,
        eot_samples: Optional[int] = None,
        defense_aware_lambda: Optional[float] = None,
        full_gradient_steps: Optional[int] = None,
        full_gradient_smooth: Optional[float] = None,
        full_gradient_checkpoint: Optional[bool] = None,
        full_gradient_batch: Optional[int] = None,
        transfer_steps: Optional[int] = None,
        eps_sweep: Optional[list[Union[float, str]]] = None,
        eps_sweep_norm: Optional[str] = None,
        eps_sweep_attacks: Optional[list[str]] = None,
        eps_sweep_n: Optional[int] = None,
        attack_steps_sweep: Optional[list[int]] = None,
        steps_sweep_attacks: Optional[list[str]] = None,
        reversal_steps_sweep: Optional[list[int]] = None,
        reversal_sweep_attacks: Optional[list[str]] = None,
        steps_sweep_n: Optional[int] = None,
        sanity_checks: Optional[bool] = None,
        standard_model: Optional[bool] = None,
        zero_tolerance: Optional[float] = None,
        noise_tolerance: Optional[float] = None,
        seed: Optional[int] = None,
    ) -> None:
        args = dict(locals())
        fields = {f.name for f in dataclasses.fields(EvalConfig)}
        self._cfg_kwargs = {k: v for k, v in args.items() if k in fields and v is not None}
        self._standard_given = standard_model is not None
        EvalConfig(**self._cfg_kwargs)  # fail at construction on bad settings
        self.output_dir, self.resume, self.reversal = Path(output_dir), resume, dict(reversal or {})
        self.n_images, self.print_report, self.dataloader_idx = n_images, print_report, dataloader_idx
        self.evaluator: Optional[RobustEvaluator] = None
        self.summary: Optional[dict] = None
        self.paths: dict[str, Path] = {}
        self._grid_batch: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    # -- setup ----------------------------------------------------------------------------------
    def _config(self, pl_module: pl.LightningModule) -> EvalConfig:
        kw = dict(self._cfg_kwargs)
        if not self._standard_given:
            h = getattr(pl_module, "hparams", {})
            kw["standard_model"] = (h.get("training") == "standard" and not h.get("robustbench_model")
                                    and not h.get("freeze_backbone") and not h.get("noise_std"))
        return EvalConfig(**kw)

    def _meta(self, trainer: pl.Trainer, pl_module: pl.LightningModule, fns: ReversalFns, cfg: EvalConfig) -> dict:
        dm = getattr(trainer, "datamodule", None)
        return json.loads(json.dumps({
            "model": type(pl_module).__name__ + (f" ({pl_module.hparams.get('robustbench_model')})"
                                                  if pl_module.hparams.get("robustbench_model") else
                                                  f" ({pl_module.hparams.get('backbone')})"),
            "weights_sha1": model_fingerprint(pl_module),
            "reversal": dataclasses.asdict(fns.cfg), "temperature": fns.temperature,
            "data": {"class": type(dm).__name__ if dm is not None else None,
                     "data_dir": str(getattr(dm, "data_dir", "")), "dataloader_idx": self.dataloader_idx},
            "seed": cfg.seed,
        }, default=str))

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for attr in ("classifier", "head", "reversal_cfg"):
            if not hasattr(pl_module, attr):
                raise TypeError(f"RobustEvaluation needs a model with .classifier, .head and .reversal_cfg "
                                f"(a ReversalModule); {type(pl_module).__name__} has no .{attr}")
        fns = ReversalFns.from_module(pl_module, **self.reversal)
        cfg = self._config(pl_module)
        meta = self._meta(trainer, pl_module, fns, cfg)
        store = ResultStore(meta)
        if self.resume:
            for f in sorted(self.output_dir.glob("per_example*.json")):
                store.merge(ResultStore.load(f, meta))
        else:  # start over: stale results must not be merged at the end
            if trainer.is_global_zero:
                for f in self.output_dir.glob("per_example*.json"):
                    f.unlink()
            trainer.strategy.barrier("robust_eval_fresh")
        self.evaluator = RobustEvaluator.for_reversal(fns, cfg, store=store)
        self._grid_batch, self.summary = None, None
        self._checkpoint = trainer.ckpt_path

    # -- per batch ------------------------------------------------------------------------------
    def _part(self, trainer: pl.Trainer) -> Path:
        return self.output_dir / f"per_example.rank{trainer.global_rank}.json"

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx != self.dataloader_idx or self.evaluator is None:
            return
        if len(batch) < 3:
            raise ValueError("RobustEvaluation needs batches (x, y, idx) with data-set indices (the DataModules "
                             "of this package provide them) to key per-example results")
        if len(batch[0]) < 2:
            raise ValueError(f"test batch {batch_idx} holds a single image: the reversal needs at least 2 (InfoNCE "
                             "needs negatives); choose data.n_examples / eval_batch_size so that no batch has 1 image")
        with torch.inference_mode(False), torch.enable_grad():
            x = batch[0].clone()
            y, idx = batch[1].clone(), batch[2].clone().cpu()
            x = pl_module._prep(x) if hasattr(pl_module, "_prep") else x.float()
            if batch_idx == 0 and trainer.is_global_zero and self.n_images >= 2:
                self._grid_batch = (x[: self.n_images].detach(), y[: self.n_images].detach())
            was = pl_module.training
            pl_module.eval()
            t0 = time.perf_counter()
            try:
                with frozen_params(pl_module):
                    self.evaluator.evaluate_batch(x, y, idx)
            finally:
                pl_module.train(was)
        self.evaluator.store.save(self._part(trainer))
        rank_zero_info(f"robust evaluation: test batch {batch_idx} ({len(idx)} images, idx {int(idx.min())}.."
                       f"{int(idx.max())}) done in {time.perf_counter() - t0:.1f} s")

    # -- end ------------------------------------------------------------------------------------
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.evaluator is None:
            return
        ev = self.evaluator
        ev.store.save(self._part(trainer))
        trainer.strategy.barrier("robust_eval_parts")
        summary = None
        if trainer.is_global_zero:
            for f in sorted(self.output_dir.glob("per_example.rank*.json")):
                ev.store.merge(ResultStore.load(f, ev.store.meta))
            ev.store.save(self.output_dir / STORE)
            for f in self.output_dir.glob("per_example.rank*.json"):
                f.unlink(missing_ok=True)
            summary = ev.summary()
            summary["meta"]["checkpoint"] = str(self._checkpoint) if self._checkpoint else None
            self._write(trainer, pl_module, summary)
        summary = trainer.strategy.broadcast(summary, src=0)
        self.summary = summary
        for k, v in flat_metrics(summary).items():
            pl_module.log(k, v, sync_dist=False)

    def _write(self, trainer: pl.Trainer, pl_module: pl.LightningModule, summary: dict) -> None:
        dirs = [self.output_dir]
        run_dir = self._run_dir(trainer)
        if run_dir is not None and run_dir.resolve() != self.output_dir.resolve():
            dirs.append(run_dir)
        for d in dirs:
            paths = write_report(summary, d)
            if d == self.output_dir:
                self.paths = paths
        grid = self._grid(pl_module)
        if grid is not None:
            from torchvision.utils import save_image

            for d in dirs:
                tmp = d / ".reversal_grid.tmp.png"
                save_image(grid, tmp)
                tmp.replace(d / "reversal_grid.png")
            self.paths["grid"] = self.output_dir / "reversal_grid.png"
        md = markdown_report(summary)
        if self.print_report:
            print("\n" + md + "\n", flush=True)
        bad = failed_checks(summary)
        if bad:
            print(f"WARNING: {len(bad)} robustness sanity check(s) FAILED (see {self.paths.get('markdown')}):",
                  *[f"  - {s['name']}: {s['detail']}" for s in bad], sep="\n", flush=True)
        self._log_wandb(trainer, summary, grid)

    @staticmethod
    def _run_dir(trainer: pl.Trainer) -> Optional[Path]:
        """``robustness/`` in the run's own folder: the W&B run's files dir (uploaded with the run),
        else the logger's versioned log dir."""
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                d = getattr(logger.experiment, "dir", None)
                if d:
                    return Path(d) / "robustness"
        return Path(trainer.log_dir) / "robustness" if trainer.log_dir else None

    def _grid(self, pl_module: pl.LightningModule) -> Optional[torch.Tensor]:
        """Clean / PGD (first threat model, on the classifier) / reversed, and the differences."""
        if self._grid_batch is None or self.evaluator is None or self.evaluator.reverse_fn is None:
            return None
        x, y = self._grid_batch
        ev = self.evaluator
        norm, eps = next(iter(ev.cfg.threat_models.items()))
        was = pl_module.training
        pl_module.eval()
        try:
            with torch.inference_mode(False), torch.enable_grad(), frozen_params(pl_module):
                torch.manual_seed(ev.cfg.seed)
                x_adv = pgd(ev.model_fn, x, y, eps, ev.cfg.step_size * eps, ev.cfg.steps, norm)
                x_rev = ev.reverse_fn(x_adv)
        finally:
            pl_module.train(was)
        return reversal_grid(x, x_adv, x_rev)

    @staticmethod
    def _log_wandb(trainer: pl.Trainer, summary: dict, grid: Optional[torch.Tensor]) -> None:
        for logger in trainer.loggers:
            if type(logger).__name__ != "WandbLogger":
                continue
            cols = ["threat", "eps", "attack", "type", "acc_without_reversal", "acc_with_reversal", "n"]
            data = [["clean", "0", "none", "-", summary["clean"]["without"], summary["clean"]["with"],
                     summary["clean"]["n"]]]
            data += [[r["threat"], r["eps_label"], r["label"], r["kind"], r["without"], r["with"], r["n"]]
                     for r in summary["rows"]]
            data += [[w["threat"], w["eps_label"], "worst case per example", "all", w["without"], w["with"], w["n"]]
                     for w in summary["worst_case"]]
            logger.log_table(key="eval/robustness", columns=cols, data=data)
            logger.experiment.summary.update({k: v for k, v in flat_metrics(summary).items()})
            logger.experiment.summary["eval/sanity_failed_names"] = [s["name"] for s in failed_checks(summary)]
            if grid is not None:
                logger.log_image(key="eval/x__x_adv__x_rev__diffs", images=[grid])
