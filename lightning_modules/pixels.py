"""Images as the package's models take them: float in ``[0, 1]`` (uint8 ``[0, 255]`` is converted).
One home for the conversion and the check, free of Lightning.

Example:
    >>> import torch
    >>> to_unit(torch.tensor([0, 51, 255], dtype=torch.uint8))
    tensor([0.0000, 0.2000, 1.0000])
    >>> check_pixels(torch.tensor([0.5, 1.5]), "batch")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: batch pixels must lie in [0, 1] (got min 0.5, max 1.5); pass uint8 images or divide by 255 ...
"""

from __future__ import annotations

import torch


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``[0, 255]`` -> float ``[0, 1]``; other dtypes -> float (range checked by :func:`check_pixels`)."""
    if x.dtype == torch.uint8:
        return x.float().div_(255)
    return x.float()


def module_inputs(module: object, x: torch.Tensor) -> torch.Tensor:
    """A batch as ``module`` takes it: its own ``_prep`` (the package's modules: ``[0, 1]`` floats, memory
    format) when it has one, else :func:`to_unit` (for callbacks run on other LightningModules)."""
    prep = getattr(module, "_prep", None)
    return prep(x) if callable(prep) else to_unit(x)


def check_pixels(x: torch.Tensor, what: str = "input") -> None:
    """Raise a clear error for NaN/inf pixels or float values outside ``[0, 1]``."""
    if x.dtype == torch.uint8:
        return
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} holds NaN or inf pixels ({int((~torch.isfinite(x)).sum())} values)")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise ValueError(
            f"{what} pixels must lie in [0, 1] (got min {lo:.4g}, max {hi:.4g}); "
            "pass uint8 images or divide by 255 (normalization happens inside the model)"
        )
