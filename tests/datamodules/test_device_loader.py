import torch
import torch.nn.functional as F

from datamodules.device_loader import DeviceLoader, random_crop_flip


def test_random_crop_flip_matches_manual_reference():
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, pad=2, generator=g)
    g = torch.Generator().manual_seed(0)
    oy = torch.randint(0, 5, (6,), generator=g)
    ox = torch.randint(0, 5, (6,), generator=g)
    flip = torch.rand(6, generator=g) < 0.5
    padded = F.pad(x.float(), (2, 2, 2, 2), mode="reflect").to(torch.uint8)
    for i in range(6):  # slow per-image reference
        ref = padded[i, :, oy[i] : oy[i] + 8, ox[i] : ox[i] + 8]
        if flip[i]:
            ref = ref.flip(2)
        assert torch.equal(out[i], ref)
    assert out.dtype == torch.uint8


def test_loader_epochs_shards_and_padding():
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    y = torch.arange(10)
    tr = DeviceLoader(x, y, batch_size=3, shuffle=True, drop_last=True, seed=1)
    e1 = torch.cat([b[2] for b in tr])
    e2 = torch.cat([b[2] for b in tr])
    assert len(tr) == 3 and len(e1) == 9 and len(set(e1.tolist())) == 9 and not torch.equal(e1, e2)
    for xb, yb, ib in tr:
        assert torch.equal(yb, ib) and torch.equal(xb[:, 0, 0, 0].long(), ib)
    # evaluation shards: every example exactly once over the ranks, same number of batches per rank
    seen = []
    for r in range(3):
        ev = DeviceLoader(x, y, batch_size=2, rank=r, world_size=3)
        ids = torch.cat([b[2] for b in ev])
        assert len(ids) == (4 if r == 0 else 3) and len(ev) == 2 == len(list(ev))  # 10 = 4 + 3 + 3, no repeats
        assert all(len(b[2]) <= 2 for b in ev)
        seen += ids.tolist()
    assert sorted(seen) == list(range(10))
    # a shard smaller than the batch count (batch_size 1) is padded with repeats; idx names them
    seen = []
    for r in range(3):
        ev = DeviceLoader(x, y, batch_size=1, rank=r, world_size=3)
        assert len(ev) == 4 == len(list(ev))
        seen += torch.cat([b[2] for b in ev]).tolist()
    assert len(seen) == 12 and sorted(set(seen)) == list(range(10))
    # shuffled shards under DDP are disjoint and identical in length
    shards = [
        torch.cat([b[2] for b in DeviceLoader(x, y, 2, shuffle=True, seed=5, rank=r, world_size=2)]) for r in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == 5 and not set(shards[0].tolist()) & set(shards[1].tolist())


def test_epoch_fn_makes_permutations_reproducible_on_resume():
    x, y = torch.zeros(20, 1, 2, 2, dtype=torch.uint8), torch.arange(20)
    a = DeviceLoader(x, y, 4, shuffle=True, seed=3, epoch_fn=lambda: 7)
    b = DeviceLoader(x, y, 4, shuffle=True, seed=3, epoch_fn=lambda: 7)
    next(iter(a))
    assert torch.equal(torch.cat([t[2] for t in a]), torch.cat([t[2] for t in b]))


def test_evaluation_never_serves_a_batch_of_one():
    x, y = torch.zeros(41, 1, 2, 2, dtype=torch.uint8), torch.arange(41)
    batches = [b[2] for b in DeviceLoader(x, y, batch_size=8)]
    assert [len(b) for b in batches] == [8, 8, 8, 8, 9] and torch.equal(torch.cat(batches), y)
    assert len(DeviceLoader(x, y, batch_size=8)) == 5
    assert [len(b[2]) for b in DeviceLoader(x[:40], y[:40], batch_size=8)] == [8] * 5
