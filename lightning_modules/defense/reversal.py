"""The reversal (Mao et al., ICCV 2021): undo an attack by lowering the self-supervised loss.

Find ``delta`` with ``||delta|| <= eps`` (L-inf or L2) that minimizes the InfoNCE loss of ``x + delta``
under random SimCLR views, by signed gradient descent, then classify ``x + delta``. Only ``delta`` gets
gradients; the classifier and the head are frozen (eval mode).

**Batch dependence.** InfoNCE contrasts each image's views against the other images', so an image's
reversal depends on its batch-mates through the negatives only (own views, own step, BN in eval mode;
equivariant to the batch order, tested). One image alone cannot be reversed (it needs a negative); use
batches of similar size to those you report.

Example:
    >>> import torch
    >>> from lightning_modules.nn.backbones import build_backbone
    >>> from lightning_modules.nn.heads import ContrastiveHead
    >>> from lightning_modules.defense.reversal import ReversalConfig, reverse
    >>> net, head = build_backbone("small_cnn", width=8).eval(), ContrastiveHead(32, 64, 16).eval()
    >>> x = torch.rand(8, 3, 32, 32)
    >>> x_rev = reverse(net, head, x, ReversalConfig(steps=2))
    >>> bool((x_rev - x).abs().max() <= 16 / 255 + 1e-6)
    True
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..attacks.core import Objective, ThreatModel, _project, _random_init, frozen_params
from ..losses import info_nce
from ..settings import ReversalConfig


def ssl_loss(
    classifier: nn.Module,
    head: nn.Module,
    x: torch.Tensor,
    views: nn.Module,
    n_views: int,
    temperature: float,
    reduction: str = "none",
    positive: str = "all",
    groups: int = 1,
) -> torch.Tensor:
    """InfoNCE of ``x`` under ``n_views`` random views: per image with ``reduction="none"``.

    ``groups``: ``x`` is that many contiguous equal blocks that do not see each other (each block's
    negatives are its own images, :func:`~lightning_modules.losses.info_nce`; views that draw one
    parameter set per call draw one per block): the loss each block would have alone."""
    _, feats = classifier(grouped_views(views, x, n_views, groups))
    z = head(feats)
    with torch.autocast(z.device.type, enabled=False):  # the similarities in fp32 even under amp
        return info_nce(z.float(), n_views, temperature, reduction, positive=positive, groups=groups)


def grouped_views(views: nn.Module, x: torch.Tensor, n_views: int, groups: int = 1) -> torch.Tensor:
    """``views(x, n_views)`` (view-major rows); for views shared by the batch (``views.shared``) and
    ``groups > 1``, one draw per block of ``x`` instead of one for all, rows still view-major."""
    if groups == 1 or not getattr(views, "shared", False):
        return views(x, n_views)
    if x.shape[0] % groups:
        raise ValueError(f"{x.shape[0]} images do not split into {groups} equal groups")
    b = x.shape[0] // groups
    per_block = [views(block, n_views).view(n_views, b, *x.shape[1:]) for block in x.split(b)]
    return torch.stack(per_block, 1).reshape(n_views * x.shape[0], *x.shape[1:])


def smooth_sign(g: torch.Tensor, smooth: float = 0.3) -> torch.Tensor:
    """``sign(g)`` on the forward pass; the derivative of ``tanh(g / tau)`` on the backward pass,
    with ``tau = smooth * mean(|g|)`` per example. ``smooth=0`` keeps the exact (zero) derivative."""
    s = g.sign()
    if smooth <= 0:
        return s
    tau = smooth * g.detach().abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, *[1] * (g.ndim - 1))
    t = torch.tanh(g / tau)
    return t + (s - t).detach()


def reversal_step(
    objective: Objective, x: torch.Tensor, delta: torch.Tensor, cfg: ReversalConfig, smooth: float = 0.0
) -> torch.Tensor:
    """One step of the reversal: ``delta`` moved down the gradient of ``objective(x + delta)`` (signed
    in L-inf, normalized in L2), projected on the ball and on ``[0, 1]``. When ``x`` requires gradients
    the step is differentiable in ``x`` (second order; the sign's derivative: :func:`smooth_sign`)."""
    with torch.enable_grad():
        xr = x + delta
        if not xr.requires_grad:  # nothing upstream needs gradients: still take this step's gradient
            xr = xr.detach().requires_grad_(True)
        with torch.autocast(xr.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            loss = objective(xr).float().sum()
        (g,) = torch.autograd.grad(loss, xr, create_graph=x.requires_grad)
    if cfg.norm == "Linf":
        step = smooth_sign(g, smooth)
    else:
        step = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (g.ndim - 1))
    d = _project(delta - cfg.alpha * step, cfg.eps, ThreatModel(cfg.norm))
    return (x + d).clamp(0, 1) - x


def _descend(
    objective: Objective,
    x: torch.Tensor,
    cfg: ReversalConfig,
    steps: int,
    smooth: float = 0.0,
    use_checkpoint: bool = False,
) -> torch.Tensor:
    """``steps`` :func:`reversal_step` from ``x`` (or a random start); differentiable when ``x`` requires
    gradients (``use_checkpoint``: each step recomputed on the backward pass, its views replayed)."""
    norm, grad = ThreatModel(cfg.norm), x.requires_grad
    x = x.float()
    delta = _random_init(x, cfg.eps, norm) if cfg.random_start and cfg.eps > 0 else torch.zeros_like(x)
    delta = (x + _project(delta, cfg.eps, norm)).clamp(0, 1) - x
    step = lambda x_, d_: reversal_step(objective, x_, d_, cfg, smooth)  # noqa: E731
    for _ in range(steps):
        delta = checkpoint(step, x, delta, use_reentrant=False) if use_checkpoint and grad else step(x, delta)
    return x + delta


def _prepare(x: torch.Tensor, cfg: ReversalConfig, views: Optional[Callable], groups: int) -> Callable:
    if x.shape[0] < 2 * groups:
        raise ValueError("the reversal needs a batch of at least 2 images (InfoNCE needs negatives)")
    return views if views is not None else cfg.make_views(x.shape[-1]).to(x.device)


def reverse(
    classifier: nn.Module,
    head: nn.Module,
    x: torch.Tensor,
    cfg: ReversalConfig = ReversalConfig(),
    views: Optional[Callable] = None,
    temperature: float = 0.2,
    groups: int = 1,
) -> torch.Tensor:
    """Return the reversed images ``x + delta`` (detached, in ``[0, 1]``, ``||delta||_{cfg.norm} <= cfg.eps``).

    ``views`` defaults to the views ``cfg`` describes at the input size; pass a deterministic callable
    ``views(x, n_views)`` to make the reversal reproducible. ``groups``: ``x`` is that many contiguous equal
    batches reversed independently in one call (:func:`ssl_loss`), e.g. a batch repeated for several draws.
    """
    views = _prepare(x, cfg, views, groups)
    t = cfg.temperature if cfg.temperature is not None else temperature
    was_training = classifier.training, head.training
    classifier.eval(), head.eval()
    try:
        objective = lambda xr: ssl_loss(  # noqa: E731
            classifier, head, xr, views, cfg.n_views, t, positive=cfg.positive, groups=groups
        )
        with frozen_params(classifier, head):  # gradients w.r.t. the input only (matters when compiled)
            return _descend(objective, x.detach(), cfg, cfg.steps).detach()
    finally:
        classifier.train(was_training[0]), head.train(was_training[1])


def reverse_differentiable(
    classifier: nn.Module,
    head: nn.Module,
    x: torch.Tensor,
    cfg: ReversalConfig = ReversalConfig(),
    views: Optional[Callable] = None,
    temperature: float = 0.2,
    steps: Optional[int] = None,
    smooth: float = 0.3,
    use_checkpoint: bool = True,
) -> torch.Tensor:
    """The reversal's own steps (:func:`reversal_step`) kept differentiable w.r.t. ``x`` (second order).

    The same random numbers in the same order as :func:`reverse`, so the same images under the same seed (tested);
    only the backward pass differs (:func:`smooth_sign`). ``steps`` unrolls fewer steps than ``cfg.steps``;
    ``use_checkpoint`` recomputes each step on the backward pass (the memory of one step, about twice the
    compute). The classifier and head must be in eval mode.
    """
    if cfg.norm != "Linf":
        raise NotImplementedError("the unrolled reversal has the L-inf (signed) step only")
    views = _prepare(x, cfg, views, 1)
    t = cfg.temperature if cfg.temperature is not None else temperature
    objective = lambda xr: ssl_loss(classifier, head, xr, views, cfg.n_views, t, positive=cfg.positive)  # noqa: E731
    return _descend(objective, x, cfg, cfg.steps if steps is None else steps, smooth, use_checkpoint)
