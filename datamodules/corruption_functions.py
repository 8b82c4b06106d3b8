"""The 15 common corruptions of CIFAR-10-C / ImageNet-C (Hendrycks & Dietterich, ICLR 2019) as batched
torch functions with the CIFAR-10-C severity parameters; their shared steps are in
:mod:`datamodules.corruption_ops`, how they differ from the official files in :mod:`datamodules.corruptions`.

Each is a pure ``f(x, severity, generator=None) -> x'`` on ``(B, 3, H, W)`` uint8 or ``[0, 1]`` float
batches (same dtype, shape and device out); randomness comes only from ``generator`` (the global RNG
when None), so a seed fixes the output on a given device. The parameters are calibrated for 32 x 32.

Example:
    >>> import torch
    >>> from datamodules.corruption_functions import CORRUPTION_FUNCTIONS, contrast
    >>> x = torch.tensor([0, 100, 200, 255], dtype=torch.uint8).view(1, 1, 2, 2).repeat(1, 3, 1, 1)
    >>> contrast(x, 5)[0, 0]  # (x - mean) * 0.15 + mean, floored to 8 bits
    tensor([[117, 132],
            [147, 156]], dtype=torch.uint8)
    >>> len(CORRUPTION_FUNCTIONS)
    15
"""

from __future__ import annotations

import io
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from lightning_modules.util import to_unit

from . import corruption_ops as ops

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

# Severity parameters of the CIFAR-10-C release (one entry per severity 1..5), keyed by the 15 corruptions
# as RobustBench names them, in the paper's order (noise, blur, weather, digital).
CIFAR_PARAMS: dict[str, list] = {
    "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],  # std of the added noise
    "shot_noise": [500, 250, 100, 75, 50],  # Poisson rate per unit intensity
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],  # salt & pepper amount
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],  # disk radius, alias blur
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],  # sigma, delta, iters
    "motion_blur": [(10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)],  # radius, sigma
    "zoom_blur": [np.arange(1, stop, 0.01) for stop in (1.06, 1.11, 1.16, 1.21, 1.26)],  # zoom factors averaged
    # loc, scale, zoom, threshold, blur radius, blur sigma, image weight
    "snow": [
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ],
    "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],  # image weight, frost weight
    "fog": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],  # fog weight, plasma wibble decay
    "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],  # added to HSV value
    "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],  # factor around the per-channel mean
    # elastic amplitude, elastic smoothing sigma, affine jitter (pixels; 32 * the published fractions)
    "elastic_transform": [
        tuple(32 * v for v in p)
        for p in ((0.0, 0.0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))
    ],
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],  # down-scale factor (PIL box filter both ways)
    "jpeg_compression": [80, 65, 58, 50, 40],  # JPEG quality
}
CORRUPTIONS: tuple[str, ...] = tuple(CIFAR_PARAMS)


# helpers
def _finish(y: torch.Tensor, like: torch.Tensor, rounding: str = "floor") -> torch.Tensor:
    """Back to the input's dtype. uint8 output floors like the original's ``np.uint8(float)``
    (a 1e-4 margin keeps float32 error from flooring an exact level to the one below)."""
    y = y.clamp(0, 1)
    if like.dtype != torch.uint8:
        return y.to(like.dtype)
    y = y * 255
    y = torch.round(y) if rounding == "round" else torch.floor(y + 1e-4)
    return y.clamp_(0, 255).to(torch.uint8)


def _params(name: str, x: torch.Tensor, severity: int):
    """The CIFAR-10-C parameters of ``name`` at ``severity``, once the batch and the severity are checked."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images (B, 3, H, W), got shape {tuple(x.shape)}")
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise ValueError(f"expected uint8 or float images, got {x.dtype}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    return CIFAR_PARAMS[name][severity - 1]


def _rand(shape, g: Optional[torch.Generator], device) -> torch.Tensor:
    return torch.rand(shape, generator=g, device=device)


# noise
def gaussian_noise(x: torch.Tensor, severity: int = 1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``x + N(0, c^2)`` per pixel and channel."""
    c, f = _params("gaussian_noise", x, severity), to_unit(x)
    return _finish(f + c * torch.randn(f.shape, generator=generator, device=f.device), x)


def shot_noise(x: torch.Tensor, severity: int = 1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``Poisson(c x) / c`` (photon noise)."""
    c, f = _params("shot_noise", x, severity), to_unit(x)
    return _finish(torch.poisson(f * c, generator=generator) / c, x)


def impulse_noise(x: torch.Tensor, severity: int = 1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Salt and pepper (skimage ``random_noise(mode='s&p')``): each value independently, per channel,
    is replaced with probability ``c`` by 0 or 1 (half each)."""
    c, f = _params("impulse_noise", x, severity), to_unit(x)
    flip = _rand(f.shape, generator, f.device) < c
    salt = _rand(f.shape, generator, f.device) < 0.5
    return _finish(torch.where(flip, salt.float(), f), x)


# blur
def defocus_blur(x: torch.Tensor, severity: int = 1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Correlate with an anti-aliased disk (cv2.filter2D, reflect-101 border). Deterministic."""
    k = ops.defocus_kernel(*_params("defocus_blur", x, severity)).to(x.device)
    f = to_unit(x)
    r = (k.shape[0] - 1) // 2
    y = F.conv2d(ops.pad_border(f, r, "reflect101"), k.view(1, 1, *k.shape).expand(3, 1, -1, -1), groups=3)
    return _finish(y, x)


def glass_blur(x: torch.Tensor, severity: int = 1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Gaussian blur, 8-bit rounding, local pixel shuffling (``iterations`` passes), Gaussian blur."""
    sigma, delta, iters = _params("glass_blur", x, severity)
    b, _, h, w = x.shape
    f = torch.floor(ops.gaussian_blur(to_unit(x), sigma) * 255 + 1e-4).clamp(0, 255)  # np.uint8(... * 255)
    nh, nw = len(range(h - delta, delta, -1)), len(range(w - delta, delta, -1))
    for _ in range(iters):
        offsets = torch.randint(-delta, delta, (b, nh, nw, 2), generator=generator, device=x.device)
        f = ops.glass_shuffle(f, offsets, delta)
    return _finish(ops.gaussian_blur(f / 255, sigma), x)


def motion_blur(x: torch.Tensor, severity: int = 1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """ImageMagick motion blur (Wand ``motion_blur(radius, sigma, angle)``), angle ~ U(-45, 45) per image."""
    radius, sigma = _params("motion_blur", x, severity)
    angle = _rand((x.shape[0],), generator, x.device) * 90 - 45
    return _finish(ops.directional_blur(to_unit(x), radius, sigma, angle), x, rounding="round")


def zoom_blur(x: torch.Tensor, severity: int = 1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Average of the image and its centre zooms by each factor. Deterministic."""
    zooms, f = _params("zoom_blur", x, severity), to_unit(x)
    out = f.clone()
    for z in zooms:
        out += ops.clipped_zoom(f, float(z))
    return _finish(out / (len(zooms) + 1), x)


# weather
def snow(x: torch.Tensor, severity: int = 1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A thresholded, zoomed Gaussian snow layer, motion-blurred at an angle ~ U(-135, -45), added
    twice (and rotated 180 degrees) over a whitened image."""
    loc, scale, zoom, thr, radius, sigma, keep = _params("snow", x, severity)
    f = to_unit(x)
    b, _, h, w = f.shape
    layer = loc + scale * torch.randn((b, 1, h, w), generator=generator, device=f.device)
    layer = ops.clipped_zoom(layer, zoom)
    layer = torch.where(layer < thr, torch.zeros_like(layer), layer)
    layer = torch.floor(layer.clamp(0, 1) * 255 + 1e-4) / 255  # 8-bit grey image
    angle = _rand((b,), generator, f.device) * 90 - 135
    layer = torch.round(ops.directional_blur(layer, radius, sigma, angle).clamp(0, 1) * 255) / 255
    gray = 0.299 * f[:, 0:1] + 0.587 * f[:, 1:2] + 0.114 * f[:, 2:3]
    f = keep * f + (1 - keep) * torch.maximum(f, gray * 1.5 + 0.5)
    return _finish(f + layer + layer.flip(-1, -2), x)


def frost(x: torch.Tensor, severity: int = 1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``c0 x + c1 frost`` with a random crop of one of five (procedural) frost textures per image."""
    c0, c1 = _params("frost", x, severity)
    f = to_unit(x)
    b, _, h, w = f.shape
    tex = ops.frost_textures(size=max(128, 4 * max(h, w))).to(f.device)
    n, _, th, tw = tex.shape
    which = torch.randint(0, n, (b,), generator=generator, device=f.device)
    oy = torch.randint(0, th - h, (b,), generator=generator, device=f.device)
    ox = torch.randint(0, tw - w, (b,), generator=generator, device=f.device)
    rows = (oy[:, None] + torch.arange(h, device=f.device))[:, :, None]
    cols = (ox[:, None] + torch.arange(w, device=f.device))[:, None, :]
    crop = tex.permute(0, 2, 3, 1)[which[:, None, None], rows, cols].permute(0, 3, 1, 2)
    return _finish(c0 * f + c1 * crop, x)


def fog(x: torch.Tensor, severity: int = 1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Add ``c0`` x a plasma fractal, then rescale by ``max / (max + c0)`` (max of each image)."""
    c0, decay = _params("fog", x, severity)
    f = to_unit(x)
    b, _, h, w = f.shape
    size = 1 << max(5, (max(h, w) - 1).bit_length())
    plasma = ops.plasma_fractal(b, size, decay, generator, f.device)[:, None, :h, :w]
    mx = f.amax((1, 2, 3), keepdim=True)
    return _finish((f + c0 * plasma) * mx / (mx + c0), x)


# digital
def brightness(x: torch.Tensor, severity: int = 1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """HSV value ``+ c`` (clipped at 1), hue and saturation kept: ``rgb * v' / v`` (grey ``v'`` where
    ``v = 0``), identical to skimage's rgb2hsv -> hsv2rgb round trip. Deterministic."""
    c, f = _params("brightness", x, severity), to_unit(x)
    v = f.amax(1, keepdim=True)
    v2 = (v + c).clamp(max=1)
    y = torch.where(v > 0, f * (v2 / v.clamp_min(1e-12)), v2.expand_as(f))
    return _finish(y, x)


def contrast(x: torch.Tensor, severity: int = 1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``(x - mean) c + mean`` with per-image, per-channel means. Deterministic."""
    c, f = _params("contrast", x, severity), to_unit(x)
    m = f.mean((2, 3), keepdim=True)
    return _finish((f - m) * c + m, x)


def elastic_transform(x: torch.Tensor, severity: int = 1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A random affine warp (three control points jittered by ``U(-c2, c2)`` px, bilinear,
    reflect-101) followed by a smooth random displacement field (``U(-1, 1)`` noise, Gaussian
    sigma ``c1``, truncate 3, times ``c0``; bilinear, symmetric border)."""
    amp, smooth, jitter = _params("elastic_transform", x, severity)
    f = to_unit(x)
    b, _, h, w = f.shape
    dev = f.device
    # affine: output pixel (x, y) samples the source at M^-1 (x, y), M maps pts1 -> pts2 (cv2 warpAffine)
    cy, cx = h // 2, w // 2
    s = min(h, w) // 3
    pts1 = torch.tensor([[cy + s, cx + s], [cy + s, cx - s], [cy - s, cx - s]], dtype=torch.float64, device=dev)
    pts2 = pts1 + (_rand((b, 3, 2), generator, dev).double() * 2 - 1) * jitter
    ones = torch.ones(b, 3, 1, dtype=torch.float64, device=dev)
    P = torch.cat([pts1.expand(b, 3, 2), ones], 2)  # rows (x, y, 1) per point (cv2 reads them as x, y)
    Q = torch.cat([pts2, ones], 2)
    inv = torch.linalg.solve(Q, P)  # row-vector map with Q @ inv = P: output control points -> source ones
    gy, gx = torch.meshgrid(*(torch.arange(n, device=dev, dtype=torch.float64) for n in (h, w)), indexing="ij")
    grid = torch.stack([gx, gy, torch.ones_like(gx)], -1).view(1, h * w, 3)
    src = grid @ inv  # (B, HW, 3): the source (x, y, 1) of every output pixel
    sx, sy = src[..., 0].view(b, h, w).float(), src[..., 1].view(b, h, w).float()
    f = ops.remap(f, sy, sx, "reflect101")
    # elastic displacement (dx drawn first, then dy, as in the original)
    if amp > 0:
        noise = _rand((b, 2, h, w), generator, dev) * 2 - 1
        disp = ops.gaussian_blur(noise, smooth, truncate=3.0, mode="symmetric") * amp
        dx, dy = disp[:, 0], disp[:, 1]
        f = ops.remap(f, gy.float() + dy, gx.float() + dx, "symmetric")
    return _finish(f, x)


def pixelate(x: torch.Tensor, severity: int = 1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Box down-scale to ``int(c H) x int(c W)`` and box up-scale back (PIL). Deterministic."""
    c = _params("pixelate", x, severity)
    h, w = x.shape[-2:]
    q = x.dtype == torch.uint8
    f = to_unit(x) * 255
    y = ops.pil_box_resize(ops.pil_box_resize(f, (int(h * c), int(w * c)), q), (h, w), q)
    return _finish(y / 255, x, rounding="round")


def jpeg_compression(x: torch.Tensor, severity: int = 1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """PIL JPEG encode/decode at quality ``c`` (one image at a time on the CPU: not batched; float
    inputs are rounded to 8 bits first). Deterministic."""
    from PIL import Image

    q = _params("jpeg_compression", x, severity)
    u8 = x if x.dtype == torch.uint8 else torch.round(x.float().clamp(0, 1) * 255).to(torch.uint8)
    arr = u8.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    out = np.empty_like(arr)
    for i, img in enumerate(arr):  # per image: PIL has no batched JPEG codec
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=q)
        buf.seek(0)
        out[i] = np.asarray(Image.open(buf).convert("RGB"))
    y = torch.from_numpy(out).permute(0, 3, 1, 2).to(x.device)
    return y if x.dtype == torch.uint8 else (y.float() / 255).to(x.dtype)


# every corruption's function carries its name
CORRUPTION_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {name: globals()[name] for name in CORRUPTIONS}
__all__ = ["CORRUPTIONS", "SEVERITIES", "CIFAR_PARAMS", "CORRUPTION_FUNCTIONS", *CORRUPTIONS]  # re-exported
