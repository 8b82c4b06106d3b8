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

import os
from pathlib import Path
from typing import Any, BinaryIO, Callable


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(f)`` on a binary file beside ``path``, fsync it and ``os.replace`` it onto ``path``
    (parent folders are made). On any error the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


__all__ = ["atomic_write", "atomic_write_text", "atomic_torch_save"]
