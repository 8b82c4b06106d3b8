"""Draws in one call: a batch repeated ``k`` times and reversed with ``groups=k`` gives each copy the
reversal it would get alone (same images under deterministic views; one view draw per block under
batch-shared views), and the evaluation scores draws that way in one call."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.defense import DefendedModel
from lightning_modules.defense.reversal import ReversalConfig, grouped_views, reverse, ssl_loss
from lightning_modules.nn.backbones import build_backbone
from lightning_modules.nn.heads import ContrastiveHead
from lightning_modules.views.fast import make_views

pytestmark = pytest.mark.usefixtures("one_thread")


def det_views(x: torch.Tensor, n_views: int) -> torch.Tensor:
    """Deterministic per-image views: brightness steps and a flip."""
    return torch.cat([(x * (1 - 0.1 * v)).flip(-1) if v % 2 else x * (1 - 0.1 * v) for v in range(n_views)])


def small():
    torch.manual_seed(0)
    return build_backbone("small_cnn", width=4).eval(), ContrastiveHead(16, 32, 8).eval()


@pytest.mark.parametrize("positive", ["all", "first"])
def test_groups_reverse_each_copy_as_alone(positive):
    net, head = small()
    a, b = torch.rand(5, 3, 32, 32), torch.rand(5, 3, 32, 32)
    cfg = ReversalConfig(steps=3, positive=positive)
    alone = torch.cat([reverse(net, head, a, cfg, det_views), reverse(net, head, b, cfg, det_views)])
    together = reverse(net, head, torch.cat([a, b]), cfg, det_views, groups=2)
    assert torch.allclose(together, alone, atol=1e-6)
    # without the block mask the copies would see each other: a different result
    assert not torch.allclose(reverse(net, head, torch.cat([a, b]), cfg, det_views), alone, atol=1e-6)


def test_groups_loss_ignores_the_other_blocks():
    net, head = small()
    a = torch.rand(4, 3, 32, 32)
    one = ssl_loss(net, head, torch.cat([a, torch.rand(4, 3, 32, 32)]), det_views, 4, 0.2, groups=2)[:4]
    two = ssl_loss(net, head, torch.cat([a, torch.zeros(4, 3, 32, 32)]), det_views, 4, 0.2, groups=2)[:4]
    assert torch.allclose(one, two, atol=1e-6)


@pytest.mark.parametrize("backend", ["kornia", "fast"])
def test_shared_views_draw_once_per_block(backend):
    torch.manual_seed(1)
    views = make_views(3, 32, backend=backend, shared=True, p_jitter=1.0)
    img = torch.rand(1, 3, 32, 32).expand(6, -1, -1, -1).contiguous()  # two blocks of three identical images
    out = grouped_views(views, img, 3, groups=2).view(3, 2, 3, 3, 32, 32)  # view, block, image
    for v in range(3):
        for g in range(2):
            assert torch.allclose(out[v, g], out[v, g, :1].expand_as(out[v, g]))  # shared within a block
        assert not torch.allclose(out[v, 0, 0], out[v, 1, 0])  # each block its own draw


class CountingReversal:
    """A deterministic per-image "reversal" that counts its calls and knows ``groups``."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: torch.Tensor, groups: int = 1, steps=None) -> torch.Tensor:
        self.calls += 1
        return (x * 8).round() / 8


def linear(x: torch.Tensor) -> torch.Tensor:
    s = x.flatten(1).mean(1, keepdim=True) - 0.5
    return torch.cat([-s, s], 1)


@pytest.mark.parametrize("composition", ["batch", "batch2", "clean_mates"])
def test_correct_draws_in_one_call_equal_one_call_per_draw(composition):
    x, y = torch.rand(7, 3, 4, 4), torch.randint(0, 2, (7,))
    one, per_draw = CountingReversal(), CountingReversal()
    grouped = DefendedModel.of(linear, per_draw, reverse_groups_fn=one)
    plain = DefendedModel.of(linear, per_draw)
    a = grouped.correct_draws(x, y, 4, composition, x.flip(0), groups=2)
    calls_one = one.calls
    b = plain.correct_draws(x, y, 4, composition, x.flip(0), groups=2)
    assert torch.equal(a, b)
    assert calls_one == (2 if composition == "batch2" else 1)  # one call per block size (batch2: 2 and 3)
    assert per_draw.calls == 4 * {"batch": 1, "batch2": 3, "clean_mates": 2}[composition]


def test_stop_after_wrong_keeps_the_all_draws_verdict_and_reverses_less():
    torch.manual_seed(0)
    seen = []

    def spoil(x: torch.Tensor) -> torch.Tensor:  # a fair coin per image and draw
        seen.append(len(x))
        return torch.where(torch.rand(len(x), 1, 1, 1) < 0.5, 1 - x, x)

    x, y = torch.full((400, 3, 4, 4), 0.7), torch.ones(400, dtype=torch.long)
    full = DefendedModel.of(linear, spoil).correct_draws(x, y, 3)
    n_full, seen[:] = sum(seen), []
    cheap = DefendedModel.of(linear, spoil).correct_draws(x, y, 3, stop_after_wrong=True)
    # robust on every draw: 1/8 either way; only the ~200 first-draw survivors are drawn again
    assert abs((full == 3).float().mean() - 0.125) < 0.05 and abs((cheap == 3).float().mean() - 0.125) < 0.05
    assert n_full == 1200 and sum(seen) < 0.75 * n_full and seen[0] == 400


def test_stop_after_wrong_reverses_a_lone_survivor_beside_a_mate():
    sizes = []

    def rev(x: torch.Tensor) -> torch.Tensor:
        sizes.append(len(x))
        return x

    x = torch.cat([torch.full((1, 3, 4, 4), 0.9), torch.full((3, 3, 4, 4), 0.1)])
    y = torch.ones(4, dtype=torch.long)  # only the first is right
    assert DefendedModel.of(linear, rev).correct_draws(x, y, 3, stop_after_wrong=True).tolist() == [3, 0, 0, 0]
    assert sizes == [4, 2, 2]


def test_stop_after_wrong_draws_the_survivors_again_in_the_same_composition():
    seen = []

    def rev(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return x

    x = torch.cat([torch.full((4, 3, 4, 4), 0.9), torch.full((2, 3, 4, 4), 0.1)])  # the first 4 right
    y, clean = torch.ones(6, dtype=torch.long), torch.full((6, 3, 4, 4), 0.5)
    d = DefendedModel.of(linear, rev)
    assert d.correct_draws(x, y, 3, "batch2", stop_after_wrong=True).tolist() == [3, 3, 3, 3, 0, 0]
    assert [len(v) for v in seen] == [2, 2, 2] + [2, 2] * 2  # the survivors in blocks of 2 again
    seen.clear()
    assert d.correct_draws(x, y, 3, "clean_mates", clean, groups=2, stop_after_wrong=True).tolist() == [3] * 4 + [0] * 2
    later = seen[2:]  # each survivor among the clean images of the other survivors
    assert [len(v) for v in later] == [4] * 4
    assert all(int((v == 0.5).all(dim=(1, 2, 3)).sum()) == 2 for v in later)
