import pytest
import torch

from lightning_modules.defense.reversal import ReversalConfig, reverse, ssl_loss
from lightning_modules.nn.backbones import build_backbone
from lightning_modules.nn.heads import ContrastiveHead
from lightning_modules.views.kornia import SimCLRViews


def deterministic_views(x: torch.Tensor, n: int) -> torch.Tensor:
    """n fixed, per-image views (no randomness): identity, flip, darker, brighter-flip, ..."""
    outs = []
    for v in range(n):
        xi = x.flip(3) if v % 2 else x
        outs.append((xi * (1.0 - 0.1 * (v // 2))).clamp(0, 1))
    return torch.cat(outs)


def small_net(seed=0):
    torch.manual_seed(seed)
    net = build_backbone("small_cnn", width=8).eval()
    head = ContrastiveHead(net.feature_dim, 32, 16).eval()
    return net, head


def test_reversal_lowers_contrastive_loss_within_eps():
    net, head = small_net()
    x = torch.rand(12, 3, 32, 32)
    cfg = ReversalConfig(eps=16 / 255, alpha=2 / 255, steps=10, n_views=4)
    with torch.no_grad():
        before = ssl_loss(net, head, x, deterministic_views, 4, 0.2).mean()
    x_rev = reverse(net, head, x, cfg, views=deterministic_views)
    with torch.no_grad():
        after = ssl_loss(net, head, x_rev, deterministic_views, 4, 0.2).mean()
    assert after < before - 1e-3
    assert (x_rev - x).abs().max() <= 16 / 255 + 1e-6
    assert x_rev.min() >= 0 and x_rev.max() <= 1
    assert all(p.grad is None for p in list(net.parameters()) + list(head.parameters()))


def test_reversal_with_random_simclr_views_lowers_loss_on_average():
    net, head = small_net(1)
    x = torch.rand(16, 3, 32, 32)
    views = SimCLRViews(4, 32)
    torch.manual_seed(0)
    x_rev = reverse(net, head, x, ReversalConfig(steps=10), views=views)

    def avg(z):
        torch.manual_seed(123)
        with torch.no_grad():
            return torch.stack([ssl_loss(net, head, z, views, 4, 0.2).mean() for _ in range(8)]).mean()

    assert avg(x_rev) < avg(x)
    assert (x_rev - x).abs().max() <= 16 / 255 + 1e-6


def test_reversal_is_equivariant_to_batch_order_and_restores_train_mode():
    net, head = small_net(2)
    net.train(), head.train()
    x = torch.rand(8, 3, 32, 32)
    perm = torch.randperm(8)
    cfg = ReversalConfig(steps=5, n_views=2)
    a = reverse(net, head, x, cfg, views=deterministic_views)
    b = reverse(net, head, x[perm], cfg, views=deterministic_views)
    assert torch.allclose(a[perm], b, atol=1e-6)
    assert net.training and head.training  # BN ran in eval mode inside, mode restored after


def test_reversal_config_validation():
    with pytest.raises(ValueError, match="16/255"):
        ReversalConfig(eps=16)
    with pytest.raises(ValueError, match="n_views"):
        ReversalConfig(n_views=1)
    net, head = small_net()
    with pytest.raises(ValueError, match="at least 2 images"):
        reverse(net, head, torch.rand(1, 3, 32, 32), ReversalConfig(steps=1))
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(reverse(net, head, x, ReversalConfig(steps=0)), x)


@pytest.mark.parametrize("random_start", [False, True])
def test_plain_and_differentiable_reversal_share_the_step(random_start):
    """The plain and the unrolled reversal run the same step: same images under the same seed (and the
    unrolled one keeps a graph to its input)."""
    from lightning_modules.defense.reversal import reverse_differentiable

    net, head = build_backbone("small_cnn", width=4).eval(), ContrastiveHead(16, 16, 8).eval()
    cfg = ReversalConfig(steps=3, n_views=2, random_start=random_start)
    x = torch.rand(4, 3, 16, 16)
    views = SimCLRViews(2, 16)
    torch.manual_seed(5)
    plain = reverse(net, head, x, cfg, views)
    torch.manual_seed(5)
    unrolled = reverse_differentiable(net, head, x.clone().requires_grad_(True), cfg, views, use_checkpoint=False)
    assert unrolled.requires_grad and torch.equal(unrolled.detach(), plain)
    assert not torch.equal(plain, x)  # the reversal moved the images
