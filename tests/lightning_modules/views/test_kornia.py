import torch

from lightning_modules.views.kornia import SimCLRViews


def test_views_are_per_image_differentiable_and_in_range():
    torch.manual_seed(0)
    views = SimCLRViews(n_views=3, size=32)
    x = torch.rand(1, 3, 32, 32).repeat(16, 1, 1, 1).requires_grad_(True)  # 16 copies of one image
    v = views(x)
    assert v.shape == (48, 3, 32, 32)
    assert v.min() >= 0 and v.max() <= 1
    # the same image in different rows gets different augmentations (parameters are per image)
    first_view = v[:16].detach().flatten(1)
    assert torch.cdist(first_view, first_view).triu(1).gt(1e-3).sum() > 100
    v.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # view-major layout: row v*B + i comes from image i
    y = torch.zeros(4, 3, 32, 32)
    y[2] = 1.0
    out = SimCLRViews(2, 32, jitter=(0, 0, 0, 0), p_gray=0.0)(y)
    assert out[2].min() > 0.99 and out[6].min() > 0.99 and out[[0, 1, 3, 4, 5, 7]].max() < 1e-6
