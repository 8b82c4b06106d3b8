"""Data: device-resident splits and their loaders.

- :class:`CIFAR10DataModule`, :class:`CIFAR100DataModule` — standard python layouts.
- :class:`~datamodules.device_loader.DeviceLoader` — batches from a tensor on the GPU.
"""
from .base import ArrayDataModule
from .cifar import CIFAR10DataModule, CIFAR100DataModule
from .device_loader import DeviceLoader, random_crop_flip
from .files import DataFileError, safe_unpickle

__all__ = [
    "ArrayDataModule", "CIFAR10DataModule", "CIFAR100DataModule", "DeviceLoader",
    "random_crop_flip", "DataFileError", "safe_unpickle",
]
