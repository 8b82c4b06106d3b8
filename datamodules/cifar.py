"""CIFAR-10 and CIFAR-100 from their standard python layouts.

Example:
    >>> from datamodules import CIFAR10DataModule
    >>> dm = CIFAR10DataModule(data_dir="data", batch_size=512, n_examples=1000)  # doctest: +SKIP
    >>> dm.setup("test"); x, y, idx = next(iter(dm.test_dataloader()))  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from .base import ArrayDataModule
from .files import DataFileError, check_count, read_cifar_batches

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _missing_message(name: str, folder: Path, first: Path, pack_hint: bool) -> str:
    msg = (
        f"{name} not found: {first} does not exist.\n"
        f"  - online: set `download: true` (data.init_args.download) to fetch it into {folder.parent}, or\n"
    )
    if pack_hint:
        msg += (
            "  - offline, from the shared JPEG pack: "
            f"python ../shared/data/cifar10_from_pack.py --out {folder.parent}\n"
            "    (or `make data`), or\n"
        )
    msg += f"  - copy an existing '{folder.name}/' folder into {folder.parent}."
    return msg


class CIFAR10DataModule(ArrayDataModule):
    """CIFAR-10 (``data_dir/cifar-10-batches-py/``); see :class:`~datamodules.base.ArrayDataModule`.

    Files are validated by structure (shapes, dtype, label range, counts), not md5, so re-encoded
    copies such as the JPEG pack load. ``download: true`` uses torchvision's downloader (online).
    """

    num_classes = 10
    class_names = CIFAR10_CLASSES
    name = "cifar10"
    folder = "cifar-10-batches-py"
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    test_files = ["test_batch"]
    label_key = "labels"
    counts = {"train": 50000, "test": 10000}

    def __init__(self, *args, download: bool = False, strict_counts: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.download = download
        self.strict_counts = strict_counts

    def prepare_data(self) -> None:
        if self.download:
            import torchvision

            cls = torchvision.datasets.CIFAR10 if self.num_classes == 10 else torchvision.datasets.CIFAR100
            for train in (True, False):
                cls(self.data_dir, train=train, download=True)

    def load_split(self, split: str):
        folder = Path(self.data_dir) / self.folder
        files = [folder / f for f in (self.train_files if split == "train" else self.test_files)]
        if not files[0].exists():
            raise DataFileError(_missing_message(self.name.upper(), folder, files[0], self.name == "cifar10"))
        x, y = read_cifar_batches(files, self.num_classes, self.label_key)
        if self.strict_counts:
            check_count(f"{self.name} {split}", len(x), self.counts[split], files)
        return x, y


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (``data_dir/cifar-100-python/{train,test}``, fine labels)."""

    num_classes = 100
    class_names = None  # 100 fine labels: shown as numbers
    name = "cifar100"
    folder = "cifar-100-python"
    train_files = ["train"]
    test_files = ["test"]
    label_key = "fine_labels"
