"""A data set resident on one device, served in batches with per-sample augmentation (airbench style).

The whole split is one uint8 tensor moved to the device once; each batch is an index into it,
so an epoch costs no host-to-device copies and no per-image Python. Batches are
``(x, y, idx)``: uint8 images ``(B, C, H, W)``, int64 labels and the int64 positions of the
examples in the split (for per-example results and for putting sharded outputs back in order).

Example:
    >>> import torch
    >>> from datamodules.device_loader import DeviceLoader, random_crop_flip
    >>> x = torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8)
    >>> y = torch.randint(0, 10, (100,))
    >>> loader = DeviceLoader(x, y, batch_size=32, shuffle=True, transform=random_crop_flip)
    >>> xb, yb, ib = next(iter(loader))
    >>> xb.shape, len(loader)
    (torch.Size([32, 3, 32, 32]), 3)
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def random_crop_flip(
    x: torch.Tensor, pad: int = 4, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Reflect-pad by ``pad``, crop back to size at a random offset and flip at random, per image.

    Works batched on any device and dtype (uint8 included); one random offset and one flip
    decision per image.
    """
    b, c, h, w = x.shape
    dev = x.device
    padded = F.pad(x.float() if x.dtype == torch.uint8 else x, (pad, pad, pad, pad), mode="reflect")
    padded = padded.to(x.dtype)
    oy = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
    flip = torch.rand(b, device=dev, generator=generator) < 0.5
    rows = oy[:, None] + torch.arange(h, device=dev)  # (B, H)
    cols = ox[:, None] + torch.arange(w, device=dev)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=dev)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


class DeviceLoader:
    """Iterate over ``(x, y, idx)`` batches of tensors that live on ``device``.

    Args:
        x, y: the split (moved to ``device`` once, on first iteration).
        batch_size: examples per batch (per process under DDP).
        shuffle: a new permutation each epoch, drawn from ``seed`` and the epoch number, identical
            on every rank, so ranks take disjoint shards of one permutation.
        drop_last: drop the last incomplete batch (training).
        transform: batched augmentation applied on the device, e.g. :func:`random_crop_flip`.
        rank, world_size: this process's shard (``rank::world_size``) under distributed runs.
            Without shuffling the shard is padded by repeating the first examples so every rank
            sees the same number of batches; ``idx`` lets callers drop the repeats.
        epoch_fn: returns the current epoch (e.g. ``lambda: trainer.current_epoch``) so that a
            resumed run draws the same permutations; by default the loader counts its epochs.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        epoch_fn: Optional[Callable[[], int]] = None,
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.transform, self.seed = transform, seed
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.epoch_fn = epoch_fn

    def _to_device(self) -> None:
        if self.x.device != self.device:
            self.x = self.x.to(self.device, non_blocking=True)
            self.y = self.y.to(self.device, non_blocking=True)

    def _shard_len(self) -> int:
        n = len(self.x)
        return n // self.world_size if self.shuffle else -(-n // self.world_size)

    def __len__(self) -> int:
        m = self._shard_len()
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def _indices(self) -> torch.Tensor:
        n = len(self.x)
        if self.shuffle:
            epoch = self.epoch_fn() if self.epoch_fn is not None else self.epoch
            g = torch.Generator().manual_seed(self.seed + 1_000_003 * epoch)
            order = torch.randperm(n, generator=g)
            order = order[: self._shard_len() * self.world_size]
        else:
            order = torch.arange(n)
            short = self._shard_len() * self.world_size - n
            if short:
                order = torch.cat([order, order[:short]])
        return order[self.rank :: self.world_size].to(self.device)

    def __iter__(self) -> Iterator[Batch]:
        self._to_device()
        idx = self._indices()
        self.epoch += 1
        for i in range(len(self)):
            j = idx[i * self.batch_size : (i + 1) * self.batch_size]
            xb = self.x[j]
            if self.transform is not None:
                xb = self.transform(xb)
            yield xb, self.y[j], j
