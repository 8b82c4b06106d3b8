"""Reading data files safely, with checks that name the bad file. The CIFAR "python version" files
are pickles, and ``pickle.load`` on a planted file can run arbitrary code, so :func:`safe_unpickle`
only rebuilds the types those files contain (dicts, lists, strings, numbers, numpy arrays).

Example:
    >>> from datamodules.files import read_cifar_batches
    >>> x, y = read_cifar_batches(["data/cifar-10-batches-py/test_batch"], num_classes=10)  # doctest: +SKIP
    >>> x.shape, x.dtype  # doctest: +SKIP
    ((10000, 3, 32, 32), dtype('uint8'))
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np


class DataFileError(ValueError):
    """A data file is missing, unreadable or malformed; the message names the file."""


# (module, name) pairs a CIFAR pickle may reference: numpy's array reconstruction only.
_ALLOWED_GLOBALS = {
    (m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")
}
_ALLOWED_GLOBALS |= {("numpy", "ndarray"), ("numpy", "dtype"), ("builtins", "bytearray"), ("_codecs", "encode")}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load global '{module}.{name}': data files may only hold arrays, "
            "lists, dicts, strings and numbers (a pickle naming other objects can run code)"
        )


def safe_unpickle(path: str | Path) -> object:
    """Unpickle ``path`` allowing only plain data and numpy arrays; :class:`DataFileError` naming the
    file when it is missing, truncated or references any other Python object (how a pickle runs code)."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"data file not found: {path}")
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise DataFileError(f"{path}: {e}") from e
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
        raise DataFileError(f"{path}: corrupt or truncated pickle ({type(e).__name__}: {e})") from e


def _get(d: dict, key: str):
    for k in (key, key.encode()):
        if k in d:
            return d[k]
    raise KeyError(key)


def read_cifar_batches(
    paths: Sequence[str | Path], num_classes: int, label_key: str = "labels"
) -> tuple[np.ndarray, np.ndarray]:
    """Read CIFAR python-layout batch files into ``(N, 3, 32, 32)`` uint8 images and int64 labels, each
    checked for structure (no md5, so re-encoded copies load): ``data`` uint8 ``(n, 3072)``, ``n`` labels."""
    xs, ys = [], []
    for p in paths:
        d = safe_unpickle(p)
        if not isinstance(d, dict):
            raise DataFileError(f"{p}: expected a dict with 'data' and '{label_key}', got {type(d).__name__}")
        try:
            data, labels = _get(d, "data"), _get(d, label_key)
        except KeyError as e:
            raise DataFileError(f"{p}: missing key {e} (expected 'data' and '{label_key}')") from None
        data = np.asarray(data)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataFileError(f"{p}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {tuple(data.shape)}")
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != len(data):
            raise DataFileError(f"{p}: {len(data)} images but labels of shape {tuple(labels.shape)}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataFileError(f"{p}: labels must be integers, got {labels.dtype}")
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataFileError(f"{p}: labels out of range [0, {num_classes}): min {labels.min()}, max {labels.max()}")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels.astype(np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def check_count(what: str, got: int, expected: int | None, where: Iterable[Path | str]) -> None:
    if expected is not None and got != expected:
        files = ", ".join(str(p) for p in where)
        raise DataFileError(f"{what}: expected {expected} images, found {got} in {files}")
