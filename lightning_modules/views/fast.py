"""SimCLR views as a few batched tensor ops: kornia's distribution without its per-image bookkeeping.

:class:`~lightning_modules.views.kornia.SimCLRViews` is exact, but one call dispatches ~3,000 aten ops
and reads device values to the host 7 times; on a GPU that overhead bounds the reversal (views at each of
its 40 steps). :class:`FastSimCLRViews` draws the same parameters from the same distributions (kornia 0.9
``RandomResizedCrop`` -> ``RandomHorizontalFlip`` -> ``ColorJitter`` -> ``RandomGrayscale``) and applies
them with batched ops and no host synchronization:

- crop + resize + flip: bilinear (``align_corners=True``, as kornia's ``crop_by_indices`` resizes) sampling
  as two batched matmuls ``Ry @ x @ Rx^T`` with tent-kernel matrices ``R[b, j, k] = max(0, 1 - |c_bj - k|)``;
  the flip reverses ``c``;
- colour jitter: kornia's own colour formulas (brightness, contrast, saturation, hue), applied to the whole
  batch in one random order per call (as kornia does) and kept where the ``p`` draw says;
- grayscale: ITU-R 601 luma where the ``p`` draw says.

Given the same parameters the output equals kornia's to float rounding (tested with parameters
converted from kornia's own draw); ``sample`` and ``apply`` are separate so a caller can fix them.

Example:
    >>> import torch
    >>> from lightning_modules.views.fast import FastSimCLRViews
    >>> views = FastSimCLRViews(n_views=4, size=32)
    >>> x = torch.rand(8, 3, 32, 32, requires_grad=True)
    >>> v = views(x)                      # (4 * 8, 3, 32, 32), view-major
    >>> v.sum().backward(); x.grad.shape
    torch.Size([8, 3, 32, 32])
"""

from __future__ import annotations

import math
from typing import Sequence

import kornia.enhance as KE
import torch
import torch.nn as nn

_LUMA = (0.299, 0.587, 0.114)
_COLOUR = ("brightness", "contrast", "saturation", "hue")


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(-3)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(-3)


def resize_matrix(start: torch.Tensor, extent: torch.Tensor, size: int, n_in: int, flip=None) -> torch.Tensor:
    """Bilinear (``align_corners=True``) resampling matrices ``(B, size, n_in)`` from the pixel span
    ``[start, start + extent - 1]`` onto ``size`` outputs, reversed where ``flip``."""
    j = torch.arange(size, device=start.device, dtype=torch.float32) / max(size - 1, 1)
    c = start.float()[:, None] + j[None, :] * (extent.float()[:, None] - 1)  # (B, size) source coords
    if flip is not None:
        c = torch.where(flip[:, None], c.flip(1), c)
    k = torch.arange(n_in, device=start.device, dtype=torch.float32)
    return (1 - (c[:, :, None] - k).abs()).clamp_min(0)


class FastSimCLRViews(nn.Module):
    """``n_views`` SimCLR views of a batch, view-major (row ``v * B + i`` is view ``v`` of image ``i``).

    Same arguments and distribution as :class:`~lightning_modules.views.kornia.SimCLRViews` (``shared``:
    one parameter draw per view for the whole batch), plus ``ratio`` (crop aspect-ratio range) and ``p_flip``.
    """

    def __init__(
        self,
        n_views: int = 2,
        size: int = 32,
        scale: Sequence[float] = (0.08, 1.0),
        jitter: Sequence[float] = (0.4, 0.4, 0.4, 0.1),
        p_jitter: float = 0.8,
        p_gray: float = 0.2,
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        p_flip: float = 0.5,
        shared: bool = False,
    ) -> None:
        super().__init__()
        if n_views < 1:
            raise ValueError(f"n_views must be >= 1, got {n_views}")
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"crop scale must satisfy 0 < min <= max, got {tuple(scale)}")
        self.n_views, self.size = n_views, size
        self.scale, self.ratio = tuple(float(s) for s in scale), tuple(float(r) for r in ratio)
        b, c, s, h = (float(j) for j in jitter)
        self.ranges = ((max(0.0, 1 - b), 1 + b), (max(0.0, 1 - c), 1 + c), (max(0.0, 1 - s), 1 + s), (-h, h))
        self.p_jitter, self.p_gray, self.p_flip, self.shared = p_jitter, p_gray, p_flip, shared

    def sample(self, batch: int, height: int, width: int, device: torch.device | str = "cpu") -> dict:
        """Draw per-image parameters on ``device`` (no host synchronization).

        Returns ``x0, y0, w, h`` (crop box in pixels), ``flip``, ``jitter`` (bool: colour jitter
        applied), ``brightness, contrast, saturation, hue`` (factors; hue in turns), ``order``
        (a CPU permutation of the four colour steps, one per call) and ``gray`` (bool).
        """
        dev = torch.device(device)
        area = (torch.rand(batch, 10, device=dev) * (self.scale[1] - self.scale[0]) + self.scale[0]) * height * width
        log_r = torch.empty(batch, 10, device=dev).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]))
        w = torch.sqrt(area * log_r.exp()).round()
        h = torch.sqrt(area / log_r.exp()).round()
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = ok & (ok.cumsum(1) == 1)  # the first of 10 tries that fits (torchvision / kornia rule)
        found = ok.any(1)
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w_ct, h_ct = float(width), float(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            w_ct, h_ct = float(round(height * max(self.ratio))), float(height)
        else:
            w_ct, h_ct = float(width), float(height)
        w = torch.where(found, (w * first).sum(1), torch.full_like(w[:, 0], w_ct)).clamp(1, width)
        h = torch.where(found, (h * first).sum(1), torch.full_like(h[:, 0], h_ct)).clamp(1, height)
        x0 = (torch.rand(batch, device=dev) * (width - w + 1)).floor()
        y0 = (torch.rand(batch, device=dev) * (height - h + 1)).floor()
        flip = torch.rand(batch, device=dev) < self.p_flip
        jitter = torch.rand(batch, device=dev) < self.p_jitter
        colour = {k: torch.empty(batch, device=dev).uniform_(*r) for k, r in zip(_COLOUR, self.ranges)}
        order, gray = torch.randperm(4), torch.rand(batch, device=dev) < self.p_gray
        return dict(x0=x0, y0=y0, w=w, h=h, flip=flip, jitter=jitter, **colour, order=order, gray=gray)

    def apply(self, x: torch.Tensor, p: dict) -> torch.Tensor:
        """Apply parameters from :meth:`sample` to ``x`` ``(B, 3, H, W)`` in ``[0, 1]``."""
        _, _, height, width = x.shape
        ry = resize_matrix(p["y0"], p["h"], self.size, height).to(x.dtype)
        rx = resize_matrix(p["x0"], p["w"], self.size, width, p["flip"]).to(x.dtype)
        out = torch.matmul(torch.matmul(ry[:, None], x), rx.transpose(1, 2)[:, None])  # (B, C, size, size)
        jit = out.clamp(0, 1)
        f = {k: p[k].to(x.dtype) for k in _COLOUR}
        steps = (
            lambda z: KE.adjust_brightness_accumulative(z, f["brightness"]),
            lambda z: KE.adjust_contrast_with_mean_subtraction(z, f["contrast"]),
            lambda z: KE.adjust_saturation_with_gray_subtraction(z, f["saturation"]),
            lambda z: KE.adjust_hue(z, f["hue"] * (2 * math.pi)),
        )
        for i in p["order"].tolist():  # a CPU tensor: no device sync
            jit = steps[i](jit)
        out = torch.where(p["jitter"].view(-1, 1, 1, 1), jit.clamp(0, 1), out)
        return torch.where(p["gray"].view(-1, 1, 1, 1), _gray(out).expand_as(out), out)

    def forward(self, x: torch.Tensor, n_views: int | None = None) -> torch.Tensor:
        n = n_views or self.n_views
        xr = x.repeat(n, 1, 1, 1)
        if not self.shared:
            return self.apply(xr, self.sample(xr.shape[0], xr.shape[-2], xr.shape[-1], xr.device)).clamp(0, 1)
        p = self.sample(n, xr.shape[-2], xr.shape[-1], xr.device)  # one draw per view, view-major rows
        rows = torch.arange(n, device=xr.device).repeat_interleave(x.shape[0])
        p = {k: (v if k == "order" else v[rows]) for k, v in p.items()}
        return self.apply(xr, p).clamp(0, 1)


VIEW_BACKENDS = ("kornia", "fast")


def make_views(
    n_views: int = 2, size: int = 32, scale: Sequence[float] = (0.08, 1.0), backend: str = "kornia", **options
) -> nn.Module:
    """SimCLR views by backend name (``kornia`` or ``fast``); ``options``: ``jitter``, ``p_jitter``,
    ``p_gray``, ``shared`` (both backends)."""
    if backend == "kornia":
        from .kornia import SimCLRViews

        return SimCLRViews(n_views, size, scale, **options)
    if backend == "fast":
        return FastSimCLRViews(n_views, size, scale, **options)
    raise ValueError(f"unknown views backend '{backend}'; choose one of {list(VIEW_BACKENDS)}")
