"""SimCLR views, sampled per image on the device and differentiable w.r.t. the input.

The reversal back-propagates the contrastive loss through these augmentations into the pixels,
so they must be differentiable and batched: kornia's augmentation modules are both (each image
gets its own crop box, flip, jitter factors and grayscale draw; gradients flow through
``warp_affine`` and the colour ops), hence kornia rather than torchvision's per-image PIL transforms.
:class:`~lightning_modules.views.fast.FastSimCLRViews` (``views: fast``) exists only for speed.

Example:
    >>> import torch
    >>> from lightning_modules.views.kornia import SimCLRViews
    >>> views = SimCLRViews(n_views=4, size=32)
    >>> x = torch.rand(8, 3, 32, 32, requires_grad=True)
    >>> v = views(x)                      # (4 * 8, 3, 32, 32), view-major
    >>> v.sum().backward(); x.grad.shape
    torch.Size([8, 3, 32, 32])
"""

from __future__ import annotations

from typing import Sequence

import kornia.augmentation as K
import torch
import torch.nn as nn


class SimCLRViews(nn.Module):
    """``n_views`` SimCLR-augmented copies of a batch, view-major: row ``v * B + i`` is view ``v`` of image ``i``.

    ``size``: output side (square); ``scale``: random-resized-crop area range; ``jitter``: brightness,
    contrast, saturation, hue strengths; ``p_jitter``, ``p_gray``: probabilities of colour jitter and
    grayscale (SimCLR: 0.8, 0.2); ``shared``: one parameter draw per view for the whole batch (torchvision
    transforms called on a batch tensor, as Mao et al.'s reference code does) instead of one per image.
    """

    def __init__(
        self,
        n_views: int = 2,
        size: int = 32,
        scale: Sequence[float] = (0.08, 1.0),
        jitter: Sequence[float] = (0.4, 0.4, 0.4, 0.1),
        p_jitter: float = 0.8,
        p_gray: float = 0.2,
        shared: bool = False,
    ) -> None:
        super().__init__()
        if n_views < 1:
            raise ValueError(f"n_views must be >= 1, got {n_views}")
        self.n_views, self.shared = n_views, shared
        crop = K.RandomResizedCrop((size, size), scale=tuple(scale))
        augs = crop, K.RandomHorizontalFlip(), K.ColorJitter(*jitter, p=p_jitter), K.RandomGrayscale(p=p_gray)
        self.aug = K.AugmentationSequential(*augs, same_on_batch=shared)

    def forward(self, x: torch.Tensor, n_views: int | None = None) -> torch.Tensor:
        n = n_views or self.n_views
        if self.shared:  # one call (one draw) per view
            return torch.cat([self.aug(x) for _ in range(n)]).clamp(0, 1)
        return self.aug(x.repeat(n, 1, 1, 1)).clamp(0, 1)
