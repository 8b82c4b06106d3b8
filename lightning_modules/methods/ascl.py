"""Adversarial supervised contrastive learning (ASCL; Bui et al. 2021) on top of adversarial training.

Per batch: the training attack (PGD-AT or FGSM-RS: ``attack.mode``, default ``pgd``) makes
``x_adv``; one forward pass of ``[x_adv; x]`` gives logits and features; a
projection head (``ascl_head``, its own, so the reversal's SimCLR head keeps its meaning) maps the
features to the embeddings of :func:`~lightning_modules.methods.supcon.ascl_loss`. Loss::

    CE(f(x_adv), y) + ascl.weight * ASCL(z_adv, z_clean, y; selection) + ssl.weight * InfoNCE(clean views)

With ``selection: leaked`` the pairs are chosen by the classifier's (detached) predictions on the
same forward pass (:func:`~lightning_modules.methods.supcon.select_pairs`); the kept fractions are logged
as ``train/ascl_pos_kept`` and ``train/ascl_neg_kept``. The module keeps the base module's
interface (``classifier``, ``head``, ``reverse``...), so ``make eval-cifar10`` evaluates it unchanged.

Example:
    >>> import torch
    >>> m = ASCLModule(backbone="small_cnn", backbone_kwargs={"width": 8}, head_hidden=32, head_dim=16,
    ...                ascl=ASCLConfig(selection="leaked"), attack={"mode": "pgd", "steps": 1})
    >>> x, y = torch.rand(8, 3, 32, 32), torch.arange(8) % 10
    >>> parts = m.ascl_terms(x, y)
    >>> sorted(parts)
    ['logits_adv', 'loss_ascl', 'neg_kept', 'pos_kept']
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

import torch
import torch.nn.functional as F

from ..nn.heads import ContrastiveHead
from ..settings import NON_NEGATIVE, POSITIVE, AttackConfig, TrainingMode, _check, build_group
from .base import BaseModule
from .supcon import STRATEGIES, ascl_loss, kept_fractions, select_pairs


@dataclasses.dataclass
class ASCLConfig:
    """ASCL settings: loss weight, temperature, projection size, pair selection (``none`` / ``leaked``)."""

    weight: float = 1.0
    temperature: float = 0.1
    proj_hidden: int = 512
    proj_dim: int = 128
    selection: str = "leaked"
    neg_topk: int = 0

    def __post_init__(self) -> None:
        rules = {"selection": STRATEGIES, "weight": NON_NEGATIVE, "temperature": POSITIVE, "neg_topk": NON_NEGATIVE}
        _check("ascl", self, rules)


class ASCLModule(BaseModule):
    """Adversarial training + the ASCL loss on a projection head.

    Args:
        ascl: :class:`ASCLConfig` (or a dict of its fields, as stored in checkpoints).
        **kwargs: :class:`~lightning_modules.methods.base.BaseModule` arguments; ``attack.mode`` must make
            adversarial examples: ``pgd`` (the default here) or ``fgsm_rs``.
    """

    def __init__(
        self, ascl: Optional[Union[ASCLConfig, dict]] = None, attack: Optional[AttackConfig] = None, **kwargs
    ) -> None:
        if kwargs.get("freeze_backbone"):
            raise ValueError("ASCLModule trains the backbone: drop freeze_backbone")
        attack = dataclasses.asdict(attack) if dataclasses.is_dataclass(attack) else dict(attack or {"mode": "pgd"})
        attack.setdefault("mode", TrainingMode.pgd.value)
        if attack["mode"] not in (TrainingMode.pgd.value, TrainingMode.fgsm_rs.value):
            raise ValueError(
                f"ASCLModule needs adversarial anchors: attack.mode must be 'pgd' or 'fgsm_rs', got '{attack['mode']}'"
            )
        cfg = build_group("ascl", ascl)
        super().__init__(attack=attack, **kwargs)
        self.store_group("ascl", cfg)
        if self.freeze_backbone:
            raise ValueError(
                "ASCLModule trains the backbone: a RobustBench model would be frozen; set freeze_backbone: false"
            )
        self.ascl_cfg = cfg
        self.ascl_head = ContrastiveHead(self.classifier.feature_dim, cfg.proj_hidden, cfg.proj_dim)

    def head_in_loss(self) -> bool:
        return self.ssl_cfg.weight > 0

    def ascl_terms(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Attack, one forward pass of ``[x_adv; x]``, the ASCL loss and the kept fractions."""
        cfg, b = self.ascl_cfg, x.shape[0]
        x_adv = self.train_inputs(x, y)
        logits, feats = self.classifier(torch.cat([x_adv, x]))
        z = self.ascl_head(feats)
        z_adv, z_clean = z[:b], z[b:]
        pred = logits.detach().argmax(1)
        sim = None
        if cfg.neg_topk > 0:
            zn = F.normalize(z.detach().float(), dim=1)
            sim = zn[:b] @ zn.t()
        keep = select_pairs(y, pred[:b], pred[b:], cfg.selection, sim, cfg.neg_topk)
        pos_kept, neg_kept = kept_fractions(keep, y)
        loss = ascl_loss(z_adv, z_clean, y, cfg.temperature, keep)
        return {"logits_adv": logits[:b], "loss_ascl": loss, "pos_kept": pos_kept, "neg_kept": neg_kept}

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = self._prep(batch[0]), batch[1]
        s = self.ssl_cfg
        t = self.ascl_terms(x, y)
        loss_cls = F.cross_entropy(t["logits_adv"].float(), y, label_smoothing=self.optim_cfg.label_smoothing)
        loss_ssl = self.ssl_loss(self.ssl_share(x)) if s.weight > 0 else x.new_zeros(())
        loss = loss_cls + self.ascl_cfg.weight * t["loss_ascl"] + s.weight * loss_ssl
        parts = {"loss_cls": loss_cls, "loss_ascl": t["loss_ascl"], "loss_ssl": loss_ssl}
        self.log_train(loss, t["logits_adv"], y, bar=("loss_ascl",), **parts)
        self.log("train/ascl_pos_kept", t["pos_kept"])
        self.log("train/ascl_neg_kept", t["neg_kept"])
        return loss


__all__ = ["ASCLConfig", "ASCLModule"]
