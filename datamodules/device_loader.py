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
    >>> loader = DeviceLoader(x, y, batch_size=32, shuffle=True, drop_last=True, transform=random_crop_flip)
    >>> xb, yb, ib = next(iter(loader))
    >>> xb.shape, len(loader)
    (torch.Size([32, 3, 32, 32]), 3)
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def random_crop_flip(x: torch.Tensor, pad: int = 4, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Reflect-pad by ``pad``, crop back to size at a random offset and flip at random, per image
    (batched, any device and dtype, uint8 included)."""
    b, c, h, w = x.shape
    dev = x.device
    padded = F.pad(x.float() if x.dtype == torch.uint8 else x, (pad, pad, pad, pad), mode="reflect").to(x.dtype)
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
        rank, world_size: this process's shard (``rank::world_size``). Shuffled (training) shards are
            cut to equal length. Evaluation serves every example once: under DDP each rank cuts its
            shard into the same number of near-equal batches of at most ``batch_size``, so synced
            metrics equal a single-process run (43 images at ``batch_size=8`` on 2 ranks: 8,7,7 and
            7,7,7); only a shard with fewer examples than batches is padded by repeating the first
            examples (``idx`` lets callers drop the repeats).
        epoch_fn: returns the current epoch (e.g. ``lambda: trainer.current_epoch``) so that a
            resumed run draws the same permutations; by default the loader counts its epochs.
        position_fn: returns how many batches of this epoch were consumed (Lightning's
            ``batch_progress.current.processed``), saved by :meth:`state_dict` (Lightning's stateful
            loader protocol) so a resumed run continues mid-epoch; without it the loader counts the
            batches it yielded, which runs ahead by the batches a consumer prefetched.
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
        position_fn: Optional[Callable[[], int]] = None,
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
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.epoch = 0
        self.epoch_fn, self.position_fn = epoch_fn, position_fn
        self._epoch_now = 0  # the epoch the current iteration serves
        self._yielded = 0  # batches yielded in the current iteration
        self._resume: Optional[tuple[int, int]] = None  # (epoch, batches done) from load_state_dict

    def _eval_batches_per_rank(self) -> int:
        return _ceil_div(_ceil_div(len(self.x), self.world_size), self.batch_size)

    def _eval_balanced(self) -> bool:
        """Distributed evaluation without repeats: each rank cuts its shard into the same number
        of near-equal batches, possible while the smallest shard has at least one example per batch."""
        if self.shuffle or self.drop_last or self.world_size == 1:
            return False
        return len(self.x) // self.world_size >= self._eval_batches_per_rank()

    def _shard_len(self) -> int:
        n = len(self.x)
        return n // self.world_size if self.shuffle else -(-n // self.world_size)

    def __len__(self) -> int:
        if self._eval_balanced():
            return self._eval_batches_per_rank()
        m = self._shard_len()
        if self.drop_last:
            return m // self.batch_size
        return -(-m // self.batch_size) - (1 if self._merge_tail(m) else 0)

    def _merge_tail(self, m: int) -> bool:
        """Evaluation batches never hold a single example (the reversal's InfoNCE needs negatives):
        a last batch of one joins the batch before it."""
        return not self.shuffle and self.batch_size > 1 and m > self.batch_size and m % self.batch_size == 1

    def _indices(self, epoch: int) -> torch.Tensor:
        n = len(self.x)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + 1_000_003 * epoch)
            order = torch.randperm(n, generator=g)
            order = order[: self._shard_len() * self.world_size]
        else:
            order = torch.arange(n)
            short = self._shard_len() * self.world_size - n
            if short and not self._eval_balanced():
                order = torch.cat([order, order[:short]])
        return order[self.rank :: self.world_size].to(self.device)

    def _batches(self, epoch: int) -> list[torch.Tensor]:
        idx = self._indices(epoch)
        if self._eval_balanced():
            return list(torch.tensor_split(idx, len(self)))
        out = [idx[i * self.batch_size : (i + 1) * self.batch_size] for i in range(len(self))]
        if self._merge_tail(len(idx)):
            out[-1] = idx[(len(out) - 1) * self.batch_size :]
        return out

    def _current_epoch(self) -> int:
        return self.epoch_fn() if self.epoch_fn is not None else self.epoch

    # -- resuming (Lightning's stateful-dataloader protocol) ----------------------------------
    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batches_done"}``: where the current epoch stands."""
        done = self.position_fn() if self.position_fn is not None else self._yielded
        return {"epoch": int(self._epoch_now), "batches_done": int(done)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """The next iteration over epoch ``state["epoch"]`` skips its first ``batches_done`` batches."""
        self._resume = (int(state["epoch"]), int(state["batches_done"]))

    def __iter__(self) -> Iterator[Batch]:
        if self.x.device != self.device:
            self.x, self.y = self.x.to(self.device, non_blocking=True), self.y.to(self.device, non_blocking=True)
        epoch = self._current_epoch()
        batches = self._batches(epoch)
        self.epoch += 1
        resume, self._resume = self._resume, None
        start = min(resume[1], len(batches)) if resume is not None and resume[0] == epoch else 0
        self._epoch_now, self._yielded = epoch, start
        for j in batches[start:]:
            self._yielded += 1
            xb = self.x[j]
            if self.transform is not None:
                xb = self.transform(xb)
            yield xb, self.y[j], j
