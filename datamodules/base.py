"""The DataModule of every array data set: uint8 splits moved once to the device and served by
:class:`~datamodules.device_loader.DeviceLoader`. A subclass implements :meth:`load_split` (``"train"``,
``"test"``) returning ``(x uint8 (N, C, H, W), y int64 (N,))``; the model turns ``[0, 255]`` uint8 into
``[0, 1]`` floats and normalizes inside (RobustBench convention).
"""

from __future__ import annotations

from typing import Optional

import lightning.pytorch as pl
import numpy as np
import torch

from .device_loader import DeviceLoader, random_crop_flip


def _as_tensors(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(x)
    y = torch.as_tensor(y).long()
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError(f"images must be uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    return x.contiguous(), y


def _take_first(name: str, asked: int, x: torch.Tensor, y: torch.Tensor, split: str):
    """The first ``asked`` examples; asking more than the split holds takes all of them, said in one line."""
    if asked > len(x):
        from lightning_modules.util import say

        say(f"{name}={asked} is more than the {len(x)} examples of the {split} split: using all {len(x)}")
    return x[:asked], y[:asked]


TEST_ORDERS = ("first", "shuffled")


class ArrayDataModule(pl.LightningDataModule):
    """Base class: train / validation / test splits as device-resident uint8 tensors.

    Args:
        data_dir: folder holding the data set in its standard layout.
        batch_size: training batch size (per process).
        eval_batch_size: batch size for validation, test and predict (default: ``batch_size``).
        val_size: examples held out of the training split for validation (seeded, random); with 0
            validation runs on the test split's first ``n_examples``.
        n_examples: evaluate on the first N test examples only (RobustBench convention); more than the
            split holds uses all of it, said in one line. ``train_subset``: the same for training.
        augment: random crop (reflect pad 4) + horizontal flip on training batches.
        seed: seeds the validation hold-out, the per-epoch shuffles and a shuffled test order.
        test_order: ``first`` (the split's own order: RobustBench's "first N") or ``shuffled`` (a
            permutation seeded by ``seed`` before the first ``n_examples`` are taken, as Mao et al.
            shuffle the test set before batching: a random subset, other batch-mates). The evaluation's
            per-example indices are positions in this order.
    """

    num_classes: int = 10
    class_names: Optional[tuple[str, ...]] = None  # label names (pictures); a data set that has them sets them
    name: str = "data"

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 512,
        eval_batch_size: Optional[int] = None,
        val_size: int = 0,
        n_examples: Optional[int] = None,
        augment: bool = True,
        seed: int = 0,
        train_subset: Optional[int] = None,
        test_order: str = "first",
    ) -> None:
        super().__init__()
        if test_order not in TEST_ORDERS:
            raise ValueError(f"unknown test_order '{test_order}'; choose one of {list(TEST_ORDERS)}")
        if train_subset is not None and train_subset < 1:
            raise ValueError(f"train_subset must be >= 1 or null, got {train_subset}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size}")
        if n_examples is not None and n_examples < 1:
            raise ValueError(f"n_examples must be >= 1 or null, got {n_examples}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1 or null (= batch_size), got {eval_batch_size}")
        self.data_dir, self.batch_size, self.test_order = data_dir, batch_size, test_order
        self.train_subset = train_subset
        self.eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
        self.val_size, self.n_examples = val_size, n_examples
        self.augment, self.seed = augment, seed
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def load_split(self, split: str) -> tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]:
        raise NotImplementedError

    def setup(self, stage: Optional[str] = None) -> None:
        needs_train = stage in (None, "fit") or (stage == "validate" and self.val_size > 0)
        if needs_train and "train" not in self.splits:
            x, y = _as_tensors(*self.load_split("train"))
            if self.val_size:
                if self.val_size >= len(x):
                    raise ValueError(f"val_size={self.val_size} leaves no training data ({len(x)} examples)")
                perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
                tr, va = perm[: len(x) - self.val_size].sort().values, perm[len(x) - self.val_size :].sort().values
                self.splits["val"] = (x[va], y[va])
                x, y = x[tr], y[tr]
            if self.train_subset is not None:
                x, y = _take_first("train_subset", self.train_subset, x, y, "training")
            self.splits["train"] = (x, y)
        needs_test = stage in (None, "test", "predict", "validate") or (stage == "fit" and not self.val_size)
        if needs_test and "test" not in self.splits:
            x, y = _as_tensors(*self.load_split("test"))
            if self.test_order == "shuffled":
                perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
                x, y = x[perm], y[perm]
            if self.n_examples is not None:
                x, y = _take_first("n_examples", self.n_examples, x, y, "test")
            self.splits["test"] = (x, y)

    @property
    def device(self) -> torch.device:
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _loader(self, split: str, train: bool = False, sets: Optional[dict] = None) -> DeviceLoader:
        """A loader of ``sets[split]`` (default: :attr:`splits`), moved to the device once and kept there."""
        sets = self.splits if sets is None else sets
        if split not in sets:
            raise RuntimeError(f"split '{split}' is not set up; call setup() first")
        x, y = sets[split]
        if x.device != self.device:
            sets[split] = x, y = x.to(self.device), y.to(self.device)
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        fit = train and trainer is not None
        return DeviceLoader(
            x,
            y,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train and len(x) >= self.batch_size * world,
            transform=random_crop_flip if (train and self.augment) else None,
            seed=self.seed,
            device=self.device,
            rank=rank,
            world_size=world,
            epoch_fn=(lambda: trainer.current_epoch) if fit else None,
            # batches of this epoch already trained on: saved in checkpoints to resume mid-epoch
            position_fn=(lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed) if fit else None,
        )

    def train_dataloader(self) -> DeviceLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DeviceLoader:
        return self._loader("val" if "val" in self.splits else "test")

    def test_dataloader(self) -> DeviceLoader:
        return self._loader("test")

    predict_dataloader = test_dataloader
