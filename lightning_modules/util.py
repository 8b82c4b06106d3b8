"""Small helpers used across the package, free of Lightning: one line to the user; budgets (``8/255``)
read and written; atomic file writes (a temporary file beside the target, flushed, then renamed over it
in one step, so a crash or a kill never leaves a half-written result, report or data file); images as
the models take them (float in ``[0, 1]``; uint8 is converted); time-left estimates for progress lines.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from lightning_modules.util import atomic_write, atomic_write_text, duration, eps_label, parse_eps
    >>> parse_eps("8/255") == 8 / 255, eps_label(8 / 255), eps_label(0.5, "L2")
    (True, '8/255', '0.5')
    >>> d = Path(tempfile.mkdtemp())
    >>> atomic_write_text(d / "a" / "note.txt", "hello")
    >>> atomic_write(d / "b.bin", lambda f: f.write(b"xy"))
    >>> (d / "a" / "note.txt").read_text(), sorted(p.name for p in d.rglob("*"))  # no temporary file left
    ('hello', ['a', 'b.bin', 'note.txt'])
    >>> to_unit(torch.tensor([0, 51, 255], dtype=torch.uint8))
    tensor([0.0000, 0.2000, 1.0000])
    >>> check_pixels(torch.tensor([0.5, 1.5]), "batch")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: batch pixels must lie in [0, 1] (got min 0.5, max 1.5); pass uint8 images or divide by 255 ...
    >>> duration(42), duration(190), duration(7200), time_left(elapsed=60.0, done=1, total=4)
    ('42 s', '3.2 min', '2.0 h', 'about 3.0 min left')
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional, Union

import torch

from .attacks.core import ThreatModel


def say(message: str) -> None:
    """One line on stderr from the first process only (rank from the launcher's environment, so it
    works before the Trainer exists); plain ``print`` so no logging setup can swallow it."""
    if all(os.environ.get(k, "0") == "0" for k in ("LOCAL_RANK", "NODE_RANK", "RANK")):
        print(message, file=sys.stderr, flush=True)


def parse_eps(value: Union[float, int, str]) -> float:
    """``0.0314``, ``"8/255"`` or ``"0.5"`` -> float (the one parser of budgets in the package)."""
    if isinstance(value, str):
        v = value.strip()
        try:
            if "/" in v:
                num, den = v.split("/", 1)
                return float(num) / float(den)
            return float(v)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"cannot read the budget '{value}': give a number (0.5) or a fraction (8/255)") from None
    return float(value)


def eps_label(eps: float, norm: str = "Linf") -> str:
    """``8/255`` for L-inf budgets that are (close to) multiples of 1/255, else ``0.5``."""
    k = eps * 255
    if ThreatModel(norm) is ThreatModel.Linf and abs(k - round(k)) < 1e-3 and eps > 0:
        return f"{int(round(k))}/255"
    if eps == 0:
        return "0"
    frac = Fraction(eps).limit_denominator(1000)
    return f"{eps:.4g}" if abs(float(frac) - eps) > 1e-9 or frac.denominator == 1 else f"{eps:g}"


def _size(n: float) -> str:
    """``_size(3.5e9)`` -> ``'3.3 GiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def disk_full_error(path: Path, needed: Optional[int], at_least: bool = False) -> OSError:
    """The error for a write of ``path`` that ran out of space: how much it needed, how much is free, where.

    Example:
        >>> import tempfile
        >>> e = disk_full_error(Path(tempfile.mkdtemp()) / "x.ckpt", 3 * 2**20)
        >>> e.errno == errno.ENOSPC and "needs about 3.0 MiB" in str(e) and "free space there" in str(e)
        True
    """
    folder = Path(path).resolve().parent
    where = next((p for p in (folder, *folder.parents) if p.exists()), folder)
    free = shutil.disk_usage(where).free
    need = f"needs {'more than' if at_least else 'about'} {_size(needed)}" if needed else "needs more space"
    return OSError(
        errno.ENOSPC,
        f"no space left on the disk to write {path}: it {need}, {_size(free)} free in {where}; free space "
        "there or write elsewhere (e.g. --trainer.default_root_dir DIR); the partial file was removed",
    )


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(f)`` on a binary file beside ``path``, fsync it and ``os.replace`` it onto ``path``
    (parent folders are made). On any error the temporary file is removed and ``path`` is untouched; a full
    disk raises :func:`disk_full_error`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        written = tmp.stat().st_size if tmp.exists() else 0
        raise disk_full_error(path, written or None, at_least=True) from None
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``[0, 255]`` -> float ``[0, 1]``; other dtypes -> float (range checked by :func:`check_pixels`)."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


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


def duration(seconds: float) -> str:
    """Seconds under 90, minutes under 1.5 hours, hours beyond."""
    s = max(float(seconds), 0.0)
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min" if s < 5400 else f"{s / 3600:.1f} h"


def time_left(elapsed: float, done: float, total: float) -> str:
    """``about X left`` at the rate so far (``done`` of ``total`` units in ``elapsed`` seconds)."""
    if done <= 0:
        return "time left unknown"
    return f"about {duration(elapsed / done * max(total - done, 0))} left"


__all__ = ["say", "parse_eps", "eps_label", "atomic_write", "atomic_write_text", "atomic_torch_save", "disk_full_error"]
__all__ += ["to_unit", "module_inputs", "check_pixels", "duration", "time_left"]
