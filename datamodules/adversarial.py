"""Adversarial test sets stored in one file, reading side: the format, its checks and
:class:`AdversarialSetDataModule`, which serves a stored set for transfer evaluation (attack model A,
test model B) and reversal experiments. :mod:`lightning_modules.evaluation.adversarial_sets` crafts
and writes the sets (also a command); nothing here attacks or writes.

The file is a ``torch.save`` of tensors and plain metadata, so it loads with ``weights_only=True``:
``x_adv`` float32 ``(N, C, H, W)`` in ``[0, 1]``, exactly as the attack returned it (8-bit rounding
would move the points off the attack described); ``y`` int64 labels; ``idx`` int64 positions in the
source test set; ``x_clean`` (with ``save_clean``, uint8 when they came so); ``meta`` (``attack, eps,
alpha, steps, norm, loss, restarts, source_model, seed, dataset, n, batch_size, image_shape, clean_acc,
adv_acc, format, torch, created``). A file whose metadata differs from the request's ``expect`` is
refused, so a transfer table never silently mixes attacks or budgets.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> import torch
    >>> from datamodules.adversarial import AdversarialSetDataModule
    >>> from lightning_modules.evaluation.adversarial_sets import make_adversarial_set
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)).eval()
    >>> x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 10, (16,))
    >>> path = Path(tempfile.mkdtemp()) / "adv.pt"
    >>> meta = make_adversarial_set(net, x, y, path, attack="pgd", eps=8 / 255, steps=5,
    ...                             source_model="linear-demo", seed=0)
    >>> dm = AdversarialSetDataModule(str(path), expect={"attack": "pgd", "eps": 8 / 255}, image_shape=(3, 8, 8))
    >>> dm.setup("test"); xb, yb, ib = next(iter(dm.test_dataloader()))
    >>> xb.dtype, len(yb)
    (torch.float32, 16)
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any, Optional

import torch

from .base import ArrayDataModule, _take_first
from .files import DataFileError

FORMAT = 1
_REQUIRED_META = ("attack", "eps", "norm", "source_model", "seed", "n")


class AdversarialSetMismatch(DataFileError):
    """The file's metadata differs from what the caller expects; the message lists every key."""


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))
    return a == b


def check_metadata(meta: dict, expect: Optional[dict], path: str | Path = "adversarial set") -> None:
    """Raise :class:`AdversarialSetMismatch` listing every key of ``expect`` that ``meta`` lacks or
    holds with another value (floats compared to a relative 1e-6)."""
    if not expect:
        return
    bad = []
    for k, v in expect.items():
        if k not in meta:
            bad.append(f"{k}: expected {v!r}, file has no such key")
        elif not _same(meta[k], v):
            bad.append(f"{k}: expected {v!r}, file has {meta[k]!r}")
    if bad:
        raise AdversarialSetMismatch(f"{path}: metadata does not match the request:\n  " + "\n  ".join(bad))


def load_adversarial_set(path: str | Path, expect: Optional[dict] = None) -> dict:
    """Load and validate a file written by
    :func:`~lightning_modules.evaluation.adversarial_sets.make_adversarial_set` (``weights_only=True``),
    then check its metadata against ``expect``. Returns the dict (``x_adv, y, idx, meta[, x_clean]``)."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"adversarial set not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as e:
        raise DataFileError(
            f"{path}: not a readable adversarial-set file ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})"
        ) from e
    if not isinstance(obj, dict) or not isinstance(obj.get("meta"), dict):
        raise DataFileError(f"{path}: expected a dict with 'x_adv', 'y', 'idx' and 'meta'")
    missing = [k for k in ("x_adv", "y", "idx") if not isinstance(obj.get(k), torch.Tensor)]
    missing += [f"meta.{k}" for k in _REQUIRED_META if k not in obj["meta"]]
    if missing:
        raise DataFileError(f"{path}: missing {missing}")
    x, y, meta = obj["x_adv"], obj["y"], obj["meta"]
    if x.ndim != 4 or not x.is_floating_point():
        raise DataFileError(f"{path}: x_adv must be float (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    if y.ndim != 1 or len(y) != len(x) or len(obj["idx"]) != len(x) or meta["n"] != len(x):
        raise DataFileError(
            f"{path}: {len(x)} images but {len(y)} labels, {len(obj['idx'])} indices, meta n={meta['n']}"
        )
    if not torch.isfinite(x).all() or (len(x) and (x.min() < 0 or x.max() > 1)):
        raise DataFileError(f"{path}: x_adv holds values outside [0, 1] or NaN/inf")
    shape = meta.get("image_shape")
    if shape is not None and list(x.shape[1:]) != list(shape):
        raise DataFileError(
            f"{path}: x_adv holds images of shape {list(x.shape[1:])} but the file records image_shape "
            f"{list(shape)} (C, H, W): write the set again with the adversarial_sets tool"
        )
    if "x_clean" in obj and (not isinstance(obj["x_clean"], torch.Tensor) or obj["x_clean"].shape != x.shape):
        raise DataFileError(f"{path}: x_clean does not match x_adv's shape {tuple(x.shape)}")
    check_metadata(meta, expect, path)
    return obj


class AdversarialSetDataModule(ArrayDataModule):
    """A stored adversarial set as a test / validation / prediction set (batches ``(x, y, idx)``
    with float32 ``x`` in ``[0, 1]``, device-resident like the other array sets).

    Args:
        path: the file written by
            :func:`~lightning_modules.evaluation.adversarial_sets.make_adversarial_set`.
        expect: metadata the file must hold, e.g. ``{attack: pgd, eps: 0.0313725, source_model: X}``;
            any difference is refused with an error listing the keys.
        images: ``adversarial`` (default) or ``clean`` (the stored clean images, for a baseline).
        n_examples: the first N examples only (None or more than the set holds: all, said in one line).
        batch_size / eval_batch_size: batch sizes.
        image_shape: the (C, H, W) the model takes; a set of other images is refused naming the file.
    """

    num_classes = 10
    name = "adversarial"

    def __init__(
        self,
        path: str,
        expect: Optional[dict] = None,
        images: str = "adversarial",
        n_examples: Optional[int] = None,
        batch_size: int = 500,
        eval_batch_size: Optional[int] = None,
        seed: int = 0,
        image_shape: tuple[int, int, int] = (3, 32, 32),
    ) -> None:
        super().__init__(str(Path(path).parent), batch_size, eval_batch_size, 0, n_examples, False, seed)
        self.image_shape = tuple(int(v) for v in image_shape)
        if images not in ("adversarial", "clean"):
            raise ValueError(f"images must be 'adversarial' or 'clean', got '{images}'")
        self.path, self.expect, self.images = path, dict(expect or {}), images
        self.meta: dict = {}

    def load_split(self, split: str):
        raise ValueError("AdversarialSetDataModule only has a test split")

    def check_fits_the_model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Refuse, naming the file, images not ``image_shape`` (NHWC, one channel, 16x16) or labels outside
        ``[0, num_classes)``."""
        if tuple(x.shape[1:]) != self.image_shape:
            c, h, w = self.image_shape
            hint = " (channels last? store (N, C, H, W))" if x.ndim == 4 and x.shape[-1] == c else ""
            raise DataFileError(
                f"{self.path}: images of shape {tuple(x.shape[1:])}, expected (C, H, W) = {self.image_shape} "
                f"({c} channels of {h}x{w}){hint}: write the set from {c}-channel {h}x{w} test images"
            )
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise DataFileError(
                f"{self.path}: labels from {int(y.min())} to {int(y.max())}, expected 0..{self.num_classes - 1} "
                f"({self.num_classes} classes): the set was written for another data set"
            )

    def setup(self, stage: Optional[str] = None) -> None:
        if stage == "fit":
            raise ValueError("AdversarialSetDataModule is a test set: use `lightning test` / predict / validate")
        if "test" in self.splits:
            return
        obj = load_adversarial_set(self.path, self.expect)
        self.meta = obj["meta"]
        if self.images == "clean" and "x_clean" not in obj:
            raise DataFileError(f"{self.path}: no clean images stored (written with save_clean=False)")
        x, y = obj["x_adv"] if self.images == "adversarial" else obj["x_clean"], obj["y"]
        self.check_fits_the_model(x, y)
        if self.n_examples is not None:
            x, y = _take_first("n_examples", self.n_examples, x, y, f"{self.path} (an adversarial set)")
        self.splits["test"] = (x.contiguous(), y)
