"""Common corruptions (Hendrycks & Dietterich, ICLR 2019) and a command that writes the CIFAR-10-C /
CIFAR-100-C layout from a CIFAR test set. The functions and their severity table live in
:mod:`datamodules.corruption_functions`, their steps in :mod:`datamodules.corruption_ops`; here are
:func:`corrupt`, the name and severity checks and the writer. Every public name of both is re-exported.

How a generated set differs from the official files is in :data:`DIFFERENCES` (also written to
``generation.json``). In short: torch's RNG draws other samples than numpy's, so no file is
byte-identical and per-set accuracies agree only up to the sampling spread (the deterministic
corruptions match scipy / PIL / colorsys references within one 8-bit level); **frost** blends
procedural textures, not the official photographs, so leave it out of comparisons with published
numbers; uint8 conversion floors as ``np.uint8`` does, with a 1e-4 margin against float32 error.
The official tables do not make every PSNR fall with severity (elastic_transform's jitter shrinks
while its field grows; glass_blur's stronger pre-blur makes severities 2-3 and 5 cost less than 1
and 4): inherited, not introduced here. Everything but JPEG (PIL, one image at a time) is batched.

Example:
    >>> import torch
    >>> from datamodules.corruptions import corrupt, CORRUPTIONS
    >>> x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    >>> g = torch.Generator().manual_seed(0)
    >>> y = corrupt(x, "fog", 3, g)
    >>> y.shape, y.dtype, len(CORRUPTIONS)
    (torch.Size([4, 3, 32, 32]), torch.uint8, 15)

Command line (writes ``labels.npy`` + one ``<corruption>.npy`` per corruption, atomically)::

    python -m datamodules.corruptions --data-dir data --out data/CIFAR-10-C [--device cuda] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from lightning_modules.util import atomic_write, atomic_write_text, time_left, to_unit

from . import corruption_functions, corruption_ops
from .corruption_functions import *  # noqa: F403  (the corruptions and their tables, re-exported)
from .corruption_functions import CORRUPTION_FUNCTIONS, CORRUPTIONS, SEVERITIES
from .corruption_ops import *  # noqa: F403  (their building blocks, re-exported)

# this module's names, then the corruptions with their tables and their building blocks
__all__ = ["DIFFERENCES", "corrupt", "check_corruptions", "check_severities", "psnr", "stream_seed", "main"]
__all__ += ["generate_cifar_c", *corruption_functions.__all__, *corruption_ops.__all__]

DIFFERENCES: dict[str, str] = {
    "all": "torch RNG instead of numpy's (same distributions, other draws); float32 instead of float64 "
    "arithmetic (a value that lands within 1e-4 of an integer level may floor to the other level).",
    "glass_blur": "faithful, including the original's pixel 'swap', which (numpy views) copies the up/left "
    "neighbour instead of swapping; Gaussian blur as skimage's (nearest border, truncate 4).",
    "motion_blur": "ImageMagick's one-sided Gaussian line kernel (width 2*radius+1, edge pixels) re-derived "
    "in torch instead of Wand; ImageMagick's internal 16-bit quantum is not modelled.",
    "snow": "the snow layer's motion blur as in motion_blur (no Wand/PNG round trip except 8-bit rounding).",
    "frost": "the official set blends crops of six frost PHOTOGRAPHS (not available here); this generator "
    "blends crops of five procedural frost textures (multi-scale noise + ice needles, blue-white "
    "tint, mean ~0.6) made from a fixed seed. Same blending weights; different texture statistics.",
    "elastic_transform": "cv2.warpAffine's bilinear weights are quantized to 1/32 px; here they are exact. Borders: "
    "reflect-101 for the affine part, symmetric for the elastic part, as in the original.",
    "fog": "faithful diamond-square plasma fractal (same wibble schedule), torch draws.",
    "jpeg_compression": "PIL encoder as in the original, one image at a time on the CPU (not batched).",
    "pixelate": "PIL box resize reproduced as matrices (with PIL's 8-bit rounding between passes).",
}


def check_corruptions(names: Optional[Sequence[str]]) -> list[str]:
    """Validate corruption names (None -> all 15); unknown names raise listing the valid ones."""
    if names is None:
        return list(CORRUPTIONS)
    if isinstance(names, str):
        names = [names]
    bad = [n for n in names if n not in CORRUPTIONS]
    if bad:
        raise ValueError(f"unknown corruption(s) {bad}; choose from {list(CORRUPTIONS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"corruptions listed twice: {list(names)}")
    return list(names)


def check_severities(sev: Optional[Sequence[int]]) -> list[int]:
    if sev is None:
        return list(SEVERITIES)
    if isinstance(sev, int):
        sev = [sev]
    bad = [s for s in sev if s not in SEVERITIES]
    if bad or len(set(sev)) != len(sev):
        raise ValueError(f"severities must be distinct values in {list(SEVERITIES)}, got {list(sev)}")
    return list(sev)


def corrupt(x: torch.Tensor, name: str, severity: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Apply corruption ``name`` at ``severity`` (1..5) to a batch; see the module docstring."""
    check_corruptions([name])
    return CORRUPTION_FUNCTIONS[name](x, severity, generator)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) between two batches (uint8 or [0, 1] floats); inf where identical."""
    mse = (to_unit(a) - to_unit(b)).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse)


# writing the CIFAR-C layout
def stream_seed(seed: int, name: str, severity: int) -> int:
    """The generator seed of one (corruption, severity): independent of which others are generated."""
    return (seed * 1_000_003 + CORRUPTIONS.index(name) * 101 + severity) % (2**63)


def generate_cifar_c(
    x: torch.Tensor,
    y: torch.Tensor | np.ndarray,
    out_dir: str | Path,
    corruptions: Optional[Sequence[str]] = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    batch_size: Optional[int] = None,
    verbose: bool = True,
) -> dict[str, float]:
    """Write the CIFAR-C layout for uint8 ``(N, 3, H, W)`` images ``x`` and labels ``y``, atomically:
    ``labels.npy`` (``5 N`` labels), ``<corruption>.npy`` (``(5 N, H, W, 3)`` uint8, severities 1..5
    stacked) and ``generation.json`` (settings, versions, seconds and mean PSNR per set (identical
    images count as 100 dB), :data:`DIFFERENCES`). Random corruptions consume their draws batch by
    batch: keep ``batch_size`` and the device to reproduce a file. Returns seconds per corruption."""
    names = check_corruptions(corruptions)
    x = torch.as_tensor(x)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"x must be uint8 (N, 3, H, W), got {x.dtype} {tuple(x.shape)}")
    y = np.asarray(y).astype(np.int64)
    if len(y) != len(x):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    device = torch.device(device)
    if batch_size is None:  # CPU: batches whose temporaries stay under glibc's mmap threshold (far less system time)
        batch_size = 10000 if device.type == "cuda" else 1000
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = np.tile(y, len(SEVERITIES))
    labels = labels.astype(np.uint8) if labels.max(initial=0) < 256 else labels
    atomic_write(out / "labels.npy", lambda f: np.save(f, labels, allow_pickle=False))
    times: dict[str, float] = {}
    psnrs: dict[str, dict[int, float]] = {}
    t_start = time.perf_counter()
    for k, name in enumerate(names, 1):
        fn = CORRUPTION_FUNCTIONS[name]
        t0 = time.perf_counter()
        parts = []
        for s in SEVERITIES:
            g = torch.Generator(device=device).manual_seed(stream_seed(seed, name, s))
            total = torch.zeros((), dtype=torch.float64, device=device)
            for i in range(0, len(x), batch_size):
                xb = x[i : i + batch_size].to(device, non_blocking=True)
                yb = fn(xb, s, g)
                total += psnr(yb, xb).clamp(max=100).double().sum()
                parts.append(yb.permute(0, 2, 3, 1).contiguous().cpu())
            psnrs.setdefault(name, {})[s] = round(float(total) / len(x), 3)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        arr = torch.cat(parts).numpy()
        times[name] = time.perf_counter() - t0
        atomic_write(out / f"{name}.npy", lambda f: np.save(f, arr, allow_pickle=False))
        if verbose:
            left = time_left(time.perf_counter() - t_start, k, len(names))
            print(f"[corruptions] {k}/{len(names)} {name:18s} {arr.shape} {times[name]:6.2f} s, {left}", flush=True)
    meta = {"generated_by": "datamodules.corruptions (not the official CIFAR-10-C release)", "seed": seed}
    meta.update(device=str(device), batch_size=batch_size, n_images=int(len(x)), severities=list(SEVERITIES))
    meta.update(corruptions=names, seconds=times, mean_psnr_db=psnrs, torch=str(torch.__version__))
    meta["differences_from_official"] = DIFFERENCES
    atomic_write_text(out / "generation.json", json.dumps(meta, indent=2))
    return times


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(
        description="Write CIFAR-10-C / CIFAR-100-C (all corruptions x 5 severities) "
        "from a CIFAR test set in the standard python layout."
    )
    p.add_argument("--data-dir", default="data", help="folder holding cifar-10-batches-py/ (or cifar-100-python/)")
    p.add_argument("--out", default=None, help="output folder (default DATA_DIR/CIFAR-10-C or CIFAR-100-C)")
    p.add_argument("--dataset", choices=["cifar10", "cifar100"], default="cifar10")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda when available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corruptions", nargs="*", default=None, help=f"subset of {' '.join(CORRUPTIONS)}")
    p.add_argument("--n-examples", type=int, default=None, help="first N test images only (quick runs)")
    p.add_argument("--batch-size", type=int, default=None, help="images per call (default 10000 on CUDA, 1000 on CPU)")
    a = p.parse_args(argv)
    from .cifar import CIFAR10DataModule, CIFAR100DataModule

    dm_cls = CIFAR10DataModule if a.dataset == "cifar10" else CIFAR100DataModule
    x, y = dm_cls(data_dir=a.data_dir, strict_counts=a.n_examples is None).load_split("test")
    if a.n_examples is not None:
        x, y = x[: a.n_examples], y[: a.n_examples]
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    out = a.out or str(Path(a.data_dir) / ("CIFAR-10-C" if a.dataset == "cifar10" else "CIFAR-100-C"))
    t0 = time.perf_counter()
    generate_cifar_c(torch.from_numpy(np.ascontiguousarray(x)), y, out, a.corruptions, device, a.seed, a.batch_size)
    print(
        f"wrote {out} ({len(x)} images x {len(a.corruptions or CORRUPTIONS)} corruptions x 5 severities) "
        f"in {time.perf_counter() - t0:.1f} s on {device}"
    )


if __name__ == "__main__":
    main()
