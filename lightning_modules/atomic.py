"""Atomic file writes: the one home for "write a temporary file beside the target, flush it to disk,
then rename it over the target in one step", so a crash or a kill never leaves a half-written
result, report, checkpoint side file or data file. Free of Lightning.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from lightning_modules.atomic import atomic_write, atomic_write_text
    >>> d = Path(tempfile.mkdtemp())
    >>> atomic_write_text(d / "a" / "note.txt", "hello")
    >>> (d / "a" / "note.txt").read_text()
    'hello'
    >>> atomic_write(d / "b.bin", lambda f: f.write(b"xy"))
    >>> sorted(p.name for p in d.rglob("*"))  # no temporary file left behind
    ['a', 'b.bin', 'note.txt']
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional


def _size(n: float) -> str:
    """``_size(3.5e9)`` -> ``'3.3 GiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


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
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


__all__ = ["atomic_write", "atomic_write_text", "atomic_torch_save", "disk_full_error"]
