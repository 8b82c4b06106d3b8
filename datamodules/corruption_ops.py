"""Image-processing steps of the common corruptions (:mod:`datamodules.corruptions`) as batched torch:
border modes, separable Gaussian blur as matrix products, bilinear remapping, zoom, ImageMagick's
motion blur, the defocus disk, the glass-blur shuffle, frost textures, plasma fractals and PIL's box
resize. Each re-derives the reference library's definition (scipy / skimage / cv2 / PIL / ImageMagick),
so the corruptions need none of them (PIL excepted, for its box weights).

Example:
    >>> import torch
    >>> from datamodules.corruption_ops import gaussian_blur, gaussian_kernel1d, pil_box_resize
    >>> gaussian_kernel1d(1.0).shape  # radius int(4 * sigma + 0.5) = 4
    torch.Size([9])
    >>> flat = torch.full((2, 3, 8, 8), 0.25)
    >>> bool(torch.allclose(gaussian_blur(flat, 1.5), flat))  # a blur keeps a constant image
    True
    >>> pil_box_resize(torch.full((1, 3, 8, 8), 200.0), (4, 4)).unique()
    tensor([200.])
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

# re-exported by datamodules.corruptions
__all__ = ["gaussian_kernel1d", "blur_matrix", "gaussian_blur", "remap", "clipped_zoom", "motion_blur_kernel"]
__all__ += ["directional_blur", "defocus_kernel", "glass_shuffle", "frost_textures", "plasma_fractal", "pil_box_resize"]


def _fold(i: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """Map integer positions onto ``[0, n)`` for a border mode: ``edge`` (replicate), ``reflect101``
    (cv2 default, scipy 'mirror': d c b | a b c d) or ``symmetric`` (scipy 'reflect': b a | a b)."""
    if mode == "edge" or n == 1:
        return i.clamp(0, n - 1)
    if mode == "reflect101":
        p = 2 * n - 2
        m = torch.remainder(i, p)
        return torch.where(m >= n, p - m, m)
    if mode == "symmetric":
        p = 2 * n
        m = torch.remainder(i, p)
        return torch.where(m >= n, p - 1 - m, m)
    raise ValueError(f"unknown border mode '{mode}'")


def pad_border(x: torch.Tensor, r: int, mode: str) -> torch.Tensor:
    """Pad the last two dims by ``r`` with a border mode of :func:`_fold` (any ``r``)."""
    h, w = x.shape[-2:]
    if r == 0:
        return x
    if mode in ("edge", "reflect101") and (mode == "edge" or r < min(h, w)) and x.is_floating_point():
        return F.pad(x, (r, r, r, r), mode="replicate" if mode == "edge" else "reflect")
    rows = _fold(torch.arange(-r, h + r, device=x.device), h, mode)
    cols = _fold(torch.arange(-r, w + r, device=x.device), w, mode)
    return x.index_select(-2, rows).index_select(-1, cols)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0, device=None) -> torch.Tensor:
    """scipy.ndimage / skimage Gaussian weights: radius ``int(truncate * sigma + 0.5)``, normalized."""
    r = int(truncate * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=torch.float64, device=device)
    k = torch.exp(-0.5 * (t / sigma) ** 2) if sigma > 0 else (t == 0).double()
    return (k / k.sum()).float()


@lru_cache(maxsize=64)
def blur_matrix(n: int, sigma: float, truncate: float = 4.0, mode: str = "edge") -> torch.Tensor:
    """``(n, n)`` matrix of a 1-D Gaussian filter with the border folded in: ``M @ v`` filters ``v``."""
    k = gaussian_kernel1d(sigma, truncate).double()
    r = (len(k) - 1) // 2
    i = torch.arange(n)[:, None]
    j = _fold(i + torch.arange(-r, r + 1)[None], n, mode)  # (n, 2r+1) source positions
    m = torch.zeros(n, n, dtype=torch.float64)
    m.scatter_add_(1, j, k.expand(n, -1).contiguous())
    return m.float()


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0, mode: str = "edge") -> torch.Tensor:
    """Separable Gaussian blur of float ``(..., H, W)`` as two matrix products (borders folded in);
    skimage ``gaussian`` / scipy ``gaussian_filter`` with mode 'nearest' = ``edge``, 'reflect' =
    ``symmetric``, 'mirror' = ``reflect101``."""
    if int(truncate * sigma + 0.5) == 0:
        return x
    h, w = x.shape[-2:]
    mh = blur_matrix(h, float(sigma), float(truncate), mode).to(x.device)
    mw = mh if w == h else blur_matrix(w, float(sigma), float(truncate), mode).to(x.device)
    return mh @ x @ mw.T


def _grid(coord: torch.Tensor, n: int, align_corners: bool) -> torch.Tensor:
    return coord * (2 / (n - 1)) - 1 if align_corners else (2 * coord + 1) / n - 1


def remap(x: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, mode: str = "reflect101") -> torch.Tensor:
    """Bilinear sampling ``out[b, :, i, j] = x[b, :, ys[b, i, j], xs[b, i, j]]`` (pixel coordinates)
    with a border mode applied to the neighbours, as cv2.remap (``reflect101``) and scipy
    map_coordinates(order=1, mode='reflect') (``symmetric``) do. Uses ``grid_sample``: its reflection
    padding equals reflect-101 with ``align_corners=True`` and symmetric with ``False``."""
    if mode not in ("reflect101", "symmetric"):
        raise ValueError(f"remap supports reflect101 and symmetric borders, got '{mode}'")
    h, w = x.shape[-2:]
    ac = mode == "reflect101"
    grid = torch.stack([_grid(xs, w, ac), _grid(ys, h, ac)], -1)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="reflection", align_corners=ac)


def clipped_zoom(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """Zoom into the centre by ``zoom`` >= 1 keeping the size, as the original's ``clipped_zoom``:
    crop ``ceil(h / zoom)``, linear zoom with scipy's (corner-aligned) grid to ``round(crop * zoom)``,
    trim the centre."""
    h = x.shape[-2]
    ch = int(math.ceil(h / zoom))
    top = (h - ch) // 2
    crop = x[..., top : top + ch, top : top + ch]
    out = int(round(ch * zoom))
    if out != ch:
        crop = F.interpolate(crop, size=(out, out), mode="bilinear", align_corners=True)
    t = (out - h) // 2
    return crop[..., t : t + h, t : t + h]


def motion_blur_kernel(radius: int, sigma: float) -> torch.Tensor:
    """ImageMagick's motion-blur weights: one-sided Gaussian over ``2 * radius + 1`` taps, normalized."""
    width = 2 * int(math.ceil(radius)) + 1
    i = torch.arange(width, dtype=torch.float64)
    k = torch.exp(-(i * i) / (2 * sigma * sigma))
    return (k / k.sum()).float()


def directional_blur(x: torch.Tensor, radius: int, sigma: float, angle_deg: torch.Tensor) -> torch.Tensor:
    """Blur each image along its own angle (degrees): ``out(p) = sum_i k_i x(p + round(i * dir))`` with
    ImageMagick's offsets ``ceil(i cos a - 0.5), ceil(i sin a - 0.5)`` and edge pixels outside."""
    b, c, h, w = x.shape
    k = motion_blur_kernel(radius, sigma).tolist()
    a = torch.deg2rad(angle_deg.double())
    cos, sin = torch.cos(a), torch.sin(a)
    rows0, cols0 = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    flat = x.reshape(b, c, h * w)
    out = torch.zeros_like(x)
    for i, ki in enumerate(k):
        if ki < 1e-7:  # the kernel is a decreasing Gaussian: the rest adds < 1e-7 per tap
            break
        ox = torch.ceil(i * cos - 0.5).long()
        oy = torch.ceil(i * sin - 0.5).long()
        rows = (rows0[None] + oy[:, None]).clamp(0, h - 1)  # (B, H)
        cols = (cols0[None] + ox[:, None]).clamp(0, w - 1)  # (B, W)
        idx = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, -1).expand(b, c, -1)
        out += ki * flat.gather(2, idx).view(b, c, h, w)
    return out


@lru_cache(maxsize=32)
def defocus_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """The original's ``disk``: an aliased disk on a 17 x 17 grid (``(2r+1)^2`` beyond r = 8),
    normalized, then cv2.GaussianBlur 3 x 3 (5 x 5 beyond r = 8) with sigma ``alias_blur``,
    trimmed to its non-zero support (filtering is unchanged)."""
    n = 8 if radius <= 8 else int(radius)
    ks = 3 if radius <= 8 else 5
    L = torch.arange(-n, n + 1, dtype=torch.float64)
    Y, X = torch.meshgrid(L, L, indexing="ij")
    disk = ((X**2 + Y**2) <= radius**2).double()
    disk /= disk.sum()
    t = torch.arange(ks, dtype=torch.float64) - (ks - 1) / 2
    g = torch.exp(-(t**2) / (2 * alias_blur**2))
    g /= g.sum()
    r = ks // 2
    dp = pad_border(disk[None, None], r, "reflect101")
    k = F.conv2d(F.conv2d(dp, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))[0, 0]
    nz = (k.abs() > 0).nonzero()
    m = int((nz - n).abs().max())  # symmetric trim keeps the centre
    return k[n - m : n + m + 1, n - m : n + m + 1].float()


def glass_shuffle(x: torch.Tensor, offsets: torch.Tensor, delta: int) -> torch.Tensor:
    """One pass of the original's local pixel shuffle. The original walks ``h, w`` from ``H - delta``
    down to ``delta + 1`` and 'swaps' pixel ``(h, w)`` with ``(h + dy, w + dx)`` through numpy views,
    which copies the neighbour into ``(h, w)`` and leaves the neighbour unchanged; since the
    neighbours (``dy, dx in [-delta, delta)``) are visited later, the pass equals one parallel gather.
    ``offsets``: ``(B, n, n, 2)`` integer ``(dx, dy)`` for the ``n = H - 2 delta`` positions in that order."""
    b, c, h, w = x.shape
    pos_h = torch.arange(h - delta, delta, -1, device=x.device)
    pos_w = torch.arange(w - delta, delta, -1, device=x.device)
    src_h = pos_h[None, :, None] + offsets[..., 1]  # (B, n, n)
    src_w = pos_w[None, None, :] + offsets[..., 0]
    rows = torch.arange(h, device=x.device).view(1, h, 1).expand(b, h, w).clone()
    cols = torch.arange(w, device=x.device).view(1, 1, w).expand(b, h, w).clone()
    rows[:, pos_h[:, None], pos_w[None, :]] = src_h
    cols[:, pos_h[:, None], pos_w[None, :]] = src_w
    idx = (rows * w + cols).view(b, 1, -1).expand(b, c, -1)
    return x.reshape(b, c, h * w).gather(2, idx).view(b, c, h, w)


@lru_cache(maxsize=4)
def frost_textures(n: int = 5, size: int = 128, seed: int = 20190101) -> torch.Tensor:
    """``n`` procedural frost textures ``(n, 3, size, size)`` in ``[0, 1]`` (CPU, fixed seed, so every
    device and run gets the same ones): smooth multi-scale density, ice needles drawn as short
    random line segments at many angles, a blue-white tint. Stand-ins for the original's frost
    photographs (not available here); see :data:`datamodules.corruptions.DIFFERENCES`."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        # density: sum of up-sampled noise octaves
        dens = torch.zeros(1, 1, size, size)
        for o in range(5):
            noise = torch.randn(1, 1, 4 * 2**o, 4 * 2**o, generator=g)
            dens += 0.6**o * F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)
        dens = (dens - dens.min()) / (dens.max() - dens.min())
        # needles: sparse seeds smeared along a random direction each (one-sided line kernels)
        needles = torch.zeros(1, 1, size, size)
        for _ in range(12):
            theta = float(torch.rand((), generator=g)) * math.pi
            length = int(torch.randint(6, 12, (), generator=g))
            k = torch.zeros(2 * length + 1, 2 * length + 1)
            for t in range(2 * length + 1):
                r = t / 2
                k[length + round(r * math.sin(theta)), length + round(r * math.cos(theta))] = 1 - 0.6 * r / length
            seeds = (torch.rand(1, 1, size, size, generator=g) < 0.002 + 0.012 * dens).float()
            seeds *= 0.5 + 0.5 * torch.rand(1, 1, size, size, generator=g)
            needles += F.conv2d(pad_border(seeds, length, "symmetric"), k.view(1, 1, *k.shape))
        needles = gaussian_blur(needles.clamp(0, 1.5), 0.5)
        tex = (0.25 + 0.45 * dens**1.5 + 0.45 * needles).clamp(0, 1)
        tex = (tex + 0.04 * torch.randn(1, 1, size, size, generator=g)).clamp(0, 1)  # grain
        out.append((tex * torch.tensor([0.84, 0.92, 1.0]).view(1, 3, 1, 1)).clamp(0, 1))  # blue-white tint
    return torch.cat(out)


def plasma_fractal(batch: int, mapsize: int = 32, wibbledecay: float = 3, generator=None, device=None) -> torch.Tensor:
    """Diamond-square plasma fractals ``(batch, mapsize, mapsize)`` in ``[0, 1]`` (toroidal), with the
    original's schedule: offsets ``wibble * U(-wibble, wibble)``, wibble from 100, divided by
    ``wibbledecay`` each level; each map rescaled to span ``[0, 1]``."""
    if mapsize & (mapsize - 1):
        raise ValueError(f"mapsize must be a power of 2, got {mapsize}")
    m = torch.zeros(batch, mapsize, mapsize, dtype=torch.float64, device=device)
    step, wibble = mapsize, 100.0

    def wmean(a: torch.Tensor) -> torch.Tensor:
        u = torch.rand(a.shape, generator=generator, device=device, dtype=torch.float64) * 2 - 1
        return a / 4 + wibble * wibble * u

    while step >= 2:
        half = step // 2
        corners = m[:, 0::step, 0::step]
        sq = corners + corners.roll(-1, 1)
        sq = sq + sq.roll(-1, 2)
        m[:, half::step, half::step] = wmean(sq)
        dr, ul = m[:, half::step, half::step], m[:, 0::step, 0::step]
        m[:, 0::step, half::step] = wmean(dr + dr.roll(1, 1) + ul + ul.roll(-1, 2))
        m[:, half::step, 0::step] = wmean(dr + dr.roll(1, 2) + ul + ul.roll(-1, 1))
        step //= 2
        wibble /= wibbledecay
    m = m - m.amin((1, 2), keepdim=True)
    return (m / m.amax((1, 2), keepdim=True)).float()


@lru_cache(maxsize=64)
def _pil_box_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """``(n_out, n_in)`` weights of PIL's BOX resize along one axis (read off PIL itself)."""
    from PIL import Image

    eye = Image.fromarray(np.eye(n_in, dtype=np.float32))  # mode "F"
    return torch.from_numpy(np.asarray(eye.resize((n_out, n_in), Image.BOX), dtype=np.float64).T.copy()).float()


def pil_box_resize(f255: torch.Tensor, size: tuple[int, int], quantize: bool = True) -> torch.Tensor:
    """PIL ``Image.resize(size[::-1], Image.BOX)`` on float ``[0, 255]`` ``(B, C, H, W)``: horizontal
    pass, (8-bit rounding), vertical pass, (8-bit rounding), as PIL does for uint8 images."""
    h, w = f255.shape[-2:]
    rw = _pil_box_matrix(w, size[1]).to(f255.device)
    rh = _pil_box_matrix(h, size[0]).to(f255.device)

    def rounded(y: torch.Tensor) -> torch.Tensor:
        return torch.floor(y + 0.5).clamp(0, 255) if quantize else y

    return rounded(rh @ rounded(f255 @ rw.T))
