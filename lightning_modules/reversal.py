"""The reversal (Mao et al., ICCV 2021): undo an attack by lowering the self-supervised loss.

Given a possibly attacked input ``x``, find ``delta`` with ``||delta||_inf <= eps`` that minimizes
the contrastive (InfoNCE) loss of ``x + delta`` under random SimCLR views, by signed gradient
descent, then classify ``x + delta``. Only ``delta`` receives gradients; the classifier and the
head are used frozen (eval mode, no parameter gradients).

**Batch dependence.** InfoNCE contrasts each image's views against the views of the *other*
images in the batch, so image ``i``'s reversal depends on its batch-mates through the negatives,
and only through them: each image gets its own augmentations and its own signed step, BN runs
in eval mode, and the result is equivariant to the order of the batch (tested). Reversing one
image alone is not possible with this loss (it needs at least one negative); use batches of
similar size to those you report.

Example:
    >>> import torch
    >>> from lightning_modules.nn.backbones import build_backbone
    >>> from lightning_modules.nn.heads import ContrastiveHead
    >>> from lightning_modules.reversal import ReversalConfig, reverse
    >>> net, head = build_backbone("small_cnn", width=8).eval(), ContrastiveHead(32, 64, 16).eval()
    >>> x = torch.rand(8, 3, 32, 32)
    >>> x_rev = reverse(net, head, x, ReversalConfig(steps=2))
    >>> bool((x_rev - x).abs().max() <= 16 / 255 + 1e-6)
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn as nn

from .attacks.core import check_eps, frozen_params, projected_gradient
from .losses import info_nce
from .views.fast import VIEW_BACKENDS, make_views
from .views.kornia import SimCLRViews  # noqa: F401  (the default views, re-exported for callers)


@dataclass
class ReversalConfig:
    """Settings of the reversal.

    Attributes:
        eps: L-inf radius of the reversal vector (default 16/255).
        alpha: step size (2/255).
        steps: gradient steps (40).
        n_views: SimCLR views per image in the contrastive loss (4).
        temperature: InfoNCE temperature; defaults to the head's training temperature when None.
        random_start: start from a uniform random point in the ball instead of ``x``.
        scale: random-resized-crop area range of the views.
        views: the views' implementation: ``kornia`` (:class:`~lightning_modules.views.kornia.SimCLRViews`)
            or ``fast`` (:class:`~lightning_modules.views.fast.FastSimCLRViews`: the same distribution
            in batched ops without host syncs; much faster on GPUs).
        amp: run the reversal's forward/backward under bf16 autocast (fp32 by default; report
            numbers with it only once shown equal to fp32 on the same model).
    """

    eps: float = 16 / 255
    alpha: float = 2 / 255
    steps: int = 40
    n_views: int = 4
    temperature: Optional[float] = None
    random_start: bool = False
    scale: Sequence[float] = field(default_factory=lambda: (0.08, 1.0))
    views: str = "kornia"
    amp: bool = False

    def __post_init__(self) -> None:
        check_eps(self.eps)
        if self.steps < 0:
            raise ValueError(f"reversal steps must be >= 0, got {self.steps}")
        if self.n_views < 2:
            raise ValueError(f"reversal needs n_views >= 2 for InfoNCE, got {self.n_views}")
        if self.views not in VIEW_BACKENDS:
            raise ValueError(f"unknown reversal views '{self.views}'; choose one of {list(VIEW_BACKENDS)}")


def ssl_loss(
    classifier: nn.Module,
    head: nn.Module,
    x: torch.Tensor,
    views: nn.Module,
    n_views: int,
    temperature: float,
    reduction: str = "none",
) -> torch.Tensor:
    """InfoNCE of ``x`` under ``n_views`` random views: per image with ``reduction="none"``."""
    _, feats = classifier(views(x, n_views))
    z = head(feats)
    with torch.autocast(z.device.type, enabled=False):  # the similarities in fp32 even under amp
        return info_nce(z.float(), n_views, temperature, reduction)


def reverse(
    classifier: nn.Module,
    head: nn.Module,
    x: torch.Tensor,
    cfg: ReversalConfig = ReversalConfig(),
    views: Optional[nn.Module] = None,
    temperature: float = 0.2,
) -> torch.Tensor:
    """Return the reversed images ``x + delta`` (detached, in ``[0, 1]``, ``||delta||_inf <= cfg.eps``).

    ``views`` defaults to :class:`~lightning_modules.views.kornia.SimCLRViews` at the input size;
    pass a deterministic callable ``views(x, n_views)`` to make the reversal reproducible.
    """
    if x.shape[0] < 2:
        raise ValueError("the reversal needs a batch of at least 2 images (InfoNCE needs negatives)")
    views = views if views is not None else make_views(cfg.n_views, x.shape[-1], cfg.scale, cfg.views).to(x.device)
    t = cfg.temperature if cfg.temperature is not None else temperature
    was_training = classifier.training, head.training
    classifier.eval(), head.eval()
    try:
        objective = lambda xr: ssl_loss(classifier, head, xr, views, cfg.n_views, t)  # noqa: E731
        with frozen_params(classifier, head):  # gradients w.r.t. the input only (matters when compiled)
            return projected_gradient(
                objective,
                x,
                cfg.eps,
                cfg.alpha,
                cfg.steps,
                "Linf",
                random_start=cfg.random_start,
                ascend=False,
                amp=cfg.amp,
            )
    finally:
        classifier.train(was_training[0]), head.train(was_training[1])
