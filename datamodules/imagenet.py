"""ImageNet in the ImageFolder layout (``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``), with the
RobustBench 5,000-image evaluation subset.

ImageNet does not fit on the GPU as one tensor, so worker ``DataLoader``s decode it; batches keep the
package's ``(x uint8 (B, 3, S, S), y, idx)`` (``idx``: position in the split's sample list). Evaluation
is RobustBench's ``Res256Crop224`` (on uint8 tensors with antialiasing: PIL's bilinear resize to about a
level); training uses random-resized-crop 224 + flip. Labels are the standard ImageNet-1k indices (as
RobustBench's ``imagenet_class_to_id_map.json``), so a folder of a few classes still gets the labels a
1000-class model expects; ``class_index: folder`` numbers the folders 0..K-1 instead.

Example:
    >>> from datamodules.imagenet import ImageNetDataModule
    >>> dm = ImageNetDataModule("data/imagenet", subset_file="robustbench", n_examples=5000)  # doctest: +SKIP
    >>> dm.setup("test"); x, y, idx = next(iter(dm.test_dataloader()))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Sequence

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from .files import DataFileError

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")


def _robustbench_helper(name: str) -> Path:
    """A file of robustbench's ``helper_files/`` (located without importing robustbench)."""
    spec = importlib.util.find_spec("robustbench")
    if spec is None or not spec.submodule_search_locations:
        raise DataFileError(f"robustbench is not installed: cannot find helper_files/{name}")
    path = Path(list(spec.submodule_search_locations)[0]) / "helper_files" / name
    if not path.is_file():
        raise DataFileError(f"robustbench's helper file is missing: {path}")
    return path


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in class-index order (RobustBench's class-to-id map)."""
    path = _robustbench_helper("imagenet_class_to_id_map.json")
    m = json.loads(path.read_text())
    wnids = sorted(m, key=m.__getitem__)
    if len(wnids) != 1000 or [m[w] for w in wnids] != list(range(1000)):
        raise DataFileError(f"{path}: expected a map of 1000 wnids to 0..999")
    return tuple(wnids)


def robustbench_subset_file() -> Path:
    """RobustBench's list of the 5,000 ImageNet validation images it evaluates on."""
    return _robustbench_helper("imagenet_test_image_ids.txt")


def read_subset(path: str | Path) -> list[str]:
    """Read a subset file: one relative path ``<wnid>/<file>`` per line (blank lines ignored).
    ``"robustbench"`` reads RobustBench's 5,000-image list."""
    path = robustbench_subset_file() if str(path) == "robustbench" else Path(path)
    if not path.is_file():
        raise DataFileError(f"subset file not found: {path}")
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    bad = [(i + 1, ln) for i, ln in enumerate(lines) if ln.count("/") != 1 or ln.startswith("/") or ".." in ln]
    if bad:
        raise DataFileError(f"{path}: lines must be relative paths '<wnid>/<file>'; bad line(s) {bad[:3]}")
    if len(set(lines)) != len(lines):
        raise DataFileError(f"{path}: lists some images twice")
    if not lines:
        raise DataFileError(f"{path}: empty subset file")
    return lines


def class_index_map(root: Path, mode: str) -> dict[str, int]:
    """wnid -> label: ``imagenet`` (standard 1k indices) or ``folder`` (sorted folder names)."""
    if mode == "imagenet":
        return {w: i for i, w in enumerate(imagenet_wnids())}
    if mode == "folder":
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        return {c: i for i, c in enumerate(classes)}
    raise ValueError(f"class_index must be 'imagenet' or 'folder', got '{mode}'")


def find_samples(
    root: str | Path, class_to_idx: dict[str, int], subset: Optional[Sequence[str]] = None
) -> list[tuple[str, int]]:
    """``(path, label)`` of the images under ``root/<wnid>/`` (sorted), or of the ``subset`` paths
    in their given order. Unknown class folders and missing subset images raise, naming them."""
    root = Path(root)
    if not root.is_dir():
        raise DataFileError(f"image folder not found: {root}")
    if subset is not None:
        missing = [p for p in subset if not (root / p).is_file()]
        if missing:
            raise DataFileError(
                f"{root}: {len(missing)} of the {len(subset)} subset images are missing, e.g. {missing[:3]}"
            )
        unknown = sorted({p.split("/")[0] for p in subset} - set(class_to_idx))
        if unknown:
            raise DataFileError(f"{root}: subset names unknown class folder(s) {unknown[:5]}")
        return [(str(root / p), class_to_idx[p.split("/")[0]]) for p in subset]
    dirs = sorted(d for d in root.iterdir() if d.is_dir())
    unknown = [d.name for d in dirs if d.name not in class_to_idx]
    if unknown:
        raise DataFileError(
            f"{root}: folder(s) {unknown[:5]} are not ImageNet wnids "
            "(use class_index: folder for another ImageFolder data set)"
        )
    samples = [
        (str(f), class_to_idx[d.name])
        for d in dirs
        for f in sorted(d.iterdir())
        if f.suffix.lower() in IMAGE_EXTENSIONS
    ]
    if not samples:
        raise DataFileError(f"{root}: no images found in <class>/ sub-folders ({', '.join(IMAGE_EXTENSIONS)})")
    return samples


def decode(path: str) -> torch.Tensor:
    """Read an image file as uint8 RGB ``(3, H, W)`` (greyscale and CMYK JPEGs converted)."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        return decode_image(read_file(path), mode=ImageReadMode.RGB)
    except RuntimeError as e:
        raise DataFileError(f"cannot decode image {path}: {e}") from e


def eval_transform(resize: Optional[int] = 256, crop: int = 224) -> Callable[[torch.Tensor], torch.Tensor]:
    """RobustBench's Res256Crop224 on uint8 tensors (``resize=None``: centre crop only)."""
    from torchvision.transforms import v2

    steps = ([v2.Resize(resize, antialias=True)] if resize else []) + [v2.CenterCrop(crop)]
    return v2.Compose(steps)


def train_transform(
    crop: int = 224, scale: tuple[float, float] = (0.08, 1.0)
) -> Callable[[torch.Tensor], torch.Tensor]:
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomResizedCrop(crop, scale=scale, antialias=True), v2.RandomHorizontalFlip()])


class ImageListDataset(Dataset):
    """``(x uint8 (3, S, S), y, idx)`` for a list of ``(path, label)``."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Optional[Callable] = None) -> None:
        self.samples, self.transform = list(samples), transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        path, label = self.samples[i]
        x = decode(path)
        if self.transform is not None:
            x = self.transform(x)
        return x.contiguous(), label, i


class ImageNetDataModule(pl.LightningDataModule):
    """ImageNet (ImageFolder layout under ``data_dir``) served by worker DataLoaders.

    Args:
        data_dir: folder holding ``train/<wnid>/`` and ``val/<wnid>/``.
        batch_size, eval_batch_size: per process.
        n_examples: evaluate on the first N validation images (of the subset, in its order).
        subset_file: a file of ``<wnid>/<file>`` lines under ``val/`` (RobustBench's
            ``imagenet_test_image_ids.txt`` format), or ``"robustbench"`` for that list itself.
        image_size, resize_size: crop side and evaluation resize (RobustBench: 224 / 256).
        augment: random-resized-crop + flip for training (else the evaluation transform).
        class_index: ``imagenet`` (standard 1k labels) or ``folder`` (sorted folder names).
        num_workers: decoding processes per loader.
        pin_memory: pinned host memory for the batches (default: when CUDA is available).
        seed: seeds the training shuffle and the workers' augmentation.
    """

    name = "imagenet"

    def __init__(
        self,
        data_dir: str = "data/imagenet",
        batch_size: int = 256,
        eval_batch_size: Optional[int] = None,
        n_examples: Optional[int] = None,
        subset_file: Optional[str] = None,
        image_size: int = 224,
        resize_size: Optional[int] = 256,
        augment: bool = True,
        class_index: str = "imagenet",
        num_workers: int = 8,
        pin_memory: Optional[bool] = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if n_examples is not None and n_examples < 1:
            raise ValueError(f"n_examples must be >= 1 or null, got {n_examples}")
        if class_index not in ("imagenet", "folder"):
            raise ValueError(f"class_index must be 'imagenet' or 'folder', got '{class_index}'")
        self.data_dir = data_dir
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.n_examples, self.subset_file = n_examples, subset_file
        self.image_size, self.resize_size = image_size, resize_size
        self.augment, self.class_index = augment, class_index
        self.num_workers, self.pin_memory, self.seed = num_workers, pin_memory, seed
        self.datasets: dict[str, ImageListDataset] = {}

    @property
    def num_classes(self) -> int:
        if self.class_index == "imagenet":
            return 1000
        return len(class_index_map(Path(self.data_dir) / "train", "folder"))

    def _split(self, split: str) -> ImageListDataset:
        root = Path(self.data_dir) / split
        if not root.is_dir():
            raise DataFileError(
                f"ImageNet {split} folder not found: {root} (expected {self.data_dir}/{split}/<wnid>/*.JPEG)"
            )
        classes = class_index_map(root, self.class_index)
        subset = read_subset(self.subset_file) if (split == "val" and self.subset_file) else None
        samples = find_samples(root, classes, subset)
        n = self.n_examples if split == "val" else None
        if n is not None and n > len(samples):
            of = " of the subset" if subset else ""
            raise DataFileError(f"n_examples={n} but {root} holds {len(samples)} images{of}")
        samples = samples[:n]
        if split == "train" and self.augment:
            return ImageListDataset(samples, train_transform(self.image_size))
        return ImageListDataset(samples, eval_transform(self.resize_size, self.image_size))

    def setup(self, stage: Optional[str] = None) -> None:
        if stage in (None, "fit") and "train" not in self.datasets:
            self.datasets["train"] = self._split("train")
        if "val" not in self.datasets:
            self.datasets["val"] = self._split("val")

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"split '{split}' is not set up; call setup() first")
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available() if self.pin_memory is None else self.pin_memory,
            persistent_workers=self.num_workers > 0 and train,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    test_dataloader = predict_dataloader = val_dataloader
