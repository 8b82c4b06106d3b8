"""Common-corruption test sets in the RobustBench layouts: CIFAR-10-C, CIFAR-100-C and ImageNet-C.

- ``CIFAR-10-C/`` (``CIFAR-100-C/``): ``labels.npy`` (``5 n`` labels as in the official files, or
  ``n``) and one ``<corruption>.npy`` per corruption, uint8 NHWC ``(5 n, 32, 32, 3)``, the 5 severities
  stacked in order (n = 10,000 officially; any n for generated sets).
- ``ImageNet-C/<corruption>/<severity>/<wnid>/*.JPEG`` (224 x 224), optionally RobustBench's 5,000 images.

The test loaders are a LIST, one per (corruption, severity), named in ``test_set_names`` like
``"gaussian_noise/3"``; :class:`~callbacks.corruption_report.CorruptionReport` tabulates them.

Example:
    >>> from datamodules.corruption_sets import CIFAR10CDataModule
    >>> dm = CIFAR10CDataModule("data", corruptions=["fog", "snow"], severities=[3, 5])  # doctest: +SKIP
    >>> dm.setup("test"); dm.test_set_names  # doctest: +SKIP
    ['fog/3', 'fog/5', 'snow/3', 'snow/5']
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from .base import ArrayDataModule
from .cifar import CIFAR10_CLASSES
from .corruptions import CORRUPTIONS, SEVERITIES, check_corruptions, check_severities
from .device_loader import DeviceLoader
from .files import DataFileError
from .imagenet import ImageListDataset, class_index_map, eval_transform, find_samples, read_subset

__all__ = ["CORRUPTIONS", "SEVERITIES", "CIFAR10CDataModule", "CIFAR100CDataModule", "ImageNetCDataModule", "load_npy"]
__all__ += ["read_cifar_c"]


def load_npy(path: Path) -> np.ndarray:
    """Memory-map a ``.npy`` file without pickles; errors name the file."""
    if not path.is_file():
        raise DataFileError(f"file not found: {path}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataFileError(f"{path}: not a readable .npy array ({type(e).__name__}: {e})") from e


def read_cifar_c(
    folder: str | Path, corruption: str, severities: list[int], n_examples: Optional[int], num_classes: int
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Read one corruption file of a CIFAR-C folder: ``{severity: (x uint8 (k, 3, H, W), y int64 (k,))}``
    for the first ``k = n_examples`` (or all ``n``) images of each requested severity."""
    folder = Path(folder)
    lpath, xpath = folder / "labels.npy", folder / f"{corruption}.npy"
    labels, x = load_npy(lpath), load_npy(xpath)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataFileError(f"{lpath}: labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
        raise DataFileError(f"{xpath}: expected uint8 images (N, H, W, 3) (NHWC), got {x.dtype} {x.shape}")
    rows = x.shape[0]
    if rows == 0 or rows % len(SEVERITIES):
        raise DataFileError(f"{xpath}: {rows} rows is not 5 severities x n images")
    n = rows // len(SEVERITIES)
    if len(labels) not in (rows, n):
        raise DataFileError(
            f"{xpath} has {rows} rows (5 x {n}) but {lpath} holds {len(labels)} labels (expected {rows} or {n})"
        )
    k = n if n_examples is None else n_examples
    if k > n:
        raise DataFileError(f"n_examples={n_examples} but {xpath} holds {n} images per severity")
    out = {}
    for s in severities:
        y = labels[(s - 1) * n : (s - 1) * n + k] if len(labels) == rows else labels[:k]
        y = np.array(y, dtype=np.int64)  # a copy: never a view of the read-only memory map
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise DataFileError(f"{lpath}: labels out of range [0, {num_classes}): min {y.min()}, max {y.max()}")
        if len(labels) == rows and s > 1 and not np.array_equal(y, np.asarray(labels[:k], dtype=np.int64)):
            raise DataFileError(
                f"{lpath}: the labels of severity {s} differ from those of severity 1 "
                "(each severity block must repeat the same test labels)"
            )
        xs = np.ascontiguousarray(x[(s - 1) * n : (s - 1) * n + k]).transpose(0, 3, 1, 2)
        out[s] = (np.ascontiguousarray(xs), y)
    return out


class _CorruptionSets(ArrayDataModule):
    """Test sets only, one per (corruption, severity), named in ``test_set_names``; ``fit`` raises."""

    fit_hint = ""  # ends the refusal of ``fit``

    def __init__(self, data_dir, corruptions, severities, n_examples, batch_size, eval_batch_size, seed) -> None:
        super().__init__(data_dir, batch_size, eval_batch_size, 0, n_examples, False, seed)
        self.corruptions = check_corruptions(corruptions)
        self.severities = check_severities(severities)
        self.test_set_names = [f"{c}/{s}" for c in self.corruptions for s in self.severities]

    def load_split(self, split: str):
        raise ValueError(f"{type(self).__name__} only has test sets (one per corruption and severity)")

    def _refuse_fit(self, stage: Optional[str]) -> None:
        if stage == "fit":
            raise ValueError(
                f"{type(self).__name__} is a test set: use `lightning test` (or validate / predict){self.fit_hint}"
            )

    def val_dataloader(self) -> list:
        return self.test_dataloader()

    predict_dataloader = val_dataloader

    def train_dataloader(self):
        raise ValueError(f"{type(self).__name__} has no training split")


class CIFAR10CDataModule(_CorruptionSets):
    """CIFAR-10-C (``data_dir/CIFAR-10-C/``): one test set per chosen (corruption, severity).

    Args:
        data_dir: folder holding ``CIFAR-10-C/`` (official files, or ``make corruptions-cifar10``).
        corruptions: names among the 15 of RobustBench (default: all, in the paper's order).
        severities: among 1..5 (default: all).
        n_examples: the first N images of each set (RobustBench evaluates on 10,000 per set).
        eval_batch_size / batch_size: test batch size.
        folder: the sub-folder name (default ``CIFAR-10-C``).
    """

    num_classes = 10
    class_names = CIFAR10_CLASSES
    name = "cifar10c"
    default_folder = "CIFAR-10-C"
    make_hint = "make corruptions-cifar10 (generates it from the CIFAR-10 test set)"
    fit_hint = ", and train on the clean data set"

    def __init__(
        self,
        data_dir: str = "data",
        corruptions: Optional[list[str]] = None,
        severities: Optional[list[int]] = None,
        n_examples: Optional[int] = None,
        batch_size: int = 500,
        eval_batch_size: Optional[int] = None,
        folder: Optional[str] = None,
        seed: int = 0,
    ) -> None:
        super().__init__(data_dir, corruptions, severities, n_examples, batch_size, eval_batch_size, seed)
        self.folder = folder or self.default_folder
        self.sets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def setup(self, stage: Optional[str] = None) -> None:
        self._refuse_fit(stage)
        if self.sets:
            return
        root = Path(self.data_dir) / self.folder
        if not root.is_dir():
            raise DataFileError(
                f"{self.folder} not found: {root} does not exist. Get the official files from "
                f"RobustBench/Zenodo and unpack them there, or run `{self.make_hint}`."
            )
        shape = None
        for c in self.corruptions:
            for s, (x, y) in read_cifar_c(root, c, self.severities, self.n_examples, self.num_classes).items():
                shape = x.shape[1:] if shape is None else shape
                if x.shape[1:] != shape:
                    raise DataFileError(f"{root / c}.npy: images {x.shape[1:]} differ from the other files' {shape}")
                self.sets[f"{c}/{s}"] = (torch.from_numpy(x), torch.from_numpy(y))

    def test_dataloader(self) -> list[DeviceLoader]:
        if any(n not in self.sets for n in self.test_set_names):
            raise RuntimeError("sets are not set up; call setup('test') first")
        return [self._loader(n, sets=self.sets) for n in self.test_set_names]


class CIFAR100CDataModule(CIFAR10CDataModule):
    """CIFAR-100-C (``data_dir/CIFAR-100-C/``, fine labels); see :class:`CIFAR10CDataModule`."""

    num_classes = 100
    class_names = None
    name = "cifar100c"
    default_folder = "CIFAR-100-C"
    make_hint = "python -m datamodules.corruptions --dataset cifar100 --data-dir DATA_DIR"


class ImageNetCDataModule(_CorruptionSets):
    """ImageNet-C (``data_dir/ImageNet-C/<corruption>/<severity>/<wnid>/*.JPEG``), one worker
    DataLoader per (corruption, severity), batches ``(x uint8, y, idx)``.

    Args:
        data_dir: folder holding ``ImageNet-C/``.
        corruptions, severities: as :class:`CIFAR10CDataModule`.
        subset_file: ``<wnid>/<file>`` list (``"robustbench"``: RobustBench's 5,000 images).
        n_examples: first N images of each set (RobustBench: 5,000).
        crop, resize: ImageNet-C images are already 224 x 224 (RobustBench applies no resize); a
            ``resize`` (shorter side) and the centre ``crop`` apply to other sizes.
        class_index: ``imagenet`` (standard 1k labels) or ``folder``.
        num_workers: decoding processes per loader.
    """

    num_classes = 1000
    name = "imagenetc"

    def __init__(
        self,
        data_dir: str = "data",
        corruptions: Optional[list[str]] = None,
        severities: Optional[list[int]] = None,
        n_examples: Optional[int] = None,
        subset_file: Optional[str] = None,
        batch_size: int = 100,
        eval_batch_size: Optional[int] = None,
        crop: int = 224,
        resize: Optional[int] = None,
        class_index: str = "imagenet",
        num_workers: int = 4,
        folder: str = "ImageNet-C",
        seed: int = 0,
    ) -> None:
        super().__init__(data_dir, corruptions, severities, n_examples, batch_size, eval_batch_size, seed)
        self.subset_file, self.crop, self.resize = subset_file, crop, resize
        self.class_index, self.num_workers, self.folder = class_index, num_workers, folder
        self.datasets: dict[str, ImageListDataset] = {}

    def setup(self, stage: Optional[str] = None) -> None:
        self._refuse_fit(stage)
        if self.datasets:
            return
        root = Path(self.data_dir) / self.folder
        if not root.is_dir():
            raise DataFileError(
                f"ImageNet-C not found: {root} does not exist "
                "(expected ImageNet-C/<corruption>/<severity>/<wnid>/*.JPEG)"
            )
        subset = read_subset(self.subset_file) if self.subset_file else None
        tf = eval_transform(self.resize, self.crop)
        for name in self.test_set_names:
            folder = root / name
            if not folder.is_dir():
                raise DataFileError(f"ImageNet-C set missing: {folder}")
            samples = find_samples(folder, class_index_map(folder, self.class_index), subset)
            if self.n_examples is not None and self.n_examples > len(samples):
                raise DataFileError(f"n_examples={self.n_examples} but {folder} holds {len(samples)} images")
            self.datasets[name] = ImageListDataset(samples[: self.n_examples], tf)

    def test_dataloader(self) -> list[DataLoader]:
        if not self.datasets:
            raise RuntimeError("sets are not set up; call setup('test') first")
        kw = dict(batch_size=self.eval_batch_size, num_workers=self.num_workers, pin_memory=torch.cuda.is_available())
        return [DataLoader(self.datasets[n], shuffle=False, **kw) for n in self.test_set_names]
