"""Adversarial contrastive pretraining (ACL, Jiang et al. 2020; AdvCL, Fan et al. NeurIPS 2021)
and linear probing of the pretrained backbone.

**Pretraining** (:class:`AdvCLModule`, no labels in the loss): two SimCLR views ``x1, x2``, an adversarial
view ``x1 + delta`` found by PGD to *maximize* its InfoNCE against ``x2`` (:func:`adversarial_view`) and
optionally AdvCL's high-frequency view of ``x1`` (:func:`high_frequency`), under the multi-view InfoNCE. An
*online linear probe* (the backbone's final linear layer on detached features, as in solo-learn) monitors
accuracy; labels reach nothing else. Not implemented: ACL's dual-stream BatchNorm and AdvCL's pseudo-label
supervision (it needs a separately pretrained model).

**Linear probing** (:class:`LinearProbeModule`): only a re-initialized final linear layer trains, on clean
or attacked inputs, over the frozen backbone (always in eval mode). Both are
:class:`~lightning_modules.methods.base.BaseModule` subclasses, so the robust evaluation runs on them unchanged.

Example:
    >>> import torch
    >>> from lightning_modules.nn.backbones import build_backbone
    >>> from lightning_modules.nn.heads import ContrastiveHead
    >>> net, head = build_backbone("small_cnn", width=8).eval(), ContrastiveHead(32, 64, 16).eval()
    >>> encode = lambda x: head(net(x)[1])
    >>> x1, x2 = torch.rand(8, 3, 32, 32), torch.rand(8, 3, 32, 32)
    >>> x_adv = adversarial_view(encode, x1, [encode(x2)], eps=8 / 255, alpha=2 / 255, steps=3)
    >>> bool((x_adv - x1).abs().max() <= 8 / 255 + 1e-6)
    True
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn

from ..attacks.core import check_eps, projected_gradient
from ..losses import multiview_info_nce
from ..nn.backbones import Classifier, load_state_dict
from .base import BaseModule


def linear_layer(classifier: Classifier) -> nn.Linear:
    """The final ``nn.Linear`` of a :class:`~lightning_modules.nn.backbones.Classifier`."""
    return classifier.net.linear if classifier._direct else classifier._last


def high_frequency(x: torch.Tensor, radius: float = 8.0) -> torch.Tensor:
    """AdvCL's high-frequency view (Fan et al. 2021) of images ``(..., H, W)``: every spatial frequency
    with ``sqrt(fy^2 + fx^2) <= radius`` (cycles per image) removed except the mean (DC term), which
    keeps the result centred on the image's brightness, so ``.clamp(0, 1)`` of it is a usable image.
    Differentiable (FFT), computed in fp32.

    Example:
        >>> import torch
        >>> x = torch.rand(2, 3, 32, 32)
        >>> hf = high_frequency(x, radius=4)
        >>> hf.shape, bool(torch.allclose(hf.mean((-2, -1)), x.mean((-2, -1)), atol=1e-5))
        (torch.Size([2, 3, 32, 32]), True)
    """
    if radius < 0:
        raise ValueError(f"high_frequency radius must be >= 0, got {radius}")
    h, w = x.shape[-2:]
    fy = torch.fft.fftfreq(h, d=1.0 / h, device=x.device)
    fx = torch.fft.fftfreq(w, d=1.0 / w, device=x.device)
    low = (fy[:, None] ** 2 + fx[None, :] ** 2) <= radius**2
    low[0, 0] = False  # keep the mean
    spec = torch.fft.fft2(x.float()).masked_fill(low, 0)
    return torch.fft.ifft2(spec).real.to(x.dtype)


def adversarial_view(
    encode: Callable[[torch.Tensor], torch.Tensor],
    x_view: torch.Tensor,
    z_others: Sequence[torch.Tensor],
    eps: float = 8 / 255,
    alpha: float = 2 / 255,
    steps: int = 5,
    temperature: float = 0.5,
    random_start: bool = True,
    amp: bool = False,
) -> torch.Tensor:
    """PGD (L-inf) on the view ``x_view`` maximizing its per-image InfoNCE against the other views'
    embeddings ``z_others`` ``(B, d)`` of the same images (detached). Returns ``x_view + delta`` in
    ``[0, 1]``, ``||delta||_inf <= eps``, detached. Run ``encode`` in eval mode if it holds BatchNorm."""
    check_eps(eps)
    z_others = [z.detach() for z in z_others]

    def objective(xa: torch.Tensor) -> torch.Tensor:
        return multiview_info_nce([encode(xa), *z_others], temperature, reduction="none")

    return projected_gradient(objective, x_view, eps, alpha, steps, "Linf", random_start, ascend=True, amp=amp)


class AdvCLModule(BaseModule):
    """Label-free adversarial contrastive pretraining (ACL / AdvCL) with an online linear probe.

    Args:
        hf_radius: add AdvCL's high-frequency view of ``x1`` with this low-pass radius (cycles
            per image); ``None`` leaves it out (ACL-style, three views).
        attack_random_start: start the adversarial-view PGD from a random point of the eps-ball.
        probe_weight: weight of the online probe's cross-entropy (it only reaches the linear layer).
        **kwargs: :class:`~lightning_modules.methods.base.BaseModule` arguments. ``attack.eps``, ``alpha``,
            ``steps`` and ``speed.attack_amp`` set the adversarial view; ``ssl.temperature`` the InfoNCE;
            ``attack.mode`` must stay ``standard`` and ``freeze_backbone`` unset; ``ssl.weight``,
            ``ssl.fraction``, ``ssl.n_views`` and ``attack.trades_beta`` are not used.
    """

    def __init__(
        self, hf_radius: Optional[float] = None, attack_random_start: bool = True, probe_weight: float = 1.0, **kwargs
    ) -> None:
        if hf_radius is not None and hf_radius < 0:
            raise ValueError(f"hf_radius must be >= 0 or null, got {hf_radius}")
        if kwargs.get("freeze_backbone"):
            raise ValueError("AdvCLModule trains the backbone: leave freeze_backbone unset")
        super().__init__(**kwargs)
        if self.attack_cfg.mode != "standard" or self.attack_cfg.noise_std:
            raise ValueError(
                "AdvCLModule pretrains without labels: attack.mode must be 'standard' and attack.noise_std 0 "
                f"(got '{self.attack_cfg.mode}', {self.attack_cfg.noise_std}); the adversarial view is its attack"
            )
        if self.freeze_backbone:
            raise ValueError(
                "AdvCLModule trains the backbone: a RobustBench model would be frozen; "
                "set freeze_backbone: false to pretrain it further"
            )

    def probe(self, feats: torch.Tensor) -> torch.Tensor:
        return linear_layer(self.classifier)(feats.detach())

    def make_adversarial_view(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """``x1 + delta`` maximizing InfoNCE against ``x2`` (encoder and head in eval mode)."""
        a, was = self.attack_cfg, (self.classifier.training, self.head.training)
        opts = (self.ssl_cfg.temperature, self.hparams.attack_random_start, self.speed_cfg.attack_amp)
        self.classifier.eval(), self.head.eval()

        def encode(xa: torch.Tensor) -> torch.Tensor:
            return self.head(self.classifier(xa)[1])

        try:
            with torch.no_grad():
                z2 = encode(x2)
            return adversarial_view(encode, x1, [z2], a.eps, a.alpha, a.steps, *opts)
        finally:
            self.classifier.train(was[0]), self.head.train(was[1])

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y, h = self._prep(batch[0]), batch[1], self.hparams
        x1, x2 = self.views(x, 2).chunk(2)
        views = [x1, x2, self.make_adversarial_view(x1, x2)]
        if h.hf_radius is not None:
            views.append(high_frequency(x1, h.hf_radius).clamp(0, 1))
        _, feats = self.classifier(torch.cat(views))
        loss_cl = multiview_info_nce(list(self.head(feats).chunk(len(views))), self.ssl_cfg.temperature)
        logits, yy = self.probe(feats[: 2 * x.shape[0]]), y.repeat(2)  # the two clean views
        loss_probe = F.cross_entropy(logits.float(), yy)
        loss = loss_cl + h.probe_weight * loss_probe
        self.log_train(loss, logits, yy, bar=("loss_ssl",), loss_ssl=loss_cl, loss_probe=loss_probe)
        return loss


class LinearProbeModule(BaseModule):
    """A frozen pretrained backbone + a freshly initialized linear classifier, trained alone.

    Args:
        backbone_checkpoint: the pretrained weights (Lightning checkpoint of :class:`AdvCLModule` or any
            state dict of the backbone), loaded with ``weights_only=True`` unless ``trust_checkpoint``.
        load_head: also load the contrastive head (``head.*`` keys) for the reversal; warns when the
            checkpoint has none (the head then stays random: reversal numbers are meaningless).
        reset_linear: re-initialize the final linear layer (standard linear probing) instead of
            starting from the checkpoint's (e.g. AdvCL's online probe).
        **kwargs: other :class:`~lightning_modules.methods.base.BaseModule` arguments (``backbone`` and
            ``backbone_kwargs`` must describe the pretrained network). ``attack.mode``: ``standard`` or an
            AT mode (adversarial linear finetuning: the attack goes through the frozen backbone, only the
            linear layer learns); ``ssl.weight`` is not used (nothing but the linear layer trains).
    """

    def __init__(self, backbone_checkpoint: str, load_head: bool = True, reset_linear: bool = True, **kwargs) -> None:
        if kwargs.pop("freeze_backbone", None):
            raise ValueError(
                "LinearProbeModule freezes the backbone itself (all but the linear layer): drop freeze_backbone"
            )
        super().__init__(backbone_checkpoint=backbone_checkpoint, freeze_backbone=False, **kwargs)
        self.classifier.requires_grad_(False), self.head.requires_grad_(False)
        lin = linear_layer(self.classifier)
        if reset_linear:
            lin.reset_parameters()
        lin.requires_grad_(True)
        if load_head:
            self._load_head(backbone_checkpoint, kwargs.get("trust_checkpoint", False))
        self.classifier.eval(), self.head.eval()

    def _load_head(self, path: str, trust: bool) -> None:
        sd = load_state_dict(path, trust=trust)
        head = {k[len("head.") :]: v for k, v in sd.items() if k.startswith("head.")}
        if not head:
            rank_zero_warn(
                f"{path} holds no contrastive head (head.* keys): the head stays random, so "
                "reversal results of this probe are meaningless (set load_head: false to silence)"
            )
            return
        try:
            self.head.load_state_dict(head)
        except RuntimeError as e:
            raise RuntimeError(f"the contrastive head in {path} does not fit (head_hidden/head_dim?): {e}") from e

    def train(self, mode: bool = True):
        super().train(mode)
        self.classifier.eval(), self.head.eval()  # frozen features: BatchNorm statistics never update
        return self

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = self._prep(batch[0]), batch[1]
        loss, logits = self.classification_loss(x, y)
        self.log_train(loss, logits, y, loss_cls=loss)
        return loss


__all__ = ["adversarial_view", "high_frequency", "linear_layer", "AdvCLModule", "LinearProbeModule"]
