"""The joint classifier + contrastive-head LightningModule, with the reversal as ``predict_step``.

Training loss = classification loss (standard, PGD-AT, TRADES or FGSM-RS inputs)
+ ``ssl_weight`` x InfoNCE on clean SimCLR views. With ``freeze_backbone`` only the head trains
(Mao et al.'s setting on top of a given robust classifier). Prediction runs the reversal
(:mod:`lightning_modules.reversal`) on each batch, optionally attacking it first.

Batches are ``(x, y, idx)`` with ``x`` uint8 in ``[0, 255]`` or float in ``[0, 1]``.
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Any, Optional

import lightning.pytorch as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from .attacks import check_eps, fgsm_rs, frozen_params, pgd, trades_attack
from .backbones import Classifier, build_backbone, load_state_dict
from .fast_views import make_views
from .heads import ContrastiveHead
from .losses import info_nce, trades_kl
from .pixels import check_pixels, to_unit
from .resume import (
    get_rng_states,
    load_pending_loader_states,
    make_scheduler,
    rebuild_schedule,
    saved_schedule_total,
    set_rng_states,
)
from .reversal import ReversalConfig, reverse
from .settings import check_settings


class TrainingMode(str, Enum):
    standard = "standard"
    pgd = "pgd"
    trades = "trades"
    fgsm_rs = "fgsm_rs"


class ReversalModule(pl.LightningModule):
    """Classifier + SimCLR head, trained jointly; the reversal at prediction time.

    Args:
        backbone: a name from :class:`~lightning_modules.backbones.BackboneName`.
        num_classes, normalization: classifier outputs and the input statistics used inside.
        backbone_kwargs: extra arguments for the backbone constructor.
        robustbench_model: load this RobustBench zoo model from ``model_dir`` as the backbone
            (with ``robustbench_dataset`` and ``robustbench_threat_model``); implies a frozen backbone
            unless ``freeze_backbone`` is set false explicitly.
        backbone_checkpoint: local weights for the backbone (state dict or Lightning checkpoint).
        freeze_backbone: train the head only (backbone in eval mode, no gradients).
        trust_checkpoint: allow full pickle loading of checkpoints (code can run): off by default.
        head_hidden, head_dim: contrastive head sizes.
        n_views, temperature, ssl_weight: InfoNCE views per image in training, temperature, weight.
        ssl_fraction: the share of each training batch whose views feed InfoNCE (the first images;
            at least 2): the head's loss costs as much as the rest of a fast-AT step, so 0.5 buys
            epochs on a slow machine.
        view_scale: random-resized-crop area range of the SimCLR views.
        training: ``standard``, ``pgd`` (Madry PGD-AT), ``trades`` or ``fgsm_rs`` (Wong et al. fast AT).
        eps, alpha, steps: the training attack (L-inf, ``[0, 1]`` units).
        trades_beta: TRADES trade-off.
        label_smoothing: on the classification loss.
        noise_std: with ``training: standard``, add ``N(0, noise_std^2)`` noise to the classification
            inputs (clamped to ``[0, 1]``): Gaussian-noise training, as KAP models are trained.
        attack_amp: run training attacks under bf16 autocast (evaluation attacks are always fp32).
        lr, momentum, weight_decay, nesterov, schedule, warmup: SGD and its schedule
            (``onecycle``, ``cosine``, ``multistep`` at 50%/75%, ``constant``).
        val_attack_steps: PGD steps for the validation robust accuracy (0 turns it off).
        reversal: the reversal's settings (prediction and evaluation).
        predict_attack: attack the batch before reversing it in ``predict`` (``none``, ``pgd``).
        predict_attack_steps: PGD steps of that attack (eps/alpha from ``eps``/``alpha``).
        image_size: side of the input images (for the views).
        channels_last: use channels-last memory format for the backbone.
        views_backend: the training views' implementation, ``kornia`` or ``fast`` (same distribution,
            batched, no host syncs; see :mod:`lightning_modules.fast_views`).
        compile: ``torch.compile`` the classifier (in place, so checkpoints keep their keys) when the
            Trainer sets the model up; ``compile_mode`` is passed on (``default``, ``reduce-overhead``
            for CUDA graphs, ``max-autotune``...). Off by default; measure before turning it on.
        train_progress_bar: show the training loss/accuracy in the progress bar. Lightning 2.6 converts
            progress-bar values to Python numbers after every batch (3 host syncs a step, counted),
            whether or not a bar is shown; ``false`` keeps the training loop free of host syncs
            (the values are still logged).
    """

    def __init__(
        self,
        backbone: str = "preact_resnet18",
        num_classes: int = 10,
        normalization: Optional[str] = "cifar10",
        backbone_kwargs: Optional[dict] = None,
        robustbench_model: Optional[str] = None,
        robustbench_dataset: str = "cifar10",
        robustbench_threat_model: str = "Linf",
        model_dir: str = "models",
        backbone_checkpoint: Optional[str] = None,
        freeze_backbone: Optional[bool] = None,
        trust_checkpoint: bool = False,
        head_hidden: int = 512,
        head_dim: int = 128,
        n_views: int = 2,
        temperature: float = 0.2,
        ssl_weight: float = 1.0,
        ssl_fraction: float = 1.0,
        view_scale: tuple[float, float] = (0.08, 1.0),
        training: str = "standard",
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        trades_beta: float = 6.0,
        label_smoothing: float = 0.0,
        noise_std: float = 0.0,
        attack_amp: bool = False,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        nesterov: bool = True,
        schedule: str = "onecycle",
        warmup: float = 0.2,
        val_attack_steps: int = 10,
        reversal: Optional[ReversalConfig] = None,
        predict_attack: str = "pgd",
        predict_attack_steps: int = 20,
        image_size: int = 32,
        channels_last: bool = False,
        views_backend: str = "kornia",
        compile: bool = False,
        compile_mode: Optional[str] = None,
        train_progress_bar: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if isinstance(reversal, dict):  # as stored in checkpoints
            reversal = ReversalConfig(**reversal)
        if reversal is not None:  # plain types only, so checkpoints load with weights_only=True
            self.hparams["reversal"] = dataclasses.asdict(reversal)
            if isinstance(getattr(self, "_hparams_initial", None), dict):  # what loggers record
                self._hparams_initial["reversal"] = dataclasses.asdict(reversal)
        self.training_mode = TrainingMode(training)
        check_eps(eps)
        check_settings(
            steps=steps,
            alpha=alpha,
            predict_attack_steps=predict_attack_steps,
            val_attack_steps=val_attack_steps,
            n_views=n_views,
            head_hidden=head_hidden,
            head_dim=head_dim,
            temperature=temperature,
            ssl_weight=ssl_weight,
            ssl_fraction=ssl_fraction,
            lr=lr,
            warmup=warmup,
            momentum=momentum,
            weight_decay=weight_decay,
            trades_beta=trades_beta,
            label_smoothing=label_smoothing,
            image_size=image_size,
            num_classes=num_classes,
        )
        if noise_std < 0 or (noise_std > 0 and self.training_mode is not TrainingMode.standard):
            raise ValueError(
                f"noise_std={noise_std}: Gaussian-noise training needs noise_std >= 0 and "
                f"training: standard (got '{training}')"
            )
        if predict_attack not in ("none", "pgd"):
            raise ValueError(f"predict_attack must be 'none' or 'pgd', got '{predict_attack}'")
        if schedule not in ("onecycle", "cosine", "multistep", "constant"):
            raise ValueError(f"unknown schedule '{schedule}'")
        if robustbench_model is not None:
            from .robustbench_models import load_robustbench

            net = load_robustbench(
                robustbench_model, robustbench_dataset, robustbench_threat_model, model_dir, trust=trust_checkpoint
            )
            self.classifier = Classifier(net)  # zoo models normalize inside
            freeze_backbone = True if freeze_backbone is None else freeze_backbone
        else:
            self.classifier = build_backbone(backbone, num_classes, normalization, **(backbone_kwargs or {}))
        if backbone_checkpoint is not None:
            self.load_backbone(backbone_checkpoint, trust_checkpoint)
        self.freeze_backbone = bool(freeze_backbone)
        if self.freeze_backbone:
            self.classifier.requires_grad_(False).eval()
        if channels_last:
            self.classifier.to(memory_format=torch.channels_last)
        self.head = ContrastiveHead(self.classifier.feature_dim, head_hidden, head_dim)
        if ssl_weight == 0 and not self.freeze_backbone and type(self).training_step is ReversalModule.training_step:
            self.head.requires_grad_(False)  # unused by this training loss; DDP refuses parameters without gradients
        self.views = make_views(n_views, image_size, view_scale, views_backend)
        self._reversal_views: dict[tuple, nn.Module] = {}
        self.reversal_cfg = reversal if reversal is not None else ReversalConfig()
        self.example_input_array = torch.zeros(1, 3, image_size, image_size)  # model summary: FLOPs
        nc = self.classifier.num_classes
        self.train_acc = MulticlassAccuracy(nc, average="micro")
        self.val_acc = MulticlassAccuracy(nc, average="micro")
        self.val_pgd_acc = MulticlassAccuracy(nc, average="micro")
        self.val_ssl = MeanMetric()
        self.test_metrics = nn.ModuleDict(
            {k: MulticlassAccuracy(nc, average="micro") for k in ("clean", "pgd", "clean_reversed", "pgd_reversed")}
        )

    # -- building blocks ----------------------------------------------------------------------
    def load_backbone(self, path: str, trust: bool = False) -> None:
        """Load classifier weights from a state dict or a Lightning checkpoint of this module."""
        sd = load_state_dict(path, trust=trust)
        if any(k.startswith("classifier.") for k in sd):
            sd = {k[len("classifier.") :]: v for k, v in sd.items() if k.startswith("classifier.")}
        target = self.classifier if any(k.startswith(("net.", "normalize.")) for k in sd) else self.classifier.net
        own = target.state_dict()
        shapes = [
            f"size mismatch for {k}: checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)}"
            for k, v in sd.items()
            if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
        ]
        if shapes:
            raise RuntimeError(
                f"checkpoint {path} does not fit backbone '{self.hparams.backbone}' "
                f"{self.hparams.backbone_kwargs or ''}: {'; '.join(shapes[:3])}{'...' if len(shapes) > 3 else ''}"
            )
        missing, unexpected = target.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.startswith("normalize.")]
        if missing or unexpected:
            raise RuntimeError(
                f"checkpoint {path} does not fit backbone '{self.hparams.backbone}': "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another architecture with a message naming both (Lightning calls
        this before its strict ``load_state_dict``, whose error lists keys only); keep what a resumed
        fit needs (:meth:`on_train_start`)."""
        self._resumed = {"total": saved_schedule_total(checkpoint), "rng": checkpoint.get("rng_states")}
        sd, own = checkpoint.get("state_dict") or {}, self.state_dict()
        shapes = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
        missing = [k for k in own if k not in sd and k.startswith("classifier.")]
        unexpected = [k for k in sd if k not in own and k.startswith("classifier.")]
        if shapes or ((missing or unexpected) and getattr(self, "strict_loading", True)):
            hp = checkpoint.get("hyper_parameters") or {}
            ours = (self.hparams.robustbench_model or self.hparams.backbone, self.hparams.backbone_kwargs or {})
            theirs = (hp.get("robustbench_model") or hp.get("backbone", "?"), hp.get("backbone_kwargs") or {})
            saved = f"; it was saved from '{theirs[0]}' {theirs[1]}" if theirs != ours else ""
            trainer = getattr(self, "_trainer", None)
            path = getattr(trainer, "ckpt_path", None) if trainer is not None else None
            raise RuntimeError(
                f"checkpoint{' ' + str(path) if path else ''} does not fit this model (backbone '{ours[0]}' "
                f"{ours[1]}){saved}: shapes differ for {shapes[:3]}, missing {missing[:3]}, unexpected "
                f"{unexpected[:3]}. Build the model with the checkpoint's settings (the CLI reads them from "
                "the checkpoint's hyperparameters)."
            )

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "freeze_backbone", False):
            self.classifier.eval()
        return self

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        x = to_unit(x)
        return x.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images in ``[0, 1]`` (or uint8)."""
        return self.classifier(self._prep(x))[0]

    def model_fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)[0]

    def ssl_loss(self, x: torch.Tensor, n_views: Optional[int] = None) -> torch.Tensor:
        n = n_views or self.hparams.n_views
        v = self.views(x, n)
        if self.freeze_backbone:
            with torch.no_grad():
                _, feats = self.classifier(v)
        else:
            _, feats = self.classifier(v)
        return info_nce(self.head(feats), n, self.hparams.temperature)

    def attack(
        self, x: torch.Tensor, y: torch.Tensor, steps: Optional[int] = None, eps: Optional[float] = None, **kw: Any
    ) -> torch.Tensor:
        """PGD (fp32) on the undefended classifier, in eval mode."""
        was = self.classifier.training
        self.classifier.eval()
        try:
            with frozen_params(self.classifier):
                return pgd(
                    self.model_fn,
                    x,
                    y,
                    eps if eps is not None else self.hparams.eps,
                    self.hparams.alpha,
                    steps if steps is not None else self.hparams.predict_attack_steps,
                    **kw,
                )
        finally:
            self.classifier.train(was)

    def reverse(self, x: torch.Tensor, cfg: Optional[ReversalConfig] = None) -> torch.Tensor:
        """The reversal of :mod:`lightning_modules.reversal` with this module's classifier and head."""
        cfg = cfg or self.reversal_cfg
        key = (cfg.n_views, x.shape[-1], tuple(cfg.scale), cfg.views, x.device)  # ReversalFns shares this cache
        if key not in self._reversal_views:  # built once per setting (kornia: ~3 ms a build on CPU)
            self._reversal_views[key] = make_views(cfg.n_views, x.shape[-1], cfg.scale, cfg.views).to(x.device)
        views = self._reversal_views[key]
        return reverse(self.classifier, self.head, x, cfg, views, self.hparams.temperature)

    def setup(self, stage: str) -> None:
        """Compile the classifier in place when ``compile`` is set (once; a no-op otherwise).

        Here rather than in ``configure_model``: Lightning's weight-averaging callbacks deep-copy the
        module in their ``setup``, which runs before this hook, so the copy is never compiled.
        """
        if self.hparams.compile and not getattr(self, "_compiled", False):
            import torch._dynamo.config as dynamo_config

            # one graph per (train/eval mode, frozen or not, grad mode, shape) met: attack, step, views, eval
            name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), 64))
            self.classifier.compile(mode=self.hparams.compile_mode)
            self._compiled = True

    @staticmethod
    def _need_grad_mode() -> None:
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "attacks and the reversal need gradients: set `trainer.inference_mode: false` "
                "(the configs in experiments/ do)"
            )

    # -- training -----------------------------------------------------------------------------
    def _train_inputs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h, mode = self.hparams, self.training_mode
        if mode is TrainingMode.standard or self.freeze_backbone:
            if h.noise_std > 0 and not self.freeze_backbone:
                return (x + h.noise_std * torch.randn_like(x)).clamp_(0, 1)
            return x
        was = self.classifier.training
        self.classifier.eval()  # attack with frozen BN statistics
        try:
            with frozen_params(self.classifier):  # input gradients only (matters when compiled)
                if mode is TrainingMode.pgd:
                    return pgd(self.model_fn, x, y, h.eps, h.alpha, h.steps, amp=h.attack_amp)
                if mode is TrainingMode.fgsm_rs:
                    return fgsm_rs(self.model_fn, x, y, h.eps, amp=h.attack_amp)
                return trades_attack(self.model_fn, x, h.eps, h.alpha, h.steps, amp=h.attack_amp)
        finally:
            self.classifier.train(was)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = self._prep(batch[0]), batch[1]
        h = self.hparams
        n_ssl = max(2, round(len(x) * h.ssl_fraction))
        loss_ssl = self.ssl_loss(x[:n_ssl]) if h.ssl_weight > 0 or self.freeze_backbone else x.new_zeros(())
        if self.freeze_backbone:
            loss = loss_ssl
            with torch.no_grad():
                logits = self.model_fn(x)
        else:
            x_in = self._train_inputs(x, y)
            logits = self.model_fn(x_in)
            loss_cls = F.cross_entropy(logits.float(), y, label_smoothing=h.label_smoothing)
            if self.training_mode is TrainingMode.trades:
                logits_clean = self.model_fn(x)
                loss_cls = F.cross_entropy(
                    logits_clean.float(), y, label_smoothing=h.label_smoothing
                ) + h.trades_beta * trades_kl(logits, logits_clean)
            loss = loss_cls + h.ssl_weight * loss_ssl
            self.log("train/loss_cls", loss_cls.detach())
        self.train_acc(logits.detach(), y)
        bar = h.train_progress_bar  # Lightning reads progress-bar values to the host every step
        self.log("train/loss", loss.detach(), prog_bar=bar)
        self.log("train/loss_ssl", loss_ssl.detach(), prog_bar=bar)
        self.log("train/acc", self.train_acc, prog_bar=bar)
        return loss

    # -- validation ---------------------------------------------------------------------------
    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = self._prep(batch[0]), batch[1]
        logits = self.model_fn(x)
        self.val_acc(logits, y)
        self.val_ssl(self.ssl_loss(x))
        self.log("val/acc", self.val_acc, prog_bar=True)
        self.log("val/loss_ssl", self.val_ssl)
        if self.hparams.val_attack_steps > 0:
            self._need_grad_mode()
            x_adv = self.attack(x, y, steps=self.hparams.val_attack_steps)
            self.val_pgd_acc(self.model_fn(x_adv), y)
            self.log("val/pgd_acc", self.val_pgd_acc, prog_bar=True)

    # -- test: a quick robust check; the full evaluation is lightning_modules.evaluation -------
    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Clean accuracy ``test/clean_acc`` (per test loader). The quick robust check (PGD and the
        reversal: ``test/pgd_acc``, ``test/clean_reversed_acc``, ``test/pgd_reversed_acc``) runs only
        with a single test loader and no callback doing the full evaluation (one whose
        ``replaces_test_attacks`` is true, e.g. :class:`callbacks.RobustEvaluation`)."""
        x, y = self._prep(batch[0]), batch[1]
        trainer = self._trainer
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

    # -- prediction = the reversal -------------------------------------------------------------
    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        """Attack (if ``predict_attack``) then reverse; returns predictions before/after and the images."""
        self._need_grad_mode()
        x, y, idx = batch[0], batch[1], batch[2]
        check_pixels(x, "predict input")
        x = self._prep(x)
        x_in = self.attack(x, y) if self.hparams.predict_attack == "pgd" else x
        x_rev = self.reverse(x_in)
        with torch.no_grad():
            out = {
                "idx": idx,
                "y": y,
                "pred_clean": self.model_fn(x).argmax(1),
                "pred_before": self.model_fn(x_in).argmax(1),
                "pred_after": self.model_fn(x_rev).argmax(1),
                "x_input": x_in,
                "x_reversed": x_rev,
            }
        return out

    # -- optimization -------------------------------------------------------------------------
    def configure_optimizers(self):
        h = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        opt = torch.optim.SGD(
            [{"params": decay, "weight_decay": h.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=h.lr,
            momentum=h.momentum,
            nesterov=h.nesterov and h.momentum > 0,
        )
        total = self._schedule_total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = make_scheduler(opt, h, total)
        if sched is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- resuming -----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the schedule's step budget and the generators' states (:mod:`.resume`)."""
        if getattr(self, "_schedule_total", None) is not None:
            checkpoint["schedule_total_steps"] = self._schedule_total
        checkpoint["rng_states"] = get_rng_states()

    def on_train_start(self) -> None:
        """On resume: rebuild the schedule for a changed budget, then restore the checkpoint's
        generator states (here, after the sanity check, which draws random views)."""
        saved = getattr(self, "_resumed", None)
        if saved is None:
            return
        self._resumed = None
        load_pending_loader_states(self.trainer)
        total, saved_total = getattr(self, "_schedule_total", None), saved.get("total")
        if total is not None and saved_total is not None and total != saved_total and self.trainer.lr_scheduler_configs:
            rebuild_schedule(self, saved_total, total)
        if saved.get("rng") is not None:
            set_rng_states(saved["rng"])
