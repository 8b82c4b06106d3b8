"""The base LightningModule: what every method of the package shares, so that a method is a small
subclass that adds only its ``training_step`` (as in solo-learn).

:class:`BaseModule` owns the classifier (a backbone, a RobustBench zoo model or a file's weights), the
contrastive head, the training attack (:meth:`classification_loss`), the reversal (:meth:`reverse`),
validation, the quick robust test, ``predict`` (attack, then reverse), the optimizer and schedule and what
a resumed fit needs. Subclasses: :class:`~.module.ReversalModule`,
:class:`~.advcl.AdvCLModule`, ``LinearProbeModule``, :class:`~.ascl.ASCLModule`.

Settings come in groups (:mod:`~lightning_modules.settings`): ``attack``, ``ssl``, ``optim``,
``inference``, ``speed`` and ``reversal``; the network's identity (backbone, sizes, weights' source) is
flat. Batches are ``(x, y, idx)`` with ``x`` uint8 in ``[0, 255]`` or float in ``[0, 1]``.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import lightning.pytorch as pl
import torch
import torch.nn as nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from ..attacks.core import frozen_params, pgd
from ..defense import DefendedModel, ReversalConfig
from ..losses import info_nce
from ..nn.heads import ContrastiveHead
from ..settings import AttackConfig, InferenceConfig, OptimConfig, SpeedConfig, SSLConfig, TrainingMode, build_group
from ..util import to_unit
from ..views.fast import make_views
from .eval_steps import EvalSteps
from .resume import ResumeHooks, make_optimizer, make_scheduler
from .train_steps import TrainSteps
from .weights import build_classifier, check_checkpoint_fits, load_backbone_weights


class BaseModule(TrainSteps, EvalSteps, ResumeHooks, pl.LightningModule):
    """Classifier + contrastive head with the package's attacks, reversal, evaluation and optimizer.

    Args:
        backbone: a name from :class:`~lightning_modules.nn.backbones.BackboneName`; ``backbone_kwargs``
            go to its constructor; ``num_classes``, ``normalization`` (input statistics used inside),
            ``image_size`` (side of the inputs, for the views); ``head_hidden``, ``head_dim``: the head.
        robustbench_model: load this RobustBench zoo model from ``model_dir`` as the backbone (with
            ``robustbench_dataset``, ``robustbench_threat_model``); frozen unless ``freeze_backbone: false``.
        backbone_checkpoint: local weights for the backbone (state dict or Lightning checkpoint).
        freeze_backbone: train the head only (backbone in eval mode, no gradients).
        trust_checkpoint: allow full pickle loading of checkpoints (code can run): off by default.
        attack, ssl, optim, inference, speed: :class:`~lightning_modules.settings.AttackConfig`,
            ``SSLConfig``, ``OptimConfig``, ``InferenceConfig``, ``SpeedConfig`` (or dicts of their fields).
        reversal: :class:`~lightning_modules.defense.reversal.ReversalConfig` (prediction and evaluation).
    """

    def __init__(
        self,
        backbone: str = "preact_resnet18",
        num_classes: int = 10,
        normalization: Optional[str] = "cifar10",
        backbone_kwargs: Optional[dict] = None,
        image_size: int = 32,
        head_hidden: int = 512,
        head_dim: int = 128,
        robustbench_model: Optional[str] = None,
        robustbench_dataset: str = "cifar10",
        robustbench_threat_model: str = "Linf",
        model_dir: str = "models",
        backbone_checkpoint: Optional[str] = None,
        freeze_backbone: Optional[bool] = None,
        trust_checkpoint: bool = False,
        attack: Optional[AttackConfig] = None,
        ssl: Optional[SSLConfig] = None,
        optim: Optional[OptimConfig] = None,
        inference: Optional[InferenceConfig] = None,
        speed: Optional[SpeedConfig] = None,
        reversal: Optional[ReversalConfig] = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.attack_cfg, self.ssl_cfg = build_group("attack", attack), build_group("ssl", ssl)
        self.optim_cfg, self.inference_cfg = build_group("optim", optim), build_group("inference", inference)
        self.speed_cfg, self.reversal_cfg = build_group("speed", speed), build_group("reversal", reversal)
        for name in ("attack", "ssl", "optim", "inference", "speed", "reversal"):
            self.store_group(name, getattr(self, f"{name}_cfg"))
        self.training_mode = TrainingMode(self.attack_cfg.mode)
        for name, value in (("image_size", image_size), ("head_hidden", head_hidden), ("head_dim", head_dim)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        zoo = (robustbench_model, robustbench_dataset, robustbench_threat_model, model_dir)
        self.classifier, freeze_backbone = build_classifier(
            backbone, num_classes, normalization, backbone_kwargs, freeze_backbone, trust_checkpoint, robustbench=zoo
        )
        if backbone_checkpoint is not None:
            self.load_backbone(backbone_checkpoint, trust_checkpoint)
        self.freeze_backbone = bool(freeze_backbone)
        if self.freeze_backbone:
            self.classifier.requires_grad_(False).eval()
        if self.speed_cfg.channels_last:
            self.classifier.to(memory_format=torch.channels_last)
        self.head = ContrastiveHead(self.classifier.feature_dim, head_hidden, head_dim)
        if not self.freeze_backbone and not self.head_in_loss():
            self.head.requires_grad_(False)  # unused by the training loss; DDP refuses parameters without gradients
        sc = self.ssl_cfg
        self.views = make_views(sc.n_views, image_size, sc.view_scale, sc.views, **sc.view_options())
        self._reversal_views: dict[tuple, nn.Module] = {}
        self.example_input_array = torch.zeros(1, 3, image_size, image_size)  # model summary: FLOPs
        nc = self.classifier.num_classes
        self.train_acc, self.val_acc, self.val_pgd_acc = (MulticlassAccuracy(nc, average="micro") for _ in range(3))
        self.val_ssl = MeanMetric()
        self.test_metrics = nn.ModuleDict(
            {k: MulticlassAccuracy(nc, average="micro") for k in ("clean", "pgd", "clean_reversed", "pgd_reversed")}
        )

    def store_group(self, name: str, cfg: Any) -> None:
        """Keep a settings group in the hyperparameters as plain types (checkpoints load with
        ``weights_only=True``; loggers record what ``_hparams_initial`` holds)."""
        self.hparams[name] = dataclasses.asdict(cfg)
        if isinstance(getattr(self, "_hparams_initial", None), dict):
            self._hparams_initial[name] = dataclasses.asdict(cfg)

    def head_in_loss(self) -> bool:
        """Whether the training loss reaches the contrastive head (when not, it gets no gradients)."""
        return True

    # -- building blocks ----------------------------------------------------------------------
    def load_backbone(self, path: str, trust: bool = False) -> None:
        """Load classifier weights from a state dict or a Lightning checkpoint of this module."""
        describe = f"'{self.hparams.backbone}' {self.hparams.backbone_kwargs or ''}"
        load_backbone_weights(self.classifier, path, describe, trust)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another architecture naming both; keep what a resumed fit needs."""
        self.remember_resume(checkpoint)
        h, trainer = self.hparams, getattr(self, "_trainer", None)
        ours, path = (h.robustbench_model or h.backbone, h.backbone_kwargs or {}), getattr(trainer, "ckpt_path", None)
        check_checkpoint_fits(checkpoint, self.state_dict(), ours, getattr(self, "strict_loading", True), path)

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "freeze_backbone", False):
            self.classifier.eval()
        return self

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        x = to_unit(x)
        return x.contiguous(memory_format=torch.channels_last) if self.speed_cfg.channels_last else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images in ``[0, 1]`` (or uint8)."""
        return self.classifier(self._prep(x))[0]

    def model_fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)[0]

    def ssl_loss(self, x: torch.Tensor, n_views: Optional[int] = None) -> torch.Tensor:
        """InfoNCE of the head on ``n_views`` SimCLR views of each image (the backbone frozen or not)."""
        n = n_views or self.ssl_cfg.n_views
        v = self.views(x, n)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            _, feats = self.classifier(v)
        return info_nce(self.head(feats), n, self.ssl_cfg.temperature, positive=self.ssl_cfg.positive)

    def attack(
        self, x: torch.Tensor, y: torch.Tensor, steps: Optional[int] = None, eps: Optional[float] = None, **kw: Any
    ) -> torch.Tensor:
        """PGD (fp32) on the undefended classifier, in eval mode (eps, alpha: the training attack's)."""
        a = self.attack_cfg
        with self.eval_classifier():
            steps = steps if steps is not None else self.inference_cfg.predict_attack_steps
            return pgd(self.model_fn, x, y, eps if eps is not None else a.eps, a.alpha, steps, **kw)

    @contextmanager
    def eval_classifier(self) -> Iterator[None]:
        """The classifier in eval mode (frozen BatchNorm statistics) with its parameters frozen (input
        gradients only, which matters when compiled); its mode is put back after."""
        was = self.classifier.training
        self.classifier.eval()
        try:
            with frozen_params(self.classifier):
                yield
        finally:
            self.classifier.train(was)

    def reverse(self, x: torch.Tensor, cfg: Optional[ReversalConfig] = None) -> torch.Tensor:
        """The reversal (:mod:`lightning_modules.defense.reversal`) with this module's classifier and head."""
        return self.defended(cfg).reverse(x)

    def defended(self, cfg: Optional[ReversalConfig] = None) -> DefendedModel:
        """This module's classifier defended by its reversal (or ``cfg``), sharing its cache of views."""
        return DefendedModel.from_module(self, cfg)

    def setup(self, stage: str) -> None:
        """Compile the classifier in place when ``speed.compile`` is set (once). Here rather than in
        ``configure_model``: Lightning's weight-averaging callbacks deep-copy the module in their
        ``setup``, which runs before this hook, so the copy is never compiled."""
        if self.speed_cfg.compile and not getattr(self, "_compiled", False):
            import torch._dynamo.config as dynamo_config

            # one graph per (train/eval mode, frozen or not, grad mode, shape) met: attack, step, views, eval
            name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), 64))
            self.classifier.compile(mode=self.speed_cfg.compile_mode)
            self._compiled = True

    # -- optimization -------------------------------------------------------------------------
    def configure_optimizers(self):
        opt = make_optimizer([p for p in self.parameters() if p.requires_grad], self.optim_cfg)
        total = self._schedule_total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = make_scheduler(opt, self.optim_cfg, total)
        if sched is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
