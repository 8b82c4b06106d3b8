"""Data: device-resident splits and their loaders.

- :class:`CIFAR10DataModule`, :class:`CIFAR100DataModule` — standard python layouts.
- :class:`~datamodules.device_loader.DeviceLoader` — batches from a tensor on the GPU.
- corruption sets (CIFAR-10-C / CIFAR-100-C / ImageNet-C), ImageNet, stored adversarial sets.
"""

from .adversarial import AdversarialSetDataModule
from .base import ArrayDataModule
from .cifar import CIFAR10DataModule, CIFAR100DataModule
from .corruption_sets import CIFAR10CDataModule, CIFAR100CDataModule, ImageNetCDataModule
from .corruptions import CORRUPTIONS, corrupt
from .device_loader import DeviceLoader, random_crop_flip
from .files import DataFileError, safe_unpickle
from .imagenet import ImageNetDataModule

__all__ = ["ArrayDataModule", "CIFAR10DataModule", "CIFAR100DataModule", "DeviceLoader", "random_crop_flip"]
__all__ += ["DataFileError", "safe_unpickle", "AdversarialSetDataModule", "CIFAR10CDataModule", "CIFAR100CDataModule"]
__all__ += ["ImageNetCDataModule", "CORRUPTIONS", "corrupt", "ImageNetDataModule"]
