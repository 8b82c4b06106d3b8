"""Data: device-resident splits and their loaders.

- :class:`CIFAR10DataModule`, :class:`CIFAR100DataModule` — standard python layouts.
- :class:`~datamodules.device_loader.DeviceLoader` — batches from a tensor on the GPU.
"""

from .base import ArrayDataModule
from .cifar import CIFAR10DataModule, CIFAR100DataModule
from .device_loader import DeviceLoader, random_crop_flip
from .files import DataFileError, safe_unpickle

__all__ = [
    "ArrayDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DeviceLoader",
    "random_crop_flip",
    "DataFileError",
    "safe_unpickle",
]

# Corruption sets (CIFAR-10-C / CIFAR-100-C / ImageNet-C), ImageNet, stored adversarial sets.
from .adversarial import AdversarialSetDataModule  # noqa: E402
from .corruption_sets import CIFAR10CDataModule, CIFAR100CDataModule, ImageNetCDataModule  # noqa: E402
from .corruptions import CORRUPTIONS, corrupt  # noqa: E402
from .imagenet import ImageNetDataModule  # noqa: E402

__all__ += [
    "AdversarialSetDataModule",
    "CIFAR10CDataModule",
    "CIFAR100CDataModule",
    "ImageNetCDataModule",
    "CORRUPTIONS",
    "corrupt",
    "ImageNetDataModule",
]
